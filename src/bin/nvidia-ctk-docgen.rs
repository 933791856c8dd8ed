//! Build-time tool (not shipped): writes nvidia-ctk's man pages and shell
//! completions from its clap definitions ([`nvidia_container_runtime::ctk`]),
//! so that they can never describe options the binary does not have.
//!
//!     cargo run --features docgen --bin nvidia-ctk-docgen -- OUT_DIR
//!
//! writes `OUT_DIR/man/nvidia-ctk*.1` (one page per command and subcommand)
//! and `OUT_DIR/completions/{bash/nvidia-ctk, zsh/_nvidia-ctk,
//! fish/nvidia-ctk.fish}`: the file names each shell looks up, so that
//! debian/*.install copies them as they are.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap_complete::Shell;
use nvidia_container_runtime::ctk;

const BIN: &str = "nvidia-ctk";

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        eprintln!("usage: nvidia-ctk-docgen OUT_DIR");
        return ExitCode::from(2);
    };
    match generate(Path::new(&out)) {
        Ok(written) => {
            for path in written {
                println!("{}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("nvidia-ctk-docgen: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn generate(out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let man_dir = out.join("man");
    create_dir(&man_dir)?;
    // `build` fills in what the pages print (display names such as
    // `nvidia-ctk-runtime-configure`, the version of every subcommand); the
    // help subcommand is clap's and would get a page of its own.
    let mut command = ctk::command().disable_help_subcommand(true);
    command.build();
    man_pages(&command, &man_dir, &mut written)?;

    for (shell, dir, name) in [
        (Shell::Bash, "bash", BIN.to_string()),
        (Shell::Zsh, "zsh", format!("_{BIN}")),
        (Shell::Fish, "fish", format!("{BIN}.fish")),
    ] {
        let dir = out.join("completions").join(dir);
        create_dir(&dir)?;
        let path = dir.join(name);
        let mut text = Vec::new();
        clap_complete::generate(shell, &mut ctk::command(), BIN, &mut text);
        write(&path, &text)?;
        written.push(path);
    }
    Ok(written)
}

/// One page per command, depth first; the pages of hidden commands are left
/// out, as `--help` leaves them out.
fn man_pages(
    command: &clap::Command,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> anyhow::Result<()> {
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        man_pages(sub, dir, written)?;
    }
    // clap_mangen's default footer is the (sub)command's own name and version,
    // and subcommands have no version: name the program every page is about.
    let man = clap_mangen::Man::new(command.clone())
        .source(format!("{BIN} {}", env!("CARGO_PKG_VERSION")))
        // Without a date clap_mangen writes an empty unquoted field, and roff
        // then shifts the footer's fields by one.
        .date(page_date())
        .manual("NVIDIA container runtime");
    let path = dir.join(man.get_filename());
    let mut text = Vec::new();
    man.render(&mut text)
        .with_context(|| format!("cannot render {}", path.display()))?;
    write(&path, &text)?;
    written.push(path);
    Ok(())
}

/// `YYYY-MM-DD` of `$SOURCE_DATE_EPOCH` (dpkg-buildpackage sets it from
/// debian/changelog, so that a rebuild gives the same bytes), else of now.
fn page_date() -> String {
    let seconds = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|value| value.parse::<u64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_secs())
        });
    let (year, month, day) = civil_from_days(seconds / 86_400);
    format!("{year:04}-{month:02}-{day:02}")
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`, for non-negative days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

fn create_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
}

fn write(path: &Path, text: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::civil_from_days;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_453), (2025, 12, 31));
    }
}
