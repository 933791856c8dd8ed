//! `nvidia-container-runtime-facts`: answers the static runtime's and
//! hook's questions about the driver that only its libraries can answer
//! (libcuda's CUDA version, NVML's GPU and MIG facts), as one JSON line.
//! Dynamically linked on purpose: it `dlopen`s them. Thin: the logic is in
//! [`nvidia_container_runtime::driver::facts_helper`] (the protocol) and
//! [`nvidia_container_runtime::driver::facts`] (the answers).

use std::path::PathBuf;

use nvidia_container_runtime::driver::facts::answer;
use nvidia_container_runtime::driver::facts_helper::Query;
use nvidia_container_runtime::driver::{Driver, Roots};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut roots = Roots {
        driver_root: PathBuf::from("/"),
        dev_root: PathBuf::from("/"),
        proc_root: PathBuf::from("/proc"),
        sys_root: PathBuf::from("/sys"),
    };
    let mut rest = args.as_slice();
    while let [flag, value, tail @ ..] = rest {
        let slot = match flag.as_str() {
            "--driver-root" => &mut roots.driver_root,
            "--dev-root" => &mut roots.dev_root,
            "--proc-root" => &mut roots.proc_root,
            "--sys-root" => &mut roots.sys_root,
            _ => break,
        };
        *slot = PathBuf::from(value);
        rest = tail;
    }
    let reply = |line: String| {
        println!("{line}");
    };
    let query = match Query::parse(rest) {
        Ok(query) => query,
        Err(problem) => {
            reply(serde_json::json!({ "error": problem }).to_string());
            std::process::exit(2);
        }
    };
    match Driver::discover(roots) {
        Ok(driver) => reply(answer(&driver, &query)),
        Err(error) => reply(serde_json::json!({ "error": error.to_string() }).to_string()),
    }
}
