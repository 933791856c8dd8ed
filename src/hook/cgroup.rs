//! Device rules added out of band, for a container that plain runc (or
//! crun) created without them: cgroup v1's `devices.allow`, or cgroup v2's
//! device eBPF programs, each rewritten to also allow exactly the injected
//! nodes (`c major:minor rw`). Every change is undone by [`Applied::undo`]
//! when a later step of the injection fails.
//!
//! The container's cgroup is found as NVIDIA's nvcgo finds it: the cgroup
//! mount from the runtime's `/proc/<runtime>/mountinfo` (the runtime is the
//! hook's parent), the path from `/proc/<container>/cgroup`, with the
//! mount's root trimmed. Both are read while the hook is still in the
//! runtime's namespaces.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;

use crate::system::System;

use super::device_filter::{self, Insn, Rule};

const CGROUP_SUPER_MAGIC: i64 = 0x27e0eb;
const CGROUP2_SUPER_MAGIC: i64 = 0x63677270;

const BPF_PROG_LOAD: u32 = 5;
const BPF_PROG_ATTACH: u32 = 8;
const BPF_PROG_GET_FD_BY_ID: u32 = 13;
const BPF_OBJ_GET_INFO_BY_FD: u32 = 15;
const BPF_PROG_QUERY: u32 = 16;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;
const BPF_F_REPLACE: u32 = 4;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot find the container's {what} cgroup: {problem}")]
    NotFound { what: &'static str, problem: String },
    #[error("cannot open the container's cgroup {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("{path} is not a cgroup filesystem")]
    NotCgroup { path: PathBuf },
    #[error("cannot write {rule} to {path}: {source}")]
    Write {
        rule: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot {action} the container's device programs in {path}: {source}")]
    Bpf {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("the kernel refused the widened device program for {path} ({source}): {log}")]
    Load {
        path: PathBuf,
        #[source]
        source: nix::Error,
        log: String,
    },
}

/// Which cgroup hierarchy holds the container's device rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// The v1 `devices` controller's dir of the container.
    V1(PathBuf),
    /// The container's v2 cgroup dir.
    V2(PathBuf),
}

/// One mountinfo line's mount root, mount point, fs type and super options.
fn mountinfo_lines(text: &str) -> impl Iterator<Item = (&str, &str, &str, &str)> {
    text.lines().filter_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        let fields: Vec<&str> = before.split(' ').collect();
        let mut rest = after.split(' ');
        let fstype = rest.next()?;
        let _source = rest.next()?;
        let options = rest.next().unwrap_or("");
        Some((*fields.get(3)?, *fields.get(4)?, fstype, options))
    })
}

/// Finds the container `pid`'s device cgroup, as the runtime `runtime_pid`
/// sees the cgroup mounts.
pub fn locate(runtime_pid: i32, pid: i32) -> Result<Hierarchy, CgroupError> {
    let not_found = |what: &'static str, problem: String| CgroupError::NotFound { what, problem };
    let mountinfo = std::fs::read_to_string(format!("/proc/{runtime_pid}/mountinfo"))
        .map_err(|e| not_found("device", format!("/proc/{runtime_pid}/mountinfo: {e}")))?;
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map_err(|e| not_found("device", format!("/proc/{pid}/cgroup: {e}")))?;
    let join = |mount_point: &str, root: &str, path: &str| -> Result<PathBuf, CgroupError> {
        if root.starts_with("/..") {
            return Err(not_found(
                "device",
                format!("the cgroup mount's root {root} is outside the namespace"),
            ));
        }
        let relative = path
            .strip_prefix(root)
            .unwrap_or(path)
            .trim_start_matches('/');
        if relative.split('/').any(|part| part == "..") {
            return Err(not_found(
                "device",
                format!("the cgroup path {path} climbs out"),
            ));
        }
        Ok(Path::new(mount_point).join(relative))
    };
    // Which hierarchy the runtime uses, as runc decides it: cgroup2 at
    // /sys/fs/cgroup is the unified mode; anything else (v1, or hybrid with
    // cgroup2 at /sys/fs/cgroup/unified) keeps devices in v1. Mounts listed
    // after the last one at /sys/fs/cgroup are the visible ones.
    let lines: Vec<(&str, &str, &str, &str)> = mountinfo_lines(&mountinfo).collect();
    let top = lines
        .iter()
        .rposition(|(_, point, _, _)| *point == "/sys/fs/cgroup");
    let visible = &lines[top.unwrap_or(0)..];
    if let Some((root, point, "cgroup2", _)) = top.map(|index| lines[index]) {
        let path = cgroups
            .lines()
            .find_map(|line| line.strip_prefix("0::"))
            .ok_or_else(|| not_found("v2", format!("/proc/{pid}/cgroup has no 0:: line")))?;
        return join(point, root, path).map(Hierarchy::V2);
    }
    let path = cgroups
        .lines()
        .find_map(|line| {
            let mut parts = line.splitn(3, ':');
            let _id = parts.next()?;
            let controllers = parts.next()?;
            let path = parts.next()?;
            controllers
                .split(',')
                .any(|c| c == "devices")
                .then_some(path)
        })
        .ok_or_else(|| {
            not_found(
                "v1 devices",
                format!("/proc/{pid}/cgroup has no devices line"),
            )
        })?;
    let mount = visible.iter().rev().find(|(_, _, fstype, options)| {
        *fstype == "cgroup" && options.split(',').any(|o| o == "devices")
    });
    let Some((root, point, _, _)) = mount else {
        return Err(not_found(
            "v1 devices",
            "the runtime has no devices cgroup mount".to_string(),
        ));
    };
    join(point, root, path).map(Hierarchy::V1)
}

