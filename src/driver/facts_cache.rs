//! The driver facts that only change with the driver, cached between
//! container starts: the CUDA version libcuda supports and each GPU's
//! compute capability and brand. Without it every start of a stock CUDA
//! image (whose `NVIDIA_REQUIRE_CUDA` has a `cuda>=` term) `dlopen`s the
//! real libcuda (tens of MiB) and, for `brand=`/`arch` terms, initialises
//! NVML.
//!
//! One JSON file in the runtime's state dir (`/run/nvidia-container-runtime`,
//! root-only, gone at reboot), keyed by the identity of the files the facts
//! came from: device, inode, size, mtime and ctime of libcuda and NVML, and
//! the kernel module's version from `/proc/driver/nvidia/version`. A driver
//! upgrade changes at least one of them (a new file, or the same file
//! rewritten), so a stale fact is never used. MIG layouts change without a
//! file changing: they are never cached.
//!
//! The file is believed only if it is a regular file owned by our user that
//! nobody else may write, in a dir of ours that nobody else may enter, and
//! it parses with the current key; anything else is ignored and, where the
//! dir is ours, rewritten (atomically, without fsync: it does not outlive a
//! reboot). A failure to read or write it only logs: the fact is computed.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The cache file's name in the state dir.
pub const FACTS_CACHE_FILE: &str = "driver-facts.json";

/// The identity of one file a fact comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIdentity {
    pub path: PathBuf,
    pub device: u64,
    pub inode: u64,
    pub size: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
}

impl FileIdentity {
    /// `stat` of `path` (following links: the identity is the real file's).
    pub fn of(path: &Path) -> Option<FileIdentity> {
        let meta = std::fs::metadata(path).ok()?;
        Some(FileIdentity {
            path: path.to_path_buf(),
            device: meta.dev(),
            inode: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        })
    }
}

/// What the cached facts were computed from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriverIdentity {
    pub kernel_module: String,
    pub libcuda: Option<FileIdentity>,
    pub nvml: Option<FileIdentity>,
}

/// Compute capability and brand of one GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuFacts {
    pub arch: String,
    pub brand: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct CachedFacts {
    cuda_version: Option<String>,
    /// By GPU UUID.
    gpus: BTreeMap<String, GpuFacts>,
}

#[derive(Debug, Serialize, Deserialize)]
struct CacheFile {
    identity: DriverIdentity,
    facts: CachedFacts,
}

/// The cache for one driver identity, read once and written on change.
#[derive(Debug)]
pub struct FactsCache {
    path: PathBuf,
    identity: DriverIdentity,
    facts: CachedFacts,
}

impl FactsCache {
    /// The cache in `state_dir` for the driver of `identity`: its facts if
    /// the file is trusted and was written for the same identity, else
    /// none.
    pub fn load(state_dir: &Path, identity: DriverIdentity) -> FactsCache {
        let path = state_dir.join(FACTS_CACHE_FILE);
        let facts = match read_trusted(state_dir, &path) {
            Some(file) if file.identity == identity => file.facts,
            Some(_) => {
                tracing::info!(
                    "{}: written for another driver; recomputing",
                    path.display()
                );
                CachedFacts::default()
            }
            None => CachedFacts::default(),
        };
        FactsCache {
            path,
            identity,
            facts,
        }
    }

    pub fn cuda_version(&self) -> Option<&str> {
        self.facts.cuda_version.as_deref()
    }

    pub fn gpu(&self, uuid: &str) -> Option<&GpuFacts> {
        self.facts.gpus.get(uuid)
    }

    pub fn set_cuda_version(&mut self, version: &str) {
        self.facts.cuda_version = Some(version.to_string());
        self.store();
    }

    pub fn set_gpu(&mut self, uuid: &str, facts: GpuFacts) {
        self.facts.gpus.insert(uuid.to_string(), facts);
        self.store();
    }

