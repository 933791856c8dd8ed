//! The GPU prestart hook: what `nvidia-container-runtime-hook prestart` does
//! inside a container that the runtime patched.
//!
//! This module owns the hook's side of the contract with [`crate::edits`]
//! (its argv, see [`crate::edits::prestart_hook`]), its hardening (loader
//! variables scrubbed by a re-exec, `chdir("/")`, a deadline below runc's
//! hook timeout), and the two things only a hook can do because they need
//! the container's mount namespace: writing the container's
//! `/etc/ld.so.cache` (in Rust, nothing from the image is executed) and
//! masking `/proc/driver/nvidia` to the selected GPUs with
//! `ModifyDeviceFiles: 0` (CVE-2021-1056).
//!
//! The hook runs as root on the host while the image is attacker-controlled
//! (security.md): every path inside the rootfs is opened with
//! `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` from a rootfs dir fd,
//! files are replaced with temp file + `renameat`, and inputs come only from
//! argv, the OCI state on stdin and the bundle's `config.json`, never from the
//! environment.

use std::collections::BTreeSet;
use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, renameat, OFlag, OpenHow, ResolveFlag};
use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use nix::sys::stat::Mode;
use nix::unistd::UnlinkatFlags;
use serde_json::Value;

use crate::config::{Config, ConfigError};
use crate::edits::HOOK_INJECTED_FLAG;
use crate::ldcache::{CacheEntry, LdCache, FLAGS_X86_64_LIBC6};
use crate::request::{environment, parse_devices, VISIBLE_DEVICES};
use crate::spec::{BundleSpec, SpecError};

/// Loader variables that must never reach the hook's code: the loader of a
/// dynamically linked hook would map image-controlled code into a root
/// process on the host (CVE-2025-23266).
pub const LOADER_VARIABLES: &[&str] = &["LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT"];

/// The hook gives up after this many seconds: below runc's
/// [`crate::edits::HOOK_TIMEOUT_SECONDS`], so that the user reads our message
/// rather than runc's bare "signal: killed".
pub const DEADLINE_SECONDS: u32 = 25;

/// The state on stdin is a small JSON object; anything larger is not runc's.
const MAX_STATE_BYTES: u64 = 1 << 20;

/// An image's ld.so.cache is a few hundred KiB; a larger file is not read
/// (a root process on the host must not be made to allocate without bound).
pub const MAX_LD_CACHE_BYTES: u64 = 64 << 20;

/// Where the driver's procfs is, relative to a proc root or to a rootfs.
const PROC_DRIVER_NVIDIA: &str = "driver/nvidia";

/// Mode of the files of the masked `/proc/driver/nvidia` (as in the driver's
/// procfs) and of its directories.
const MASKED_FILE_MODE: u32 = 0o444;
const MASKED_DIR_MODE: u32 = 0o555;

