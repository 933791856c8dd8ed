//! The look at `config.json`'s bytes before it is parsed: whether a request
//! channel is even mentioned. On a node where we are the default runtime
//! most containers ask for nothing, and they are handed to runc at once.

use std::io::{self, Read};

use crate::config::Config;

use super::{LEGACY_CUDA_VERSION, VISIBLE_DEVICES};

/// A fast, conservative look at `config.json`'s bytes before parsing it:
/// `false` only when no request channel can be in the file (no
/// `NVIDIA_VISIBLE_DEVICES`, `CUDA_VERSION`, swarm variable, device mount or
/// CDI annotation is even mentioned), so that the runtime can exec runc at
/// once for the containers that ask for nothing, which on a node where we
/// are dockerd's default runtime is most of them (BENCHMARKS.md). A key
/// spelled with JSON escapes (`"NVIDIA\u005fVISIBLE..."`) is not seen:
/// no engine writes one, and such a container only goes without GPUs.
pub fn may_request_devices(bytes: &[u8], config: &Config) -> bool {
    request_needles(config)
        .iter()
        .any(|needle| bytes.windows(needle.len()).any(|window| window == *needle))
}

/// [`may_request_devices`] of a file too large to hold ([`crate::bounded`]),
/// read in chunks that overlap by the longest needle, so that a mention
/// across two chunks is seen.
pub fn may_request_devices_in(mut reader: impl Read, config: &Config) -> io::Result<bool> {
    let needles = request_needles(config);
    let overlap = needles.iter().map(|n| n.len()).max().unwrap_or(1) - 1;
    let mut buffer = vec![0; (1 << 20) + overlap];
    let mut kept = 0;
    loop {
        let read = reader.read(&mut buffer[kept..])?;
        if read == 0 {
            return Ok(false);
        }
        let filled = kept + read;
        if may_request_devices(&buffer[..filled], config) {
            return Ok(true);
        }
        kept = overlap.min(filled);
        buffer.copy_within(filled - kept..filled, 0);
    }
}

/// What [`may_request_devices`] looks for: the request variables, the swarm
/// variables, the device-mount dir and the CDI annotation prefixes that
/// this config enables. None is empty.
fn request_needles(config: &Config) -> Vec<&[u8]> {
    let mut needles = vec![VISIBLE_DEVICES.as_bytes(), LEGACY_CUDA_VERSION.as_bytes()];
    needles.extend(
        config
            .swarm_resource
            .split(',')
            .map(str::trim)
            .map(str::as_bytes),
    );
    if config.accept_nvidia_visible_devices_as_volume_mounts {
        needles.push(b"nvidia-container-devices");
    }
    needles.extend(
        config
            .nvidia_container_runtime
            .modes
            .cdi
            .annotation_prefixes
            .iter()
            .map(|prefix| prefix.as_bytes()),
    );
    needles.retain(|needle| !needle.is_empty());
    needles
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::test_support::spec_with_env;
    use crate::request::Request;

    #[test]
    fn pre_filter_sees_every_channel() {
        let config = Config::default();
        let text = |t: &str| may_request_devices(t.as_bytes(), &config);
        assert!(!text(r#"{"process":{"env":["PATH=/bin","HOME=/"]}}"#));
        assert!(text(r#"{"process":{"env":["NVIDIA_VISIBLE_DEVICES=0"]}}"#));
        assert!(text(r#"{"process":{"env":["CUDA_VERSION=12.4"]}}"#));
        assert!(text(
            r#"{"annotations":{"cdi.k8s.io/x":"nvidia.com/gpu=0"}}"#
        ));
        let mounts = r#"{"mounts":[{"destination":"/var/run/nvidia-container-devices/0"}]}"#;
        assert!(!text(mounts), "mount requests are off by default");
        let config = Config {
            accept_nvidia_visible_devices_as_volume_mounts: true,
            swarm_resource: "DOCKER_RESOURCE_GPU".into(),
            ..Default::default()
        };
        assert!(may_request_devices(mounts.as_bytes(), &config));
        assert!(may_request_devices(
            br#"{"env":["DOCKER_RESOURCE_GPU=GPU-1"]}"#,
            &config
        ));
        // Every request the parser accepts is seen by the pre-filter.
        for env in [
            vec!["NVIDIA_VISIBLE_DEVICES=all"],
            vec!["CUDA_VERSION=11.0"],
            vec!["DOCKER_RESOURCE_GPU=GPU-1"],
        ] {
            let spec = spec_with_env(&env);
            if Request::from_spec(&spec, &config).unwrap().is_some() {
                let bytes = serde_json::to_vec(&spec).unwrap();
                assert!(may_request_devices(&bytes, &config), "{env:?}");
            }
        }
    }

    #[test]
    fn pre_filter_of_a_stream_sees_a_mention_across_chunks() {
        let config = Config::default();
        let filler = vec![b' '; (1 << 20) - 10];
        for offset in 0..24 {
            let mut bytes = filler.clone();
            bytes.extend(std::iter::repeat_n(b' ', offset));
            bytes.extend_from_slice(b"\"NVIDIA_VISIBLE_DEVICES=0\"");
            bytes.extend_from_slice(&filler);
            assert!(
                may_request_devices_in(&bytes[..], &config).unwrap(),
                "{offset}"
            );
        }
        let nothing = vec![b'x'; 3 << 20];
        assert!(!may_request_devices_in(&nothing[..], &config).unwrap());
    }
}
