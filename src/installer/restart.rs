//! Making the engine read its config again, and waiting until it answers.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::unistd::Pid;

use super::{InstallerError, Result};

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
    /// Restarts (or reloads) the engine and waits until its socket
    /// answers again. `None` mode does nothing and waits for nothing.
    pub fn restart(&self, say: &dyn Fn(&str)) -> Result<()> {
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
                self.wait_ready(self.exits_on_sighup.then_some(old))
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
                self.wait_ready(None)
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
    /// than `old` (when given). This proves the engine parsed its config
    /// and listens again; the CRI's answer is the tests' to check (the
    /// library has no gRPC client).
    pub fn wait_ready(&self, old: Option<i32>) -> Result<()> {
        let deadline = Instant::now() + self.timeout;
        loop {
            match peer_pid(&self.socket) {
                Ok(pid) if Some(pid) != old => return Ok(()),
                _ if Instant::now() >= deadline => {
                    return Err(InstallerError::NotReady {
                        socket: self.socket.clone(),
                        timeout: self.timeout,
                    })
                }
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
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

    #[test]
    fn peer_pid_is_the_listener() {
        let dir = std::env::temp_dir().join(format!("ncr-peer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("s.sock");
        let _ = std::fs::remove_file(&socket);
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        assert_eq!(peer_pid(&socket).unwrap(), std::process::id() as i32);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
