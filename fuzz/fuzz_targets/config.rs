//! `config.toml`: any text loads or gives an error, never a panic, and the
//! accessors derived from a loaded config never panic either.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use nvidia_container_runtime::config::Config;
use nvidia_container_runtime::request::Capabilities;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = Config::parse(text, Path::new("/fuzz/config.toml")) else {
        return;
    };
    let _ = config.driver_root();
    let _ = config.dev_root();
    let _ = config.proc_root();
    let _ = config.sys_root();
    let _ = config.unknown_keys();
    let _ = Capabilities::parse(
        &config.supported_driver_capabilities,
        "supported-driver-capabilities",
    );
});
