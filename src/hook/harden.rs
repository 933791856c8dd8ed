//! The hook's hardening: loader variables scrubbed (by a re-exec when the
//! hook is dynamically linked), `chdir("/")`, and a deadline below runc's
//! hook timeout.

use std::ffi::{CString, OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use nix::errno::Errno;

use super::HookError;

/// Loader variables that must never reach the hook's code: the loader of a
/// dynamically linked hook would map image-controlled code into a root
/// process on the host (CVE-2025-23266).
pub const LOADER_VARIABLES: &[&str] = &["LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT"];

/// The hook gives up after this many seconds: below runc's
/// [`crate::edits::HOOK_TIMEOUT_SECONDS`], so that the user reads our message
/// rather than runc's bare "signal: killed".
pub const DEADLINE_SECONDS: u32 = 25;

/// If any of [`LOADER_VARIABLES`] is set, re-executes `/proc/self/exe` with
/// the same argv and the environment without them; returns only when none
/// is set (or with the exec's error).
///
/// This cannot undo what the loader did before `main` in this very process
/// (a dynamically linked hook has already run a preloaded library's
/// constructors); what it guarantees is that the process that does the work
/// has nothing preloaded. The real defence is the explicit `env` of every
/// hook entry (`edits::HOOK_ENV`).
///
/// A static hook (the package's; no program interpreter, `AT_BASE` 0) had
/// no loader to abuse: it only removes the variables from its own
/// environment, so that nothing it starts (the dynamically linked facts
/// helper) inherits them, and goes on without a re-exec.
pub fn scrub_loader_environment(args: &[OsString]) -> Result<(), HookError> {
    let present: Vec<&str> = LOADER_VARIABLES
        .iter()
        .copied()
        .filter(|name| std::env::var_os(name).is_some())
        .collect();
    if present.is_empty() {
        return Ok(());
    }
    if is_static_executable() {
        for name in &present {
            // Single-threaded here (the first thing main does).
            std::env::remove_var(name);
        }
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

/// Whether this process runs without a program interpreter: the kernel
/// passes the dynamic loader's base address as `AT_BASE`, 0 when there is
/// none (a static or static-pie executable).
pub fn is_static_executable() -> bool {
    // SAFETY: getauxval reads the auxiliary vector the kernel gave the
    // process; it has no preconditions.
    unsafe { nix::libc::getauxval(nix::libc::AT_BASE) == 0 }
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

#[cfg(test)]
mod tests {
    #[test]
    fn a_test_binary_has_a_program_interpreter() {
        // cargo builds tests dynamically linked; the package's hook is
        // static (its packaging test checks the other side).
        assert!(!super::is_static_executable());
    }
}
