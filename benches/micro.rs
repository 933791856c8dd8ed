//! Micro-benchmarks of the functions on the start path (issue 8):
//! `cargo bench --bench micro`. No root needed; inputs are built in memory.
//!
//! divan, not criterion: see the dev-dependency comment in Cargo.toml. The
//! whole-process numbers, which are what users pay, come from
//! `benches/startup.rs`; these say which function to look at.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use divan::{black_box, Bencher};
use nvidia_container_runtime::config::Config;
use nvidia_container_runtime::driver::{self, DeviceNode};
use nvidia_container_runtime::edits::{ContainerEdits, Hook, Mount, FILE_MOUNT_OPTIONS};
use nvidia_container_runtime::ldcache::{CacheEntry, LdCache, FLAGS_X86_64_LIBC6};
use nvidia_container_runtime::oci::patch;
use nvidia_container_runtime::request::Request;
use nvidia_container_runtime::runtime::argv;
use serde_json::{json, Value};

fn main() {
    divan::main();
}

/// What dockerd passes to `create`.
fn docker_create_argv() -> Vec<OsString> {
    "nvidia-container-runtime --root /var/run/docker/runtime-runc/moby \
     --log /run/containerd/io.containerd.runtime.v2.task/moby/0123456789abcdef/log.json \
     --log-format json --systemd-cgroup create \
     --bundle /run/containerd/io.containerd.runtime.v2.task/moby/0123456789abcdef \
     --pid-file /run/containerd/io.containerd.runtime.v2.task/moby/0123456789abcdef/init.pid \
     0123456789abcdef"
        .split_whitespace()
        .map(OsString::from)
        .collect()
}

#[divan::bench]
fn argv_scan_docker_create(bencher: Bencher) {
    let args = docker_create_argv();
    bencher.bench(|| argv::scan(black_box(&args)));
}

#[divan::bench]
fn argv_scan_state(bencher: Bencher) {
    let args: Vec<OsString> = [
        "nvidia-container-runtime",
        "--root",
        "/run/runc",
        "state",
        "x",
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    bencher.bench(|| argv::scan(black_box(&args)));
}

/// An ld.so.cache of `n` x86-64 entries, in the crate's own writer's bytes.
fn cache_bytes(n: usize) -> Vec<u8> {
    let entries = (0..n)
        .map(|i| CacheEntry {
            flags: FLAGS_X86_64_LIBC6,
            key: format!("libbench{i}.so.1"),
            value: format!("/usr/lib/x86_64-linux-gnu/libbench{i}.so.1.2.{i}"),
            os_version: 0,
            hwcap: 0,
        })
        .collect();
    LdCache { entries }.to_bytes()
}

#[divan::bench(args = [100, 2000])]
fn ldcache_parse(bencher: Bencher, entries: usize) {
    let bytes = cache_bytes(entries);
    bencher.bench(|| LdCache::parse(black_box(&bytes)).expect("valid cache"));
}

#[divan::bench(args = [100, 2000])]
fn ldcache_add_and_write(bencher: Bencher, entries: usize) {
    // What the hook does to an image's cache: add ~15 driver libraries and
    // write the file's bytes.
    let cache = LdCache::parse(&cache_bytes(entries)).expect("valid cache");
    bencher
        .with_inputs(|| cache.clone())
        .bench_values(|mut cache| {
            for i in 0..15 {
                cache.add_or_replace(CacheEntry {
                    flags: FLAGS_X86_64_LIBC6,
                    key: format!("libnvidia-bench{i}.so.1"),
                    value: format!("/usr/lib/x86_64-linux-gnu/libnvidia-bench{i}.so.1"),
                    os_version: 0,
                    hwcap: 0,
                });
            }
            cache.to_bytes()
        });
}

const PROC_VERSION: &str =
    "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC 2024\n\
GCC version:  gcc version 12.3.0 (Ubuntu 12.3.0-1ubuntu1~22.04)\n";

const PROC_INFORMATION: &str = "Model: \t\t NVIDIA H100 80GB HBM3\n\
IRQ:   \t\t 130\n\
GPU UUID: \t GPU-6b4f0a5e-1f7e-4d7e-9d3a-0123456789ab\n\
Video BIOS: \t 96.00.99.00.01\n\
Bus Type: \t PCIe\n\
DMA Size: \t 52 bits\n\
DMA Mask: \t 0xfffffffffffff\n\
Bus Location: \t 0000:3b:00.0\n\
Device Minor: \t 0\n\
GPU Excluded:\t No\n";

#[divan::bench]
fn proc_kernel_version() -> Option<&'static str> {
    driver::parse_kernel_version(black_box(PROC_VERSION))
}

#[divan::bench]
fn proc_gpu_information() -> usize {
    // What discovery reads per GPU: the pairs, then the fields it keeps.
    driver::parse_information(black_box(PROC_INFORMATION))
        .filter(|(key, _)| matches!(*key, "Model" | "GPU UUID" | "Bus Location" | "Device Minor"))
        .count()
}

/// `runc spec`'s config.json with a GPU request and `extra_env` more
/// variables.
fn runc_spec(extra_env: usize) -> Value {
    let mut env = vec![
        json!("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
        json!("NVIDIA_VISIBLE_DEVICES=0"),
        json!("NVIDIA_DRIVER_CAPABILITIES=compute,utility"),
    ];
    env.extend((0..extra_env).map(|i| json!(format!("BENCH_VARIABLE_{i}=value-{i}"))));
    let caps = json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    json!({
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": false, "user": {"uid": 0, "gid": 0}, "args": ["sh"], "env": env,
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps, "ambient": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": "runc",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
        ],
        "linux": {
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                           {"type": "uts"}, {"type": "mount"}],
            "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                            "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                            "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                              "/proc/sysrq-trigger"]
        }
    })
}

