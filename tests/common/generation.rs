//! Which engines, cgroup mode and low-level runtime this test process runs
//! against, and how to start a program there.
//!
//! The test files are written once; `.ci/run` runs the ones that start
//! containers through runc again with these variables set:
//!
//! - `NCR_TEST_ENGINES`: `debian12` (the host's packages, the default) or
//!   `sid` (today's docker, containerd, podman, runc and crun, from the root
//!   `tests/newer-engines/rig.sh build` makes; every program a test starts
//!   runs chrooted there, the tests' paths bound at the same places).
//! - `NCR_TEST_CGROUP`: `v1` (the machine's own layout, the default) or `v2`
//!   (a private mount namespace with cgroup2 at /sys/fs/cgroup, testing.md).
//! - `NCR_TEST_LOW_LEVEL`: `runc` (the default) or `crun`: what our runtime
//!   execs (config.toml's `runtimes`) and what the tests run as plain runc.
//!
//! The engine tests (tests/engines.rs) instead take a [`Generation`] each,
//! one test per generation, so both run in every `cargo test`.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use super::*;

/// The rig: builds the sid root, enters it.
pub const RIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/newer-engines/rig.sh");

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engines {
    /// Debian 12's packages on the host: docker 20.10, containerd 1.6,
    /// podman 4.3, runc 1.1, crun 1.8.
    Debian12,
    /// Debian sid's in the rig's root: docker 28, containerd 2, podman 5,
    /// runc 1.3, crun 1.28.
    Sid,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgroupMode {
    V1,
    V2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LowLevel {
    Runc,
    Crun,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Generation {
    pub engines: Engines,
    pub cgroup: CgroupMode,
    pub low_level: LowLevel,
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let engines = match self.engines {
            Engines::Debian12 => "debian12",
            Engines::Sid => "sid",
        };
        let cgroup = match self.cgroup {
            CgroupMode::V1 => "cgroup v1",
            CgroupMode::V2 => "cgroup v2",
        };
        write!(f, "{engines} engines, {cgroup}, {}", self.low_level_name())
    }
}

/// This process's generation, from the environment (printed once, so a
/// failure's output says where it ran).
pub fn generation() -> Generation {
    static CURRENT: OnceLock<Generation> = OnceLock::new();
    *CURRENT.get_or_init(|| {
        let pick = |name: &str, default: &str| {
            std::env::var(name)
                .unwrap_or_else(|_| default.to_string())
                .to_ascii_lowercase()
        };
        let engines = match pick("NCR_TEST_ENGINES", "debian12").as_str() {
            "debian12" => Engines::Debian12,
            "sid" => Engines::Sid,
            other => panic!("NCR_TEST_ENGINES={other}: expected debian12 or sid"),
        };
        let cgroup = match pick("NCR_TEST_CGROUP", "v1").as_str() {
            "v1" => CgroupMode::V1,
            "v2" => CgroupMode::V2,
            other => panic!("NCR_TEST_CGROUP={other}: expected v1 or v2"),
        };
        let low_level = match pick("NCR_TEST_LOW_LEVEL", "runc").as_str() {
            "runc" => LowLevel::Runc,
            "crun" => LowLevel::Crun,
            other => panic!("NCR_TEST_LOW_LEVEL={other}: expected runc or crun"),
        };
        let generation = Generation {
            engines,
            cgroup,
            low_level,
        };
        if generation != Generation::DEBIAN12 {
            eprintln!("tests run against: {generation}");
            assert!(
                generation.engines == Engines::Debian12 || sid_root_ready(),
                "NCR_TEST_ENGINES=sid but the sid root {} is not built: run {RIG} build",
                sid_root().display()
            );
        }
        generation
    })
}

/// Where the rig keeps the sid root (NCR_SID_ROOT overrides, as for the rig).
pub fn sid_root() -> PathBuf {
    std::env::var_os("NCR_SID_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/ncr-test-engines/sid"))
}

/// True when the rig has finished building the sid root.
pub fn sid_root_ready() -> bool {
    sid_root().join(".ncr-rig-complete").is_file()
}

impl Generation {
    pub const DEBIAN12: Generation = Generation {
        engines: Engines::Debian12,
        cgroup: CgroupMode::V1,
        low_level: LowLevel::Runc,
    };
    pub const SID: Generation = Generation {
        engines: Engines::Sid,
        cgroup: CgroupMode::V1,
        low_level: LowLevel::Runc,
    };

    /// This generation in cgroup v2 mode.
    pub const fn on_cgroup_v2(self) -> Generation {
        Generation {
            cgroup: CgroupMode::V2,
            ..self
        }
    }

    /// A command that runs `program` in this generation: directly, or
    /// through the rig (the sid root and/or a cgroup2 namespace). `program`
    /// is a path valid on the host (the rig binds the tests' paths, and the
    /// sid root at its own path, inside), or a bare name looked up on the
    /// generation's PATH.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let cgroup_flag = match (self.cgroup, self.low_level) {
            (CgroupMode::V2, _) => Some("--cgroup2"),
            // crun refuses the hybrid v1 layout; without the unified mount
            // it runs with its device rules.
            (CgroupMode::V1, LowLevel::Crun) => Some("--cgroup1"),
            (CgroupMode::V1, LowLevel::Runc) => None,
        };
        match (self.engines, cgroup_flag) {
            (Engines::Debian12, None) => Command::new(program),
            (engines, flag) => {
                let mut command = Command::new(RIG);
                command.arg(match engines {
                    Engines::Debian12 => "host",
                    Engines::Sid => "enter",
                });
                command.args(flag).arg("--").arg(program);
                command
            }
        }
    }

    /// The low-level runtime's name (what our runtime looks up on PATH).
    pub fn low_level_name(&self) -> &'static str {
        match self.low_level {
            LowLevel::Runc => "runc",
            LowLevel::Crun => "crun",
        }
    }

    /// The low-level runtime as a path valid on the host and inside the
    /// generation: the host's, or the sid root's at its own path (the rig
    /// binds the root there). Where crun cannot apply device rules here (see
    /// [`Generation::enforces_device_rules`]) it gets a wrapper that disables
    /// its cgroup manager, so it runs containers without cgroups.
    pub fn low_level_path(&self) -> PathBuf {
        let name = self.low_level_name();
        let binary = match self.engines {
            Engines::Debian12 => find_in_path(name)
                .unwrap_or_else(|| panic!("{name} is not installed: apt-get install -y {name}")),
            Engines::Sid => {
                let root = sid_root();
                ["usr/sbin", "usr/bin", "sbin", "bin"]
                    .iter()
                    .map(|dir| root.join(dir).join(name))
                    .find(|path| path.is_file())
                    .unwrap_or_else(|| {
                        panic!(
                            "{name} is not in the sid root {}: rerun {RIG} build",
                            root.display()
                        )
                    })
            }
        };
        if !self.enforces_device_rules() {
            return crun_without_cgroups(&binary);
        }
        binary
    }

    /// False where the low-level runtime cannot apply device rules here:
    /// crun 1.8 in cgroup v2 mode fails `setrlimit (RLIM_MEMLOCK): Operation
    /// not permitted` before loading its BPF device filter (crun 1.28 loads
    /// it). Tests skip only the assertion that a node the container was not
    /// given is refused.
    pub fn enforces_device_rules(&self) -> bool {
        !(self.low_level == LowLevel::Crun
            && self.cgroup == CgroupMode::V2
            && self.engines == Engines::Debian12)
    }

    /// The config.toml line that makes our runtime exec this generation's
    /// low-level runtime; empty for runc (the default lookup finds it).
    pub fn runtimes_key(&self) -> String {
        match self.low_level {
            LowLevel::Runc => String::new(),
            LowLevel::Crun => format!("runtimes = [\"{}\"]\n", self.low_level_path().display()),
        }
    }
}

