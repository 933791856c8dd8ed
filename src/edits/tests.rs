//! The edits model against a fake driver, as an ordinary user: selection,
//! the per-capability file sets, MIG and IMEX nodes, the hook entry, and
//! idempotence of the patch built from them. Device nodes are served by a
//! recording system (no mknod), so none of this needs root; the
//! integration tests prove the same edits with real runc.

use std::path::{Path, PathBuf};

use serde_json::json;

use crate::driver::fake::{self, FakeDriver, CAPS_MAJOR, IMEX_MAJOR, NVIDIA_MAJOR};
use crate::driver::{Driver, MigInfo, MigLookup};
use crate::request::{Capabilities, Capability, DeviceId, Devices, ImexChannels, Request};

use super::{select_devices, ContainerEdits, EditsError, HookSettings, LibraryDirs};

/// No MIG device anywhere: selection must not ask for one.
struct NoMig;

impl MigLookup for NoMig {
    fn mig_by_uuid(&mut self, uuid: &str) -> Result<MigInfo, String> {
        panic!("asked NVML for {uuid}")
    }
    fn mig_by_index(&mut self, _: &str, index: u32) -> Result<Option<MigInfo>, String> {
        panic!("asked NVML for MIG index {index}")
    }
}

/// One MIG device, gi 1 / ci 0 of the GPU with minor 3 (index 0).
struct OneMig;

const MIG_UUID: &str = "MIG-33333333-3333-3333-3333-333333333333";

impl MigLookup for OneMig {
    fn mig_by_uuid(&mut self, uuid: &str) -> Result<MigInfo, String> {
        if uuid != MIG_UUID {
            return Err(format!("no MIG device {uuid}"));
        }
        Ok(MigInfo {
            uuid: uuid.to_string(),
            parent_uuid: fake::GPUS[0].1.to_string(),
            gpu_instance: 1,
            compute_instance: 0,
        })
    }
    fn mig_by_index(&mut self, parent: &str, index: u32) -> Result<Option<MigInfo>, String> {
        let found = parent == fake::GPUS[0].1 && index == 0;
        found.then(|| self.mig_by_uuid(MIG_UUID)).transpose()
    }
}

fn capabilities(names: &[Capability]) -> Capabilities {
    names.iter().copied().collect()
}

fn request(devices: Devices, caps: &[Capability]) -> Request {
    Request::for_devices(devices, capabilities(caps), "NVIDIA_VISIBLE_DEVICES")
}

fn dirs() -> LibraryDirs {
    LibraryDirs {
        lib64: PathBuf::from("/usr/lib/x86_64-linux-gnu"),
        lib32: PathBuf::from("/usr/lib/i386-linux-gnu"),
    }
}

fn hook() -> HookSettings {
    HookSettings {
        path: PathBuf::from("/usr/bin/nvidia-container-runtime-hook"),
        config_path: None,
    }
}

fn edits_for(
    driver: &Driver,
    request: &Request,
    mig: &mut dyn MigLookup,
) -> Result<ContainerEdits, EditsError> {
    let selection = select_devices(driver, request, mig)?;
    ContainerEdits::for_request(driver, request, &selection, &dirs(), Some(&hook()))
}

fn node_paths(edits: &ContainerEdits) -> Vec<String> {
    edits
        .device_nodes
        .iter()
        .map(|node| node.path.display().to_string())
        .collect()
}

fn mount_targets(edits: &ContainerEdits) -> Vec<String> {
    edits
        .mounts
        .iter()
        .map(|mount| mount.container_path.display().to_string())
        .collect()
}

#[test]
fn selection_by_index_uuid_and_bus_id_maps_to_the_device_minor() {
    let fake = FakeDriver::new("select");
    let driver = fake.discover();
    // Index 1 is the second GPU in bus order, whose minor is 0.
    for id in [
        DeviceId::Index(1),
        DeviceId::Uuid(fake::GPUS[1].1.to_ascii_lowercase()),
        DeviceId::BusId(crate::request::BusId::parse("00000000:3B:00.0").unwrap()),
    ] {
        let request = request(Devices::List(vec![id.clone()]), &[Capability::Utility]);
        let edits = edits_for(&driver, &request, &mut NoMig).unwrap();
        let nodes = node_paths(&edits);
        assert!(
            nodes.contains(&"/dev/nvidia0".to_string()),
            "{id}: {nodes:?}"
        );
        assert!(
            !nodes.contains(&"/dev/nvidia3".to_string()),
            "{id}: {nodes:?}"
        );
        let gpu = edits
            .device_nodes
            .iter()
            .find(|node| node.path == Path::new("/dev/nvidia0"))
            .unwrap();
        assert_eq!((gpu.major, gpu.minor), (NVIDIA_MAJOR, 0));
        assert_eq!(gpu.permissions, "rwm");
    }
    // Asked twice, selected once.
    let twice = request(
        Devices::List(vec![DeviceId::Index(0), DeviceId::Index(0)]),
        &[Capability::Utility],
    );
    let selection = select_devices(&driver, &twice, &mut NoMig).unwrap();
    assert_eq!(selection.gpus.len(), 1);
    // All: both GPUs, none: only the control node.
    let all = edits_for(
        &driver,
        &request(Devices::All, &[Capability::Utility]),
        &mut NoMig,
    )
    .unwrap();
    assert_eq!(
        node_paths(&all),
        ["/dev/nvidiactl", "/dev/nvidia3", "/dev/nvidia0"]
    );
    let none = edits_for(
        &driver,
        &request(Devices::NoGpu, &[Capability::Utility]),
        &mut NoMig,
    )
    .unwrap();
    assert_eq!(node_paths(&none), ["/dev/nvidiactl"]);
}

