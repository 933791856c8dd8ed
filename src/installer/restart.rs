//! Making the engine read its config again, and waiting until it serves
//! what we registered: its socket accepts connections from the restarted
//! process, then its own API answers (containerd's and CRI-O's CRI, the
//! calls kubelet makes; dockerd's `/info`) and names our handlers. A
//! socket alone does not prove it: containerd listens with its CRI
//! plugin failed, or on a config that is not the one we edited (a unit
//! whose `--config` names another file), and dockerd keeps its old
//! runtimes when it refuses a reload.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::unistd::Pid;

use crate::engine_api::{self, EngineApiError};

use super::{InstallerError, Result, Unserved};

/// Which API says the engine is back and what it serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// containerd, CRI-O: `Version`, then a verbose `Status`.
    Cri,
    /// dockerd: `GET /info`.
    Docker,
    /// No API to ask (podman has no daemon): the socket is all.
    None,
}

/// What the engine must serve after the restart.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    pub handlers: &'a [&'a str],
    /// The file we edited, for the message when the engine does not read
    /// it.
    pub config: &'a Path,
}

/// Each API call's own limit within the restart's deadline.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const RETRY: Duration = Duration::from_millis(200);

/// `RUNTIME_RESTART_MODE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RestartMode {
    /// SIGHUP to the pid behind the socket (NVIDIA's default for
    /// containerd and docker).
    Signal,
    /// `chroot $HOST_ROOT_MOUNT systemctl restart <unit>` (NVIDIA's default
    /// for CRI-O).
    Systemd,
    None,
}

/// How to restart one engine and know it is back.
#[derive(Debug, Clone)]
pub struct Restarter {
    pub mode: RestartMode,
    pub socket: PathBuf,
    pub unit: String,
    pub host_root: PathBuf,
    /// containerd exits on SIGHUP and its supervisor starts a new one, so
    /// "back" means another pid behind the socket; dockerd reloads in place.
    pub exits_on_sighup: bool,
    pub api: Api,
    /// For the socket, then the API, together.
    pub timeout: Duration,
}

/// The pid of the process listening on `socket` (SO_PEERCRED: the
/// credentials the listener had when it called listen(2)).
pub fn peer_pid(socket: &Path) -> std::io::Result<i32> {
    let stream = UnixStream::connect(socket)?;
    let credentials = getsockopt(&stream, PeerCredentials).map_err(std::io::Error::from)?;
    Ok(credentials.pid())
}

/// `chroot HOST systemctl ARGS`, or plain `systemctl` when the host root
/// is `/`.
pub fn systemctl_command(host_root: &Path, args: &[&str]) -> Command {
    let mut command = if host_root == Path::new("/") {
        Command::new("systemctl")
    } else {
        let mut command = Command::new("chroot");
        command.arg(host_root).arg("systemctl");
        command
    };
    command.args(args);
    command
}

impl Restarter {
    /// Restarts (or reloads) the engine and waits until it answers again
    /// and, when `expected` is given, serves those handlers. `None` mode
    /// does nothing and waits for nothing.
    pub fn restart(&self, expected: Option<Expected<'_>>, say: &dyn Fn(&str)) -> Result<()> {
        match self.mode {
            RestartMode::None => {
                say("restart mode none: the engine was not restarted; restart it to use the new config");
                Ok(())
            }
            RestartMode::Signal => {
                let old = self.signal_pid()?;
                say(&format!(
                    "sending SIGHUP to pid {old} (behind {})",
                    self.socket.display()
                ));
                kill(Pid::from_raw(old), Signal::SIGHUP).map_err(|errno| {
                    InstallerError::Restart {
                        what: format!("SIGHUP to pid {old}"),
                        source: errno.into(),
                    }
                })?;
                let deadline = Instant::now() + self.timeout;
                self.wait_ready(self.exits_on_sighup.then_some(old), deadline)?;
                self.wait_serving(expected, deadline, say)
            }
            RestartMode::Systemd => {
                let mut command = systemctl_command(&self.host_root, &["restart", &self.unit]);
                say(&format!("running {command:?}"));
                let what = format!("{command:?}");
                let output = command.output().map_err(|source| InstallerError::Restart {
                    what: what.clone(),
                    source,
                })?;
                if !output.status.success() {
                    return Err(InstallerError::Command {
                        command: what,
                        status: output.status.to_string(),
                        stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
                    });
                }
                let deadline = Instant::now() + self.timeout;
                self.wait_ready(None, deadline)?;
                self.wait_serving(expected, deadline, say)
            }
        }
    }

    /// The engine's pid, retried for a while: the engine may itself be
    /// starting (NVIDIA retries 6 times at 5 s).
    fn signal_pid(&self) -> Result<i32> {
        let deadline = Instant::now() + self.timeout;
        loop {
            match peer_pid(&self.socket) {
                Ok(pid) if pid > 0 => return Ok(pid),
                Ok(_) | Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                Ok(pid) => {
                    return Err(InstallerError::Restart {
                        what: format!("the pid behind {}", self.socket.display()),
                        source: std::io::Error::other(format!("peer pid {pid}")),
                    })
                }
                Err(source) => {
                    return Err(InstallerError::Restart {
                        what: format!("the pid behind {}", self.socket.display()),
                        source,
                    })
                }
            }
        }
    }

