//! What the Debian package ships (debian/, packaging/, tests/packaging/test.sh).
//!
//! - The default config file (`packaging/config.toml`, installed as the
//!   conffile `/etc/nvidia-container-runtime/config.toml`) is checked here on
//!   every `cargo test`, so that it cannot drift from `Config::default()`.
//! - The installed runtime is checked by an ignored test that
//!   tests/packaging/test.sh runs after `dpkg -i`:
//!   `NCR_RUNTIME=/usr/bin/nvidia-container-runtime cargo test --test packaging -- --ignored`.
mod common;

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use nvidia_container_runtime::config::{
    CdiModeConfig, CliConfig, Config, CtkConfig, FeaturesConfig, HookConfig, LegacyModeConfig,
    ModesConfig, RuntimeConfig,
};

const SHIPPED_CONFIG: &str = include_str!("../packaging/config.toml");
const SHIPPED_CONFIG_PATH: &str = "packaging/config.toml";

/// The file's keys, dotted (`nvidia-container-runtime.modes.cdi.spec-dirs`),
/// leaves only.
fn leaf_keys(table: &toml::Table, prefix: &str, keys: &mut BTreeSet<String>) {
    for (key, value) in table {
        let dotted = format!("{prefix}{key}");
        match value {
            toml::Value::Table(inner) => leaf_keys(inner, &format!("{dotted}."), keys),
            _ => {
                keys.insert(dotted);
            }
        }
    }
}

/// Checks one key: the parsed value equals the default, and the key is
/// written in the file (a key left out would parse as its default too, but
/// the file promises every key). Records the key as checked.
fn same<T: PartialEq + Debug>(checked: &mut BTreeSet<String>, key: &str, parsed: &T, default: &T) {
    assert_eq!(
        parsed, default,
        "{SHIPPED_CONFIG_PATH}: `{key}` is not the default of src/config.rs"
    );
    checked.insert(key.to_string());
}