/// The line of `params` that lets a process with the control device create
/// device nodes for every GPU (CVE-2021-1056).
const MODIFY_DEVICE_FILES: &str = "ModifyDeviceFiles:";

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("invalid hook arguments: {problem}: the hook entry in config.json is not one this runtime writes; recreate the container with nvidia-container-runtime")]
    Args { problem: String },
    #[error("cannot re-execute /proc/self/exe without {variables}: {source}")]
    Reexec {
        variables: String,
        #[source]
        source: Errno,
    },
    #[error("cannot {action}: {source}")]
    Setup {
        action: &'static str,
        #[source]
        source: Errno,
    },
    #[error("cannot read the container state on stdin: {source}: run this only as an OCI prestart hook (runc passes the state)")]
    ReadState {
        #[source]
        source: io::Error,
    },
    #[error("the container state on stdin is not valid: {problem}: run this only as an OCI prestart hook (runc passes the state)")]
    BadState { problem: String },
    #[error("cannot read the config file {path} named by --config: {source}: restore it, or recreate the container so that the runtime writes a hook entry for the current config")]
    ReadConfig {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("the container requested GPUs through docker's --gpus but was not started with the nvidia runtime: run it with `--runtime=nvidia`, or make nvidia the default runtime (`nvidia-ctk runtime configure --runtime=docker --set-as-default`, then restart docker)")]
    NotOurRuntime,
    #[error("cannot enter the mount namespace of container process {pid} ({path}): {source}: did the container exit before its prestart hook ran?")]
    Namespace {
        pid: i32,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot open the container's rootfs {path}: {source}: check root.path in the bundle's config.json")]
    Rootfs {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot {action} {path} in the container's rootfs {rootfs}: {source}")]
    LdCache {
        action: &'static str,
        path: &'static str,
        rootfs: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the driver's procfs {path}: {source}: is the NVIDIA driver loaded, and is proc-root in config.toml right?")]
    ProcSource {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot mask /proc/driver/nvidia in the container ({action}): {source}")]
    Mask {
        action: String,
        #[source]
        source: io::Error,
    },
}

/// The hook's stage (its first positional argument).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stage {
    Prestart,
    /// `poststart`, `poststop` or anything else: nothing to do.
    Other(String),
}

/// The hook's argv, as [`crate::edits::prestart_hook`] writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookArgs {
    pub stage: Stage,
    /// [`HOOK_INJECTED_FLAG`]: the entry was written by our runtime, not by
    /// docker's `--gpus`.
    pub injected: bool,
    pub config: Option<PathBuf>,
    /// `(soname, absolute container path)` of each injected library.
    pub libraries: Vec<(String, PathBuf)>,
    /// procfs directory names of the selected GPUs (`0000:06:00.0`).
    pub gpus: Vec<String>,
    /// Further files of `/proc/driver/nvidia` the container keeps seeing
    /// through the mask, relative to it (`capabilities/gpu1/mig/gi2/access`).
    pub proc_files: Vec<PathBuf>,
}

impl HookArgs {
    /// Parses argv (with `argv[0]`). Problems are only errors for `prestart`:
    /// every other stage exits 0 whatever else its entry says, so that an
    /// engine's poststop never fails on us.
    pub fn parse(args: &[OsString]) -> Result<HookArgs, HookError> {
        let mut parsed = HookArgs {
            stage: Stage::Other(String::new()),
            injected: false,
            config: None,
            libraries: Vec::new(),
            gpus: Vec::new(),
            proc_files: Vec::new(),
        };
        let mut stage: Option<String> = None;
        let mut problem: Option<String> = None;
        let mut note = |text: String| {
            problem.get_or_insert(text);
        };
        let mut rest = args.iter().skip(1);
        while let Some(arg) = rest.next() {
            let Some(text) = arg.to_str() else {
                note(format!("argument {arg:?} is not UTF-8"));
                continue;
            };
            if text == HOOK_INJECTED_FLAG {
                parsed.injected = true;
                continue;
            }
            let (flag, inline) = match text.split_once('=') {
                Some((flag, value)) if flag.starts_with("--") => (flag, Some(value.to_string())),
                _ => (text, None),
            };
            if !flag.starts_with('-') {
                if stage.is_none() {
                    stage = Some(text.to_string());
                } else {
                    note(format!("unexpected argument \"{text}\""));
                }
                continue;
            }
            if !matches!(flag, "--config" | "--library" | "--gpu" | "--proc-file") {
                note(format!("unknown option \"{flag}\""));
                continue;
            }
            let value =
                match inline.or_else(|| rest.next().and_then(|v| v.to_str()).map(str::to_string)) {
                    Some(value) => value,
                    None => {
                        note(format!("{flag} needs a value"));
                        continue;
                    }
                };
            match flag {
                "--config" => parsed.config = Some(PathBuf::from(value)),
                "--library" => match parse_library(&value) {
                    Ok(library) => parsed.libraries.push(library),
                    Err(text) => note(text),
                },
                "--proc-file" => match is_relative_below(&value) {
                    true => parsed.proc_files.push(PathBuf::from(value)),
                    false => note(format!(
                        "--proc-file \"{value}\" is not a path below /proc/driver/nvidia like capabilities/mig/config"
                    )),
                },
                _ => match is_single_component(&value) {
                    true => parsed.gpus.push(value),
                    false => note(format!(
                        "--gpu \"{value}\" is not a procfs directory name like 0000:06:00.0"
                    )),
                },
            }
        }
        parsed.stage = match stage.as_deref() {
            Some("prestart") => Stage::Prestart,
            Some(other) => Stage::Other(other.to_string()),
            None => Stage::Other(String::new()),
        };
        match problem {
            Some(problem) if parsed.stage == Stage::Prestart => Err(HookError::Args { problem }),
            _ => Ok(parsed),
        }
    }
}

/// `soname=/abs/path` -> `(soname, path)`.
fn parse_library(value: &str) -> Result<(String, PathBuf), String> {
    let bad = || format!("--library \"{value}\" is not <soname>=<absolute path in the container>");
    let (soname, path) = value.split_once('=').ok_or_else(bad)?;
    if !is_single_component(soname) || !path.starts_with('/') {
        return Err(bad());
    }
    Ok((soname.to_string(), PathBuf::from(path)))
}

/// A plain file name: not empty, no `/`, not `.` or `..`.
fn is_single_component(name: &str) -> bool {
    let mut components = Path::new(name).components();
    matches!(components.next(), Some(Component::Normal(_)))
        && components.next().is_none()
        && !name.contains('/')
}

/// A relative path of plain names only: nothing absolute, no `.` or `..`.
fn is_relative_below(path: &str) -> bool {
    !path.is_empty() && !path.starts_with('/') && path.split('/').all(is_single_component)
}

/// The fields of the OCI state that the hook uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub id: String,
    /// The container's init process, in the runtime's pid namespace.
    pub pid: i32,
    /// Absolute path of the bundle.
    pub bundle: PathBuf,
}

impl State {
    /// Reads the state JSON that runc writes to a hook's stdin.
    pub fn read(input: &mut dyn Read) -> Result<State, HookError> {
        let mut bytes = Vec::new();
        input
            .take(MAX_STATE_BYTES)
            .read_to_end(&mut bytes)
            .map_err(|source| HookError::ReadState { source })?;
        Self::parse(&bytes)
    }

