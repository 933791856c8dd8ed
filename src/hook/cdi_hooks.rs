//! NVIDIA's CDI hook subcommands, for specs that NVIDIA's tools (or its
//! Kubernetes device plugin) wrote: `nvidia-cdi-hook <subcommand>` and
//! `nvidia-ctk hook <subcommand>`, with their flags and meaning
//! (`update-ldcache`, `create-symlinks`, `enable-cuda-compat`, `chmod`,
//! `disable-device-node-modification`, `create-soname-symlinks`). Each runs
//! as a createContainer or prestart hook on the OCI state from stdin, under
//! our hook's rules: every path of the rootfs opened confined to it
//! (`RESOLVE_IN_ROOT`), nothing of the image executed (`update-ldcache`
//! writes ld.so.cache natively, it never runs ldconfig), loader variables
//! scrubbed, a deadline (the binaries do both first).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;

use crate::config::Config;
use crate::oci::{BundleSpec, State};
use crate::system::System;

use super::cuda_compat::{self, Compat};
use super::links::{create_parents, create_symlink, fail, relative, Replace};
use super::proc_mask::{mask_proc_driver, mask_selection, read_masked_tree, PROC_DRIVER_NVIDIA};
use super::rootfs::{open_rootfs, replace_file};
use super::HookError;

/// The subcommands we have, for the error naming an unknown one.
pub const SUBCOMMANDS: &[&str] = &[
    "update-ldcache",
    "create-symlinks",
    "create-soname-symlinks",
    "enable-cuda-compat",
    "chmod",
    "disable-device-node-modification",
];

/// Where `enable-cuda-compat` records the compat dir for `update-ldcache`,
/// as NVIDIA's writes a file of ld.so.conf.d for its ldconfig.
const COMPAT_CONF: &str = "etc/ld.so.conf.d/00-compat-nvidia-container-runtime.conf";

/// One subcommand, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subcommand {
    UpdateLdcache { folders: Vec<PathBuf> },
    CreateSymlinks { links: Vec<(PathBuf, PathBuf)> },
    CreateSonameSymlinks { folders: Vec<PathBuf> },
    EnableCudaCompat { host_driver_version: Option<String> },
    Chmod { mode: u32, paths: Vec<PathBuf> },
    DisableDeviceNodeModification,
}

fn bad(subcommand: &str, problem: String) -> HookError {
    HookError::Subcommand {
        problem: format!("{subcommand}: {problem}"),
    }
}