/// A wrapper script that runs `crun --cgroup-manager=disabled "$@"`, made
/// once per test process under the target tmpdir.
fn crun_without_cgroups(crun: &Path) -> PathBuf {
    let dir = cache_root().join(format!("crun-wrapper-{}", std::process::id()));
    let wrapper = dir.join("crun");
    if !wrapper.exists() {
        fs::create_dir_all(&dir).expect("create the crun wrapper dir");
        let partial = dir.join(format!("crun.{}", next_counter()));
        fs::write(
            &partial,
            format!(
                "#!/bin/sh\nexec '{}' --cgroup-manager=disabled \"$@\"\n",
                crun.display()
            ),
        )
        .expect("write the crun wrapper");
        fs::set_permissions(&partial, fs::Permissions::from_mode(0o755))
            .expect("chmod the crun wrapper");
        fs::rename(&partial, &wrapper).expect("publish the crun wrapper");
    }
    wrapper
}

impl Generation {
    /// The major version this generation's `engine` must have: Debian 12
    /// ships docker 20.10, containerd 1.6, podman 4.3; sid docker 28,
    /// containerd 2, podman 5 (the rig checks the same for sid's root).
    pub fn expected_major(&self, engine: &str) -> &'static str {
        match (self.engines, engine) {
            (Engines::Debian12, "dockerd" | "docker") => "20",
            (Engines::Debian12, "containerd" | "ctr") => "1",
            (Engines::Debian12, "podman") => "4",
            (Engines::Sid, "dockerd" | "docker") => "28",
            (Engines::Sid, "containerd" | "ctr") => "2",
            (Engines::Sid, "podman") => "5",
            (_, other) => panic!("no expected version for {other}"),
        }
    }

    /// Runs `<engine> --version` here, prints the version, and fails unless
    /// its major is [`Generation::expected_major`]'s (sid moves: a new major
    /// must be looked at, not tested by accident). Returns the version.
    pub fn check_version(&self, engine: &str) -> String {
        self.check_version_at(engine, Path::new(engine))
    }

    /// [`Generation::check_version`] of `engine` run as `program` (a path:
    /// the host's PATH may have another build first).
    pub fn check_version_at(&self, engine: &str, program: &Path) -> String {
        let mut command = self.command(program);
        command.arg("--version");
        let out = command_output(command);
        out.assert_success(&format!("{engine} --version ({self})"));
        let version = out
            .stdout
            .split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .find(|word| word.contains('.') && word.starts_with(|c: char| c.is_ascii_digit()))
            .unwrap_or_else(|| panic!("no version in `{engine} --version`: {}", out.stdout))
            .trim_end_matches('.')
            .to_string();
        let major = self.expected_major(engine);
        eprintln!("{self}: {engine} {version}");
        assert!(
            version.split('.').next() == Some(major),
            "{engine} {version} in the {self} generation: expected major {major}; \
             update tests/common/generation.rs and tests/newer-engines/rig.sh after checking what changed"
        );
        version
    }
}

/// Root, and for sid the rig's root: a loud skip otherwise (a failure in
/// CI, where `.ci/run` builds the root first).
pub fn require_generation(generation: Generation) -> bool {
    if !require_root() {
        return false;
    }
    if generation.engines == Engines::Sid && !sid_root_ready() {
        skip(&format!(
            "the sid root {} is not built: run {RIG} build",
            sid_root().display()
        ));
        return false;
    }
    true
}

/// One `#[test]` per generation for a test body `fn name(Generation)`: a
/// module `name` holding `debian12` and `sid` (and any other
/// `test = GENERATION` given), so each engine test is written once.
#[macro_export]
macro_rules! per_generation {
    ($body:ident) => {
        $crate::per_generation!($body: debian12 = Generation::DEBIAN12, sid = Generation::SID);
    };
    ($body:ident: $($test:ident = $generation:expr),+ $(,)?) => {
        mod $body {
            use super::*;
            $(
                #[test]
                fn $test() {
                    super::$body($generation);
                }
            )+
        }
    };
}
