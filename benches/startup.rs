//! Startup cost harness (issue 8): what the runtime and its hook add to a
//! container start, next to plain runc, measured the way an engine calls us.
//!
//! `cargo bench --bench startup` (as root) prints one Markdown table: per
//! scenario, the median and p90 of our runs and of the baseline's, run
//! interleaved (ours, baseline, baseline, ours, ...) so that the noise of this
//! shared machine lands on both sides alike; the added time (difference of
//! the medians), the ratio, and peak RSS from `wait4`'s `ru_maxrss`, read
//! by a small launcher between the harness and the measured program (see
//! `RSS_LAUNCHER_C` for why).
//!
//! Why it is built the way it is:
//! - The binaries are cargo's `CARGO_BIN_EXE_*` of the bench profile, which
//!   inherits `[profile.release]`: exactly what `cargo build --release` ships.
//! - "No-op" rows point the runtime (`runtimes = [...]` in config.toml) at a
//!   tiny static C program that exits 0, and compare against exec'ing that
//!   program with the same argv: the difference is our own work (argv scan,
//!   config, discovery, patch, write, the extra execve), with no runc noise.
//!   The same rows give the runtime's peak RSS: `ru_maxrss` spans execve, so
//!   with runc behind us it would be runc's.
//! - A create rewrites `config.json` and the hook rewrites the image's
//!   `ld.so.cache`, so both are restored before each of our runs, outside the
//!   timed region; a second create of a patched bundle would skip the write.
//! - The harness is a child subreaper (as containerd-shim is), so the
//!   container's init is reparented to it after `create` and "wait" is a
//!   real `waitpid`, not a polling loop.
//! - The hook is timed alone through a C shim set as the hook path: runc runs
//!   the shim with the OCI state on stdin, the shim forks the real hook with
//!   the same argv and stdin and records its wall time and `ru_maxrss`.
//!
//! Environment: `BENCH_RUNTIME` and `BENCH_HOOK` (the binaries measured,
//! instead of cargo's bench build: the package's static ones),
//! `BENCH_RUNS` (runs of the slow, runc-backed rows; default
//! 40, at least 30), `BENCH_FAST_RUNS` (the millisecond rows; default 300),
//! `BENCH_FILTER` (only rows whose id or name contains it), `BENCH_KEEP`
//! (keep the fake drivers, configs and bundles, and print where, for
//! profiling one call by hand).

#[path = "../tests/common/mod.rs"]
mod common;

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Bundle, FakeDriver, FakeDriverOptions, RootfsKind, TempDir};
use nix::libc;
use nvidia_container_runtime::ldcache::{CacheEntry, LdCache, FLAGS_X86_64_LIBC6};
use serde_json::{json, Value};

const CARGO_RUNTIME: &str = env!("CARGO_BIN_EXE_nvidia-container-runtime");
const CARGO_HOOK: &str = env!("CARGO_BIN_EXE_nvidia-container-runtime-hook");

/// The runtime measured: cargo's bench build, or `BENCH_RUNTIME` (the
/// package's static build, say; its facts helper must be next to it).
fn runtime_binary() -> PathBuf {
    std::env::var_os("BENCH_RUNTIME").map_or_else(|| PathBuf::from(CARGO_RUNTIME), PathBuf::from)
}

/// The hook measured: cargo's bench build, or `BENCH_HOOK`.
fn hook_binary() -> PathBuf {
    std::env::var_os("BENCH_HOOK").map_or_else(|| PathBuf::from(CARGO_HOOK), PathBuf::from)
}

/// Exits 0 and nothing else: the low-level runtime that does nothing.
const NOOP_C: &str = "int main(void) { return 0; }\n";

/// Stands where runc expects the hook: forks the real hook (same argv, same
/// stdin), waits for it with wait4 and appends "<ns> <maxrss KiB>" to OUT.
const SHIM_C: &str = r#"
#include <stdio.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
    (void)argc;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    pid_t pid = fork();
    if (pid == 0) { execv(HOOK, argv); _exit(127); }
    int status = 0;
    struct rusage ru;
    if (pid < 0 || wait4(pid, &status, 0, &ru) < 0) return 1;
    clock_gettime(CLOCK_MONOTONIC, &b);
    long long ns = (b.tv_sec - a.tv_sec) * 1000000000LL + (b.tv_nsec - a.tv_nsec);
    FILE *f = fopen(OUT, "a");
    if (f) { fprintf(f, "%lld %ld\n", ns, ru.ru_maxrss); fclose(f); }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}
"#;