/// `--flag value`, `--flag=value`, repeated flags; unknown flags are
/// errors naming them.
fn flags(
    subcommand: &str,
    args: &[String],
    known: &[&str],
) -> Result<Vec<(String, String)>, HookError> {
    let mut out = Vec::new();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) => (flag, Some(value.to_string())),
            None => (arg.as_str(), None),
        };
        let name = flag.trim_start_matches('-');
        if !flag.starts_with("--") || !known.contains(&name) {
            return Err(bad(
                subcommand,
                format!(
                    "unknown argument \"{arg}\" (it takes {})",
                    known
                        .iter()
                        .map(|k| format!("--{k}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        let value = match inline.or_else(|| rest.next().cloned()) {
            Some(value) => value,
            None => return Err(bad(subcommand, format!("--{name} needs a value"))),
        };
        out.push((name.to_string(), value));
    }
    Ok(out)
}

fn absolute(subcommand: &str, value: &str) -> Result<PathBuf, HookError> {
    if !value.starts_with('/') {
        return Err(bad(
            subcommand,
            format!("\"{value}\" is not an absolute path in the container"),
        ));
    }
    Ok(PathBuf::from(value))
}

impl Subcommand {
    /// `args` after the subcommand's name.
    pub fn parse(name: &str, args: &[String]) -> Result<Subcommand, HookError> {
        match name {
            "update-ldcache" | "create-soname-symlinks" => {
                // --ldconfig-path names the ldconfig NVIDIA's would run; ours
                // runs none, so it is accepted and not used.
                let mut folders = Vec::new();
                for (flag, value) in flags(name, args, &["folder", "ldconfig-path"])? {
                    if flag == "folder" {
                        folders.push(absolute(name, &value)?);
                    }
                }
                Ok(if name == "update-ldcache" {
                    Subcommand::UpdateLdcache { folders }
                } else {
                    Subcommand::CreateSonameSymlinks { folders }
                })
            }
            "create-symlinks" => {
                let mut links = Vec::new();
                for (_, value) in flags(name, args, &["link"])? {
                    let (target, link) = value.split_once("::").ok_or_else(|| {
                        bad(name, format!("--link \"{value}\" is not TARGET::LINK"))
                    })?;
                    links.push((PathBuf::from(target), absolute(name, link)?));
                }
                Ok(Subcommand::CreateSymlinks { links })
            }
            "enable-cuda-compat" => {
                let mut host_driver_version = None;
                for (_, value) in flags(name, args, &["host-driver-version"])? {
                    host_driver_version = Some(value);
                }
                Ok(Subcommand::EnableCudaCompat {
                    host_driver_version,
                })
            }
            "chmod" => {
                let mut mode = None;
                let mut paths = Vec::new();
                for (flag, value) in flags(name, args, &["mode", "path"])? {
                    if flag == "mode" {
                        let parsed = u32::from_str_radix(value.trim_start_matches("0o"), 8)
                            .ok()
                            .filter(|m| *m <= 0o7777)
                            .ok_or_else(|| {
                                bad(name, format!("--mode \"{value}\" is not an octal mode"))
                            })?;
                        mode = Some(parsed);
                    } else {
                        paths.push(absolute(name, &value)?);
                    }
                }
                let mode = mode.ok_or_else(|| bad(name, "--mode is required".to_string()))?;
                Ok(Subcommand::Chmod { mode, paths })
            }
            "disable-device-node-modification" => {
                flags(name, args, &[])?;
                Ok(Subcommand::DisableDeviceNodeModification)
            }
            other => Err(HookError::Subcommand {
                problem: format!(
                    "unknown hook subcommand \"{other}\": this one has {}",
                    SUBCOMMANDS.join(", ")
                ),
            }),
        }
    }
}

/// The container's rootfs, from inside its mount namespace. A
/// createContainer hook (how NVIDIA's specs run these) already runs there,
/// with the state's pid as the container sees it; a prestart hook runs in
/// the runtime's namespaces, and the pid is the runtime's child: only that
/// one is entered (by pidfd), never a process we cannot tie to the runtime.
/// crun runs createContainer hooks from the container's init and passes
/// pid 0 there.
fn enter(system: &dyn System, state: &State) -> Result<(BundleSpec, OwnedFd, PathBuf), HookError> {
    let spec = BundleSpec::read(&state.bundle)?;
    let rootfs = spec.rootfs();
    // pid 0: crun's createContainer, already in the container's namespace.
    let container = match state.pid {
        0 => Err(()),
        pid => super::inject::check_container(system, pid).map_err(drop),
    };
    let runtime_root = match container {
        Ok(container) => {
            system
                .enter_mount_namespace_of(container.pidfd.as_fd())
                .map_err(|errno| HookError::Namespace {
                    pid: state.pid,
                    path: PathBuf::from(format!("/proc/{}/ns/mnt", state.pid)),
                    source: errno.into(),
                })?;
            container.root
        }
        Err(_) => system
            .open_directory(Path::new("/"))
            .map_err(|errno| HookError::Rootfs {
                path: rootfs.clone(),
                source: errno.into(),
            })?,
    };
    let root = open_rootfs(system, runtime_root.as_fd(), &rootfs)?;
    Ok((spec, root, rootfs))
}

/// Runs one subcommand for the container of `state`.
pub fn run(
    subcommand: &Subcommand,
    state: &State,
    config: &Config,
    system: &dyn System,
) -> Result<(), HookError> {
    // Host side first: what disable-device-node-modification masks, and the
    // host driver's version for enable-cuda-compat.
    let proc_source = config.proc_root().join(PROC_DRIVER_NVIDIA);
    let host_version = || {
        crate::bounded::read_file_to_string(
            &proc_source.join("version"),
            crate::bounded::PROCFS_FILE,
        )
        .ok()
        .and_then(|text| crate::driver::parse_kernel_version(&text).map(str::to_string))
    };
    let masked = match subcommand {
        Subcommand::DisableDeviceNodeModification => {
            let spec = BundleSpec::read(&state.bundle)?;
            let (gpus, files) = mask_selection(&spec.value, &proc_source, &[], &[]);
            Some(read_masked_tree(&proc_source, &gpus, &files))
        }
        _ => None,
    };
    let compat_version = match subcommand {
        Subcommand::EnableCudaCompat {
            host_driver_version,
        } => host_driver_version.clone().or_else(host_version),
        _ => None,
    };
    let (_spec, root, rootfs) = enter(system, state)?;
    match subcommand {
        Subcommand::CreateSymlinks { links } => {
            for (target, link) in links {
                create_symlink(system, root.as_fd(), target, link, Replace::AnySymlink)?;
            }
        }
        Subcommand::CreateSonameSymlinks { folders } => {
            for folder in folders {
                for (soname, file) in folder_libraries(system, root.as_fd(), folder) {
                    if file
                        .file_name()
                        .is_some_and(|name| name.to_string_lossy() != soname)
                    {
                        let target = PathBuf::from(file.file_name().unwrap_or_default());
                        create_symlink(
                            system,
                            root.as_fd(),
                            &target,
                            &folder.join(&soname),
                            Replace::AnySymlink,
                        )?;
                    }
                }
            }
        }
        Subcommand::UpdateLdcache { folders } => {
            let mut libraries = Vec::new();
            for folder in folders {
                for (soname, file) in folder_libraries(system, root.as_fd(), folder) {
                    libraries.push((soname, file));
                }
            }
            let preferred = compat_recorded(system, root.as_fd());
            super::ld_cache::update_ld_cache(
                system,
                root.as_fd(),
                &rootfs,
                &libraries,
                &preferred,
            )?;
        }
        Subcommand::EnableCudaCompat { .. } => {
            let Some(version) = compat_version else {
                tracing::warn!(
                    "enable-cuda-compat: the host's driver version is unknown; nothing done"
                );
                return Ok(());
            };
            match cuda_compat::inspect(system, root.as_fd(), &version) {
                Compat::Use(libraries) => {
                    let etc_conf = Path::new(COMPAT_CONF);
                    let dir = create_parents(system, root.as_fd(), etc_conf)?;
                    let name = etc_conf.file_name().unwrap_or_default().to_string_lossy();
                    let text = format!("{}\n", libraries.dir.display());
                    replace_file(system, dir.as_fd(), &name, text.as_bytes(), 0o644).map_err(
                        |source| HookError::Inject {
                            action: format!("write /{COMPAT_CONF}"),
                            source,
                        },
                    )?;
                    // The cache as it is now, with the compat libraries first.
                    super::ld_cache::update_ld_cache(
                        system,
                        root.as_fd(),
                        &rootfs,
                        &[],
                        &libraries.cache_entries(),
                    )?;
                }
                other => tracing::info!("enable-cuda-compat: {}", other.describe()),
            }
        }
        Subcommand::Chmod { mode, paths } => {
            for path in paths {
                chmod(system, root.as_fd(), path, *mode)?;
            }
        }
        Subcommand::DisableDeviceNodeModification => {
            if let Some(tree) = &masked {
                mask_proc_driver(system, root.as_fd(), tree, false)?;
            }
        }
    }
    Ok(())
}

/// The compat dir `enable-cuda-compat` recorded, listed first by
/// `update-ldcache`. The file is ours; an image that planted one can only
/// point the container's own loader at its own files.
fn compat_recorded(system: &dyn System, root: BorrowedFd<'_>) -> Vec<(String, PathBuf)> {
    let Ok(fd) = system.open_in_root(
        root,
        COMPAT_CONF,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK,
    ) else {
        return Vec::new();
    };
    let text = crate::bounded::read_to_end(std::fs::File::from(fd), crate::bounded::LD_SO_CACHE, 0)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default();
    let Some(dir) = text.lines().next().filter(|d| d.starts_with('/')) else {
        return Vec::new();
    };
    folder_libraries(system, root, Path::new(dir))
}

/// `(SONAME, path in the container)` of the libraries in `folder`: a
/// regular file's SONAME read from its ELF header (opened confined, never
/// run), a symlink named like a SONAME taken by its name.
fn folder_libraries(
    system: &dyn System,
    root: BorrowedFd<'_>,
    folder: &Path,
) -> Vec<(String, PathBuf)> {
    let Ok(dir) = system.open_in_root(
        root,
        &relative(folder),
        OFlag::O_RDONLY | OFlag::O_DIRECTORY,
    ) else {
        tracing::info!("{}: no such folder in the container", folder.display());
        return Vec::new();
    };
    let dir_fd = dir.as_raw_fd();
    let Ok(mut listing) = nix::dir::Dir::from_fd(std::os::fd::IntoRawFd::into_raw_fd(dir)) else {
        return Vec::new();
    };
    let names: Vec<String> = listing
        .iter()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().ok().map(str::to_string))
        .filter(|name| name.contains(".so"))
        .collect();
    let mut found = Vec::new();
    for name in names {
        let Ok(stat) = nix::sys::stat::fstatat(
            Some(dir_fd),
            name.as_str(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) else {
            continue;
        };
        let format = stat.st_mode & nix::libc::S_IFMT;
        let soname = if format == nix::libc::S_IFREG {
            let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
            let Ok(fd) = nix::fcntl::openat(
                Some(dir_fd),
                name.as_str(),
                flags,
                nix::sys::stat::Mode::empty(),
            ) else {
                continue;
            };
            // SAFETY: openat just returned this fd and nothing else owns it.
            let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            crate::elf::soname(Path::new(&format!("/proc/self/fd/{}", fd.as_raw_fd())))
        } else if format == nix::libc::S_IFLNK {
            let soname_like = name
                .rsplit_once(".so.")
                .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            soname_like.then(|| name.clone())
        } else {
            None
        };
        if let Some(soname) = soname {
            found.push((soname, folder.join(&name)));
        }
    }
    drop(listing);
    found.sort();
    found.dedup_by(|a, b| a.0 == b.0);
    found
}

/// chmod of `path` in the rootfs, never through a symlink.
fn chmod(
    system: &dyn System,
    root: BorrowedFd<'_>,
    path: &Path,
    mode: u32,
) -> Result<(), HookError> {
    let fd = match system.open_in_root(root, &relative(path), OFlag::O_PATH | OFlag::O_NOFOLLOW) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT) => {
            tracing::info!("chmod: {} does not exist in the container", path.display());
            return Ok(());
        }
        Err(errno) => return Err(fail(format!("open {}", path.display()))(errno)),
    };
    let stat =
        nix::sys::stat::fstat(fd.as_raw_fd()).map_err(fail(format!("stat {}", path.display())))?;
    if stat.st_mode & nix::libc::S_IFMT == nix::libc::S_IFLNK {
        tracing::warn!("chmod: {} is a symlink; not followed", path.display());
        return Ok(());
    }
    // The fd's magic link names exactly the inode checked above.
    nix::sys::stat::fchmodat(
        None,
        format!("/proc/self/fd/{}", fd.as_raw_fd()).as_str(),
        nix::sys::stat::Mode::from_bits_truncate(mode),
        nix::sys::stat::FchmodatFlags::FollowSymlink,
    )
    .map_err(fail(format!("chmod {}", path.display())))
}

/// The whole hook process: hardening first (the loader variables scrubbed
/// by a re-exec of `argv`, `chdir /`, the deadline), then the subcommand
/// on the state from stdin. The config comes from the hook's own
/// environment, as NVIDIA's.
pub fn main(
    argv: &[std::ffi::OsString],
    subcommand: &str,
    args: &[String],
) -> Result<(), HookError> {
    super::scrub_loader_environment(argv)?;
    super::harden_process()?;
    let parsed = Subcommand::parse(subcommand, args)?;
    let state = State::read_at_create_container(&mut std::io::stdin().lock())?;
    let config = super::load_config(None, |key| std::env::var(key).ok())?;
    crate::logging::init_debug_log(
        &config.nvidia_container_runtime.debug,
        &config.nvidia_container_runtime.log_level,
    );
    tracing::debug!(id = %state.id, pid = state.pid, ?parsed, "CDI hook");
    let fault_at = std::env::var(crate::system::FAULT_INJECTION_ENV)
        .ok()
        .and_then(|n| n.parse::<usize>().ok());
    match fault_at {
        Some(n) => run(
            &parsed,
            &state,
            &config,
            &crate::system::FaultySystem::new(n),
        ),
        None => run(&parsed, &state, &config, &crate::system::RealSystem),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn subcommands_parse_as_nvidias() {
        assert_eq!(
            Subcommand::parse(
                "create-symlinks",
                &args(&[
                    "--link",
                    "libcuda.so.1::/usr/lib64/libcuda.so",
                    "--link=a::/b"
                ])
            )
            .unwrap(),
            Subcommand::CreateSymlinks {
                links: vec![
                    ("libcuda.so.1".into(), "/usr/lib64/libcuda.so".into()),
                    ("a".into(), "/b".into())
                ]
            }
        );
        assert_eq!(
            Subcommand::parse(
                "update-ldcache",
                &args(&[
                    "--folder",
                    "/usr/lib64",
                    "--ldconfig-path",
                    "/sbin/ldconfig"
                ])
            )
            .unwrap(),
            Subcommand::UpdateLdcache {
                folders: vec!["/usr/lib64".into()]
            }
        );
        assert_eq!(
            Subcommand::parse("chmod", &args(&["--mode", "755", "--path", "/dev/dri"])).unwrap(),
            Subcommand::Chmod {
                mode: 0o755,
                paths: vec!["/dev/dri".into()]
            }
        );
        assert_eq!(
            Subcommand::parse(
                "enable-cuda-compat",
                &args(&["--host-driver-version=550.54.15"])
            )
            .unwrap(),
            Subcommand::EnableCudaCompat {
                host_driver_version: Some("550.54.15".into())
            }
        );
        let unknown = Subcommand::parse("frobnicate", &[])
            .unwrap_err()
            .to_string();
        assert!(
            unknown.contains("\"frobnicate\"")
                && unknown.contains("update-ldcache, create-symlinks"),
            "{unknown}"
        );
        let relative = Subcommand::parse("create-symlinks", &args(&["--link", "a::b"]))
            .unwrap_err()
            .to_string();
        assert!(relative.contains("not an absolute path"), "{relative}");
        let flag = Subcommand::parse("chmod", &args(&["--mode", "755", "--recursive"]))
            .unwrap_err()
            .to_string();
        assert!(flag.contains("--recursive"), "{flag}");
    }
}