    /// Waits until the socket accepts a connection from a process other
    /// than `old` (when given): the engine parsed its config and listens
    /// again.
    pub fn wait_ready(&self, old: Option<i32>, deadline: Instant) -> Result<()> {
        loop {
            match peer_pid(&self.socket) {
                Ok(pid) if Some(pid) != old => return Ok(()),
                _ if Instant::now() >= deadline => {
                    return Err(InstallerError::NotReady {
                        socket: self.socket.clone(),
                        timeout: self.timeout,
                        unit: self.unit.clone(),
                    })
                }
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Waits until the engine's API answers and (with `expected`) names
    /// our handlers. The CRI's answer is final once it comes (the handlers
    /// are read from the config at start); dockerd's reload runs after the
    /// SIGHUP returns, so `/info` is asked again until the deadline.
    fn wait_serving(
        &self,
        expected: Option<Expected<'_>>,
        deadline: Instant,
        say: &dyn Fn(&str),
    ) -> Result<()> {
        // What to report if the deadline passes before the first call (the
        // socket wait used it all).
        let mut pending = InstallerError::NotReady {
            socket: self.socket.clone(),
            timeout: self.timeout,
            unit: self.unit.clone(),
        };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(pending);
            }
            let timeout = left.min(CALL_TIMEOUT);
            let round = match self.api {
                Api::None => return Ok(()),
                Api::Cri => self.cri_round(expected, timeout, say),
                Api::Docker => self.docker_round(expected, timeout, say),
            };
            match round {
                Round::Done(result) => return result,
                Round::Again(error) => pending = error,
            }
            std::thread::sleep(RETRY.min(deadline.saturating_duration_since(Instant::now())));
        }
    }

    /// `Version` (kubelet's first call: the CRI serves at all), then a
    /// verbose `Status`: RuntimeReady, then the handlers.
    fn cri_round(
        &self,
        expected: Option<Expected<'_>>,
        timeout: Duration,
        say: &dyn Fn(&str),
    ) -> Round {
        let answers = engine_api::cri::version(&self.socket, timeout).and_then(|version| {
            Ok((
                version,
                engine_api::cri::status(&self.socket, true, timeout)?,
            ))
        });
        let (version, status) = match answers {
            Ok(answers) => answers,
            Err(error) => return Round::Again(self.not_serving(error)),
        };
        if let Some(condition) = status.condition("RuntimeReady").filter(|c| !c.status) {
            return Round::Again(InstallerError::RuntimeNotReady {
                socket: self.socket.clone(),
                timeout: self.timeout,
                reason: condition.reason.clone(),
                message: condition.message.clone(),
                unit: self.unit.clone(),
            });
        }
        let engine = format!("{} {}", version.runtime_name, version.runtime_version);
        let Some(expected) = expected else {
            say(&format!("{engine} answers on its CRI"));
            return Round::Done(Ok(()));
        };
        let Some(handlers) = status.handlers() else {
            say(&format!(
                "warning: {engine} answers but names no runtime handlers (no runtime_handlers, no config in its verbose Status): that it serves ours was not checked"
            ));
            return Round::Done(Ok(()));
        };
        if missing(expected.handlers, &handlers).is_empty() {
            say(&format!(
                "{engine} answers on its CRI and serves runtime handlers {}",
                expected.handlers.join(", ")
            ));
            return Round::Done(Ok(()));
        }
        Round::Done(Err(InstallerError::HandlersMissing(
            self.unserved(engine, expected, handlers),
        )))
    }

    /// `GET /info`: its `Runtimes` name ours once the reload has run.
    fn docker_round(
        &self,
        expected: Option<Expected<'_>>,
        timeout: Duration,
        say: &dyn Fn(&str),
    ) -> Round {
        let info = match engine_api::docker::info(&self.socket, timeout) {
            Ok(info) => info,
            Err(error) => return Round::Again(self.not_serving(error)),
        };
        let engine = format!("dockerd {}", info.server_version);
        let Some(expected) = expected else {
            say(&format!("{engine} answers"));
            return Round::Done(Ok(()));
        };
        if missing(expected.handlers, &info.runtimes).is_empty() {
            say(&format!(
                "{engine} lists runtimes {}",
                expected.handlers.join(", ")
            ));
            return Round::Done(Ok(()));
        }
        Round::Again(InstallerError::ReloadNotTaken(self.unserved(
            engine,
            expected,
            info.runtimes,
        )))
    }

    fn not_serving(&self, source: EngineApiError) -> InstallerError {
        InstallerError::NotServing {
            socket: self.socket.clone(),
            timeout: self.timeout,
            unit: self.unit.clone(),
            source: Box::new(source),
        }
    }

    fn unserved(
        &self,
        engine: String,
        expected: Expected<'_>,
        listed: Vec<String>,
    ) -> Box<Unserved> {
        Box::new(Unserved {
            engine,
            socket: self.socket.clone(),
            missing: missing(expected.handlers, &listed),
            listed,
            config: expected.config.to_path_buf(),
            unit: self.unit.clone(),
            timeout: self.timeout,
        })
    }
}

/// One look at the engine's API.
enum Round {
    /// Settled: served (or not checkable), or an error waiting cannot
    /// change.
    Done(Result<()>),
    /// Not yet: the error to report if the deadline passes first.
    Again(InstallerError),
}

/// The names of `wanted` that `listed` lacks.
fn missing(wanted: &[&str], listed: &[String]) -> Vec<String> {
    wanted
        .iter()
        .filter(|name| !listed.iter().any(|l| l == *name))
        .map(|name| name.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemctl_runs_in_the_host_root() {
        let command = systemctl_command(Path::new("/host"), &["restart", "crio"]);
        assert_eq!(command.get_program(), "chroot");
        let args: Vec<_> = command.get_args().collect();
        assert_eq!(args, ["/host", "systemctl", "restart", "crio"]);
        let command = systemctl_command(Path::new("/"), &["restart", "crio"]);
        assert_eq!(command.get_program(), "systemctl");
    }

    /// A fake dockerd whose /info lists `runtimes` to every caller.
    fn fake_dockerd(socket: &Path, runtimes: &'static str) {
        use std::io::{Read, Write};
        let listener = std::os::unix::net::UnixListener::bind(socket).unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut request = Vec::new();
                let mut byte = [0u8];
                while !request.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                    request.push(byte[0]);
                }
                let body = format!(r#"{{"ServerVersion":"28.5.2","Runtimes":{runtimes}}}"#);
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
            }
        });
    }

    fn restarter(socket: &Path, timeout: Duration) -> Restarter {
        Restarter {
            mode: RestartMode::Signal,
            socket: socket.to_path_buf(),
            unit: "docker".into(),
            host_root: PathBuf::from("/"),
            exits_on_sighup: false,
            api: Api::Docker,
            timeout,
        }
    }

    /// dockerd answering without our runtimes is asked again until the
    /// deadline, then named in the error with what it has; with them, the
    /// wait ends at once; with nothing expected (a cleanup), an answer is
    /// enough.
    #[test]
    fn dockerd_must_list_our_runtimes() {
        let tmp = crate::testing::TempDir::new("restart");
        let dir = tmp.path().to_path_buf();
        let config = dir.join("daemon.json");
        let expected = Expected {
            handlers: &["nvidia", "nvidia-cdi"],
            config: &config,
        };
        let said = std::cell::RefCell::new(Vec::new());
        let say = |line: &str| said.borrow_mut().push(line.to_string());

        let without = dir.join("without.sock");
        fake_dockerd(&without, r#"{"runc":{}}"#);
        let timeout = Duration::from_millis(700);
        let started = Instant::now();
        let error = restarter(&without, timeout)
            .wait_serving(Some(expected), Instant::now() + timeout, &say)
            .unwrap_err();
        assert!(started.elapsed() >= timeout);
        match &error {
            InstallerError::ReloadNotTaken(unserved) => {
                assert_eq!(unserved.missing, ["nvidia", "nvidia-cdi"]);
                assert_eq!(unserved.listed, ["runc"]);
                assert_eq!(unserved.engine, "dockerd 28.5.2");
            }
            other => panic!("{other}"),
        }
        assert!(error.to_string().contains("it has runc"), "{error}");
        restarter(&without, timeout)
            .wait_serving(None, Instant::now() + timeout, &say)
            .unwrap();

        let with = dir.join("with.sock");
        fake_dockerd(&with, r#"{"nvidia":{},"nvidia-cdi":{},"runc":{}}"#);
        let timeout = Duration::from_secs(30);
        restarter(&with, timeout)
            .wait_serving(Some(expected), Instant::now() + timeout, &say)
            .unwrap();
        assert_eq!(
            said.borrow().last().unwrap(),
            "dockerd 28.5.2 lists runtimes nvidia, nvidia-cdi"
        );

        // Nobody there: the last error is the cause.
        let error = restarter(&dir.join("none.sock"), Duration::from_millis(300))
            .wait_serving(
                Some(expected),
                Instant::now() + Duration::from_millis(300),
                &say,
            )
            .unwrap_err();
        assert!(
            matches!(error, InstallerError::NotServing { .. }),
            "{error}"
        );
    }

    #[test]
    fn peer_pid_is_the_listener() {
        let tmp = crate::testing::TempDir::new("peer");
        let dir = tmp.path().to_path_buf();
        let socket = dir.join("s.sock");
        let _ = std::fs::remove_file(&socket);
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        assert_eq!(peer_pid(&socket).unwrap(), std::process::id() as i32);
    }
}
