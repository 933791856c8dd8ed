//! Root-confined path resolution for trees we read but do not own.
//!
//! The driver root (`/run/nvidia/driver` in a driver container) and an image's
//! rootfs both hold absolute symlinks that mean "relative to this root", not
//! to the host's `/`. This resolves a path the way the kernel would after a
//! `chroot(root)`, but in user space: symlinks are followed with `root` as
//! `/`, and `..` never climbs above it. It is for *reading* trees that nothing
//! is racing (the driver root is the admin's; a rootfs at `create` time has no
//! process running in it). The hook, which writes into a rootfs, uses
//! `openat2(RESOLVE_IN_ROOT)` instead (security.md rule 2).

use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};

/// Linux's own limit on symlinks followed in one lookup (MAXSYMLINKS).
const MAX_SYMLINKS: usize = 40;

/// Resolves `path` (absolute or relative, interpreted inside `root`) to the
/// host path of what it names, following every symlink with `root` as `/`.
/// The last component need not exist: then the path up to it is resolved and
/// the name appended, so callers get a `NotFound` from their own open.
pub fn resolve(root: &Path, path: &Path) -> io::Result<PathBuf> {
    // `pending` holds the components still to walk, last component first.
    let mut pending: Vec<OsString> = components(path);
    pending.reverse();
    let mut resolved: Vec<OsString> = Vec::new();
    let mut symlinks_followed = 0;

    while let Some(name) = pending.pop() {
        if name == ".." {
            resolved.pop();
            continue;
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(&resolved);
        candidate.push(&name);
        match std::fs::symlink_metadata(&candidate) {
            Ok(meta) if meta.file_type().is_symlink() => {
                symlinks_followed += 1;
                if symlinks_followed > MAX_SYMLINKS {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "too many levels of symbolic links at {}",
                            candidate.display()
                        ),
                    ));
                }
                let target = std::fs::read_link(&candidate)?;
                if target.is_absolute() {
                    resolved.clear();
                }
                let mut target_components = components(&target);
                target_components.reverse();
                pending.extend(target_components);
            }
            Ok(_) => resolved.push(name),
            Err(error) if error.kind() == io::ErrorKind::NotFound && pending.is_empty() => {
                resolved.push(name);
            }
            Err(error) => return Err(error),
        }
    }
    let mut result = root.to_path_buf();
    result.extend(&resolved);
    Ok(result)
}

/// The normal and `..` components of a path (`/` and `.` dropped).
fn components(path: &Path) -> Vec<OsString> {
    path.components()
        .filter_map(|component| match component {
            Component::Normal(name) => Some(name.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

/// Whether `path` exists inside `root` (symlinks resolved confined to it).
pub fn exists(root: &Path, path: &Path) -> bool {
    resolve(root, path).is_ok_and(|resolved| resolved.symlink_metadata().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn temp_root(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ncr-confined-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn absolute_and_relative_links_stay_inside() {
        let root = temp_root("links");
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("usr/lib/libx.so.1.2"), b"x").unwrap();
        symlink("usr/lib", root.join("lib")).unwrap();
        symlink("libx.so.1.2", root.join("usr/lib/libx.so.1")).unwrap();
        symlink("/usr/lib/libx.so.1", root.join("abs")).unwrap();
        symlink("../../../../../../etc/passwd", root.join("escape")).unwrap();
        symlink("/etc/passwd", root.join("escape-abs")).unwrap();
        symlink("loop", root.join("loop")).unwrap();

        assert_eq!(
            resolve(&root, Path::new("/lib/libx.so.1")).unwrap(),
            root.join("usr/lib/libx.so.1.2")
        );
        assert_eq!(
            resolve(&root, Path::new("abs")).unwrap(),
            root.join("usr/lib/libx.so.1.2")
        );
        assert_eq!(
            resolve(&root, Path::new("/escape")).unwrap(),
            root.join("etc/passwd")
        );
        assert_eq!(
            resolve(&root, Path::new("/escape-abs")).unwrap(),
            root.join("etc/passwd")
        );
        assert_eq!(
            resolve(&root, Path::new("/../../x")).unwrap(),
            root.join("x")
        );
        assert!(resolve(&root, Path::new("/loop")).is_err());
        assert!(exists(&root, Path::new("/lib/libx.so.1")));
        assert!(!exists(&root, Path::new("/escape")));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
