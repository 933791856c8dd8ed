//! The facts only the driver's own libraries know, asked of a helper
//! process: `nvidia-container-runtime-facts`, dynamically linked, which
//! `dlopen`s libcuda and NVML (`driver::facts`) and prints the answer as
//! one JSON line.
//!
//! Why a process: the runtime and the hook are built as static executables
//! (no dynamic loader on any start, and no loader variable can reach them),
//! and a static glibc program cannot safely `dlopen` a library linked
//! against the shared libc (two copies of libc, their TLS and malloc).
//! The runtime runs the helper only when it needs a fact the cache lacks
//! ([`super::facts_cache`]) or a MIG lookup, so a warm start runs none.
//!
//! argv: `--driver-root R --dev-root D --proc-root P --sys-root S <query>`,
//! a query being `cuda-version`, `gpu-facts <uuid>`, `mig-by-uuid <uuid>`,
//! `mig-by-index <parent uuid> <index>` or `mig-devices <parent uuid>`.
//! stdout: `{"ok": <answer>}` or `{"error": "<message>"}`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Roots;

/// The helper's file name, installed next to the runtime and the hook.
pub const HELPER_NAME: &str = "nvidia-container-runtime-facts";

/// The most of the helper's answer that is read: a list of every MIG
/// device of a GPU is a few KiB.
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// One question for the helper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    CudaVersion,
    GpuFacts(String),
    MigByUuid(String),
    MigByIndex(String, u32),
    MigDevices(String),
}

impl Query {
    fn args(&self) -> Vec<String> {
        match self {
            Query::CudaVersion => vec!["cuda-version".into()],
            Query::GpuFacts(uuid) => vec!["gpu-facts".into(), uuid.clone()],
            Query::MigByUuid(uuid) => vec!["mig-by-uuid".into(), uuid.clone()],
            Query::MigByIndex(uuid, index) => {
                vec!["mig-by-index".into(), uuid.clone(), index.to_string()]
            }
            Query::MigDevices(uuid) => vec!["mig-devices".into(), uuid.clone()],
        }
    }

    /// What is asked, for the log: which library answers it.
    fn describe(&self) -> String {
        match self {
            Query::CudaVersion => "the CUDA version (libcuda's cuDriverGetVersion)".into(),
            Query::GpuFacts(uuid) => format!("{uuid}'s compute capability and brand (NVML)"),
            Query::MigByUuid(uuid) => format!("MIG device {uuid} (NVML)"),
            Query::MigByIndex(uuid, index) => format!("MIG device {index} of {uuid} (NVML)"),
            Query::MigDevices(uuid) => format!("the MIG devices of {uuid} (NVML)"),
        }
    }

    /// The query of the helper's argv after the roots.
    pub fn parse(args: &[String]) -> Result<Query, String> {
        let strings: Vec<&str> = args.iter().map(String::as_str).collect();
        match strings.as_slice() {
            ["cuda-version"] => Ok(Query::CudaVersion),
            ["gpu-facts", uuid] => Ok(Query::GpuFacts(uuid.to_string())),
            ["mig-by-uuid", uuid] => Ok(Query::MigByUuid(uuid.to_string())),
            ["mig-by-index", uuid, index] => index
                .parse()
                .map(|index| Query::MigByIndex(uuid.to_string(), index))
                .map_err(|_| format!("mig-by-index: \"{index}\" is not a MIG index")),
            ["mig-devices", uuid] => Ok(Query::MigDevices(uuid.to_string())),
            _ => Err(format!(
                "unknown query {args:?}: expected cuda-version, gpu-facts UUID, mig-by-uuid UUID, mig-by-index UUID N or mig-devices UUID"
            )),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Answer {
    Ok(Value),
    Error(String),
}

/// The helper's reply line for `result` (the helper's side: the
/// answer is computed by `driver::facts::answer`).
pub fn encode(result: Result<Value, String>) -> String {
    let answer = match result {
        Ok(value) => Answer::Ok(value),
        Err(problem) => Answer::Error(problem),
    };
    // An enum of a Value or a String always serialises.
    serde_json::to_string(&answer).unwrap_or_else(|_| "{\"error\":\"unprintable\"}".into())
}

/// Asks the helper at `helper` about the driver at `roots`; the answer, or
/// a message naming the helper and what went wrong.
pub fn ask<T: for<'de> Deserialize<'de>>(
    helper: &Path,
    roots: &Roots,
    query: &Query,
) -> Result<T, String> {
    let mut command = Command::new(helper);
    for (flag, path) in [
        ("--driver-root", &roots.driver_root),
        ("--dev-root", &roots.dev_root),
        ("--proc-root", &roots.proc_root),
        ("--sys-root", &roots.sys_root),
    ] {
        command.arg(flag).arg(path);
    }
    command
        .args(query.args())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    tracing::info!("asking {} for {}", helper.display(), query.describe());
    let output = command.output().map_err(|error| {
        format!(
            "cannot run the driver facts helper {}: {error}; reinstall the package (it is installed next to nvidia-container-runtime)",
            helper.display()
        )
    })?;
    if output.stdout.len() > MAX_ANSWER_BYTES {
        return Err(format!(
            "{} answered more than {MAX_ANSWER_BYTES} bytes",
            helper.display()
        ));
    }
    let answer: Answer = serde_json::from_slice(&output.stdout).map_err(|error| {
        format!(
            "the driver facts helper {} gave no answer ({}: {error})",
            helper.display(),
            output.status
        )
    })?;
    match answer {
        Answer::Ok(value) => serde_json::from_value(value)
            .map_err(|error| format!("{}: unexpected answer: {error}", helper.display())),
        Answer::Error(problem) => Err(problem),
    }
}

/// [`ask`] of the helper next to the running program.
pub fn ask_beside_self<T: for<'de> Deserialize<'de>>(
    roots: &Roots,
    query: &Query,
) -> Result<T, String> {
    ask(&helper_beside_self(), roots, query)
}

/// The helper next to the running program (`/proc/self/exe`'s dir), where
/// the package installs it beside the runtime and the hook.
pub fn helper_beside_self() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(HELPER_NAME)))
        .unwrap_or_else(|| Path::new("/usr/bin").join(HELPER_NAME))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_round_trip_through_argv() {
        for query in [
            Query::CudaVersion,
            Query::GpuFacts("GPU-1".into()),
            Query::MigByUuid("MIG-1".into()),
            Query::MigByIndex("GPU-1".into(), 3),
            Query::MigDevices("GPU-1".into()),
        ] {
            assert_eq!(Query::parse(&query.args()).unwrap(), query);
        }
        assert!(Query::parse(&["frobnicate".to_string()]).is_err());
        assert!(Query::parse(&["mig-by-index".into(), "GPU-1".into(), "x".into()]).is_err());
    }

    #[test]
    fn a_missing_helper_says_what_to_do() {
        let roots = Roots {
            driver_root: "/".into(),
            dev_root: "/".into(),
            proc_root: "/proc".into(),
            sys_root: "/sys".into(),
        };
        let error = ask::<String>(
            Path::new("/nonexistent/helper"),
            &roots,
            &Query::CudaVersion,
        )
        .unwrap_err();
        assert!(error.contains("reinstall the package"), "{error}");
    }
}
