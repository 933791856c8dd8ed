//! OCI bundles: runc's spec template, edited as JSON.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::{json, Value};

use super::*;

/// Where crun writes the hooks' stderr in a bundle (see [`Bundle::new`]).
pub const HOOK_STDERR: &str = "hooks.stderr";

pub struct Bundle {
    pub dir: PathBuf,
    pub rootfs: PathBuf,
}

impl Bundle {
    /// Writes `dir/config.json` (the `runc spec` defaults, with the given
    /// args and env, terminal off, writable root) and `dir/rootfs`.
    pub fn new(dir: &Path, kind: RootfsKind, args: &[&str], env: &[&str]) -> Bundle {
        fs::create_dir_all(dir).expect("create bundle dir");
        let rootfs = build_rootfs(dir, kind);
        let mut config = runc_spec_template().clone();
        let mut process_env = vec![format!("PATH={CONTAINER_PATH}")];
        process_env.extend(env.iter().map(|s| s.to_string()));
        config["process"]["terminal"] = json!(false);
        config["process"]["args"] = json!(args);
        config["process"]["env"] = json!(process_env);
        config["root"] = json!({"path": "rootfs", "readonly": false});
        config["hostname"] = json!("fixture");
        if generation().low_level == LowLevel::Crun {
            // runc passes a failing hook's stderr on as its own; crun drops
            // it unless this annotation names a file (crun(1), "Hooks"). The
            // tests read the file as part of the runtime's stderr, so they
            // check the same message under both.
            config["annotations"]["run.oci.hooks.stderr"] =
                json!(dir.join(HOOK_STDERR).display().to_string());
        }
        let bundle = Bundle {
            dir: dir.to_path_buf(),
            rootfs,
        };
        bundle.write_config(&config);
        bundle
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.json")
    }

    pub fn read_config(&self) -> Value {
        let text = fs::read_to_string(self.config_path()).expect("read config.json");
        serde_json::from_str(&text).expect("parse config.json")
    }

    pub fn write_config(&self, value: &Value) {
        let text = serde_json::to_string_pretty(value).expect("serialize config.json");
        fs::write(self.config_path(), text).expect("write config.json");
    }

    /// What the hooks wrote to stderr where the runtime kept it in a file
    /// (crun); empty under runc, which passes it on.
    pub fn hook_stderr(&self) -> String {
        fs::read_to_string(self.dir.join(HOOK_STDERR)).unwrap_or_default()
    }

    /// Where `run_container`/`create_start_delete` make the runtime log (`--log`).
    pub fn runtime_log_path(&self) -> PathBuf {
        self.dir.join("runtime-log.json")
    }

    /// Edits config.json in place.
    pub fn edit_config(&self, edit: impl FnOnce(&mut Value)) {
        let mut config = self.read_config();
        edit(&mut config);
        self.write_config(&config);
    }

    /// Adds a read-only bind mount (ro,bind,nosuid,nodev) of `source` at `destination`.
    pub fn add_bind_mount(&self, source: &Path, destination: &str) {
        self.edit_config(|c| {
            c["mounts"]
                .as_array_mut()
                .expect("mounts array")
                .push(json!({
                    "destination": destination,
                    "type": "bind",
                    "source": source,
                    "options": ["ro", "bind", "nosuid", "nodev"],
                }));
        });
    }

    /// Adds `linux.devices` entry for a char device (mode 0666), and, if
    /// `allow`, a device cgroup rule allowing rw to it.
    pub fn add_char_device(&self, path: &str, major: u32, minor: u32, allow: bool) {
        self.edit_config(|c| {
            let linux = c["linux"].as_object_mut().expect("linux object");
            let devices = linux.entry("devices").or_insert_with(|| json!([]));
            devices.as_array_mut().unwrap().push(json!({
                "path": path, "type": "c", "major": major, "minor": minor,
                "fileMode": 0o666, "uid": 0, "gid": 0,
            }));
            if allow {
                let rules = c["linux"]["resources"]["devices"].as_array_mut().expect("device rules");
                rules.push(json!({"allow": true, "type": "c", "major": major, "minor": minor, "access": "rwm"}));
            }
        });
    }
}

fn runc_spec_template() -> &'static Value {
    static SPEC: OnceLock<Value> = OnceLock::new();
    SPEC.get_or_init(|| {
        let dir = cache_root().join(format!(
            "runc-spec-{}-{}",
            std::process::id(),
            next_counter()
        ));
        fs::create_dir_all(&dir).expect("create runc spec dir");
        // runc's own template whatever the low-level runtime under test
        // (crun's differs), so a test's bundle is the same everywhere.
        let runc = find_in_path("runc").expect("runc is not installed: apt-get install -y runc");
        run_ok(Command::new(runc).arg("spec").current_dir(&dir));
        let text = fs::read_to_string(dir.join("config.json")).expect("read runc spec");
        let _ = fs::remove_dir_all(&dir);
        serde_json::from_str(&text).expect("parse runc spec")
    })
}