    /// Writes the cache, if its dir is ours (created root-only if missing).
    fn store(&self) {
        let Some(dir) = self.path.parent() else {
            return;
        };
        let result = (|| -> std::io::Result<()> {
            if !dir.exists() {
                std::fs::create_dir_all(dir)?;
                std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
            }
            if !is_private_dir(dir) {
                return Err(std::io::Error::other(
                    "the dir is not ours alone (owner and mode 0700); not written",
                ));
            }
            let file = CacheFile {
                identity: self.identity.clone(),
                facts: self.facts.clone(),
            };
            let bytes = serde_json::to_vec(&file).map_err(std::io::Error::other)?;
            let options = crate::atomic::Options {
                mode: 0o600,
                owner: None,
                durability: crate::atomic::Durability::Readers,
            };
            crate::atomic::write(&self.path, &bytes, &options)
        })();
        if let Err(error) = result {
            tracing::warn!("cannot write {}: {error}", self.path.display());
        }
    }
}

/// A dir owned by our user that nobody else may enter or write.
fn is_private_dir(dir: &Path) -> bool {
    std::fs::symlink_metadata(dir).is_ok_and(|meta| {
        meta.is_dir() && meta.uid() == nix::unistd::geteuid().as_raw() && meta.mode() & 0o077 == 0
    })
}

/// The cache file, if it and its dir are ours alone and it parses.
fn read_trusted(dir: &Path, path: &Path) -> Option<CacheFile> {
    if !is_private_dir(dir) {
        return None;
    }
    let bytes = crate::bounded::read_private_file(path)?;
    match serde_json::from_slice(&bytes) {
        Ok(file) => Some(file),
        Err(error) => {
            tracing::warn!("{}: {error}; ignored", path.display());
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(kernel: &str) -> DriverIdentity {
        DriverIdentity {
            kernel_module: kernel.to_string(),
            libcuda: None,
            nvml: None,
        }
    }

    #[test]
    fn facts_survive_for_the_same_driver_only() {
        let dir = std::env::temp_dir().join(format!("ncr-facts-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let state = dir.join("state");
        let mut cache = FactsCache::load(&state, identity("550.54.15"));
        assert_eq!(cache.cuda_version(), None);
        cache.set_cuda_version("12.4");
        cache.set_gpu(
            "GPU-1",
            GpuFacts {
                arch: "9.0".into(),
                brand: "tesla".into(),
            },
        );
        // Created root-only.
        assert_eq!(std::fs::metadata(&state).unwrap().mode() & 0o777, 0o700);
        let again = FactsCache::load(&state, identity("550.54.15"));
        assert_eq!(again.cuda_version(), Some("12.4"));
        assert_eq!(again.gpu("GPU-1").unwrap().brand, "tesla");
        // Another driver: nothing.
        let upgraded = FactsCache::load(&state, identity("570.86.15"));
        assert_eq!(upgraded.cuda_version(), None);
        // Corrupt: ignored, then rewritten by the next fact.
        std::fs::write(state.join(FACTS_CACHE_FILE), b"{not json").unwrap();
        let mut corrupt = FactsCache::load(&state, identity("550.54.15"));
        assert_eq!(corrupt.cuda_version(), None);
        corrupt.set_cuda_version("12.4");
        assert_eq!(
            FactsCache::load(&state, identity("550.54.15")).cuda_version(),
            Some("12.4")
        );
        // Writable by others: ignored.
        let file = state.join(FACTS_CACHE_FILE);
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o666))
            .unwrap();
        assert_eq!(
            FactsCache::load(&state, identity("550.54.15")).cuda_version(),
            None
        );
        // A dir others may enter: ignored, and not written.
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let mut open = FactsCache::load(&state, identity("550.54.15"));
        assert_eq!(open.cuda_version(), None);
        open.set_cuda_version("99.9");
        std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        assert_eq!(
            FactsCache::load(&state, identity("550.54.15")).cuda_version(),
            Some("12.4"),
            "the open dir was not written"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
