//! Daemons the engine and node-installer tests start: each on its own
//! socket, state dirs and log in the test's dir, stopped on drop.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::*;

/// How long a daemon has to answer after its start.
pub const DAEMON_TIMEOUT: Duration = Duration::from_secs(90);

/// Runs `cmd` with a time limit; its output whatever the status.
pub fn output(mut cmd: Command) -> RunOutput {
    cmd.stdin(Stdio::null());
    let what = format!("{cmd:?}");
    output_with_timeout(cmd, Duration::from_secs(120))
        .unwrap_or_else(|| panic!("{what} did not finish within 120 s"))
}

/// A daemon we started; stopped (TERM, then KILL) on drop.
pub struct Daemon {
    pub name: &'static str,
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    pub fn start(
        name: &'static str,
        mut cmd: Command,
        log: PathBuf,
        env: &[(String, String)],
    ) -> Daemon {
        let log_file = fs::File::create(&log).expect("create daemon log");
        cmd.stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file);
        for (key, value) in env {
            cmd.env(key, value);
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("start {name}: {e}"));
        Daemon { name, child, log }
    }

    /// Waits until `ready` succeeds; panics with the daemon's log if it
    /// exits or takes too long.
    pub fn wait_ready(&mut self, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + DAEMON_TIMEOUT;
        loop {
            if ready() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited ({status}):\n{}", self.name, self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready within {DAEMON_TIMEOUT:?}:\n{}",
                self.name,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, signal);
    }

    pub fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------
// dockerd
// ---------------------------------------------------------------------------

pub struct Docker {
    pub daemon: Daemon,
    pub generation: Generation,
    pub cli: PathBuf,
    pub host: String,
    pub client_config: PathBuf,
}

impl Docker {
    /// dockerd with its own data-root, exec-root and socket, and no
    /// networking of its own (engines.md: a bare machine has no iptables
    /// to spare).
    pub fn start(
        generation: Generation,
        dir: &Path,
        daemon_json: &Path,
        env: &[(String, String)],
    ) -> Docker {
        let socket = dir.join("docker.sock");
        let mut cmd = generation.command("dockerd");
        cmd.arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .arg("--host")
            .arg(format!("unix://{}", socket.display()))
            .arg("--config-file")
            .arg(daemon_json)
            .args(["--iptables=false", "--ip6tables=false", "--bridge=none"]);
        let daemon = Daemon::start("dockerd", cmd, dir.join("dockerd.log"), env);
        let client_config = dir.join("client");
        fs::create_dir_all(&client_config).unwrap();
        let mut docker = Docker {
            daemon,
            generation,
            cli: docker_cli(generation),
            host: format!("unix://{}", socket.display()),
            client_config,
        };
        let probe = docker.command(&["version"]);
        let probe = std::cell::RefCell::new(probe);
        docker.daemon.wait_ready(|| {
            let mut cmd = Command::new(probe.borrow().get_program());
            cmd.args(probe.borrow().get_args())
                .envs(probe.borrow().get_envs().filter_map(|(k, v)| Some((k, v?))))
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            cmd.status().is_ok_and(|s| s.success())
        });
        docker
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = self.generation.command(&self.cli);
        cmd.arg("--host")
            .arg(&self.host)
            .args(args)
            .env("DOCKER_CONFIG", &self.client_config);
        cmd
    }

    pub fn run(&self, args: &[&str]) -> RunOutput {
        output(self.command(args))
    }

    pub fn runtimes(&self) -> String {
        self.run(&["info", "--format", "{{json .Runtimes}} {{.DefaultRuntime}}"])
            .stdout
    }
}

/// The docker CLI of the generation's docker.io package (on the host a
/// newer static client may be first on PATH; the package's is the one we
/// test with, as testing.md says).
pub fn docker_cli(generation: Generation) -> PathBuf {
    if generation.engines == Engines::Sid {
        return PathBuf::from("/usr/bin/docker");
    }
    let packaged = Path::new("/usr/bin/docker");
    if packaged.exists() {
        return packaged.to_path_buf();
    }
    find_in_path("docker")
        .unwrap_or_else(|| panic!("`docker` is not installed: apt-get install -y docker.io"))
}