/// Runs argv[2..] as a grandchild and writes its `ru_maxrss` (KiB) to the
/// file argv[1]; exits with its status. Why: `ru_maxrss` of a process that
/// this harness spawns directly starts from the harness's own resident set
/// (posix_spawn shares the parent's memory until execve, and the kernel
/// keeps the old memory's high-water mark across execve), so it measured the
/// harness (~4.8 MiB), not the runtime. A grandchild of this small static
/// program starts from its few hundred KiB instead.
const RSS_LAUNCHER_C: &str = r#"
#include <stdio.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
int main(int argc, char **argv) {
    if (argc < 3) return 126;
    pid_t pid = fork();
    if (pid == 0) { execvp(argv[2], argv + 2); _exit(127); }
    int status = 0;
    struct rusage ru;
    if (pid < 0 || wait4(pid, &status, 0, &ru) < 0) return 126;
    FILE *f = fopen(argv[1], "w");
    if (f) { fprintf(f, "%ld\n", ru.ru_maxrss); fclose(f); }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
"#;

/// Execs runc with its own argv: a static C exec-wrapper, the floor of any
/// program in front of runc that does nothing but exec it.
const EXEC_WRAPPER_C: &str = r#"
#include <unistd.h>
int main(int argc, char **argv) { (void)argc; execv(RUNC, argv); return 127; }
"#;

/// The runtime's own state dir for every call (the driver facts cache).
static RUNTIME_STATE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// The requirement string of nvidia/cuda:12.4.x images: `cuda>=12.4` first,
/// which the fake driver's CUDA 12.4 meets, so only libcuda is asked.
const CUDA_12_4_IMAGE: &str = "cuda>=12.4 brand=tesla,driver>=470,driver<471 brand=unknown,driver>=470,driver<471 brand=nvidia,driver>=470,driver<471 brand=nvidiartx,driver>=470,driver<471 brand=geforce,driver>=470,driver<471 brand=geforcertx,driver>=470,driver<471 brand=quadro,driver>=470,driver<471 brand=quadrortx,driver>=470,driver<471 brand=titan,driver>=470,driver<471 brand=titanrtx,driver>=470,driver<471 brand=tesla,driver>=525,driver<526 brand=unknown,driver>=525,driver<526 brand=nvidia,driver>=525,driver<526 brand=nvidiartx,driver>=525,driver<526";

/// The compiled [`RSS_LAUNCHER_C`] and the file it reports to.
static RSS_LAUNCHER: std::sync::OnceLock<(PathBuf, PathBuf)> = std::sync::OnceLock::new();

/// One timed run: wall time from spawn to reaped, and the child's peak RSS.
#[derive(Clone, Copy, Debug)]
struct Sample {
    elapsed: Duration,
    maxrss_kib: u64,
}

/// Spawns `command` (stdio null), reaps it with wait4 and checks its exit
/// status (`None`: any status is fine, as for `state` of a missing container).
fn run(command: &mut Command, expect: Option<i32>) -> Sample {
    // Through the launcher (see RSS_LAUNCHER_C), same argv, env and cwd: its
    // fork and exec land on both sides of every comparison alike.
    let (launcher, rss_file) = RSS_LAUNCHER.get().expect("launcher compiled in main");
    let mut launched = Command::new(launcher);
    launched
        .arg(rss_file)
        .arg(command.get_program())
        .args(command.get_args());
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => launched.env(key, value),
            None => launched.env_remove(key),
        };
    }
    if let Some(dir) = command.get_current_dir() {
        launched.current_dir(dir);
    }
    let command = &mut launched;
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let start = Instant::now();
    // Reaped below with wait4, not Child::wait: only wait4 gives rusage.
    #[allow(clippy::zombie_processes)]
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
    let mut status = 0;
    // SAFETY: rusage is plain data that wait4 fills in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: the pid is our unreaped child; status and usage are valid
    // pointers for the duration of the call.
    let reaped = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    let elapsed = start.elapsed();
    assert_eq!(reaped, child.id() as libc::pid_t, "wait4 {command:?}");
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    if let Some(expected) = expect {
        assert_eq!(code, expected, "{command:?} exited with {code}");
    }
    let _ = usage;
    let maxrss_kib = fs::read_to_string(rss_file)
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0);
    Sample {
        elapsed,
        maxrss_kib,
    }
}