#[test]
fn an_unknown_gpu_names_the_ones_the_host_has() {
    let fake = FakeDriver::new("unknown");
    let driver = fake.discover();
    let request = request(
        Devices::List(vec![DeviceId::Index(7)]),
        &[Capability::Utility],
    );
    let error = edits_for(&driver, &request, &mut NoMig)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("names GPU 7") && error.contains("GPUs 0-1"),
        "{error}"
    );
}

#[test]
fn each_capability_gets_its_own_files() {
    let fake = FakeDriver::new("capabilities");
    let driver = fake.discover();
    let lib = |name: &str| format!("/usr/lib/x86_64-linux-gnu/{name}");
    let gpu0 = Devices::List(vec![DeviceId::Index(0)]);

    let utility = edits_for(
        &driver,
        &request(gpu0.clone(), &[Capability::Utility]),
        &mut NoMig,
    )
    .unwrap();
    let targets = mount_targets(&utility);
    assert!(
        targets.contains(&lib("libnvidia-ml.so.550.54.15")),
        "{targets:?}"
    );
    assert!(targets.contains(&"/usr/bin/nvidia-smi".to_string()));
    assert!(
        !targets.iter().any(|t| t.contains("libcuda")),
        "{targets:?}"
    );
    assert!(!node_paths(&utility).contains(&"/dev/nvidia-uvm".to_string()));

    let compute = edits_for(
        &driver,
        &request(gpu0.clone(), &[Capability::Compute]),
        &mut NoMig,
    )
    .unwrap();
    let targets = mount_targets(&compute);
    // libcuda mounted once, at its file name, read-only; its SONAME and
    // libcuda.so are links the hook makes.
    let libcuda: Vec<_> = compute
        .mounts
        .iter()
        .filter(|m| m.host_path.to_string_lossy().contains("libcuda"))
        .collect();
    assert_eq!(libcuda.len(), 1, "{targets:?}");
    assert_eq!(
        libcuda[0].container_path,
        Path::new(&lib("libcuda.so.550.54.15"))
    );
    assert_eq!(
        libcuda[0].host_path,
        fake.path(&format!("{}/libcuda.so.550.54.15", fake::LIB_DIR))
    );
    assert_eq!(libcuda[0].options, ["ro", "nosuid", "nodev", "bind"]);
    let args = &compute.hooks[0].args;
    for link in [
        format!("libcuda.so.550.54.15::{}", lib("libcuda.so.1")),
        format!("libcuda.so.1::{}", lib("libcuda.so")),
    ] {
        assert!(args.contains(&link), "--link {link}: {args:?}");
    }
    assert!(targets.contains(&"/usr/bin/nvidia-cuda-mps-control".to_string()));
    assert!(
        !targets.iter().any(|t| t.contains("libnvidia-ml")),
        "{targets:?}"
    );
    let nodes = node_paths(&compute);
    assert!(nodes.contains(&"/dev/nvidia-uvm".to_string()), "{nodes:?}");
    assert!(nodes.contains(&"/dev/nvidia-uvm-tools".to_string()));

    // video implies compute's libraries.
    let video = edits_for(&driver, &request(gpu0, &[Capability::Video]), &mut NoMig).unwrap();
    let targets = mount_targets(&video);
    assert!(
        targets.contains(&lib("libnvcuvid.so.550.54.15")),
        "{targets:?}"
    );
    assert!(targets.contains(&lib("libnvidia-encode.so.550.54.15")));
    assert!(targets.contains(&lib("libcuda.so.550.54.15")));
    assert!(!targets.iter().any(|t| t.contains("libGLX_nvidia")));
}

#[test]
fn the_hook_entry_lists_the_libraries_and_the_selected_gpus() {
    let fake = FakeDriver::new("hook");
    let driver = fake.discover();
    let request = request(
        Devices::List(vec![DeviceId::Index(1)]),
        &[Capability::Compute, Capability::Utility],
    );
    let edits = edits_for(&driver, &request, &mut NoMig).unwrap();
    assert_eq!(edits.hooks.len(), 1);
    let args = &edits.hooks[0].args;
    assert!(
        args.contains(&"--injected-by-runtime".to_string()),
        "{args:?}"
    );
    assert!(
        args.contains(&"libcuda.so.1=/usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15".to_string())
    );
    let gpus: Vec<&String> = args
        .iter()
        .zip(args.iter().skip(1))
        .filter(|(flag, _)| *flag == "--gpu")
        .map(|(_, value)| value)
        .collect();
    assert_eq!(gpus, ["0000:3b:00.0"]);
    assert_eq!(edits.hooks[0].env, super::HOOK_ENV);
}