fn node(name: &str, major: u64, minor: u64) -> DeviceNode {
    DeviceNode {
        path: Path::new("/dev").join(name),
        host_path: Path::new("/dev").join(name),
        major,
        minor,
        file_mode: 0o666,
        uid: 0,
        gid: 0,
        permissions: "rwm".into(),
    }
}

/// The edits of a one-GPU compute,utility container: 4 nodes, a library at
/// its file name and SONAME for 12 libraries, 3 binaries, 2 firmware files,
/// and our hook.
fn one_gpu_edits() -> ContainerEdits {
    let lib_dir = Path::new("/usr/lib/x86_64-linux-gnu");
    let options: Vec<String> = FILE_MOUNT_OPTIONS.iter().map(|o| o.to_string()).collect();
    let mut mounts = Vec::new();
    let mut hook_args: Vec<String> = ["nvidia-container-runtime-hook", "prestart"]
        .map(String::from)
        .to_vec();
    for i in 0..12 {
        let file = format!("libnvidia-bench{i}.so.550.54.15");
        let soname = format!("libnvidia-bench{i}.so.1");
        for name in [&file, &soname] {
            mounts.push(Mount {
                host_path: lib_dir.join(&file),
                container_path: lib_dir.join(name),
                options: options.clone(),
                mount_type: "bind".into(),
            });
        }
        hook_args.push("--library".into());
        hook_args.push(format!("{soname}={}", lib_dir.join(&file).display()));
    }
    for bin in ["nvidia-smi", "nvidia-debugdump", "nvidia-cuda-mps-control"] {
        let path = Path::new("/usr/bin").join(bin);
        mounts.push(Mount {
            host_path: path.clone(),
            container_path: path,
            options: options.clone(),
            mount_type: "bind".into(),
        });
    }
    for fw in ["gsp_ga10x.bin", "gsp_tu10x.bin"] {
        let path = PathBuf::from("/lib/firmware/nvidia/550.54.15").join(fw);
        mounts.push(Mount {
            host_path: path.clone(),
            container_path: path,
            options: options.clone(),
            mount_type: "bind".into(),
        });
    }
    hook_args.extend(["--gpu".to_string(), "0000:3b:00.0".to_string()]);
    ContainerEdits {
        env: Vec::new(),
        device_nodes: vec![
            node("nvidiactl", 195, 255),
            node("nvidia0", 195, 0),
            node("nvidia-uvm", 511, 0),
            node("nvidia-uvm-tools", 511, 1),
        ],
        mounts,
        hooks: vec![Hook {
            hook_name: "prestart".into(),
            path: "/usr/bin/nvidia-container-runtime-hook".into(),
            args: hook_args,
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            timeout: Some(30),
        }],
    }
}

#[divan::bench(args = [0, 1000])]
fn spec_patch(bencher: Bencher, extra_env: usize) {
    let value = runc_spec(extra_env);
    let edits = one_gpu_edits();
    let path = Path::new("/bundle/config.json");
    bencher.bench(|| patch::apply(black_box(&value), &edits, path).expect("patch"));
}

#[divan::bench(args = [0, 1000])]
fn spec_parse_and_serialize(bencher: Bencher, extra_env: usize) {
    // The read and the write around the patch: what a create pays per byte.
    let bytes = serde_json::to_vec(&runc_spec(extra_env)).expect("serialize");
    bencher.bench(|| {
        let value: Value = serde_json::from_slice(black_box(&bytes)).expect("parse");
        serde_json::to_vec(&value).expect("serialize")
    });
}

#[divan::bench]
fn request_from_spec(bencher: Bencher) {
    let value = runc_spec(0);
    let config = Config::default();
    bencher.bench(|| Request::from_spec(black_box(&value), &config).expect("request"));
}

/// The config.toml the anchor's packages install.
const ANCHOR_CONFIG: &str = r#"#accept-nvidia-visible-devices-as-volume-mounts = false
#accept-nvidia-visible-devices-envvar-when-unprivileged = true
disable-require = false
supported-driver-capabilities = "compat32,compute,display,graphics,ngx,utility,video"
#swarm-resource = "DOCKER_RESOURCE_GPU"

[nvidia-container-cli]
#debug = "/var/log/nvidia-container-toolkit.log"
environment = []
#ldcache = "/etc/ld.so.cache"
ldconfig = "@/sbin/ldconfig"
load-kmods = true
#no-cgroups = false
#path = "/usr/bin/nvidia-container-cli"
#root = "/run/nvidia/driver"
#user = "root:video"

[nvidia-container-runtime]
#debug = "/var/log/nvidia-container-runtime.log"
log-level = "info"
mode = "auto"
runtimes = ["docker-runc", "runc", "crun"]

[nvidia-container-runtime.modes.cdi]
annotation-prefixes = ["cdi.k8s.io/"]
default-kind = "nvidia.com/gpu"
spec-dirs = ["/etc/cdi", "/var/run/cdi"]

[nvidia-container-runtime.modes.csv]
mount-spec-path = "/etc/nvidia-container-runtime/host-files-for-container.d"

[nvidia-container-runtime-hook]
path = "nvidia-container-runtime-hook"
skip-mode-detection = false

[nvidia-ctk]
path = "nvidia-ctk"
"#;

#[divan::bench]
fn config_parse_anchor_file() -> Config {
    Config::parse(black_box(ANCHOR_CONFIG), Path::new("/etc/config.toml")).expect("valid config")
}