    pub fn parse(bytes: &[u8]) -> Result<State, HookError> {
        let bad = |problem: String| HookError::BadState { problem };
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| bad(format!("{e} (read {} bytes)", bytes.len())))?;
        let pid = value
            .get("pid")
            .and_then(Value::as_i64)
            .and_then(|pid| i32::try_from(pid).ok())
            .filter(|pid| *pid > 0)
            .ok_or_else(|| bad("it has no positive \"pid\"".to_string()))?;
        let bundle = value
            .get("bundle")
            .and_then(Value::as_str)
            .filter(|b| b.starts_with('/'))
            .ok_or_else(|| bad("it has no absolute \"bundle\" path".to_string()))?;
        let id = value.get("id").and_then(Value::as_str).unwrap_or_default();
        Ok(State {
            id: id.to_string(),
            pid,
            bundle: PathBuf::from(bundle),
        })
    }
}

// ---------------------------------------------------------------------------
// Hardening
// ---------------------------------------------------------------------------

/// If any of [`LOADER_VARIABLES`] is set, re-executes `/proc/self/exe` with
/// the same argv and the environment without them; returns only when none
/// is set (or with the exec's error).
///
/// This cannot undo what the loader did before `main` in this very process
/// (a dynamically linked hook has already run a preloaded library's
/// constructors); what it guarantees is that the process that does the work
/// has nothing preloaded. The real defence is the explicit `env` of every
/// hook entry (`edits::HOOK_ENV`).
pub fn scrub_loader_environment(args: &[OsString]) -> Result<(), HookError> {
    let present: Vec<&str> = LOADER_VARIABLES
        .iter()
        .copied()
        .filter(|name| std::env::var_os(name).is_some())
        .collect();
    if present.is_empty() {
        return Ok(());
    }
    let fail = |source| HookError::Reexec {
        variables: present.join(", "),
        source,
    };
    let to_cstring = |bytes: &[u8]| CString::new(bytes).map_err(|_| fail(Errno::EINVAL));
    let argv = args
        .iter()
        .map(|arg| to_cstring(arg.as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut env = Vec::new();
    for (key, value) in std::env::vars_os() {
        if LOADER_VARIABLES.iter().any(|name| OsStr::new(name) == key) {
            continue;
        }
        let mut entry = key.into_vec();
        entry.push(b'=');
        entry.extend_from_slice(value.as_bytes());
        env.push(to_cstring(&entry)?);
    }
    // The working directory survives execve: change it first, so that the
    // re-executed process is never seen with a scrubbed environment but the
    // bundle dir runc started us in (harden_process changes it again, for
    // the no-re-exec path).
    nix::unistd::chdir("/").map_err(|source| HookError::Setup {
        action: "change directory to /",
        source,
    })?;
    match nix::unistd::execve(c"/proc/self/exe", &argv, &env) {
        Ok(never) => match never {},
        Err(errno) => Err(fail(errno)),
    }
}

// The handler's message states the deadline; it cannot format it at run
// time (no allocation in a signal handler).
const _: () = assert!(DEADLINE_SECONDS == 25);

extern "C" fn on_deadline(_signal: nix::libc::c_int) {
    const MESSAGE: &[u8] = b"nvidia-container-runtime-hook: gave up after 25 seconds (runc kills hooks at 30): a file in the container's rootfs or the driver's procfs did not answer; check for a hung filesystem (NFS, FUSE) under the bundle or proc-root\n";
    // SAFETY: write(2) and _exit(2) are async-signal-safe, and MESSAGE is a
    // static buffer valid for its whole length. _exit skips atexit handlers
    // and stdio buffers, which a signal handler must not touch.
    unsafe {
        nix::libc::write(2, MESSAGE.as_ptr().cast(), MESSAGE.len());
        nix::libc::_exit(1);
    }
}

/// `chdir("/")` (runc starts hooks in the bundle dir, and a relative path
/// must never mean something inside it) and a deadline: SIGALRM after
/// [`DEADLINE_SECONDS`] prints one line and exits 1.
pub fn harden_process() -> Result<(), HookError> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    nix::unistd::chdir("/").map_err(|source| HookError::Setup {
        action: "change directory to /",
        source,
    })?;
    let action = SigAction::new(
        SigHandler::Handler(on_deadline),
        SaFlags::empty(),
        SigSet::empty(),
    );
    // SAFETY: the handler only calls async-signal-safe functions (write,
    // _exit) and touches no Rust state.
    unsafe { sigaction(Signal::SIGALRM, &action) }.map_err(|source| HookError::Setup {
        action: "install the SIGALRM handler",
        source,
    })?;
    nix::unistd::alarm::set(DEADLINE_SECONDS);
    Ok(())
}

// ---------------------------------------------------------------------------
// The prestart stage
// ---------------------------------------------------------------------------

/// The config named by `--config`, or the defaults. Never looked up through
/// the environment: the hook's environment is not an input.
pub fn load_config(path: Option<&Path>) -> Result<Config, HookError> {
    let Some(path) = path else {
        return Ok(Config::default());
    };
    let text = std::fs::read_to_string(path).map_err(|source| HookError::ReadConfig {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(Config::parse(&text, path)?)
}

/// Whether a spec asks for GPUs through `NVIDIA_VISIBLE_DEVICES` (the last
/// entry wins, as the container sees it). `void` or empty is no request; a
/// value we cannot parse still is one, so docker users get our message.
pub fn requests_gpus(spec: &Value) -> bool {
    let Ok(env) = environment(spec) else {
        return false;
    };
    match env.get(VISIBLE_DEVICES) {
        None => false,
        Some(value) => !matches!(parse_devices(value, VISIBLE_DEVICES), Ok(None)),
    }
}

/// What a prestart run did, for the debug log and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Not a GPU container (docker's entry on a container without a request).
    pub skipped: bool,
    /// Entries written to the container's `/etc/ld.so.cache` (0 when none).
    pub ld_cache_entries: usize,
    /// Why the image's cache was not kept, when it was not.
    pub ld_cache_note: Option<String>,
    /// `/proc/driver/nvidia` was masked.
    pub masked_proc: bool,
}

/// The prestart stage, from the state on stdin on.
pub fn prestart(args: &HookArgs, state: &State, config: &Config) -> Result<Report, HookError> {
    let spec = BundleSpec::read(&state.bundle)?;
    if !args.injected {
        // docker's own `--gpus` entry on a container that plain runc runs:
        // nothing was injected, so the container would start without GPUs.
        if requests_gpus(&spec.value) {
            return Err(HookError::NotOurRuntime);
        }
        return Ok(Report {
            skipped: true,
            ..Report::default()
        });
    }
    let rootfs = spec.rootfs();

    // The driver's procfs is a host path: read it before leaving the host's
    // mount namespace. Its error only matters if there is something to mask.
    let proc_source = config.proc_root().join(PROC_DRIVER_NVIDIA);
    // A CDI spec's hook entry is shared by every device and so names no
    // GPU: then the GPUs are the ones whose nodes the spec gives.
    let gpus = if args.gpus.is_empty() {
        gpu_dirs_from_devices(&spec.value, &proc_source)
    } else {
        args.gpus.clone()
    };
    let masked_tree = read_masked_tree(&proc_source, &gpus, &args.proc_files);

    enter_mount_namespace(state.pid)?;
    let root = open_rootfs(&rootfs)?;

    let mut report = Report::default();
    if !args.libraries.is_empty() {
        let (entries, note) = update_ld_cache(root.as_fd(), &rootfs, &args.libraries)?;
        report.ld_cache_entries = entries;
        report.ld_cache_note = note;
    }
    report.masked_proc = mask_proc_driver(root.as_fd(), &masked_tree)?;
    Ok(report)
}

/// `setns` into the mount namespace of the container's init: the runtime's
/// bind mounts and the container's `/proc` exist only there until
/// `pivot_root`. Needs a single-threaded process.
pub fn enter_mount_namespace(pid: i32) -> Result<(), HookError> {
    let path = PathBuf::from(format!("/proc/{pid}/ns/mnt"));
    let fail = |source| HookError::Namespace {
        pid,
        path: path.clone(),
        source,
    };
    let file = File::open(&path).map_err(fail)?;
    nix::sched::setns(file.as_fd(), CloneFlags::CLONE_NEWNS).map_err(|e| fail(e.into()))?;
    Ok(())
}

fn open_rootfs(rootfs: &Path) -> Result<OwnedFd, HookError> {
    let fail = |source| HookError::Rootfs {
        path: rootfs.to_path_buf(),
        source,
    };
    let fd = nix::fcntl::open(
        rootfs,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| fail(e.into()))?;
    // SAFETY: open just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens `path` (relative) with `root` as `/`: absolute symlinks and `..`
/// never leave `root`, and `/proc/self/...` magic links are refused
/// (security.md rule 2).
pub fn open_in_root(root: BorrowedFd<'_>, path: &str, flags: OFlag) -> nix::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    // openat2 answers EAGAIN with RESOLVE_IN_ROOT when a rename elsewhere
    // raced the lookup; the kernel asks callers to retry.
    let mut attempts = 0;
    loop {
        match openat2(root.as_raw_fd(), path, how) {
            Ok(fd) => {
                // SAFETY: openat2 just returned this fd and nothing else owns it.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
            }
            Err(Errno::EAGAIN) if attempts < 16 => attempts += 1,
            Err(errno) => return Err(errno),
        }
    }
}

fn is_absent(errno: Errno) -> bool {
    matches!(errno, Errno::ENOENT | Errno::ENOTDIR)
}

// ---------------------------------------------------------------------------
// ld.so.cache
// ---------------------------------------------------------------------------

/// Adds one entry per library to the container's `/etc/ld.so.cache`,
/// keeping the image's own entries. Returns the number of entries written
/// and, when the image's cache could not be used, why.
///
/// `/etc` is resolved inside `root`; an image without one gets no cache
/// (musl and scratch images have no use for it). The image's cache is read
/// only if it is a regular file of at most [`MAX_LD_CACHE_BYTES`], opened
/// without following a symlink and without blocking on a FIFO. The new
/// cache is a temp file in `/etc` renamed over `ld.so.cache`, mode 0644; a
/// symlink at `ld.so.cache` is replaced, never written through.
pub fn update_ld_cache(
    root: BorrowedFd<'_>,
    rootfs: &Path,
    libraries: &[(String, PathBuf)],
) -> Result<(usize, Option<String>), HookError> {
    let fail = |action, path, source: io::Error| HookError::LdCache {
        action,
        path,
        rootfs: rootfs.to_path_buf(),
        source,
    };
    let etc = match open_in_root(root, "etc", OFlag::O_RDONLY | OFlag::O_DIRECTORY) {
        Ok(fd) => fd,
        Err(errno) if is_absent(errno) || errno == Errno::ELOOP => {
            tracing::info!("{}: no /etc; no ld.so.cache written", rootfs.display());
            return Ok((0, Some("the image has no /etc".to_string())));
        }
        Err(errno) => return Err(fail("open", "/etc", errno.into())),
    };

    let (mut cache, note) = match read_image_cache(etc.as_fd()) {
        Ok(cache) => (cache, None),
        Err(note) => {
            tracing::warn!(
                "{}: /etc/ld.so.cache: {note}; writing a cache of the injected libraries only",
                rootfs.display()
            );
            (LdCache::default(), Some(note))
        }
    };
    for (soname, path) in libraries {
        cache.add_or_replace(CacheEntry {
            flags: FLAGS_X86_64_LIBC6,
            key: soname.clone(),
            value: path.to_string_lossy().into_owned(),
            os_version: 0,
            hwcap: 0,
        });
    }
    let bytes = cache.to_bytes();
    match replace_file(etc.as_fd(), "ld.so.cache", &bytes, 0o644) {
        Ok(()) => {}
        Err(error) if error.raw_os_error() == Some(Errno::EROFS as i32) => {
            // A read-only image (not `root.readonly`, which runc applies
            // after the hooks): the libraries still resolve by their
            // SONAME links in the default library dirs.
            tracing::warn!(
                "{}: /etc is read-only; no ld.so.cache written",
                rootfs.display()
            );
            return Ok((0, Some("/etc is read-only".to_string())));
        }
        Err(error) => return Err(fail("write", "/etc/ld.so.cache", error)),
    }
    tracing::info!(
        "{}: wrote /etc/ld.so.cache with {} entries ({} injected)",
        rootfs.display(),
        cache.entries.len(),
        libraries.len()
    );
    Ok((cache.entries.len(), note))
}

/// The image's cache, or why it cannot be used (then the caller starts from
/// an empty one: a broken cache must not stop the container).
fn read_image_cache(etc: BorrowedFd<'_>) -> Result<LdCache, String> {
    let flags = OFlag::O_RDONLY
        | OFlag::O_NOFOLLOW
        | OFlag::O_NONBLOCK
        | OFlag::O_NOCTTY
        | OFlag::O_CLOEXEC;
    let fd = match openat(Some(etc.as_raw_fd()), "ld.so.cache", flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(LdCache::default()),
        Err(Errno::ELOOP) => {
            return Err("it is a symlink; it is replaced, not followed".to_string())
        }
        Err(errno) => return Err(format!("cannot open it: {errno}")),
    };
    // SAFETY: openat just returned this fd and nothing else owns it.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let metadata = file
        .metadata()
        .map_err(|e| format!("cannot stat it: {e}"))?;
    if !metadata.file_type().is_file() {
        return Err("it is not a regular file".to_string());
    }
    if metadata.len() > MAX_LD_CACHE_BYTES {
        return Err(format!(
            "it is {} bytes, more than the {MAX_LD_CACHE_BYTES} read",
            metadata.len()
        ));
    }
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    file.take(MAX_LD_CACHE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read it: {e}"))?;
    if bytes.len() as u64 > MAX_LD_CACHE_BYTES {
        return Err(format!(
            "it grew past {MAX_LD_CACHE_BYTES} bytes while read"
        ));
    }
    LdCache::parse(&bytes).map_err(|e| e.to_string())
}

/// Writes `bytes` to a temp file in `dir` and renames it over `name`.
/// Nothing is followed: the temp file is created with `O_EXCL | O_NOFOLLOW`,
/// and `renameat` replaces whatever `name` is.
///
/// Not fsynced: the rename already keeps a reader from seeing a partial
/// file, and the file lives in the container's writable layer, which a crash
/// ends with the container (the hook runs again on the next start). On a
/// disk-backed rootfs the two fsyncs took 0.4 ms idle and tens of ms under
/// I/O load (issue 8, BENCHMARKS.md).
fn replace_file(dir: BorrowedFd<'_>, name: &str, bytes: &[u8], mode: u32) -> io::Result<()> {
    let temp = format!(".{name}.nvidia-hook-{}.tmp", std::process::id());
    let flags =
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let create = || {
        openat(
            Some(dir.as_raw_fd()),
            temp.as_str(),
            flags,
            Mode::from_bits_truncate(mode),
        )
    };
    let fd = match create() {
        // Left by a hook that was killed mid-write (our own pid, reused).
        Err(Errno::EEXIST) => {
            nix::unistd::unlinkat(
                Some(dir.as_raw_fd()),
                temp.as_str(),
                UnlinkatFlags::NoRemoveDir,
            )?;
            create()?
        }
        other => other?,
    };
    // SAFETY: openat just returned this fd and nothing else owns it.
    let mut file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let result = (|| {
        // The mode must not depend on the umask runc gave us.
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        renameat(
            Some(dir.as_raw_fd()),
            temp.as_str(),
            Some(dir.as_raw_fd()),
            name,
        )?;
        Ok(())
    })();
    if result.is_err() {
        let _ = nix::unistd::unlinkat(
            Some(dir.as_raw_fd()),
            temp.as_str(),
            UnlinkatFlags::NoRemoveDir,
        );
        return result;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// /proc/driver/nvidia
// ---------------------------------------------------------------------------

/// The content of a masked `/proc/driver/nvidia`: paths relative to it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MaskedTree {
    /// Directories; a set of paths iterates parents first (`gpus`,
    /// `gpus/0000:06:00.0`).
    pub dirs: BTreeSet<PathBuf>,
    pub files: Vec<(PathBuf, Vec<u8>)>,
}

/// `params` with the `ModifyDeviceFiles:` line set to 0 (appended if the
/// driver did not list it), every other line as it was.
pub fn mask_params(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 24);
    let mut found = false;
    for line in text.split_inclusive('\n') {
        if line.starts_with(MODIFY_DEVICE_FILES) {
            found = true;
            out.push_str(MODIFY_DEVICE_FILES);
            out.push_str(" 0\n");
        } else {
            out.push_str(line);
        }
    }
    if !found {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(MODIFY_DEVICE_FILES);
        out.push_str(" 0\n");
    }
    out
}

/// Reads what a container may see of the driver's procfs at `source`
/// (`<proc-root>/driver/nvidia`): `version`, `params` masked, `registry` if
/// present, every regular file of `gpus/<dir>` for the selected GPUs, and
/// the `extra_files` (relative paths, e.g. MIG capability files).
/// The procfs dirs (`0000:3b:00.0`) of the GPUs whose `/dev/nvidia<minor>`
/// nodes are in the spec's `linux.devices`, matched by `Device Minor` in
/// each GPU's `information`; sorted. Unreadable files count as no match:
/// the mask then shows fewer GPUs, never more.
pub fn gpu_dirs_from_devices(spec: &Value, proc_source: &Path) -> Vec<String> {
    let minors: Vec<u32> = spec
        .pointer("/linux/devices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|device| device.get("path")?.as_str()?.strip_prefix("/dev/nvidia"))
        .filter(|suffix| !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|suffix| suffix.parse().ok())
        .collect();
    if minors.is_empty() {
        return Vec::new();
    }
    let Ok(entries) = std::fs::read_dir(proc_source.join("gpus")) else {
        return Vec::new();
    };
    let mut dirs: Vec<String> = entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let text = std::fs::read_to_string(entry.path().join("information")).ok()?;
            let minor: u32 = crate::driver::parse_information(&text)
                .find(|(key, _)| *key == "Device Minor")?
                .1
                .parse()
                .ok()?;
            minors
                .contains(&minor)
                .then(|| entry.file_name().to_string_lossy().into_owned())
        })
        .collect();
    dirs.sort();
    dirs
}

pub fn read_masked_tree(
    source: &Path,
    gpu_dirs: &[String],
    extra_files: &[PathBuf],
) -> Result<MaskedTree, HookError> {
    let read = |relative: &Path| {
        let path = source.join(relative);
        std::fs::read(&path).map_err(|source| HookError::ProcSource { path, source })
    };
    let mut tree = MaskedTree::default();
    tree.files
        .push(("version".into(), read(Path::new("version"))?));
    let params = match read(Path::new("params")) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(HookError::ProcSource { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            String::new()
        }
        Err(error) => return Err(error),
    };
    tree.files
        .push(("params".into(), mask_params(&params).into_bytes()));
    match read(Path::new("registry")) {
        Ok(bytes) => tree.files.push(("registry".into(), bytes)),
        Err(HookError::ProcSource { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    if !gpu_dirs.is_empty() {
        tree.dirs.insert("gpus".into());
    }
    for gpu in gpu_dirs {
        if !is_single_component(gpu) {
            return Err(HookError::Args {
                problem: format!("--gpu \"{gpu}\" is not a procfs directory name"),
            });
        }
        let relative = Path::new("gpus").join(gpu);
        let dir = source.join(&relative);
        let entries = std::fs::read_dir(&dir).map_err(|source| HookError::ProcSource {
            path: dir.clone(),
            source,
        })?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| HookError::ProcSource {
                path: dir.clone(),
                source,
            })?;
            let is_file = entry.file_type().is_ok_and(|t| t.is_file());
            if is_file {
                names.push(entry.file_name());
            }
        }
        names.sort();
        tree.dirs.insert(relative.clone());
        for name in names {
            let file = relative.join(&name);
            let bytes = read(&file)?;
            tree.files.push((file, bytes));
        }
    }
    for file in extra_files {
        let valid = file.to_str().is_some_and(is_relative_below);
        if !valid {
            return Err(HookError::Args {
                problem: format!(
                    "--proc-file \"{}\" is not a path below /proc/driver/nvidia",
                    file.display()
                ),
            });
        }
        if tree.files.iter().any(|(path, _)| path == file) {
            continue;
        }
        let mut parent = file.parent();
        while let Some(dir) = parent.filter(|p| !p.as_os_str().is_empty()) {
            tree.dirs.insert(dir.to_path_buf());
            parent = dir.parent();
        }
        let bytes = read(file)?;
        tree.files.push((file.clone(), bytes));
    }
    Ok(tree)
}

impl MaskedTree {
    /// Creates the tree inside the directory `dir` (which must not hold any
    /// of its names): files 0444, directories 0555, as in the driver's procfs.
    pub fn write_into(&self, dir: BorrowedFd<'_>) -> io::Result<()> {
        let raw = Some(dir.as_raw_fd());
        for relative in &self.dirs {
            nix::sys::stat::mkdirat(raw, relative.as_path(), Mode::from_bits_truncate(0o755))?;
        }
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        for (relative, bytes) in &self.files {
            let fd = openat(
                raw,
                relative.as_path(),
                flags,
                Mode::from_bits_truncate(MASKED_FILE_MODE),
            )?;
            // SAFETY: openat just returned this fd and nothing else owns it.
            let mut file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
            file.write_all(bytes)?;
            file.set_permissions(std::fs::Permissions::from_mode(MASKED_FILE_MODE))?;
        }
        // Read-only last, deepest first, so that the files could be created.
        for relative in self.dirs.iter().rev() {
            nix::sys::stat::fchmodat(
                raw,
                relative.as_path(),
                Mode::from_bits_truncate(MASKED_DIR_MODE),
                nix::sys::stat::FchmodatFlags::FollowSymlink,
            )?;
        }
        Ok(())
    }
}

/// Builds the masked tree of `source` (`<proc-root>/driver/nvidia`) in
/// `destination_dir`, an existing directory: what the hook puts on the
/// tmpfs over the container's `/proc/driver/nvidia`.
pub fn build_masked_tree(
    source: &Path,
    destination_dir: &Path,
    gpu_dirs: &[String],
) -> Result<MaskedTree, HookError> {
    let tree = read_masked_tree(source, gpu_dirs, &[])?;
    let mask_error = |action: String| move |source: io::Error| HookError::Mask { action, source };
    let dir = File::open(destination_dir)
        .map_err(mask_error(format!("open {}", destination_dir.display())))?;
    tree.write_into(dir.as_fd()).map_err(mask_error(format!(
        "write into {}",
        destination_dir.display()
    )))?;
    Ok(tree)
}

/// Mounts a tmpfs over the container's `/proc/driver/nvidia` (nosuid, nodev,
/// noexec), fills it with `tree` and remounts it read-only. Returns false
/// when the container has no `/proc/driver/nvidia` (no driver loaded, or no
/// `/proc` mounted): then `tree`'s error, if any, does not matter.
///
/// Must run in the container's mount namespace, before `pivot_root`: the
/// mount targets are named through `/proc/self/fd/N` of fds opened inside
/// `root`, so no path is resolved outside it.
pub fn mask_proc_driver(
    root: BorrowedFd<'_>,
    tree: &Result<MaskedTree, HookError>,
) -> Result<bool, HookError> {
    let relative = format!("proc/{PROC_DRIVER_NVIDIA}");
    let fail = |action: &str| {
        let action = action.to_string();
        move |errno: Errno| HookError::Mask {
            action,
            source: errno.into(),
        }
    };
    let target = match open_in_root(root, &relative, OFlag::O_PATH | OFlag::O_DIRECTORY) {
        Ok(fd) => fd,
        Err(errno) if is_absent(errno) => return Ok(false),
        Err(errno) => return Err(fail("open /proc/driver/nvidia")(errno)),
    };
    let tree = match tree {
        Ok(tree) => tree,
        Err(error) => {
            // The container would see every GPU's procfs entry and a
            // ModifyDeviceFiles it can use: refuse to start it.
            return Err(HookError::Mask {
                action: "read the driver's procfs".to_string(),
                source: io::Error::other(crate::logging::error_chain(error)),
            });
        }
    };
    let fd_path = |fd: &OwnedFd| format!("/proc/self/fd/{}", fd.as_raw_fd());
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    nix::mount::mount(
        Some("tmpfs"),
        fd_path(&target).as_str(),
        Some("tmpfs"),
        flags,
        Some("mode=0555,size=16m"),
    )
    .map_err(fail("mount a tmpfs"))?;
    // The fd still names the covered directory; the tmpfs is what a fresh
    // lookup of the same path now reaches.
    let masked = open_in_root(root, &relative, OFlag::O_RDONLY | OFlag::O_DIRECTORY)
        .map_err(fail("open the new tmpfs"))?;
    let statfs = nix::sys::statfs::fstatfs(masked.as_fd()).map_err(fail("statfs the new tmpfs"))?;
    if statfs.filesystem_type() != nix::sys::statfs::TMPFS_MAGIC {
        return Err(fail("check the new tmpfs")(Errno::EXDEV));
    }
    tree.write_into(masked.as_fd())
        .map_err(|source| HookError::Mask {
            action: "fill the tmpfs".to_string(),
            source,
        })?;
    nix::mount::mount(
        None::<&str>,
        fd_path(&masked).as_str(),
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | flags,
        None::<&str>,
    )
    .map_err(fail("remount the tmpfs read-only"))?;
    tracing::info!(
        "masked /proc/driver/nvidia: {} files in {} subdirs",
        tree.files.len(),
        tree.dirs.len()
    );
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn parses_the_runtime_entry() {
        let args = HookArgs::parse(&os(&[
            "nvidia-container-runtime-hook",
            "prestart",
            "--injected-by-runtime",
            "--config",
            "/etc/c.toml",
            "--library",
            "libcuda.so.1=/usr/lib64/libcuda.so.1",
            "--gpu=0000:06:00.0",
            "--gpu",
            "0000:3b:00.0",
            "--proc-file",
            "capabilities/gpu1/mig/gi2/access",
        ]))
        .unwrap();
        assert_eq!(args.stage, Stage::Prestart);
        assert!(args.injected);
        assert_eq!(args.config, Some(PathBuf::from("/etc/c.toml")));
        assert_eq!(
            args.libraries,
            [(
                "libcuda.so.1".to_string(),
                PathBuf::from("/usr/lib64/libcuda.so.1")
            )]
        );
        assert_eq!(args.gpus, ["0000:06:00.0", "0000:3b:00.0"]);
        assert_eq!(
            args.proc_files,
            [PathBuf::from("capabilities/gpu1/mig/gi2/access")]
        );
    }

    #[test]
    fn matches_what_edits_writes() {
        let settings = crate::edits::HookSettings {
            path: "/usr/bin/nvidia-container-runtime-hook".into(),
            config_path: Some("/c.toml".into()),
        };
        let hook = crate::edits::prestart_hook(
            &settings,
            &[(
                "libnvidia-ml.so.1".into(),
                "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1".into(),
            )],
            &["0000:06:00.0"],
            &["capabilities/mig/config".to_string()],
        );
        let args: Vec<OsString> = hook.args.iter().map(OsString::from).collect();
        let parsed = HookArgs::parse(&args).unwrap();
        assert!(parsed.injected);
        assert_eq!(parsed.libraries.len(), 1);
        assert_eq!(parsed.gpus, ["0000:06:00.0"]);
        assert_eq!(
            parsed.proc_files,
            [PathBuf::from("capabilities/mig/config")]
        );
    }

    #[test]
    fn bad_arguments_fail_prestart_only() {
        for bad in [
            &["h", "prestart", "--library", "libcuda.so.1"][..],
            &["h", "prestart", "--library", "a/b=/x"],
            &["h", "prestart", "--library", "libx.so=relative"],
            &["h", "prestart", "--gpu", "../x"],
            &["h", "prestart", "--gpu", ".."],
            &["h", "prestart", "--frobnicate"],
            &["h", "prestart", "extra"],
            &["h", "prestart", "--config"],
            &["h", "prestart", "--proc-file", "/proc/driver/nvidia/params"],
            &["h", "prestart", "--proc-file", "capabilities/../../x"],
        ] {
            let error = HookArgs::parse(&os(bad)).unwrap_err();
            assert!(matches!(error, HookError::Args { .. }), "{bad:?}: {error}");
        }
        let args = HookArgs::parse(&os(&["h", "poststop", "--frobnicate"])).unwrap();
        assert_eq!(args.stage, Stage::Other("poststop".into()));
        assert_eq!(
            HookArgs::parse(&os(&["h"])).unwrap().stage,
            Stage::Other(String::new())
        );
    }

    #[test]
    fn state_parsing() {
        let state = State::parse(
            br#"{"ociVersion":"1.0.2","id":"c1","status":"creating","pid":42,"bundle":"/b"}"#,
        )
        .unwrap();
        assert_eq!(
            state,
            State {
                id: "c1".into(),
                pid: 42,
                bundle: "/b".into()
            }
        );
        for bad in [
            &b""[..],
            b"{}",
            br#"{"pid":0,"bundle":"/b"}"#,
            br#"{"pid":1,"bundle":"b"}"#,
        ] {
            assert!(matches!(State::parse(bad), Err(HookError::BadState { .. })));
        }
    }

    #[test]
    fn params_masking() {
        assert_eq!(
            mask_params("A: 1\nModifyDeviceFiles: 1\nB: \"\"\n"),
            "A: 1\nModifyDeviceFiles: 0\nB: \"\"\n"
        );
        assert_eq!(mask_params("A: 1"), "A: 1\nModifyDeviceFiles: 0\n");
        assert_eq!(mask_params(""), "ModifyDeviceFiles: 0\n");
    }

    #[test]
    fn gpu_requests() {
        let spec = |env: &[&str]| serde_json::json!({"process": {"env": env}});
        assert!(!requests_gpus(&spec(&["PATH=/bin"])));
        assert!(!requests_gpus(&spec(&["NVIDIA_VISIBLE_DEVICES=void"])));
        assert!(!requests_gpus(&spec(&["NVIDIA_VISIBLE_DEVICES="])));
        assert!(requests_gpus(&spec(&["NVIDIA_VISIBLE_DEVICES=all"])));
        assert!(requests_gpus(&spec(&[
            "NVIDIA_VISIBLE_DEVICES=void",
            "NVIDIA_VISIBLE_DEVICES=0"
        ])));
    }

    #[test]
    fn gpus_of_a_cdi_container_come_from_its_device_nodes() {
        let dir = std::env::temp_dir().join(format!("ncr-hook-gpus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (bus, minor) in [("0000:06:00.0", 1), ("0000:3b:00.0", 0)] {
            let gpu = dir.join("gpus").join(bus);
            std::fs::create_dir_all(&gpu).unwrap();
            std::fs::write(
                gpu.join("information"),
                format!("Model: \t X\nDevice Minor: \t {minor}\n"),
            )
            .unwrap();
        }
        let spec = serde_json::json!({"linux": {"devices": [
            {"path": "/dev/nvidiactl"}, {"path": "/dev/nvidia0"}, {"path": "/dev/nvidia-uvm"}
        ]}});
        assert_eq!(gpu_dirs_from_devices(&spec, &dir), ["0000:3b:00.0"]);
        let none = serde_json::json!({"linux": {"devices": [{"path": "/dev/nvidiactl"}]}});
        assert!(gpu_dirs_from_devices(&none, &dir).is_empty());
        assert!(gpu_dirs_from_devices(&serde_json::json!({}), &dir).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
