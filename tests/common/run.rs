//! Running containers and commands with timeouts, and the test-process
//! helpers (unique ids, root and tool checks that skip loudly outside CI).

#![allow(dead_code)]

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::*;

#[derive(Debug)]
pub struct RunOutput {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

impl RunOutput {
    pub fn success(&self) -> bool {
        self.status == 0
    }

    /// Panics with stdout and stderr unless the status is 0.
    pub fn assert_success(&self, what: &str) -> &Self {
        assert_eq!(
            self.status, 0,
            "{what} failed with status {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        );
        self
    }
}

/// Time limit for one container run.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);

pub fn runtime_command(
    runtime: &Path,
    state_root: &Path,
    bundle: &Bundle,
    env: &[(&str, &str)],
) -> Command {
    let mut cmd = generation().command(runtime);
    cmd.arg("--root")
        .arg(state_root)
        .arg("--log")
        .arg(bundle.runtime_log_path())
        .args(["--log-format", "json"])
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs `<runtime> --root <state_root> --log <bundle>/runtime-log.json
/// --log-format json run --bundle <bundle.dir> <id>` with stdin null and the
/// extra env vars; returns its output (the container's stdout/stderr are the
/// runtime's, as terminal=false). Times out after `RUN_TIMEOUT`.
pub fn run_container(
    runtime: &Path,
    state_root: &Path,
    bundle: &Bundle,
    id: &str,
    env: &[(&str, &str)],
) -> RunOutput {
    let mut cmd = runtime_command(runtime, state_root, bundle, env);
    cmd.arg("run").arg("--bundle").arg(&bundle.dir).arg(id);
    let output = output_with_timeout(cmd, RUN_TIMEOUT);
    match output {
        Some(mut out) => {
            out.stderr.push_str(&bundle.hook_stderr());
            out
        }
        None => {
            force_delete(runtime, state_root, bundle, id, env);
            panic!(
                "`{} run {id}` did not finish within {RUN_TIMEOUT:?}",
                runtime.display()
            );
        }
    }
}

/// `create` (container stdout/stderr go to files in the bundle dir),
/// `start`, waits until `state` says stopped (10 s), `delete`. Returns the
/// container's output; `status` is the first failing runtime command's exit
/// status (0 if all succeeded: the container's own exit code is not known),
/// and `stderr` also holds the runtime's own stderr of `create`.
pub fn create_start_delete(
    runtime: &Path,
    state_root: &Path,
    bundle: &Bundle,
    id: &str,
    env: &[(&str, &str)],
) -> RunOutput {
    let stdout_path = bundle.dir.join(format!("{id}.stdout"));
    let stderr_path = bundle.dir.join(format!("{id}.stderr"));
    let read_outputs = |status: i32, extra: &str| RunOutput {
        status,
        stdout: fs::read_to_string(&stdout_path).unwrap_or_default(),
        stderr: fs::read_to_string(&stderr_path).unwrap_or_default()
            + extra
            + &bundle.hook_stderr(),
    };

    let mut create = runtime_command(runtime, state_root, bundle, env);
    create
        .arg("create")
        .arg("--bundle")
        .arg(&bundle.dir)
        .arg(id)
        .stdout(fs::File::create(&stdout_path).expect("create stdout file"))
        .stderr(fs::File::create(&stderr_path).expect("create stderr file"));
    let status = create.status().expect("spawn runtime create");
    if !status.success() {
        force_delete(runtime, state_root, bundle, id, env);
        return read_outputs(exit_code(status), "");
    }

    let mut start = runtime_command(runtime, state_root, bundle, env);
    start.arg("start").arg(id);
    let started = output_with_timeout(start, RUN_TIMEOUT).expect("runtime start timed out");
    if !started.success() {
        force_delete(runtime, state_root, bundle, id, env);
        return read_outputs(started.status, &started.stderr);
    }

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match container_status(runtime, state_root, bundle, id, env) {
            Some(s) if s == "stopped" => break,
            None => break,
            _ if Instant::now() > deadline => {
                force_delete(runtime, state_root, bundle, id, env);
                panic!("container {id} did not stop within 10s");
            }
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }

    let mut delete = runtime_command(runtime, state_root, bundle, env);
    delete.arg("delete").arg(id);
    let deleted = output_with_timeout(delete, RUN_TIMEOUT).expect("runtime delete timed out");
    if !deleted.success() {
        force_delete(runtime, state_root, bundle, id, env);
    }
    read_outputs(deleted.status, &deleted.stderr)
}

/// `status` of `<runtime> state <id>`, or None if the container is unknown.
pub fn container_status(
    runtime: &Path,
    state_root: &Path,
    bundle: &Bundle,
    id: &str,
    env: &[(&str, &str)],
) -> Option<String> {
    let mut cmd = runtime_command(runtime, state_root, bundle, env);
    cmd.arg("state").arg(id);
    let out = output_with_timeout(cmd, RUN_TIMEOUT).expect("runtime state timed out");
    if !out.success() {
        return None;
    }
    let state: Value = serde_json::from_str(&out.stdout).expect("parse runtime state");
    state["status"].as_str().map(str::to_string)
}

pub(crate) fn force_delete(
    runtime: &Path,
    state_root: &Path,
    bundle: &Bundle,
    id: &str,
    env: &[(&str, &str)],
) {
    let mut cmd = runtime_command(runtime, state_root, bundle, env);
    cmd.args(["delete", "--force", id])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _ = cmd.status();
}

/// Runs `cmd`, collecting stdout/stderr; None (after killing it) on timeout.
/// Waits for `child` to exit; kills (and reaps) it and returns `None` if
/// it has not after `timeout`.
pub fn wait_with_deadline(
    child: &mut Child,
    timeout: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn output_with_timeout(mut cmd: Command, timeout: Duration) -> Option<RunOutput> {
    let mut child: Child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let reader = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = reader(Box::new(child.stdout.take().unwrap()));
    let err = reader(Box::new(child.stderr.take().unwrap()));
    let status = wait_with_deadline(&mut child, timeout)?;
    Some(RunOutput {
        status: exit_code(status),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    })
}

pub(crate) fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

pub(crate) fn run_ok(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({})\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A container id unique across threads and processes.
pub fn unique_id(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}-{}-{}-{:x}",
        std::process::id(),
        next_counter(),
        nanos & 0xffff
    )
}

/// Effective uid, from /proc/self/status (std has no geteuid).
pub(crate) fn effective_uid() -> u32 {
    let status = fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|euid| euid.parse().ok())
        .expect("effective uid in /proc/self/status")
}

/// True if running as root. Otherwise prints a loud SKIPPED line and returns
/// false, or panics when `CI` is set (tests must not skip in CI).
pub fn require_root() -> bool {
    if effective_uid() == 0 {
        return true;
    }
    skip("this test needs root (runc, mknod, device cgroups)");
    false
}

/// Like `require_root` for a tool on PATH: its path, or None after a loud skip
/// (panics when `CI` is set).
pub fn require_tool(name: &str) -> Option<PathBuf> {
    let found = find_in_path(name);
    if found.is_none() {
        skip(&format!("`{name}` is not installed"));
    }
    found
}

pub(crate) fn skip(reason: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("CI is set, so this test must not skip: {reason}");
    }
    eprintln!("\n********** SKIPPED: {reason} **********\n");
}

pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| {
            p.is_file()
                && fs::metadata(p)
                    .map(|m| m.permissions().mode() & 0o111 != 0)
                    .unwrap_or(false)
        })
}

/// Path of the low-level runtime the tests run as "plain runc": runc, or
/// crun with `NCR_TEST_LOW_LEVEL=crun`, of this process's generation (see
/// [`generation`]); panics with a clear message if it is missing.
pub fn runc_path() -> PathBuf {
    generation().low_level_path()
}

/// A fresh temp dir (removed on drop).
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let dir = std::env::temp_dir().join(unique_id(prefix));
        fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Runs a command to completion (stdin as the command says) and collects
/// its exit status and output.
pub fn command_output(mut command: Command) -> RunOutput {
    let out = command.output().expect("spawn");
    RunOutput {
        status: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `command` (program, args, the env it sets) run under `strace -f -qq -e
/// <trace> -e signal=none -o <log>`, children followed (the rig runs its
/// programs through a shell: its children's SIGCHLD are not the trace),
/// stdin null.
pub fn strace_command(strace: &Path, trace: &str, log: &Path, command: &Command) -> Command {
    let mut traced = Command::new(strace);
    traced
        .args(["-f", "-qq", "-e", "signal=none", "-e", trace, "-o"])
        .arg(log)
        .arg(command.get_program())
        .args(command.get_args())
        .envs(command.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .stdin(Stdio::null());
    traced
}
