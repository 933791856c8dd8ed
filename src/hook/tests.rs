//! The hook's plan, as an ordinary user: what `prestart` does to a
//! container, recorded by a [`RecordingSystem`] (no setns, no mount), with
//! the files it writes landing in a temporary rootfs. Real runc in
//! tests/hook.rs proves the same steps inside a real mount namespace.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::config::Config;
use crate::driver::fake::FakeDriver;
use crate::edits::{prestart_hook, HookSettings};
use crate::ldcache::LdCache;
use crate::oci::State;
use crate::system::{Call, RecordingSystem};

use super::{prestart, HookArgs, HookError};

struct Container {
    fake: FakeDriver,
    bundle: PathBuf,
    rootfs: PathBuf,
}

impl Container {
    fn new(name: &str) -> Container {
        let fake = FakeDriver::new(&format!("hook-{name}"));
        let bundle = fake.path("bundle");
        let rootfs = bundle.join("rootfs");
        std::fs::create_dir_all(rootfs.join("etc")).unwrap();
        std::fs::create_dir_all(rootfs.join("proc/driver/nvidia")).unwrap();
        let spec = json!({
            "ociVersion": "1.2.0",
            "root": {"path": "rootfs"},
            "process": {"env": ["NVIDIA_VISIBLE_DEVICES=1"]},
        });
        std::fs::write(bundle.join("config.json"), spec.to_string()).unwrap();
        Container {
            fake,
            bundle,
            rootfs,
        }
    }

    fn config(&self) -> Config {
        let mut config = Config::default();
        config.nvidia_container_runtime.proc_root = self.fake.path("proc").display().to_string();
        config
    }

    fn state(&self) -> State {
        State {
            id: "c1".to_string(),
            pid: 4242,
            bundle: self.bundle.clone(),
            status: "creating".to_string(),
        }
    }
}

fn args_for(libraries: &[(&str, &str)], gpus: &[&str]) -> HookArgs {
    let settings = HookSettings {
        path: PathBuf::from("/usr/bin/nvidia-container-runtime-hook"),
        config_path: None,
    };
    let libraries: Vec<(String, PathBuf)> = libraries
        .iter()
        .map(|(soname, path)| (soname.to_string(), PathBuf::from(path)))
        .collect();
    let hook = prestart_hook(&settings, &libraries, gpus, &[], &[]);
    let argv: Vec<OsString> = hook.args.iter().map(OsString::from).collect();
    HookArgs::parse(&argv).unwrap()
}

#[test]
fn prestart_enters_the_namespace_then_writes_the_cache_and_masks_proc() {
    let container = Container::new("plan");
    let system = RecordingSystem::new();
    let args = args_for(
        &[("libcuda.so.1", "/usr/lib/x86_64-linux-gnu/libcuda.so.1")],
        &["0000:3b:00.0"],
    );
    let report = prestart(&args, &container.state(), &container.config(), &system).unwrap();
    assert_eq!(report.ld_cache_entries, 1);
    assert!(report.masked_proc);

    let calls = system.calls();
    let rootfs = &container.rootfs;
    let etc = rootfs.join("etc");
    let masked = rootfs.join("proc/driver/nvidia");
    let temp = format!(".ld.so.cache.nvidia-hook-{}.tmp", std::process::id());
    // The order is the contract: nothing in the rootfs is touched before
    // the namespace is entered, and the mask is filled only after the tmpfs
    // is over the directory, then made read-only.
    let expected = [
        Call::OpenDirectory(PathBuf::from("/proc/4242/root")),
        Call::EnterMountNamespace(4242),
        Call::OpenInRoot(rootfs.strip_prefix("/").unwrap().display().to_string()),
        // compute (libcuda) was injected: the image's CUDA compat dir is
        // looked for (there is none).
        Call::OpenInRoot("usr/local/cuda/compat".to_string()),
        Call::OpenInRoot("etc".to_string()),
        Call::CreateFile(etc.join(&temp)),
        Call::Rename(etc.join(&temp), "ld.so.cache".to_string()),
        Call::OpenInRoot("proc/driver/nvidia".to_string()),
        Call::MountTmpfs {
            target: masked.clone(),
            options: "mode=0555,size=16m".to_string(),
        },
        Call::OpenInRoot("proc/driver/nvidia".to_string()),
    ];
    assert_eq!(calls[..expected.len()], expected, "{calls:#?}");
    assert_eq!(calls.last(), Some(&Call::RemountReadOnly(masked.clone())));
    let made: Vec<&Call> = calls
        .iter()
        .filter(|call| matches!(call, Call::MakeDirectory(_)))
        .collect();
    assert_eq!(
        made,
        [
            &Call::MakeDirectory(masked.join("gpus")),
            &Call::MakeDirectory(masked.join("gpus/0000:3b:00.0")),
        ]
    );

    // What was written: the cache the container's loader reads, and only
    // the selected GPU's procfs dir, with ModifyDeviceFiles off.
    let cache = LdCache::parse(&std::fs::read(etc.join("ld.so.cache")).unwrap()).unwrap();
    assert_eq!(cache.entries[0].key, "libcuda.so.1");
    assert_eq!(
        cache.entries[0].value,
        "/usr/lib/x86_64-linux-gnu/libcuda.so.1"
    );
    let params = std::fs::read_to_string(masked.join("params")).unwrap();
    assert_eq!(params, "ModifyDeviceFiles: 0\n");
    let gpus: Vec<String> = std::fs::read_dir(masked.join("gpus"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(gpus, ["0000:3b:00.0"]);
}

#[test]
fn docker_gpus_entry_for_a_foreign_pid_is_refused_before_any_side_effect() {
    let container = Container::new("not-ours");
    let system = RecordingSystem::new();
    let argv: Vec<OsString> = ["nvidia-container-runtime-hook", "prestart"]
        .iter()
        .map(OsString::from)
        .collect();
    let args = HookArgs::parse(&argv).unwrap();
    let error = prestart(&args, &container.state(), &container.config(), &system).unwrap_err();
    // The hook-only mode checks the process first: 4242 is not a child of
    // this test's parent.
    assert!(
        matches!(error, HookError::ForeignPid { pid: 4242, .. }),
        "{error}"
    );
    assert_eq!(system.calls(), [Call::OpenPid(4242)]);
}

#[test]
fn a_container_without_proc_driver_nvidia_is_not_masked() {
    let container = Container::new("no-proc");
    std::fs::remove_dir_all(container.rootfs.join("proc")).unwrap();
    let system = RecordingSystem::new();
    let args = args_for(&[], &["0000:3b:00.0"]);
    let report = prestart(&args, &container.state(), &container.config(), &system).unwrap();
    assert!(!report.masked_proc);
    assert!(!system
        .calls()
        .iter()
        .any(|call| matches!(call, Call::MountTmpfs { .. })));
    assert!(!Path::new(&container.rootfs.join("etc/ld.so.cache")).exists());
}
