//! When config.toml cannot be used (missing is fine: the defaults; but
//! unreadable, invalid TOML, a FIFO, over its size limit): the runtime may
//! be every container's on the node (dockerd's or containerd's default), so
//! such a file must not stop a container that asks for no GPU, nor any
//! command on an existing container. Only a GPU `create`/`run` fails, with
//! the config's own error.
//!
//! The low-level runtime is then the one the last good config named: every
//! `create` with a good config remembers its `runtimes` list in
//! `<state dir>/runtimes` (written only when it changes), so that a
//! container created through crun is still killed and deleted through crun
//! after the file broke. Without that record, the default list (`runc`,
//! then `crun`) is searched.

use std::path::{Path, PathBuf};

use crate::config::{Config, ConfigError, Source};

/// Where the runtime keeps what must outlive one call, root-only.
pub const STATE_DIR: &str = "/run/nvidia-container-runtime";
/// Overrides [`STATE_DIR`] (tests; hosts whose `/run` is elsewhere).
pub const STATE_DIR_ENV: &str = "NVIDIA_CONTAINER_RUNTIME_STATE_DIR";

/// The config of one invocation.
// One per process, moved once: the size of the larger variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum ConfigState {
    /// Parsed (or the defaults, when there is no file).
    Loaded(Config, Source),
    /// There is a file, and it cannot be used.
    Broken(ConfigError),
}

impl ConfigState {
    /// [`Config::load`], keeping a failure instead of returning it.
    pub fn load(env: impl Fn(&str) -> Option<String>) -> ConfigState {
        match Config::load(env) {
            Ok((config, source)) => ConfigState::Loaded(config, source),
            Err(error) => ConfigState::Broken(error),
        }
    }
}

/// The state dir: `$NVIDIA_CONTAINER_RUNTIME_STATE_DIR`, else [`STATE_DIR`].
pub fn state_dir(env: impl Fn(&str) -> Option<String>) -> PathBuf {
    env(STATE_DIR_ENV)
        .filter(|dir| !dir.is_empty())
        .map_or_else(|| PathBuf::from(STATE_DIR), PathBuf::from)
}

fn record_path(state_dir: &Path) -> PathBuf {
    state_dir.join("runtimes")
}

/// The `runtimes` list of the last create whose config was good, if it was
/// recorded by root and nobody else can have changed it.
pub fn remembered_runtimes(state_dir: &Path) -> Option<Vec<String>> {
    // It names programs we exec as root: only a regular file of ours that
    // no one else may write is believed.
    let bytes = crate::bounded::read_private_file(&record_path(state_dir))?;
    let text = String::from_utf8(bytes).ok()?;
    let runtimes: Vec<String> = serde_json::from_str(&text).ok()?;
    (!runtimes.is_empty()).then_some(runtimes)
}

/// Records `runtimes` for [`remembered_runtimes`], unless it is already
/// what is recorded. Failures only log: the record is a convenience for a
/// later broken config, never a reason to fail this create.
pub fn remember_runtimes(state_dir: &Path, runtimes: &[String]) {
    if remembered_runtimes(state_dir).as_deref() == Some(runtimes) {
        return;
    }
    let result = (|| {
        std::fs::create_dir_all(state_dir)?;
        std::fs::set_permissions(
            state_dir,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )?;
        let text = serde_json::to_vec(runtimes).map_err(std::io::Error::other)?;
        let options = crate::atomic::Options {
            mode: 0o600,
            owner: None,
            // Under /run: gone with a crash anyway.
            durability: crate::atomic::Durability::Readers,
        };
        crate::atomic::write(&record_path(state_dir), &text, &options)
    })();
    if let Err(error) = result {
        tracing::warn!(
            "cannot record the low-level runtimes in {}: {error}",
            state_dir.display()
        );
    }
}

/// The candidates to find the low-level runtime among while the config is
/// broken.
pub fn runtimes_without_config(state_dir: &Path) -> Vec<String> {
    remembered_runtimes(state_dir)
        .unwrap_or_else(|| Config::default().nvidia_container_runtime.runtimes)
}

/// The config whose request channels judge a config.json while the real
/// config is broken: the defaults' channels plus device mounts (which only
/// the config can switch on). A container that mentions none of them is not
/// one we would touch with any config that has the default request channels.
pub fn every_request_channel() -> Config {
    Config {
        accept_nvidia_visible_devices_as_volume_mounts: true,
        ..Config::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_good_runtimes_are_remembered_and_a_foreign_record_is_not_believed() {
        let dir = std::env::temp_dir().join(format!("ncr-fallback-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(runtimes_without_config(&dir), ["runc", "crun"]);
        let crun = vec!["crun".to_string()];
        remember_runtimes(&dir, &crun);
        assert_eq!(remembered_runtimes(&dir), Some(crun.clone()));
        assert_eq!(runtimes_without_config(&dir), crun);
        // Group- or world-writable: someone else may have written it.
        let record = record_path(&dir);
        std::fs::set_permissions(&record, std::os::unix::fs::PermissionsExt::from_mode(0o622))
            .unwrap();
        assert_eq!(remembered_runtimes(&dir), None);
        // A symlink is not followed.
        std::fs::remove_file(&record).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", &record).unwrap();
        assert_eq!(remembered_runtimes(&dir), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn without_a_config_every_default_request_channel_still_counts() {
        let config = every_request_channel();
        let may_request_devices =
            |bytes: &[u8]| crate::request::may_request_devices(bytes, &config);
        assert!(!may_request_devices(
            br#"{"process":{"env":["PATH=/bin"]}}"#
        ));
        assert!(may_request_devices(
            br#"{"process":{"env":["NVIDIA_VISIBLE_DEVICES=0"]}}"#
        ));
        assert!(may_request_devices(
            br#"{"mounts":[{"destination":"/var/run/nvidia-container-devices/0"}]}"#
        ));
        assert!(may_request_devices(
            br#"{"annotations":{"cdi.k8s.io/x":"nvidia.com/gpu=0"}}"#
        ));
    }
}