#[test]
fn a_mig_device_gets_its_parent_and_its_capability_nodes() {
    let fake = FakeDriver::new("mig");
    let driver = fake.discover();
    for id in [
        DeviceId::MigUuid(MIG_UUID.to_string()),
        DeviceId::MigIndex { gpu: 0, mig: 0 },
    ] {
        let request = request(Devices::List(vec![id.clone()]), &[Capability::Compute]);
        let edits = edits_for(&driver, &request, &mut OneMig).unwrap();
        let nodes = node_paths(&edits);
        assert!(
            nodes.contains(&"/dev/nvidia3".to_string()),
            "{id}: {nodes:?}"
        );
        for minor in [fake::MIG_GI_MINOR, fake::MIG_CI_MINOR] {
            let path = format!("/dev/nvidia-caps/nvidia-cap{minor}");
            let node = edits
                .device_nodes
                .iter()
                .find(|node| node.path == Path::new(&path))
                .unwrap_or_else(|| panic!("{path} missing: {nodes:?}"));
            assert_eq!((node.major, node.minor), (CAPS_MAJOR, u64::from(minor)));
        }
        let args = &edits.hooks[0].args;
        assert!(
            args.contains(&"capabilities/gpu3/mig/gi1/ci0/access".to_string()),
            "{args:?}"
        );
    }
    let missing = request(
        Devices::List(vec![DeviceId::MigIndex { gpu: 1, mig: 0 }]),
        &[Capability::Compute],
    );
    let error = edits_for(&driver, &missing, &mut OneMig)
        .unwrap_err()
        .to_string();
    assert!(error.contains("GPU 1 has no MIG device 0"), "{error}");
}

#[test]
fn imex_channels_are_nodes_and_a_missing_one_is_an_error() {
    let fake = FakeDriver::new("imex");
    let driver = fake.discover();
    let with = |channels: ImexChannels| {
        let mut request = request(Devices::NoGpu, &[Capability::Utility]);
        request.imex_channels = Some(channels);
        edits_for(&driver, &request, &mut NoMig)
    };
    let one = with(ImexChannels::List(vec![1])).unwrap();
    let node = one
        .device_nodes
        .iter()
        .find(|node| node.path == Path::new("/dev/nvidia-caps-imex-channels/channel1"))
        .expect("channel1");
    assert_eq!((node.major, node.minor), (IMEX_MAJOR, 1));
    let all = with(ImexChannels::All).unwrap();
    assert_eq!(
        node_paths(&all)
            .iter()
            .filter(|p| p.contains("imex"))
            .count(),
        2
    );
    let error = with(ImexChannels::List(vec![5])).unwrap_err().to_string();
    assert!(error.contains("channel 5"), "{error}");
}

#[test]
fn the_same_request_gives_the_same_edits_and_patching_twice_changes_nothing() {
    let fake = FakeDriver::new("idempotent");
    let driver = fake.discover();
    let request = request(
        Devices::All,
        &[Capability::Compute, Capability::Utility, Capability::Video],
    );
    let first = edits_for(&driver, &request, &mut NoMig).unwrap();
    let second = edits_for(&driver, &request, &mut NoMig).unwrap();
    assert_eq!(first, second);
    let spec = json!({
        "ociVersion": "1.2.0",
        "process": {"env": ["NVIDIA_VISIBLE_DEVICES=all"]},
        "root": {"path": "rootfs"},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {"devices": [], "resources": {"devices": [{"allow": false, "access": "rwm"}]}},
        "x-unknown": {"kept": true}
    });
    let path = Path::new("/bundle/config.json");
    let once = crate::oci::patch::apply(&spec, &first, path).unwrap();
    let twice = crate::oci::patch::apply(&once, &first, path).unwrap();
    assert_eq!(once, twice);
    assert_eq!(once["x-unknown"], json!({"kept": true}));
    let rules = once["linux"]["resources"]["devices"].as_array().unwrap();
    assert_eq!(rules.len(), 1 + first.device_nodes.len());
}

#[test]
fn discovery_stats_nodes_through_the_system_and_makes_no_other_call() {
    let fake = FakeDriver::new("calls");
    let driver = fake.discover();
    let request = request(Devices::All, &[Capability::Compute]);
    edits_for(&driver, &request, &mut NoMig).unwrap();
    // Reading the driver is not a side effect: nothing was recorded.
    assert_eq!(fake.system.calls(), []);
    // A node that is a plain file on the host is refused.
    std::fs::write(fake.path("dev/nvidia-modeset"), b"").unwrap();
    let error = driver
        .device_node("nvidia-modeset")
        .unwrap_err()
        .to_string();
    assert!(error.contains("not a character device"), "{error}");
}