fn open_cgroup(path: &Path, magic: i64) -> Result<OwnedFd, CgroupError> {
    let fd = nix::fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|source| CgroupError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    // SAFETY: open just returned this fd and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let statfs = nix::sys::statfs::fstatfs(fd.as_fd()).map_err(|source| CgroupError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    if statfs.filesystem_type().0 as i64 != magic {
        return Err(CgroupError::NotCgroup {
            path: path.to_path_buf(),
        });
    }
    Ok(fd)
}

/// What was changed, to undo it.
pub enum Applied {
    /// Nothing to widen (v2 with no device program attached).
    Nothing,
    V1 {
        dir: OwnedFd,
        path: PathBuf,
        rules: Vec<String>,
    },
    V2 {
        cgroup: OwnedFd,
        /// (the program now attached, the one it replaced)
        replaced: Vec<(OwnedFd, OwnedFd)>,
    },
}

impl Applied {
    /// Puts the cgroup back as it was; errors are only logged (this runs
    /// on a failure path, whose own error is the one reported).
    pub fn undo(self, system: &dyn System) {
        match self {
            Applied::Nothing => {}
            Applied::V1 { dir, path, rules } => {
                for rule in rules {
                    if let Err(error) =
                        system.write_control_file(dir.as_fd(), "devices.deny", rule.as_bytes())
                    {
                        tracing::warn!("cannot undo {rule} in {}: {error}", path.display());
                    }
                }
            }
            Applied::V2 { cgroup, replaced } => undo_v2(system, cgroup.as_fd(), replaced),
        }
    }
}

fn undo_v2(system: &dyn System, cgroup: BorrowedFd<'_>, replaced: Vec<(OwnedFd, OwnedFd)>) {
    for (new, old) in replaced {
        if let Err(error) = attach(system, cgroup, old.as_fd(), Some(new.as_fd())) {
            tracing::warn!("cannot put a device program back: {error}");
        }
    }
}

/// Allows `nodes` (`(major, minor)`) in the container's device cgroup.
/// `spec_rules` (config.json's `linux.resources.devices`) rebuild a v2
/// program that cannot be read back.
pub fn allow(
    system: &dyn System,
    hierarchy: &Hierarchy,
    nodes: &[(u64, u64)],
    spec_rules: &[Rule],
) -> Result<Applied, CgroupError> {
    match hierarchy {
        Hierarchy::V1(path) => {
            let dir = open_cgroup(path, CGROUP_SUPER_MAGIC)?;
            let mut written = Vec::new();
            for (major, minor) in nodes {
                let rule = format!("c {major}:{minor} rw");
                if let Err(source) =
                    system.write_control_file(dir.as_fd(), "devices.allow", rule.as_bytes())
                {
                    Applied::V1 {
                        dir,
                        path: path.clone(),
                        rules: written,
                    }
                    .undo(system);
                    return Err(CgroupError::Write {
                        rule,
                        path: path.join("devices.allow"),
                        source,
                    });
                }
                written.push(rule);
            }
            Ok(Applied::V1 {
                dir,
                path: path.clone(),
                rules: written,
            })
        }
        Hierarchy::V2(path) => allow_v2(system, path, nodes, spec_rules),
    }
}