/// Waits for a container's init, which is ours to reap (we are its
/// subreaper once runc's `create` has exited).
fn wait_for_exit(pid: i32) {
    let mut status = 0;
    // SAFETY: plain waitpid on a pid; status is a valid pointer.
    if unsafe { libc::waitpid(pid, &mut status, 0) } == pid {
        return;
    }
    // Not our child after all (no subreaper): wait until it is gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    // SAFETY: signal 0 only checks that the pid exists.
    while unsafe { libc::kill(pid, 0) } == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn compile_c(dir: &Path, name: &str, source: &str, defines: &[String]) -> PathBuf {
    let src = dir.join(format!("{name}.c"));
    let out = dir.join(name);
    fs::write(&src, source).expect("write C source");
    let status = Command::new("gcc")
        .args(["-O2", "-static", "-o"])
        .arg(&out)
        .args(defines)
        .arg(&src)
        .status()
        .expect("run gcc (apt-get install gcc)");
    assert!(status.success(), "gcc {name}");
    out
}

fn c_string(path: &Path) -> String {
    format!("{:?}", path.to_str().expect("UTF-8 path"))
}

/// A config.toml shaped like the one the anchor's packages install (its
/// comments and keys), pointed at a fake driver, a low-level runtime and a
/// hook. The debug log stays off, as in production.
fn write_config(path: &Path, driver: &FakeDriver, runtime: &str, hook: &Path) {
    let q = |p: &Path| format!("{:?}", p.to_str().expect("UTF-8 path"));
    let text = format!(
        r#"#accept-nvidia-visible-devices-as-volume-mounts = false
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
root = {root}
#user = "root:video"

[nvidia-container-runtime]
#debug = "/var/log/nvidia-container-runtime.log"
log-level = "info"
mode = "auto"
runtimes = [{runtime:?}]
dev-root = {dev}
proc-root = {proc}
sys-root = {sys}

[nvidia-container-runtime.modes.cdi]
annotation-prefixes = ["cdi.k8s.io/"]
default-kind = "nvidia.com/gpu"
spec-dirs = ["/etc/cdi", "/var/run/cdi"]

[nvidia-container-runtime.modes.csv]
mount-spec-path = "/etc/nvidia-container-runtime/host-files-for-container.d"

[nvidia-container-runtime-hook]
path = {hook}
skip-mode-detection = false

[nvidia-ctk]
path = "nvidia-ctk"
"#,
        root = q(&driver.driver_root),
        dev = q(&driver.dev_root),
        proc = q(&driver.proc_root),
        sys = q(&driver.sys_root),
        hook = q(hook),
    );
    fs::write(path, text).expect("write config.toml");
}

/// The three configs of one fake driver: runc behind us, the no-op behind
/// us, and runc behind us with the timing shim as the hook.
struct Configs {
    runc: PathBuf,
    noop: PathBuf,
    shim: PathBuf,
}

impl Configs {
    fn new(dir: &Path, driver: &FakeDriver, tools: &Tools) -> Configs {
        fs::create_dir_all(dir).expect("create config dir");
        let configs = Configs {
            runc: dir.join("runc.toml"),
            noop: dir.join("noop.toml"),
            shim: dir.join("shim.toml"),
        };
        let runc = tools.runc.to_str().expect("UTF-8 runc path");
        let noop = tools.noop.to_str().expect("UTF-8 no-op path");
        write_config(&configs.runc, driver, runc, &hook_binary());
        write_config(&configs.noop, driver, noop, &hook_binary());
        write_config(&configs.shim, driver, runc, &tools.shim);
        configs
    }
}

struct Tools {
    runc: PathBuf,
    noop: PathBuf,
    shim: PathBuf,
    /// Where the shim appends its samples.
    shim_out: PathBuf,
}

/// A bundle whose `config.json` (and the image's `ld.so.cache`) are put
/// back before each of our runs.
struct Prepared {
    bundle: Bundle,
    config_json: Vec<u8>,
    ld_cache: Option<Vec<u8>>,
}

impl Prepared {
    fn new(bundle: Bundle) -> Prepared {
        let config_json = fs::read(bundle.config_path()).expect("read config.json");
        let ld_cache = fs::read(bundle.rootfs.join("etc/ld.so.cache")).ok();
        Prepared {
            bundle,
            config_json,
            ld_cache,
        }
    }

    fn restore(&self) {
        fs::write(self.bundle.config_path(), &self.config_json).expect("restore config.json");
        if let Some(cache) = &self.ld_cache {
            fs::write(self.bundle.rootfs.join("etc/ld.so.cache"), cache)
                .expect("restore ld.so.cache");
        }
    }
}

/// An engine's call: `<program> --root S --log L --log-format json <args>`,
/// with our config file named in the environment.
fn engine_call(program: &Path, state: &Path, bundle: &Bundle, config: &Path) -> Command {
    let mut command = Command::new(program);
    command
        .arg("--root")
        .arg(state)
        .arg("--log")
        .arg(bundle.runtime_log_path())
        .args(["--log-format", "json"])
        .env("NVIDIA_CTK_CONFIG_FILE_PATH", config);
    if let Some(dir) = RUNTIME_STATE.get() {
        command.env("NVIDIA_CONTAINER_RUNTIME_STATE_DIR", dir);
    }
    command
}

/// Replaces the fake driver's libcuda with one as large as a real one
/// (`megabytes` of read-only data) with `symbols` exported functions, so
/// that loading it costs what loading the real one does.
fn make_libcuda_large(driver: &FakeDriver, dir: &Path, megabytes: usize, symbols: usize) {
    let mut pad = String::new();
    pad.push_str(&format!(
        "__attribute__((used)) const unsigned char fake_cuda_padding[{megabytes} << 20] = {{1}};\n"
    ));
    for i in 0..symbols {
        pad.push_str(&format!(
            "int cuFakeEntryPoint{i}(int x) {{ return x + {i}; }}\n"
        ));
    }
    let pad_src = dir.join("libcuda-pad.c");
    let cuda_src = dir.join("libcuda-large.c");
    fs::write(&pad_src, pad).expect("write padding source");
    fs::write(&cuda_src, common::SRC_CUDA).expect("write libcuda source");
    let target = driver.lib_path("libcuda");
    let status = Command::new("gcc")
        .args(["-O1", "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o"])
        .arg(&target)
        .arg(&cuda_src)
        .arg(&pad_src)
        .status()
        .expect("run gcc");
    assert!(status.success(), "gcc the large libcuda");
}

/// `create --bundle B --pid-file P id`, as docker writes it.
fn create(program: &Path, state: &Path, bundle: &Bundle, config: &Path, id: &str) -> Command {
    let mut command = engine_call(program, state, bundle, config);
    command
        .arg("create")
        .arg("--bundle")
        .arg(&bundle.dir)
        .arg("--pid-file")
        .arg(bundle.dir.join("init.pid"))
        .arg(id);
    command
}

fn read_pid(bundle: &Bundle) -> i32 {
    fs::read_to_string(bundle.dir.join("init.pid"))
        .expect("read pid file")
        .trim()
        .parse()
        .expect("pid file holds a pid")
}

/// create (through `program`), start, wait for the init to exit, delete:
/// the whole life of a container, timed as one.
fn full_life(program: &Path, state: &Path, bundle: &Bundle, config: &Path) -> Sample {
    let id = common::unique_id("bench");
    let start = Instant::now();
    let created = run(&mut create(program, state, bundle, config, &id), Some(0));
    let pid = read_pid(bundle);
    let mut start_cmd = engine_call(program, state, bundle, config);
    run(start_cmd.arg("start").arg(&id), Some(0));
    wait_for_exit(pid);
    let mut delete = engine_call(program, state, bundle, config);
    run(delete.arg("delete").arg(&id), Some(0));
    Sample {
        elapsed: start.elapsed(),
        maxrss_kib: created.maxrss_kib,
    }
}

/// create and delete of a container that is never started.
fn create_delete(program: &Path, state: &Path, bundle: &Bundle, config: &Path) -> Sample {
    let id = common::unique_id("bench");
    let start = Instant::now();
    let created = run(&mut create(program, state, bundle, config, &id), Some(0));
    let pid = read_pid(bundle);
    let mut delete = engine_call(program, state, bundle, config);
    run(delete.arg("delete").arg(&id), Some(0));
    let elapsed = start.elapsed();
    // runc's delete killed the init; reap it outside the timed region.
    wait_for_exit(pid);
    Sample {
        elapsed,
        maxrss_kib: created.maxrss_kib,
    }
}

/// The hook samples the shim recorded since `from` lines.
fn shim_samples(path: &Path) -> Vec<Sample> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let (ns, rss) = line.split_once(' ')?;
            Some(Sample {
                elapsed: Duration::from_nanos(ns.parse().ok()?),
                maxrss_kib: rss.parse().ok()?,
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Statistics and the table
// ---------------------------------------------------------------------------

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Nearest-rank percentile of sorted milliseconds.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn sorted_ms(samples: &[Sample]) -> Vec<f64> {
    let mut v: Vec<f64> = samples.iter().map(|s| ms(s.elapsed)).collect();
    v.sort_by(f64::total_cmp);
    v
}

fn peak_mib(samples: &[Sample]) -> f64 {
    samples.iter().map(|s| s.maxrss_kib).max().unwrap_or(0) as f64 / 1024.0
}

struct Row {
    id: &'static str,
    name: String,
    baseline: String,
    runs: usize,
    ours_median: f64,
    ours_p90: f64,
    ours_p99: f64,
    base_median: f64,
    base_p90: f64,
    base_p99: f64,
    rss: String,
}

impl Row {
    fn added(&self) -> f64 {
        self.ours_median - self.base_median
    }

    fn ratio(&self) -> f64 {
        self.ours_median / self.base_median
    }
}

/// Runs `ours` and `base` `runs` times each, interleaved with alternating
/// order; `prepare` runs before each of ours, untimed.
fn measure(
    runs: usize,
    mut prepare: impl FnMut(),
    mut ours: impl FnMut() -> Sample,
    mut base: impl FnMut() -> Sample,
) -> (Vec<Sample>, Vec<Sample>) {
    // One untimed round of each: page cache, dentries, fixture checks.
    prepare();
    ours();
    base();
    let mut ours_samples = Vec::with_capacity(runs);
    let mut base_samples = Vec::with_capacity(runs);
    for i in 0..runs {
        if i % 2 == 0 {
            prepare();
            ours_samples.push(ours());
            base_samples.push(base());
        } else {
            base_samples.push(base());
            prepare();
            ours_samples.push(ours());
        }
    }
    (ours_samples, base_samples)
}

fn row(
    id: &'static str,
    name: &str,
    baseline: &str,
    (ours, base): (Vec<Sample>, Vec<Sample>),
    rss: String,
) -> Row {
    let o = sorted_ms(&ours);
    let b = sorted_ms(&base);
    let row = Row {
        id,
        name: name.to_string(),
        baseline: baseline.to_string(),
        runs: ours.len(),
        ours_median: percentile(&o, 0.5),
        ours_p90: percentile(&o, 0.9),
        ours_p99: percentile(&o, 0.99),
        base_median: percentile(&b, 0.5),
        base_p90: percentile(&b, 0.9),
        base_p99: percentile(&b, 0.99),
        rss,
    };
    eprintln!(
        "  {id}: ours {:.3} ms, baseline {:.3} ms",
        row.ours_median, row.base_median
    );
    row
}

fn print_table(rows: &[Row]) {
    println!(
        "| # | scenario | baseline | runs | ours median ms | ours p90 ms | ours p99 ms | baseline median ms | baseline p90 ms | baseline p99 ms | added ms (median) | added ms (p99) | ratio | peak RSS |"
    );
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:+.3} | {:+.3} | {:.2}x | {} |",
            r.id,
            r.name,
            r.baseline,
            r.runs,
            r.ours_median,
            r.ours_p90,
            r.ours_p99,
            r.base_median,
            r.base_p90,
            r.base_p99,
            r.added(),
            r.ours_p99 - r.base_p99,
            r.ratio(),
            r.rss
        );
    }
}

