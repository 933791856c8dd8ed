//! ld.so.cache parsing: any bytes (a driver root's or an image's cache) are
//! parsed without panicking or over-allocating; a parsed cache writes back
//! to bytes that parse again to the same entries.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nvidia_container_runtime::ldcache::{CacheEntry, LdCache, FLAGS_X86_64_LIBC6};

fuzz_target!(|data: &[u8]| {
    let Ok(mut cache) = LdCache::parse(data) else {
        return;
    };
    let _ = cache.lookup("libcuda.so.1", FLAGS_X86_64_LIBC6);
    cache.add_or_replace(CacheEntry {
        flags: FLAGS_X86_64_LIBC6,
        key: "libcuda.so.1".into(),
        value: "/usr/lib/x86_64-linux-gnu/libcuda.so.1".into(),
        os_version: 0,
        hwcap: 0,
    });
    let bytes = cache.to_bytes();
    let again = LdCache::parse(&bytes).expect("our own cache parses");
    // to_bytes drops duplicates and entries with NUL bytes and sorts: every
    // entry written must be one of ours, and ours must be found.
    for entry in &again.entries {
        assert!(cache.entries.contains(entry), "{entry:?} came from nowhere");
    }
    assert!(again.lookup("libcuda.so.1", FLAGS_X86_64_LIBC6).is_some());
    // Writing is deterministic and a fixed point after one round.
    assert_eq!(again.to_bytes(), bytes);
});