fn bpf_error<'p>(path: &'p Path, action: &'static str) -> impl Fn(nix::Error) -> CgroupError + 'p {
    move |source| CgroupError::Bpf {
        action,
        path: path.to_path_buf(),
        source,
    }
}

fn put_u32(attr: &mut [u8], offset: usize, value: u32) {
    attr[offset..offset + 4].copy_from_slice(&value.to_ne_bytes());
}

fn put_u64(attr: &mut [u8], offset: usize, value: u64) {
    attr[offset..offset + 8].copy_from_slice(&value.to_ne_bytes());
}

fn get_u32(attr: &[u8], offset: usize) -> u32 {
    u32::from_ne_bytes([
        attr[offset],
        attr[offset + 1],
        attr[offset + 2],
        attr[offset + 3],
    ])
}

/// The ids of the device programs attached to `cgroup` itself.
fn attached(system: &dyn System, cgroup: BorrowedFd<'_>) -> nix::Result<Vec<u32>> {
    let mut capacity = 64usize;
    loop {
        let mut ids = vec![0u32; capacity];
        let mut attr = [0u8; 40];
        put_u32(&mut attr, 0, cgroup.as_raw_fd() as u32);
        put_u32(&mut attr, 4, BPF_CGROUP_DEVICE);
        put_u64(&mut attr, 16, ids.as_mut_ptr() as u64);
        put_u32(&mut attr, 24, capacity as u32);
        match system.bpf(BPF_PROG_QUERY, &mut attr) {
            Ok(_) => {
                let count = get_u32(&attr, 24) as usize;
                ids.truncate(count.min(capacity));
                return Ok(ids);
            }
            Err(nix::errno::Errno::ENOSPC) if capacity < 4096 => capacity *= 4,
            Err(errno) => return Err(errno),
        }
    }
}