fn env_runs(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
        .max(30)
}

fn first_line(path: &str) -> String {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_string()
}

fn machine_lines(runc: &Path) {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .nth(1)
        .and_then(|kib| kib.parse::<u64>().ok())
        .map_or(0, |kib| kib >> 20);
    let runc_version = Command::new(runc)
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .take(2)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    let size = |p: &str| fs::metadata(p).map_or(0, |m| m.len()) / 1024;
    println!(
        "- date: {}",
        nvidia_container_runtime::logging::rfc3339_now()
    );
    println!("- machine: {cpu}, {cores} cores, {mem} GiB");
    println!("- kernel: {}", first_line("/proc/sys/kernel/osrelease"));
    println!("- runc: {} ({runc_version})", runc.display());
    println!(
        "- binaries: runtime {} ({} KiB), hook {} ({} KiB){}",
        runtime_binary().display(),
        size(&runtime_binary().display().to_string()),
        hook_binary().display(),
        size(&hook_binary().display().to_string()),
        if std::env::var_os("BENCH_RUNTIME").is_some() {
            ""
        } else {
            " (bench profile = release)"
        }
    );
}

// ---------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------

/// A one-GPU-style bundle for the given request.
fn gpu_bundle(dir: &Path, name: &str, kind: RootfsKind, env: &[&str]) -> Prepared {
    Prepared::new(Bundle::new(&dir.join(name), kind, &["true"], env))
}

