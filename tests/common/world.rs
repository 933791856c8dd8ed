//! One test's host ([`World`]) and the assertions the test files share.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;

/// One test's host: a fake driver, a config.toml pointing the runtime at it,
/// and a runc state root, all in one temp dir (removed on drop). Test files
/// add their own `impl World` blocks for how they drive the runtime.
pub struct World {
    pub tmp: TempDir,
    pub driver: FakeDriver,
    pub config: PathBuf,
    pub state_root: PathBuf,
    /// The runtime's own state dir (what it remembers between calls), kept
    /// out of the host's `/run/nvidia-container-runtime`.
    pub runtime_state: PathBuf,
}

impl World {
    /// `top_level_keys` go before the first table of config.toml,
    /// `runtime_keys` into `[nvidia-container-runtime]`.
    pub fn build(
        name: &str,
        options: &FakeDriverOptions,
        top_level_keys: &str,
        runtime_keys: &str,
    ) -> World {
        let tmp = TempDir::new(name);
        let driver = FakeDriver::build(&tmp.path().join("driver"), options);
        let config = driver.write_config(&tmp.path().join("config.toml"), runtime_keys);
        if !top_level_keys.is_empty() {
            let text = fs::read_to_string(&config).expect("read config.toml");
            fs::write(&config, format!("{top_level_keys}\n{text}")).expect("write config.toml");
        }
        let state_root = tmp.path().join("state");
        fs::create_dir_all(&state_root).expect("create state root");
        let runtime_state = tmp.path().join("runtime-state");
        World {
            tmp,
            driver,
            config,
            state_root,
            runtime_state,
        }
    }

    /// The environment that points the runtime at this world's config.
    pub fn config_env(&self) -> Vec<(&str, &str)> {
        vec![
            (
                "NVIDIA_CTK_CONFIG_FILE_PATH",
                self.config.to_str().expect("UTF-8 config path"),
            ),
            (
                "NVIDIA_CONTAINER_RUNTIME_STATE_DIR",
                self.runtime_state.to_str().expect("UTF-8 temp path"),
            ),
        ]
    }

    /// Makes `<tmp>/cdi` this world's only CDI spec dir (a table appended
    /// after `[nvidia-container-runtime]`) and returns it.
    #[allow(dead_code)] // Not every test binary reads CDI specs.
    pub fn use_cdi_spec_dir(&self) -> PathBuf {
        let spec_dir = self.tmp.path().join("cdi");
        fs::create_dir_all(&spec_dir).unwrap();
        let text = fs::read_to_string(&self.config).unwrap();
        let table = format!(
            "\n[nvidia-container-runtime.modes.cdi]\nspec-dirs = [\"{}\"]\n",
            spec_dir.display()
        );
        fs::write(&self.config, text + &table).unwrap();
        spec_dir
    }

    /// A bundle in this world's temp dir.
    pub fn bundle(&self, name: &str, kind: RootfsKind, args: &[&str], env: &[&str]) -> Bundle {
        Bundle::new(&self.tmp.path().join(name), kind, args, env)
    }
}

/// A container command that lists `/dev`, then runs `nvidia-smi -L`; see
/// [`assert_sees_only_gpu`].
pub const GPU_SCRIPT: &str = "ls /dev; echo ---; nvidia-smi -L";

/// Asserts that `stdout` of [`GPU_SCRIPT`] shows exactly GPU `index` of
/// `driver`: its node, the control and uvm nodes plus `extra_nodes`, and
/// that GPU alone in `nvidia-smi -L`.
pub fn assert_sees_only_gpu(
    driver: &FakeDriver,
    stdout: &str,
    index: usize,
    extra_nodes: &[&str],
    what: &str,
) {
    let (listing, smi) = stdout
        .split_once("---\n")
        .unwrap_or_else(|| panic!("{what}: unexpected output\n{stdout}"));
    let mut nodes: Vec<&str> = listing
        .split_whitespace()
        .filter(|n| n.starts_with("nvidia"))
        .collect();
    nodes.sort();
    let gpu_node = format!("nvidia{}", driver.gpus[index].minor);
    let mut expected = vec![
        gpu_node.as_str(),
        "nvidia-uvm",
        "nvidia-uvm-tools",
        "nvidiactl",
    ];
    expected.extend_from_slice(extra_nodes);
    expected.sort();
    assert_eq!(nodes, expected, "{what}: /dev listing\n{stdout}");
    assert_eq!(smi, driver.smi_output(&[index]), "{what}: nvidia-smi -L");
}

/// A file's bytes and mtime, to prove that something did not write it;
/// `None` when it does not exist.
pub fn file_snapshot(path: &Path) -> Option<(Vec<u8>, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(path).ok()?;
    Some((fs::read(path).ok()?, meta.mtime(), meta.mtime_nsec()))
}

/// Every entry under `dir`: relative path -> kind, content or link target,
/// and permission bits (a missing dir is empty): proves that a failed or
/// hostile start left a tree as it was.
pub fn tree_snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            let mode = meta.permissions().mode() & 0o7777;
            let relative = path.strip_prefix(root).unwrap().to_path_buf();
            let kind = meta.file_type();
            let description = if kind.is_symlink() {
                format!("link {:?}", fs::read_link(&path).unwrap())
            } else if kind.is_dir() {
                walk(root, &path, out);
                format!("dir {mode:o}")
            } else if kind.is_file() {
                format!("file {mode:o} {:?}", fs::read(&path).unwrap())
            } else {
                format!("other {mode:o}")
            };
            out.insert(relative, description);
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// `podman` with its storage, run and temp dirs under `dir` and its
/// config from `containers_conf`: a test never touches the host's podman.
#[allow(dead_code)] // Only the podman tests use it.
pub fn podman_command(dir: &Path, containers_conf: &Path) -> Command {
    podman_command_in(Generation::DEBIAN12, dir, containers_conf)
}

/// [`podman_command`] with the podman of `generation`.
pub fn podman_command_in(generation: Generation, dir: &Path, containers_conf: &Path) -> Command {
    let mut cmd = generation.command("podman");
    // podman 5 warns on every command that cgroup v1 is deprecated.
    cmd.env("PODMAN_IGNORE_CGROUPSV1_WARNING", "1");
    cmd.arg("--root")
        .arg(dir.join("storage"))
        .arg("--runroot")
        .arg(dir.join("run"))
        .arg("--tmpdir")
        .arg(dir.join("tmp"))
        .env("CONTAINERS_CONF", containers_conf);
    cmd
}

/// What every `podman run` of the tests starts with. Rootful podman raises
/// RLIMIT_NOFILE and RLIMIT_NPROC to 1048576 in every container; this
/// machine's hard limits are lower and the OCI runtime may not raise them
/// (the same failure without us): ask for lower ones.
#[allow(dead_code)] // Only the podman tests use it.
pub const PODMAN_RUN: [&str; 5] = [
    "run",
    "--rm",
    "--network=none",
    "--ulimit=nofile=1024:1024",
    "--ulimit=nproc=1024:1024",
];

/// Runs `podman system reset --force` (built by the closure, with the
/// test's own storage and config flags) when dropped: podman keeps
/// storage/overlay bind-mounted, and the reset undoes that also when an
/// assertion failed, so the temp dir can go.
pub struct PodmanReset<F: Fn(&[&str]) -> Command>(pub F);

impl<F: Fn(&[&str]) -> Command> Drop for PodmanReset<F> {
    fn drop(&mut self) {
        let mut reset = (self.0)(&["system", "reset", "--force"]);
        let _ = reset
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}
