//! The argv scanner: any argv (bytes, NUL-separated words) is scanned
//! without panicking, and what it reports points back into argv.
#![no_main]

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use libfuzzer_sys::fuzz_target;
use nvidia_container_runtime::runtime::argv::{scan, Action};

fuzz_target!(|data: &[u8]| {
    let argv: Vec<&OsStr> = std::iter::once(OsStr::new("nvidia-container-runtime"))
        .chain(data.split(|&b| b == 0).map(OsStr::from_bytes))
        .collect();
    let invocation = scan(&argv);
    if let Some((index, name)) = &invocation.subcommand {
        // The subcommand is a word of argv, reported as that word.
        assert!(*index >= 1 && *index < argv.len());
        assert_eq!(*name, String::from_utf8_lossy(argv[*index].as_bytes()));
    }
    if let Some(bundle) = &invocation.bundle {
        // Only create/run take a bundle, and an empty one is an error instead.
        assert_eq!(invocation.action(), Action::Modify);
        assert!(!bundle.as_os_str().is_empty());
    }
    // Scanning is a pure function of argv.
    assert_eq!(scan(&argv), invocation);
});
