//! The `nvidia-docker` compatibility wrapper: nvidia-docker 2's contract.
//!
//! nvidia-docker 2 was a shell script in front of `docker`: for `run` and
//! `create` it added `--runtime=nvidia` and turned `NV_GPU="0 1"` into
//! `-e NVIDIA_VISIBLE_DEVICES=0,1`; everything else went to docker
//! unchanged, and `NV_DOCKER` replaced the docker command (word-split, so
//! `NV_DOCKER="sudo docker"` worked). This module owns the argv rewrite; the
//! binary only execs the result.
//!
//! Where we do better than the script: it took the first word equal to
//! `run`/`create` anywhere, also the value of a global flag
//! (`docker -H run ...`); we skip the values of docker's global flags.

use std::ffi::{OsStr, OsString};

/// docker's global flags that take a value as the next word (`docker
/// --help`, Docker 20.10).
const GLOBAL_FLAGS_WITH_VALUE: &[&str] = &[
    "--config",
    "-c",
    "--context",
    "-H",
    "--host",
    "-l",
    "--log-level",
    "--tlscacert",
    "--tlscert",
    "--tlskey",
];

/// What to exec: the program and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub program: OsString,
    pub args: Vec<OsString>,
    /// `version`: print our line before docker's output.
    pub print_version: bool,
}

/// The docker command line for our argv (`args` without `argv[0]`), given
/// `NV_DOCKER` and `NV_GPU`.
pub fn command(args: &[OsString], nv_docker: Option<&OsStr>, nv_gpu: Option<&OsStr>) -> Command {
    let (program, mut prefix) = docker_command(nv_docker);
    let mut out = Vec::with_capacity(args.len() + 4);
    let mut print_version = false;
    let mut words = args.iter();
    while let Some(word) = words.next() {
        out.push(word.clone());
        let text = word.to_string_lossy();
        match text.as_ref() {
            "run" | "create" => {
                out.push(OsString::from("--runtime=nvidia"));
                if let Some(devices) = nv_gpu.and_then(visible_devices) {
                    out.push(OsString::from("-e"));
                    out.push(OsString::from(format!("NVIDIA_VISIBLE_DEVICES={devices}")));
                }
                break;
            }
            "version" => {
                print_version = true;
                break;
            }
            "--" => break,
            flag if GLOBAL_FLAGS_WITH_VALUE.contains(&flag) => {
                if let Some(value) = words.next() {
                    out.push(value.clone());
                }
            }
            _ => {}
        }
    }
    out.extend(words.cloned());
    prefix.extend(out);
    Command {
        program,
        args: prefix,
        print_version,
    }
}

/// `NV_DOCKER` split at whitespace (the script used it unquoted), default
/// `docker`: the program and the words that go before our argv.
fn docker_command(nv_docker: Option<&OsStr>) -> (OsString, Vec<OsString>) {
    let text = nv_docker
        .map(|v| v.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut words = text.split_whitespace().map(OsString::from);
    match words.next() {
        Some(program) => (program, words.collect()),
        None => (OsString::from("docker"), Vec::new()),
    }
}

/// `NV_GPU` ("0 1", "0,1", "GPU-...") as a `NVIDIA_VISIBLE_DEVICES` value;
/// `None` when empty (the script added nothing then).
fn visible_devices(nv_gpu: &OsStr) -> Option<String> {
    let text = nv_gpu.to_string_lossy();
    let devices: Vec<&str> = text
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|d| !d.is_empty())
        .collect();
    (!devices.is_empty()).then(|| devices.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(words: &[&str]) -> Vec<OsString> {
        words.iter().map(OsString::from).collect()
    }

    #[test]
    fn run_gets_the_runtime_and_nv_gpu() {
        let cmd = command(
            &os(&["run", "--rm", "ubuntu", "nvidia-smi"]),
            None,
            Some(OsStr::new("0 1")),
        );
        assert_eq!(cmd.program, "docker");
        assert_eq!(
            cmd.args,
            os(&[
                "run",
                "--runtime=nvidia",
                "-e",
                "NVIDIA_VISIBLE_DEVICES=0,1",
                "--rm",
                "ubuntu",
                "nvidia-smi"
            ])
        );
    }

    #[test]
    fn container_create_and_global_flags() {
        let cmd = command(
            &os(&["-H", "run", "container", "create", "img", "run"]),
            Some(OsStr::new("sudo  docker")),
            Some(OsStr::new("")),
        );
        assert_eq!(cmd.program, "sudo");
        assert_eq!(
            cmd.args,
            os(&[
                "docker",
                "-H",
                "run",
                "container",
                "create",
                "--runtime=nvidia",
                "img",
                "run"
            ])
        );
    }

    #[test]
    fn other_commands_pass_unchanged() {
        for args in [
            vec!["ps", "-a"],
            vec!["images"],
            vec!["--", "run"],
            vec!["exec", "-it", "c", "sh"],
        ] {
            let cmd = command(&os(&args), None, Some(OsStr::new("0")));
            assert_eq!(cmd.args, os(&args), "{args:?}");
            assert!(!cmd.print_version);
        }
        let cmd = command(&os(&["version"]), None, None);
        assert!(cmd.print_version);
        assert_eq!(cmd.args, os(&["version"]));
    }
}
