//! The driver's procfs text files (`/proc/driver/nvidia/version`,
//! `gpus/<bus>/information`): any text parses without panicking, and what
//! comes out is a slice of the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nvidia_container_runtime::driver::{parse_information, parse_kernel_version};
use nvidia_container_runtime::request::BusId;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for (key, value) in parse_information(&text) {
        assert!(!key.contains('\n') && !value.contains('\n'));
        assert_eq!(key, key.trim());
        if key == "Bus Location" {
            if let Some(bus) = BusId::parse(value) {
                // The printed form is one of the accepted forms.
                assert_eq!(BusId::parse(&bus.to_string()), Some(bus));
            }
        }
    }
    if let Some(version) = parse_kernel_version(&text) {
        assert!(text.contains(version));
        assert!(version.split('.').all(|p| !p.is_empty()));
    }
});