fn program_fd(system: &dyn System, id: u32) -> nix::Result<OwnedFd> {
    let mut attr = [0u8; 16];
    put_u32(&mut attr, 0, id);
    let fd = system.bpf(BPF_PROG_GET_FD_BY_ID, &mut attr)?;
    // SAFETY: the kernel just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A program's instructions as the kernel holds them (`xlated`); `None`
/// when the kernel shows none (kptr_restrict, or no privilege).
fn program_insns(system: &dyn System, program: BorrowedFd<'_>) -> nix::Result<Option<Vec<Insn>>> {
    let mut info = [0u8; 256];
    let mut attr = [0u8; 16];
    put_u32(&mut attr, 0, program.as_raw_fd() as u32);
    put_u32(&mut attr, 4, info.len() as u32);
    put_u64(&mut attr, 8, info.as_mut_ptr() as u64);
    system.bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let length = get_u32(&info, 20) as usize; // xlated_prog_len
    if length == 0 || length % 8 != 0 {
        return Ok(None);
    }
    let mut insns = vec![0u8; length];
    let mut info = [0u8; 256];
    put_u32(&mut info, 20, length as u32);
    put_u64(&mut info, 32, insns.as_mut_ptr() as u64); // xlated_prog_insns
    let mut attr = [0u8; 16];
    put_u32(&mut attr, 0, program.as_raw_fd() as u32);
    put_u32(&mut attr, 4, info.len() as u32);
    put_u64(&mut attr, 8, info.as_mut_ptr() as u64);
    system.bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let insns = device_filter::from_bytes(&insns);
    // A dump with kernel addresses hidden is all zeros.
    Ok((!insns.iter().all(|i| *i == Insn::from_bytes(&[0; 8]))).then_some(insns))
}

fn load(system: &dyn System, program: &[Insn], path: &Path) -> Result<OwnedFd, CgroupError> {
    let bytes = device_filter::to_bytes(program);
    let license = c"Apache";
    // Without a verifier log first: a log that does not fit its buffer
    // fails the load with ENOSPC even when the program is fine. Only a
    // refused program is loaded again, with a log, for the message.
    let attempt = |log: &mut [u8]| {
        let mut attr = [0u8; 128];
        put_u32(&mut attr, 0, BPF_PROG_TYPE_CGROUP_DEVICE);
        put_u32(&mut attr, 4, program.len() as u32);
        put_u64(&mut attr, 8, bytes.as_ptr() as u64);
        put_u64(&mut attr, 16, license.as_ptr() as u64);
        if !log.is_empty() {
            put_u32(&mut attr, 24, 1); // log_level
            put_u32(&mut attr, 28, log.len() as u32);
            put_u64(&mut attr, 32, log.as_mut_ptr() as u64);
        }
        system.bpf(BPF_PROG_LOAD, &mut attr)
    };
    match attempt(&mut []) {
        // SAFETY: the kernel just returned this fd and nothing else owns it.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) }),
        Err(source) => {
            let mut log = vec![0u8; 1 << 20];
            let _ = attempt(&mut log);
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            // The verifier's last lines say why.
            let tail: Vec<&str> = text.lines().rev().take(3).collect();
            Err(CgroupError::Load {
                path: path.to_path_buf(),
                source,
                log: tail.into_iter().rev().collect::<Vec<_>>().join("; "),
            })
        }
    }
}

/// Attaches `new`, replacing `old` atomically (`BPF_F_REPLACE`).
fn attach(
    system: &dyn System,
    cgroup: BorrowedFd<'_>,
    new: BorrowedFd<'_>,
    old: Option<BorrowedFd<'_>>,
) -> nix::Result<()> {
    let mut attr = [0u8; 24];
    put_u32(&mut attr, 0, cgroup.as_raw_fd() as u32);
    put_u32(&mut attr, 4, new.as_raw_fd() as u32);
    put_u32(&mut attr, 8, BPF_CGROUP_DEVICE);
    let mut flags = BPF_F_ALLOW_MULTI;
    if let Some(old) = old {
        flags |= BPF_F_REPLACE;
        put_u32(&mut attr, 16, old.as_raw_fd() as u32);
    }
    put_u32(&mut attr, 12, flags);
    system.bpf(BPF_PROG_ATTACH, &mut attr).map(|_| ())
}

fn allow_v2(
    system: &dyn System,
    path: &Path,
    nodes: &[(u64, u64)],
    spec_rules: &[Rule],
) -> Result<Applied, CgroupError> {
    let cgroup = open_cgroup(path, CGROUP2_SUPER_MAGIC)?;
    let ours: Vec<Rule> = nodes
        .iter()
        .map(|(major, minor)| Rule::allow_char(*major as u32, *minor as u32))
        .collect();
    // BPF memory counted against memlock on kernels before 5.11.
    let unlimited = nix::libc::rlimit {
        rlim_cur: nix::libc::RLIM_INFINITY,
        rlim_max: nix::libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct it is given; failure is harmless
    // (newer kernels do not count BPF memory against memlock).
    let _ = unsafe { nix::libc::setrlimit(nix::libc::RLIMIT_MEMLOCK, &unlimited) };
    let ids = attached(system, cgroup.as_fd()).map_err(bpf_error(path, "list"))?;
    if ids.is_empty() {
        // No program: every device access is allowed already.
        return Ok(Applied::Nothing);
    }
    let mut replaced: Vec<(OwnedFd, OwnedFd)> = Vec::new();
    for id in ids {
        let step = (|| {
            let old = program_fd(system, id).map_err(bpf_error(path, "open"))?;
            let program =
                match program_insns(system, old.as_fd()).map_err(bpf_error(path, "read back"))? {
                    Some(insns) => device_filter::widen(&insns, &ours),
                    None => {
                        tracing::info!(
                            "{}: device program {id} cannot be read back; rebuilt from config.json",
                            path.display()
                        );
                        device_filter::from_rules(spec_rules, &ours)
                    }
                };
            let new = load(system, &program, path)?;
            attach(system, cgroup.as_fd(), new.as_fd(), Some(old.as_fd()))
                .map_err(bpf_error(path, "replace"))?;
            Ok((new, old))
        })();
        match step {
            Ok(pair) => replaced.push(pair),
            Err(error) => {
                undo_v2(system, cgroup.as_fd(), replaced);
                return Err(error);
            }
        }
    }
    Ok(Applied::V2 { cgroup, replaced })
}

/// The rules of `linux.resources.devices` in config.json.
pub fn spec_rules(spec: &serde_json::Value) -> Vec<Rule> {
    spec.pointer("/linux/resources/devices")
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Rule::from_oci)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_and_cgroup_files_give_the_container_cgroup() {
        let line = "35 25 0:30 / /sys/fs/cgroup/devices rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,devices";
        let parsed: Vec<_> = mountinfo_lines(line).collect();
        assert_eq!(
            parsed,
            [("/", "/sys/fs/cgroup/devices", "cgroup", "rw,devices")]
        );
        let v2 = "40 25 0:35 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw";
        assert_eq!(mountinfo_lines(v2).next().unwrap().2, "cgroup2");
    }
}
