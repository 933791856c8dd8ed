//! Error reporting the way engines read it, and the debug log.
//!
//! containerd shows the last `error` line of runc's `--log` file to the user
//! (`docker: Error response from daemon: ... OCI runtime create failed: <msg>`),
//! so a failure before the exec is written there as a runc-style line, JSON
//! with `--log-format json`, logrus text otherwise, and to stderr.

use std::io::Write;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// RFC 3339 UTC timestamp with seconds precision, as runc's logrus writes.
pub fn rfc3339_now() -> String {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    rfc3339(seconds)
}

/// Formats seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn rfc3339(seconds: u64) -> String {
    let days = (seconds / 86_400) as i64;
    let rest = seconds % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// One runc-style log line (with its newline).
pub fn log_line(level: &str, message: &str, json: bool) -> String {
    let time = rfc3339_now();
    if json {
        let line = serde_json::json!({"level": level, "msg": message, "time": time});
        format!("{line}\n")
    } else {
        format!(
            "time=\"{time}\" level={level} msg={}\n",
            serde_json::Value::from(message)
        )
    }
}

/// Appends a line of `level` (`error`, `warning`) to the `--log` file, if
/// any. Failures to log are ignored: the message still goes to stderr.
pub fn write_runtime_log(log_path: Option<&Path>, json: bool, level: &str, message: &str) {
    let Some(path) = log_path else { return };
    let line = log_line(level, message, json);
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = file.write_all(line.as_bytes());
    }
}

/// Joins an error and its sources into one line: `a: b: c`, skipping a
/// source whose text the previous message already contains.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    one_line(&message)
}

/// Starts the `tracing` debug log to `path` (the config's `debug` key) at
/// `level`; nothing when the path is empty or `/dev/null`. Process-global,
/// so only binaries call it.
pub fn init_debug_log(path: &str, level: &str) {
    if path.is_empty() || path == "/dev/null" {
        return;
    }
    let Ok(file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    else {
        return;
    };
    let level = match level.to_ascii_lowercase().as_str() {
        "trace" => tracing::Level::TRACE,
        "debug" => tracing::Level::DEBUG,
        "warn" | "warning" => tracing::Level::WARN,
        "error" => tracing::Level::ERROR,
        _ => tracing::Level::INFO,
    };
    let _ = tracing_subscriber::fmt()
        .with_writer(std::sync::Mutex::new(file))
        .with_max_level(level)
        .with_ansi(false)
        .try_init();
}

/// Joins a multi-line message into one line.
pub fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_709_677_436), "2024-03-05T22:23:56Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn json_line_is_one_runc_style_object() {
        let line = log_line("error", "bad \"thing\"\nhere", true);
        assert!(line.ends_with('\n'));
        let value: serde_json::Value = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(value["level"], "error");
        assert_eq!(value["msg"], "bad \"thing\"\nhere");
        assert!(value["time"].as_str().unwrap().ends_with('Z'));
        let text = log_line("error", "x", false);
        assert!(text.contains("level=error msg=\"x\""), "{text}");
    }
}