/// Replaces the image's `ld.so.cache` with one of `total` entries: the
/// image's own plus made-up libraries, written by the crate's own writer.
fn grow_image_cache(bundle: &Bundle, total: usize) {
    let path = bundle.rootfs.join("etc/ld.so.cache");
    let mut cache = fs::read(&path)
        .ok()
        .and_then(|bytes| LdCache::parse(&bytes).ok())
        .unwrap_or_default();
    let mut i = 0;
    while cache.entries.len() < total {
        cache.entries.push(CacheEntry {
            flags: FLAGS_X86_64_LIBC6,
            key: format!("libbench{i}.so.1"),
            value: format!("/usr/lib/x86_64-linux-gnu/libbench{i}.so.1.2.{i}"),
            os_version: 0,
            hwcap: 0,
        });
        i += 1;
    }
    fs::write(&path, cache.to_bytes()).expect("write big ld.so.cache");
}

fn selected(filter: &Option<String>, id: &str, name: &str) -> bool {
    filter
        .as_deref()
        .is_none_or(|f| id.contains(f) || name.contains(f))
}

fn main() {
    // `cargo bench` passes `--bench`; a harness=false target ignores it.
    if !nix::unistd::geteuid().is_root() {
        println!("SKIPPED: the startup benchmark needs root (runc, mknod, cgroups): run `sudo cargo bench --bench startup`");
        return;
    }
    nix::sys::prctl::set_child_subreaper(true).expect("become a child subreaper");
    let slow = env_runs("BENCH_RUNS", 40);
    let fast = env_runs("BENCH_FAST_RUNS", 300);
    let filter = std::env::var("BENCH_FILTER").ok().filter(|f| !f.is_empty());

    let tmp = TempDir::new("bench-startup");
    let dir = tmp.path();
    let shim_out = dir.join("hook-samples.txt");
    let _ = RSS_LAUNCHER.set((
        compile_c(dir, "rss-launcher", RSS_LAUNCHER_C, &[]),
        dir.join("rss.txt"),
    ));
    let _ = RUNTIME_STATE.set(dir.join("runtime-state"));
    let exec_wrapper = compile_c(
        dir,
        "exec-wrapper",
        EXEC_WRAPPER_C,
        &[format!("-DRUNC={}", c_string(&common::runc_path()))],
    );
    let tools = Tools {
        runc: common::runc_path(),
        noop: compile_c(dir, "noop", NOOP_C, &[]),
        shim: compile_c(
            dir,
            "hook-shim",
            SHIM_C,
            &[
                format!("-DHOOK={}", c_string(&hook_binary())),
                format!("-DOUT={}", c_string(&shim_out)),
            ],
        ),
        shim_out,
    };
    let state = dir.join("state");
    fs::create_dir_all(&state).expect("create state root");
    let runtime_path = runtime_binary();
    let runtime = runtime_path.as_path();
    let runc = tools.runc.as_path();
    let noop = tools.noop.as_path();

    eprintln!("building fake drivers (1, 8 and 64 GPUs) and bundles...");
    let drivers: Vec<(usize, FakeDriver, Configs)> = [1usize, 8, 64]
        .into_iter()
        .map(|n| {
            let driver = FakeDriver::build(
                &dir.join(format!("driver-{n}")),
                &FakeDriverOptions::with_gpu_count(n),
            );
            let configs = Configs::new(&dir.join(format!("config-{n}")), &driver, &tools);
            (n, driver, configs)
        })
        .collect();
    let configs = |n: usize| &drivers.iter().find(|d| d.0 == n).expect("driver").2;
    let c8 = configs(8);

    let glibc = RootfsKind::Glibc { ldconfig: true };
    let plain = gpu_bundle(dir, "plain", glibc, &[]);
    let one = gpu_bundle(dir, "one-gpu", glibc, &["NVIDIA_VISIBLE_DEVICES=0"]);
    let all = gpu_bundle(dir, "all-gpus", glibc, &["NVIDIA_VISIBLE_DEVICES=all"]);
    let big_cache = gpu_bundle(dir, "big-cache", glibc, &["NVIDIA_VISIBLE_DEVICES=0"]);
    grow_image_cache(&big_cache.bundle, 2000);
    let big_cache = Prepared::new(big_cache.bundle);
    let big_spec = gpu_bundle(dir, "big-spec", glibc, &["NVIDIA_VISIBLE_DEVICES=0"]);
    big_spec.bundle.edit_config(|config| {
        let env = config["process"]["env"].as_array_mut().expect("env list");
        env.extend((0..1000).map(|i| json!(format!("BENCH_VARIABLE_{i}=value-{i}"))));
        let mounts = config["mounts"].as_array_mut().expect("mounts list");
        mounts.extend((0..500).map(|i| {
            json!({"destination": format!("/mnt/bench-{i}"), "type": "bind",
                   "source": "/tmp", "options": ["rbind", "ro"]})
        }));
    });
    let big_spec = Prepared::new(big_spec.bundle);
    let env_len = |p: &Prepared| {
        let value: Value = serde_json::from_slice(&p.config_json).expect("config.json");
        (
            value["process"]["env"].as_array().map_or(0, Vec::len),
            value["mounts"].as_array().map_or(0, Vec::len),
        )
    };
    let (big_env, big_mounts) = env_len(&big_spec);

    let mut rows = Vec::new();
    let rss = |samples: &[Sample]| format!("runtime {:.1} MiB", peak_mib(samples));
    // Our runtime's peak RSS on a shape, from runs with the no-op behind it.
    let probe_rss = |make: &dyn Fn() -> Command, prepare: &dyn Fn()| -> Vec<Sample> {
        (0..5)
            .map(|_| {
                prepare();
                run(&mut make(), None)
            })
            .collect()
    };
    let nothing = || {};

    // 1. Pass-through.
    if selected(&filter, "1a", "state") {
        eprintln!("1a: state of a missing container");
        let state_cmd = |program: &Path, config: &Path| {
            let mut c = engine_call(program, &state, &plain.bundle, config);
            c.args(["state", "no-such-container"]);
            c
        };
        let samples = measure(
            fast,
            nothing,
            || run(&mut state_cmd(runtime, &c8.runc), Some(1)),
            || run(&mut state_cmd(runc, &c8.runc), Some(1)),
        );
        let probe = probe_rss(&|| state_cmd(runtime, &c8.noop), &nothing);
        rows.push(row(
            "1a",
            "pass-through: `state` of a missing container",
            "runc",
            samples,
            rss(&probe),
        ));
        eprintln!("1b: state, no-op behind us");
        let samples = measure(
            fast,
            nothing,
            || run(&mut state_cmd(runtime, &c8.noop), Some(0)),
            || run(&mut state_cmd(noop, &c8.noop), Some(0)),
        );
        rows.push(row(
            "1b",
            "pass-through: `state`, no-op low-level runtime (our own cost)",
            "exec no-op",
            samples.clone(),
            rss(&samples.0),
        ));
    }
    if selected(&filter, "1e", "exec-wrapper") {
        eprintln!("1e: state, against a static exec-wrapper of runc");
        let state_cmd = |program: &Path| {
            let mut c = engine_call(program, &state, &plain.bundle, &c8.runc);
            c.args(["state", "no-such-container"]);
            c
        };
        let samples = measure(
            fast,
            nothing,
            || run(&mut state_cmd(runtime), Some(1)),
            || run(&mut state_cmd(&exec_wrapper), Some(1)),
        );
        rows.push(row(
            "1e",
            "pass-through: `state` of a missing container, against the floor",
            "a static C exec-wrapper of runc",
            samples,
            "-".to_string(),
        ));
    }
    if selected(&filter, "1c", "create+delete") {
        eprintln!("1c: create+delete of a no-GPU container");
        let samples = measure(
            slow,
            || plain.restore(),
            || create_delete(runtime, &state, &plain.bundle, &c8.runc),
            || create_delete(runc, &state, &plain.bundle, &c8.runc),
        );
        let probe = probe_rss(
            &|| create(runtime, &state, &plain.bundle, &c8.noop, "probe"),
            &|| plain.restore(),
        );
        rows.push(row(
            "1c",
            "pass-through: `create`+`delete`, no GPU asked",
            "runc",
            samples,
            rss(&probe),
        ));
        eprintln!("1d: create of a no-GPU container, no-op behind us");
        let samples = measure(
            fast,
            || plain.restore(),
            || {
                run(
                    &mut create(runtime, &state, &plain.bundle, &c8.noop, "x"),
                    Some(0),
                )
            },
            || {
                run(
                    &mut create(noop, &state, &plain.bundle, &c8.noop, "x"),
                    Some(0),
                )
            },
        );
        rows.push(row(
            "1d",
            "pass-through: `create`, no GPU asked, no-op low-level runtime (our own cost)",
            "exec no-op",
            samples.clone(),
            rss(&samples.0),
        ));
    }

    // 2. One-GPU create into the no-op: our whole patch path.
    let noop_create = |prepared: &Prepared, configs: &Configs| {
        measure(
            fast,
            || prepared.restore(),
            || {
                run(
                    &mut create(runtime, &state, &prepared.bundle, &configs.noop, "x"),
                    Some(0),
                )
            },
            || {
                run(
                    &mut create(noop, &state, &prepared.bundle, &configs.noop, "x"),
                    Some(0),
                )
            },
        )
    };
    if selected(&filter, "2", "one-GPU `create`") {
        eprintln!("2: one-GPU create, no-op behind us");
        let samples = noop_create(&one, c8);
        rows.push(row(
            "2",
            "one-GPU `create` (GPU 0 of 8), no-op low-level runtime",
            "exec no-op",
            samples.clone(),
            rss(&samples.0),
        ));
    }

    // 3. Whole lives with the hook, against plain runc without GPU edits.
    let shim_probe = |prepared: &Prepared, configs: &Configs| -> Vec<Sample> {
        let _ = fs::remove_file(&tools.shim_out);
        for _ in 0..5 {
            prepared.restore();
            full_life(runtime, &state, &prepared.bundle, &configs.shim);
        }
        prepared.restore();
        shim_samples(&tools.shim_out)
    };
    for (id, name, prepared) in [
        ("3a", "full life, one GPU (0 of 8), with the hook", &one),
        ("3b", "full life, all 8 GPUs, with the hook", &all),
    ] {
        if !selected(&filter, id, name) {
            continue;
        }
        eprintln!("{id}: {name}");
        let samples = measure(
            slow,
            || prepared.restore(),
            || full_life(runtime, &state, &prepared.bundle, &c8.runc),
            || full_life(runc, &state, &prepared.bundle, &c8.runc),
        );
        let runtime_rss = probe_rss(
            &|| create(runtime, &state, &prepared.bundle, &c8.noop, "probe"),
            &|| prepared.restore(),
        );
        let hook = shim_probe(prepared, c8);
        rows.push(row(
            id,
            name,
            "plain runc, same bundle unpatched",
            samples,
            format!(
                "runtime {:.1} MiB, hook {:.1} MiB",
                peak_mib(&runtime_rss),
                peak_mib(&hook)
            ),
        ));
    }

    // 3d. The tail while the disk is busy: a writer syncing every block to
    // the bundles' disk, as a busy node's image pulls and logs do.
    if selected(&filter, "3d", "disk writer") {
        let name = "full life, one GPU (0 of 8), with the hook, while `dd oflag=dsync` writes to the bundle's disk";
        eprintln!("3d: {name}");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let stop = stop.clone();
            let target = dir.join("dd-writer.out");
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = Command::new("dd")
                        .args(["if=/dev/zero", "bs=64k", "count=200", "oflag=dsync"])
                        .arg(format!("of={}", target.display()))
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status();
                }
                let _ = fs::remove_file(&target);
            })
        };
        let samples = measure(
            slow,
            || one.restore(),
            || full_life(runtime, &state, &one.bundle, &c8.runc),
            || full_life(runc, &state, &one.bundle, &c8.runc),
        );
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = writer.join();
        rows.push(row(
            "3d",
            name,
            "plain runc, same bundle unpatched, same writer",
            samples,
            "-".to_string(),
        ));
    }

    // 3c. What runc itself pays for the edits (the driver's bind mounts and
    // device nodes), without our runtime or hook in the way: the part of 3a
    // that is not ours to optimise.
    if selected(&filter, "3c", "runc's share") {
        let name =
            "runc's share of 3a: plain runc, config.json patched once by us minus our hook entry";
        eprintln!("3c: {name}");
        let patched = gpu_bundle(dir, "patched", glibc, &["NVIDIA_VISIBLE_DEVICES=0"]);
        run(
            &mut create(runtime, &state, &patched.bundle, &c8.noop, "x"),
            Some(0),
        );
        patched.bundle.edit_config(|config| {
            if let Some(prestart) = config["hooks"]["prestart"].as_array_mut() {
                prestart.retain(|hook| hook["path"] != json!(hook_binary()));
            }
        });
        let patched = Prepared::new(patched.bundle);
        let samples = measure(
            slow,
            nothing,
            || full_life(runc, &state, &patched.bundle, &c8.runc),
            || full_life(runc, &state, &one.bundle, &c8.runc),
        );
        rows.push(row(
            "3c",
            name,
            "plain runc, unpatched",
            samples,
            "-".to_string(),
        ));
    }

    // 4. Scaling.
    for n in [1usize, 8, 64] {
        let id = match n {
            1 => "4a",
            8 => "4b",
            _ => "4c",
        };
        let name = format!("`create`, all GPUs of a {n}-GPU host, no-op low-level runtime");
        if !selected(&filter, id, &name) {
            continue;
        }
        eprintln!("{id}: {name}");
        let samples = noop_create(&all, configs(n));
        rows.push(row(
            id,
            &name,
            "exec no-op",
            samples.clone(),
            rss(&samples.0),
        ));
    }
    if selected(&filter, "4d", "big spec") {
        let name = format!(
            "one-GPU `create`, big spec ({big_env} env entries, {big_mounts} mounts), no-op low-level runtime"
        );
        eprintln!("4d: {name}");
        let samples = noop_create(&big_spec, c8);
        rows.push(row(
            "4d",
            &name,
            "exec no-op",
            samples.clone(),
            rss(&samples.0),
        ));
    }
    if selected(&filter, "4e", "ld.so.cache") {
        let name = "full life, one GPU, image ld.so.cache of 2,000 entries, with the hook";
        eprintln!("4e: {name}");
        let samples = measure(
            slow,
            || big_cache.restore(),
            || full_life(runtime, &state, &big_cache.bundle, &c8.runc),
            || full_life(runc, &state, &big_cache.bundle, &c8.runc),
        );
        rows.push(row(
            "4e",
            name,
            "plain runc, same bundle unpatched",
            samples,
            "see 4f".to_string(),
        ));
        // The hook alone: its own wall time and RSS through the shim, on the
        // 2,000-entry image against the stock image (interleaved).
        eprintln!("4f: the hook alone");
        let _ = fs::remove_file(&tools.shim_out);
        let take_last = || {
            *shim_samples(&tools.shim_out)
                .last()
                .expect("the shim recorded the hook")
        };
        let samples = measure(
            slow,
            nothing,
            || {
                big_cache.restore();
                full_life(runtime, &state, &big_cache.bundle, &c8.shim);
                take_last()
            },
            || {
                one.restore();
                full_life(runtime, &state, &one.bundle, &c8.shim);
                take_last()
            },
        );
        let small = one
            .ld_cache
            .as_deref()
            .and_then(|b| LdCache::parse(b).ok())
            .map_or(0, |c| c.entries.len());
        let hook_rss = format!("hook {:.1} MiB", peak_mib(&samples.0));
        rows.push(row(
            "4f",
            "the hook process alone (wait4 shim), image ld.so.cache of 2,000 entries",
            &format!("the hook alone, stock image ({small} entries)"),
            samples,
            hook_rss,
        ));
        big_cache.restore();
        one.restore();
    }

    // 5. A stock CUDA image: its NVIDIA_REQUIRE_CUDA needs the CUDA version
    // libcuda supports. The fake libcuda is made as large as a real one (40
    // MiB, 3,000 exported functions), so that a load costs what it costs.
    if selected(&filter, "5", "CUDA image") {
        let cuda_driver = FakeDriver::build(
            &dir.join("driver-cuda"),
            &FakeDriverOptions::with_gpu_count(8),
        );
        make_libcuda_large(&cuda_driver, dir, 40, 3000);
        let cuda_configs = Configs::new(&dir.join("config-cuda"), &cuda_driver, &tools);
        let image = gpu_bundle(
            dir,
            "cuda-image",
            glibc,
            &[
                "NVIDIA_VISIBLE_DEVICES=0",
                &format!("NVIDIA_REQUIRE_CUDA={CUDA_12_4_IMAGE}"),
            ],
        );
        let cache = RUNTIME_STATE
            .get()
            .expect("state dir set")
            .join("driver-facts.json");
        let create_noop = |prepared: &Prepared| {
            prepared.restore();
            run(
                &mut create(runtime, &state, &prepared.bundle, &cuda_configs.noop, "x"),
                Some(0),
            )
        };
        eprintln!("5a: CUDA image, warm cache");
        let samples = measure(fast, nothing, || create_noop(&image), || create_noop(&one));
        rows.push(row(
            "5a",
            "one-GPU `create` of a stock CUDA 12.4 image (its NVIDIA_REQUIRE_CUDA), warm facts cache, 40 MiB libcuda, no-op low-level runtime",
            "the same create without the requirement",
            samples.clone(),
            rss(&samples.0),
        ));
        eprintln!("5b: CUDA image, cold cache");
        let samples = measure(
            slow,
            || {
                let _ = fs::remove_file(&cache);
            },
            || create_noop(&image),
            || create_noop(&image),
        );
        rows.push(row(
            "5b",
            "the same create, cold cache (libcuda loaded for cuDriverGetVersion)",
            "the same create, warm cache",
            samples.clone(),
            rss(&samples.0),
        ));
    }

    if std::env::var_os("BENCH_KEEP").is_some() {
        // For profiling by hand: the drivers, configs and bundles stay.
        eprintln!("kept {}", dir.display());
        std::mem::forget(tmp);
    }
    println!();
    machine_lines(runc);
    println!("- runs: {slow} per runc-backed row, {fast} per no-op row; interleaved; times are wall ms from spawn to reaped, through a small static launcher (its fork+exec, ~0.2 ms, is on both sides) that reads the peak RSS");
    println!();
    print_table(&rows);
    let _ = std::io::stdout().flush();
}
