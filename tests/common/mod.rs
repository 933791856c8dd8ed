//! Test support: a fake NVIDIA driver that is real down to the file level
//! (ELF libraries, ld.so.cache, device nodes, procfs files), container root
//! filesystems without a registry, OCI bundles and helpers to run them.
//!
//! See the project notes reference/testing.md and driver.md. Everything compiled
//! (C sources in `tests/fixtures/`) is cached per content hash under the
//! cargo target tmpdir, so tests in one process, and later test processes,
//! don't rebuild it.
#![allow(dead_code)]

mod artifacts;
mod bundle;
mod containerd;
pub mod cri;
mod daemon;
mod fake_driver;
mod generation;
mod oci_image;
mod podman;
mod procfs;
mod rootfs;
mod run;
mod world;

// Each test file uses its share of these; `use common::*` gives it all.
#[allow(unused_imports)]
pub use {
    artifacts::*, bundle::*, containerd::*, daemon::*, fake_driver::*, generation::*, oci_image::*,
    podman::*, procfs::*, rootfs::*, run::*, world::*,
};

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::fs;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

pub(crate) fn cache_root() -> PathBuf {
    let base = option_env!("CARGO_TARGET_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    base.join("gpu-test-fixtures")
}

pub(crate) fn content_key(parts: &[&str]) -> String {
    let mut h = DefaultHasher::new();
    parts.hash(&mut h);
    format!("{:016x}", h.finish())
}

/// Runs `build(out_dir)` once per `name`: per process through a `OnceLock`
/// per name, and across processes by publishing the finished dir with an
/// atomic rename under the cache root (a dir that exists there is complete).
pub(crate) fn cached_build(name: &str, build: impl FnOnce(&Path)) -> PathBuf {
    static CELLS: OnceLock<Mutex<HashMap<String, Arc<OnceLock<PathBuf>>>>> = OnceLock::new();
    let cell = {
        let mut cells = CELLS
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        cells.entry(name.to_string()).or_default().clone()
    };
    cell.get_or_init(|| {
        let root = cache_root();
        let done = root.join(name);
        if done.is_dir() {
            return done;
        }
        fs::create_dir_all(&root).expect("create fixture cache dir");
        let tmp = root.join(format!(
            "{name}.tmp-{}-{}",
            std::process::id(),
            next_counter()
        ));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).expect("create fixture build dir");
        build(&tmp);
        if fs::rename(&tmp, &done).is_err() {
            // Another process published it first.
            assert!(
                done.is_dir(),
                "could not publish fixture build {}",
                done.display()
            );
            let _ = fs::remove_dir_all(&tmp);
        }
        done
    })
    .clone()
}

pub(crate) fn next_counter() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    COUNTER.fetch_add(1, Ordering::Relaxed)
}