#[test]
fn shipped_config_sets_every_key_to_its_default() {
    let parsed = Config::parse(SHIPPED_CONFIG, Path::new(SHIPPED_CONFIG_PATH)).unwrap();
    assert_eq!(
        parsed.unknown_keys(),
        Vec::<String>::new(),
        "{SHIPPED_CONFIG_PATH} has keys the programs do not read"
    );
    let default = Config::default();
    let mut checked = BTreeSet::new();
    let c = &mut checked;

    // Exhaustive destructuring, no `..`: a field added to the config structs
    // stops this test from compiling until it is checked here (and so written
    // in the file).
    let Config {
        disable_require,
        supported_driver_capabilities,
        swarm_resource,
        accept_nvidia_visible_devices_envvar_when_unprivileged,
        accept_nvidia_visible_devices_as_volume_mounts,
        nvidia_container_cli,
        nvidia_container_runtime,
        nvidia_container_runtime_hook,
        nvidia_ctk,
        features,
        unknown: _,
    } = parsed;
    same(
        c,
        "disable-require",
        &disable_require,
        &default.disable_require,
    );
    same(
        c,
        "supported-driver-capabilities",
        &supported_driver_capabilities,
        &default.supported_driver_capabilities,
    );
    same(
        c,
        "swarm-resource",
        &swarm_resource,
        &default.swarm_resource,
    );
    same(
        c,
        "accept-nvidia-visible-devices-envvar-when-unprivileged",
        &accept_nvidia_visible_devices_envvar_when_unprivileged,
        &default.accept_nvidia_visible_devices_envvar_when_unprivileged,
    );
    same(
        c,
        "accept-nvidia-visible-devices-as-volume-mounts",
        &accept_nvidia_visible_devices_as_volume_mounts,
        &default.accept_nvidia_visible_devices_as_volume_mounts,
    );

    let CliConfig {
        root,
        ldconfig,
        unknown: _,
    } = nvidia_container_cli;
    let cli = &default.nvidia_container_cli;
    same(c, "nvidia-container-cli.root", &root, &cli.root);
    same(c, "nvidia-container-cli.ldconfig", &ldconfig, &cli.ldconfig);

    let RuntimeConfig {
        debug,
        log_level,
        mode,
        runtimes,
        dev_root,
        proc_root,
        sys_root,
        modes,
        unknown: _,
    } = nvidia_container_runtime;
    let runtime = &default.nvidia_container_runtime;
    same(c, "nvidia-container-runtime.debug", &debug, &runtime.debug);
    same(
        c,
        "nvidia-container-runtime.log-level",
        &log_level,
        &runtime.log_level,
    );
    same(c, "nvidia-container-runtime.mode", &mode, &runtime.mode);
    same(
        c,
        "nvidia-container-runtime.runtimes",
        &runtimes,
        &runtime.runtimes,
    );
    same(
        c,
        "nvidia-container-runtime.dev-root",
        &dev_root,
        &runtime.dev_root,
    );
    same(
        c,
        "nvidia-container-runtime.proc-root",
        &proc_root,
        &runtime.proc_root,
    );
    same(
        c,
        "nvidia-container-runtime.sys-root",
        &sys_root,
        &runtime.sys_root,
    );

    let ModesConfig {
        cdi,
        legacy,
        unknown: _,
    } = modes;
    let LegacyModeConfig {
        cuda_compat_mode,
        unknown: _,
    } = legacy;
    same(
        c,
        "nvidia-container-runtime.modes.legacy.cuda-compat-mode",
        &cuda_compat_mode,
        &runtime.modes.legacy.cuda_compat_mode,
    );
    let CdiModeConfig {
        default_kind,
        annotation_prefixes,
        spec_dirs,
        unknown: _,
    } = cdi;
    let default_cdi = &runtime.modes.cdi;
    same(
        c,
        "nvidia-container-runtime.modes.cdi.default-kind",
        &default_kind,
        &default_cdi.default_kind,
    );
    same(
        c,
        "nvidia-container-runtime.modes.cdi.annotation-prefixes",
        &annotation_prefixes,
        &default_cdi.annotation_prefixes,
    );
    same(
        c,
        "nvidia-container-runtime.modes.cdi.spec-dirs",
        &spec_dirs,
        &default_cdi.spec_dirs,
    );

    let HookConfig { path, unknown: _ } = nvidia_container_runtime_hook;
    same(
        c,
        "nvidia-container-runtime-hook.path",
        &path,
        &default.nvidia_container_runtime_hook.path,
    );
    let CtkConfig { path, unknown: _ } = nvidia_ctk;
    same(c, "nvidia-ctk.path", &path, &default.nvidia_ctk.path);
    let FeaturesConfig {
        disable_cuda_compat_lib_hook,
        unknown: _,
    } = features;
    same(
        c,
        "features.disable-cuda-compat-lib-hook",
        &disable_cuda_compat_lib_hook,
        &default.features.disable_cuda_compat_lib_hook,
    );

    // Every key checked above is written in the file, and nothing else is.
    let table: toml::Table = toml::from_str(SHIPPED_CONFIG).unwrap();
    let mut in_file = BTreeSet::new();
    leaf_keys(&table, "", &mut in_file);
    assert_eq!(
        in_file, checked,
        "{SHIPPED_CONFIG_PATH} must set every key (left: the file's keys, right: the config's)"
    );
}

/// Every key of the shipped file has a comment right above it (or above its
/// group), so that an admin can read what it does.
#[test]
fn shipped_config_comments_every_key() {
    let mut previous = "";
    for line in SHIPPED_CONFIG.lines() {
        let line = line.trim();
        let is_key = !line.is_empty() && !line.starts_with('#') && !line.starts_with('[');
        if is_key {
            assert!(
                previous.starts_with('#'),
                "{SHIPPED_CONFIG_PATH}: `{line}` has no comment above it"
            );
        }
        previous = line;
    }
}

/// The runtime of the installed package (`NCR_RUNTIME`, default
/// /usr/bin/nvidia-container-runtime) starts a GPU container against the
/// fake driver, through its own hook installed next to it.
#[test]
#[ignore = "run by tests/packaging/test.sh after installing the package"]
fn installed_runtime_gives_a_container_its_gpu() {
    if !require_root() {
        return;
    }
    let runtime = PathBuf::from(
        std::env::var("NCR_RUNTIME")
            .unwrap_or_else(|_| "/usr/bin/nvidia-container-runtime".to_string()),
    );
    assert!(
        runtime.is_absolute() && runtime.is_file(),
        "{}: no installed runtime (install the package, or set NCR_RUNTIME)",
        runtime.display()
    );
    let hook = runtime.with_file_name("nvidia-container-runtime-hook");
    assert!(hook.is_file(), "{}: not installed", hook.display());

    let tmp = TempDir::new("packaged");
    let driver = FakeDriver::build(&tmp.path().join("driver"), &FakeDriverOptions::two_gpus());
    // Takes precedence over the installed /etc/nvidia-container-runtime/config.toml.
    let config = driver.write_config(&tmp.path().join("config.toml"), "");
    let state_root = tmp.path().join("state");
    fs::create_dir_all(&state_root).unwrap();
    let bundle = Bundle::new(
        &tmp.path().join("bundle"),
        RootfsKind::Glibc { ldconfig: true },
        &[
            "sh",
            "-c",
            "ls /dev; echo ---; ldconfig -p | grep -c libcuda.so.1; echo ---; nvidia-smi -L",
        ],
        &["NVIDIA_VISIBLE_DEVICES=1"],
    );
    let out = run_container(
        &runtime,
        &state_root,
        &bundle,
        &unique_id("packaged"),
        &[("NVIDIA_CTK_CONFIG_FILE_PATH", config.to_str().unwrap())],
    );
    out.assert_success("the installed runtime");

    let parts: Vec<&str> = out.stdout.split("---\n").collect();
    assert_eq!(parts.len(), 3, "{}", out.stdout);
    let gpu = &driver.gpus[1];
    let gpu_nodes: Vec<&str> = parts[0]
        .split_whitespace()
        .filter(|n| {
            n.strip_prefix("nvidia")
                .is_some_and(|minor| minor.parse::<u32>().is_ok())
        })
        .collect();
    assert_eq!(gpu_nodes, [format!("nvidia{}", gpu.minor)], "{}", parts[0]);
    // The installed hook wrote the container's ld.so.cache.
    assert_ne!(
        parts[1].trim(),
        "0",
        "libcuda.so.1 not in the container's ld.so.cache"
    );
    assert_eq!(parts[2], gpu.smi_line(0) + "\n");

    // The hook that ran is the installed one, found next to the runtime.
    let spec = bundle.read_config();
    let hooks = spec["hooks"]["prestart"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        hooks.iter().any(|h| h["path"] == hook.to_str().unwrap()),
        "no prestart hook {} in {hooks:?}",
        hook.display()
    );

    // A requirement check: the static runtime loads no library itself; the
    // installed facts helper next to it tells it the CUDA version (12.4).
    let facts_state = tmp.path().join("runtime-state");
    let requirement = |name: &str, cuda: &str| {
        let bundle = Bundle::new(
            &tmp.path().join(name),
            RootfsKind::Busybox,
            &["true"],
            &[
                "NVIDIA_VISIBLE_DEVICES=0",
                &format!("NVIDIA_REQUIRE_CUDA=cuda>={cuda}"),
            ],
        );
        run_container(
            &runtime,
            &state_root,
            &bundle,
            &unique_id(name),
            &[
                ("NVIDIA_CTK_CONFIG_FILE_PATH", config.to_str().unwrap()),
                (
                    "NVIDIA_CONTAINER_RUNTIME_STATE_DIR",
                    facts_state.to_str().unwrap(),
                ),
            ],
        )
    };
    requirement("require-met", "12.0").assert_success("cuda>=12.0 on CUDA 12.4");
    let out = requirement("require-unmet", "12.6");
    assert_eq!(out.status, 1, "{out:?}");
    assert!(
        out.stderr.contains("the driver supports CUDA 12.4"),
        "{}",
        out.stderr
    );
}
