//! `nvidia-ctk runtime configure`: golden files per engine and config
//! version, run through the real binary on copies of the inputs in
//! `tests/golden/configure/inputs/`. `UPDATE_GOLDEN=1 cargo test --test
//! configure` rewrites the goldens (review the diff).
mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{file_snapshot, TempDir};

const CTK: &str = env!("CARGO_BIN_EXE_nvidia-ctk");
const RUNTIME_PATH: &str = "/usr/bin/nvidia-container-runtime";

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/configure")
}

fn input(name: &str) -> String {
    fs::read_to_string(golden_dir().join("inputs").join(name)).expect("read golden input")
}

struct Out {
    status: i32,
    stdout: String,
    stderr: String,
}

/// Runs `nvidia-ctk runtime configure ARGS --nvidia-runtime-path=...`.
fn configure(args: &[&str]) -> Out {
    let out = Command::new(CTK)
        .args(["runtime", "configure"])
        .args(args)
        .arg(format!("--nvidia-runtime-path={RUNTIME_PATH}"))
        .output()
        .expect("run nvidia-ctk");
    Out {
        status: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn configure_ok(args: &[&str]) -> Out {
    let out = configure(args);
    assert_eq!(
        out.status, 0,
        "nvidia-ctk {args:?} failed\n{}{}",
        out.stdout, out.stderr
    );
    out
}

/// Compares `actual` (with the temp dir replaced by `@DIR@`) to the golden
/// file `name`, or writes it with UPDATE_GOLDEN set.
fn assert_golden(name: &str, actual: &str, dir: &Path) {
    let actual = actual.replace(&dir.display().to_string(), "@DIR@");
    let path = golden_dir().join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        fs::write(&path, &actual).expect("write golden");
        return;
    }
    let expected = fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1)", path.display()));
    assert!(
        expected == actual,
        "{name} differs from the golden file\n--- expected ---\n{expected}\n--- actual ---\n{actual}"
    );
}

type Snapshot = Option<(Vec<u8>, i64, i64)>;

/// Every file under `dir` with its snapshot, sorted.
fn tree(dir: &Path) -> Vec<(PathBuf, Snapshot)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push((path.clone(), file_snapshot(&path)));
            }
        }
    }
    out.sort();
    out
}

/// One golden case: copies `input` (None: no file) to `dir/file`, runs
/// configure with `args` (`--config dir/file` added), checks every written
/// file against `<case>.<file>` goldens, and that a second run is a no-op.
fn golden_case(case: &str, input_name: Option<&str>, file: &str, args: &[&str]) -> TempDir {
    let tmp = TempDir::new(&format!("cfg-{case}"));
    let dir = tmp.path();
    let config = dir.join(file);
    if let Some(name) = input_name {
        fs::write(&config, input(name)).unwrap();
    }
    let config_arg = format!("--config={}", config.display());
    let mut all_args = vec![config_arg.as_str()];
    all_args.extend_from_slice(args);

    // --dry-run prints exactly what the real run then writes, and writes
    // nothing.
    let before = tree(dir);
    let mut dry_args = all_args.clone();
    dry_args.push("--dry-run");
    let dry = configure_ok(&dry_args);
    assert_eq!(tree(dir), before, "{case}: --dry-run wrote something");

    let out = configure_ok(&all_args);
    assert!(out.stdout.contains("next:"), "{case}: {}", out.stdout);
    let mut written = String::new();
    for (path, snapshot) in tree(dir) {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".bak") {
            continue;
        }
        let text = String::from_utf8(snapshot.unwrap().0).unwrap();
        written.push_str(&format!("# {}\n{text}", path.display()));
        if !text.ends_with('\n') {
            written.push('\n');
        }
        assert_golden(&format!("{case}.{name}"), &text, dir);
    }
    // The dry run printed the same files (in plan order, so compare sets).
    let mut dry_files: Vec<&str> = dry.stdout.split("# /").filter(|s| !s.is_empty()).collect();
    let mut real_files: Vec<&str> = written.split("# /").filter(|s| !s.is_empty()).collect();
    dry_files.sort();
    real_files.sort();
    assert_eq!(
        dry_files, real_files,
        "{case}: dry run differs from the run"
    );

    // Twice = once: nothing written the second time, not even a backup.
    let after_first = tree(dir);
    let again = configure_ok(&all_args);
    assert!(
        again.stdout.contains("nothing to change"),
        "{case}: {}",
        again.stdout
    );
    assert_eq!(tree(dir), after_first, "{case}: the second run wrote");
    tmp
}

/// Every comment line of `input` is still in `output`.
fn assert_comments_kept(input: &str, output: &str) {
    for line in input.lines().filter(|l| l.contains('#')) {
        let comment = &line[line.find('#').unwrap()..];
        assert!(
            output.contains(comment),
            "lost comment {comment:?}:\n{output}"
        );
    }
}

#[test]
fn docker_new_file() {
    let tmp = golden_case("docker-new", None, "daemon.json", &["--runtime=docker"]);
    let text = fs::read_to_string(tmp.path().join("daemon.json")).unwrap();
    // daemon.json.example is what configure writes with --set-as-default.
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        value["runtimes"]["nvidia"]["runtimeArgs"],
        serde_json::json!([])
    );
    assert!(value["runtimes"]["nvidia"].get("args").is_none());
}

#[test]
fn docker_merge_keeps_keys_order_and_indentation() {
    let tmp = golden_case(
        "docker-merge",
        Some("daemon.json"),
        "daemon.json",
        &["--runtime=docker", "--set-as-default"],
    );
    let out = fs::read_to_string(tmp.path().join("daemon.json")).unwrap();
    let keys: Vec<String> =
        serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&out)
            .unwrap()
            .keys()
            .cloned()
            .collect();
    assert_eq!(
        keys,
        [
            "log-driver",
            "registry-mirrors",
            "runtimes",
            "storage-driver",
            "default-runtime"
        ]
    );
    assert!(out.contains("\n\t\"log-driver\""), "tabs kept: {out}");
    let backup = tmp.path().join("daemon.json.bak");
    assert_eq!(fs::read_to_string(backup).unwrap(), input("daemon.json"));
}

#[test]
fn docker_fixes_the_anchors_args_and_relative_path() {
    golden_case(
        "docker-anchor",
        Some("daemon-anchor.json"),
        "daemon.json",
        &["--runtime=docker"],
    );
}

#[test]
fn docker_next_steps_say_reload_or_restart() {
    let tmp = TempDir::new("cfg-docker-steps");
    let config = tmp.path().join("daemon.json");
    let config_arg = format!("--config={}", config.display());
    let out = configure_ok(&["--runtime=docker", &config_arg]);
    assert!(
        out.stdout.contains("kill -s HUP $(pidof dockerd)"),
        "{}",
        out.stdout
    );
    let out = configure_ok(&["--runtime=docker", &config_arg, "--set-as-default"]);
    assert!(
        out.stdout.contains("systemctl restart docker"),
        "{}",
        out.stdout
    );
}

#[test]
fn docker_uninstall_restores_the_users_keys() {
    let tmp = TempDir::new("cfg-docker-rm");
    let config = tmp.path().join("daemon.json");
    fs::write(&config, input("daemon.json")).unwrap();
    let config_arg = format!("--config={}", config.display());
    configure_ok(&["--runtime=docker", &config_arg, "--set-as-default"]);
    let out = configure_ok(&["--runtime=docker", &config_arg, "--uninstall"]);
    assert!(out.stdout.contains("restart"), "{}", out.stdout);
    let parse = |text: &str| serde_json::from_str::<serde_json::Value>(text).unwrap();
    let text = fs::read_to_string(&config).unwrap();
    assert_eq!(parse(&text), parse(&input("daemon.json")));
    let keys: Vec<String> = parse(&text).as_object().unwrap().keys().cloned().collect();
    assert_eq!(
        keys,
        [
            "log-driver",
            "registry-mirrors",
            "runtimes",
            "storage-driver"
        ]
    );
    // `remove` is the same flag.
    let out = configure_ok(&["--runtime=docker", &config_arg, "--remove"]);
    assert!(out.stdout.contains("nothing to change"), "{}", out.stdout);
}

#[test]
fn daemon_json_example_is_what_configure_writes() {
    let tmp = TempDir::new("cfg-example");
    let config = tmp.path().join("daemon.json");
    configure_ok(&[
        "--runtime=docker",
        &format!("--config={}", config.display()),
        "--set-as-default",
    ]);
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("daemon.json.example");
    assert_eq!(
        fs::read_to_string(config).unwrap(),
        fs::read_to_string(example).unwrap()
    );
}

#[test]
fn containerd_v1_edits_the_main_file() {
    let tmp = golden_case(
        "containerd-v1",
        Some("containerd-v1.toml"),
        "config.toml",
        &["--runtime=containerd"],
    );
    let out = fs::read_to_string(tmp.path().join("config.toml")).unwrap();
    assert_comments_kept(&input("containerd-v1.toml"), &out);
    assert!(!tmp.path().join("conf.d").exists());
    let error = configure(&[
        "--runtime=containerd",
        &format!("--config={}", tmp.path().join("config.toml").display()),
        "--drop-in",
    ]);
    assert_eq!(error.status, 1);
    assert!(
        error.stderr.contains("version 1 has no imports"),
        "{}",
        error.stderr
    );
}

#[test]
fn containerd_v2_drop_in() {
    let tmp = golden_case(
        "containerd-v2-drop-in",
        Some("containerd-v2.toml"),
        "config.toml",
        &["--runtime=containerd"],
    );
    let main = fs::read_to_string(tmp.path().join("config.toml")).unwrap();
    assert_comments_kept(&input("containerd-v2.toml"), &main);
    let drop_in = fs::read_to_string(tmp.path().join("conf.d/99-nvidia.toml")).unwrap();
    // containerd takes a plugin's section whole from the drop-in: the
    // admin's CRI settings must be in it.
    assert!(
        drop_in.contains("sandbox_image = \"registry.k8s.io/pause:3.6\""),
        "{drop_in}"
    );
    assert!(drop_in.contains("SystemdCgroup = true"), "{drop_in}");
}

#[test]
fn containerd_v2_main_file_and_default() {
    let tmp = golden_case(
        "containerd-v2-main",
        Some("containerd-v2.toml"),
        "config.toml",
        &[
            "--runtime=containerd",
            "--drop-in=false",
            "--set-as-default",
        ],
    );
    let main = fs::read_to_string(tmp.path().join("config.toml")).unwrap();
    assert_comments_kept(&input("containerd-v2.toml"), &main);
    // Uninstall gives the admin's file back byte for byte.
    let config_arg = format!("--config={}", tmp.path().join("config.toml").display());
    configure_ok(&[
        "--runtime=containerd",
        &config_arg,
        "--drop-in=false",
        "--uninstall",
    ]);
    let text = fs::read_to_string(tmp.path().join("config.toml")).unwrap();
    let restored = text.replace("\"nvidia\"", "\"runc\"");
    assert!(!text.contains("nvidia"), "{text}");
    // default_runtime_name named us, so it went; the rest is the input.
    let expected =
        input("containerd-v2.toml").replace("      default_runtime_name = \"runc\"\n", "");
    assert_eq!(restored, expected);
}

#[test]
fn containerd_v2_drop_in_uninstall() {
    let tmp = TempDir::new("cfg-ctd-rm");
    let config = tmp.path().join("config.toml");
    fs::write(&config, input("containerd-v2.toml")).unwrap();
    let config_arg = format!("--config={}", config.display());
    configure_ok(&["--runtime=containerd", &config_arg]);
    assert!(tmp.path().join("conf.d/99-nvidia.toml").exists());
    let out = configure_ok(&["--runtime=containerd", &config_arg, "--uninstall"]);
    assert!(out.stdout.contains("removed"), "{}", out.stdout);
    assert!(!tmp.path().join("conf.d/99-nvidia.toml").exists());
    assert_eq!(
        fs::read_to_string(&config).unwrap(),
        input("containerd-v2.toml")
    );
}

#[test]
fn containerd_v3_drop_in() {
    golden_case(
        "containerd-v3",
        Some("containerd-v3.toml"),
        "config.toml",
        &["--runtime=containerd", "--set-as-default"],
    );
}

#[test]
fn containerd_new_files_v2_and_v3() {
    golden_case(
        "containerd-new-v2",
        None,
        "config.toml",
        &["--runtime=containerd"],
    );
    golden_case(
        "containerd-new-v3",
        None,
        "config.toml",
        &["--runtime=containerd", "--config-version=3"],
    );
}

/// `--cdi.enabled`: the CRI section's `enable_cdi` (v2 and v3 plugin
/// names), dockerd's `features.cdi`; `--container-annotation=` writes none.
#[test]
fn cdi_enabled_and_container_annotations() {
    let tmp = TempDir::new("cfg-cdi-enabled");
    for (version, plugin) in [
        ("2", "io.containerd.grpc.v1.cri"),
        ("3", "io.containerd.cri.v1.runtime"),
    ] {
        let config = tmp.path().join(format!("v{version}/config.toml"));
        configure_ok(&[
            "--runtime=containerd",
            &format!("--config={}", config.display()),
            &format!("--config-version={version}"),
            "--cdi.enabled",
            "--container-annotation=",
        ]);
        let drop_in =
            fs::read_to_string(tmp.path().join(format!("v{version}/conf.d/99-nvidia.toml")))
                .unwrap();
        let doc: toml::Table = drop_in.parse().unwrap();
        let section = &doc["plugins"][plugin];
        assert_eq!(section["enable_cdi"].as_bool(), Some(true), "{drop_in}");
        let entry = &section["containerd"]["runtimes"]["nvidia"];
        assert!(entry.get("container_annotations").is_none(), "{drop_in}");
    }
    let daemon_json = tmp.path().join("daemon.json");
    fs::write(&daemon_json, "{\"features\": {\"buildkit\": true}}").unwrap();
    configure_ok(&[
        "--runtime=docker",
        &format!("--config={}", daemon_json.display()),
        "--cdi.enabled",
    ]);
    let written: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&daemon_json).unwrap()).unwrap();
    assert_eq!(
        written["features"],
        serde_json::json!({"buildkit": true, "cdi": true})
    );
}

#[test]
fn crio_drop_in_and_main_file() {
    golden_case("crio-drop-in", None, "crio.conf", &["--runtime=crio"]);
    let tmp = golden_case(
        "crio-main",
        Some("crio.conf"),
        "crio.conf",
        &["--runtime=crio", "--drop-in=false", "--set-as-default"],
    );
    let out = fs::read_to_string(tmp.path().join("crio.conf")).unwrap();
    assert_comments_kept(&input("crio.conf"), &out);
}

#[test]
fn podman_containers_conf() {
    let tmp = golden_case(
        "podman",
        Some("containers.conf"),
        "containers.conf",
        &["--runtime=podman"],
    );
    let out = fs::read_to_string(tmp.path().join("containers.conf")).unwrap();
    assert_comments_kept(&input("containers.conf"), &out);
    let config_arg = format!("--config={}", tmp.path().join("containers.conf").display());
    configure_ok(&["--runtime=podman", &config_arg, "--uninstall"]);
    assert_eq!(
        fs::read_to_string(tmp.path().join("containers.conf")).unwrap(),
        input("containers.conf")
    );
}

#[test]
fn invalid_input_is_reported_with_position_and_left_untouched() {
    for (engine, name, file, position) in [
        (
            "docker",
            "daemon-invalid.json",
            "daemon.json",
            "line 6, column 3",
        ),
        (
            "containerd",
            "containerd-invalid.toml",
            "config.toml",
            "line 2, column",
        ),
        (
            "podman",
            "containerd-invalid.toml",
            "containers.conf",
            "line 2, column",
        ),
        (
            "crio",
            "containerd-invalid.toml",
            "crio.conf",
            "line 2, column",
        ),
    ] {
        let tmp = TempDir::new("cfg-invalid");
        let config = tmp.path().join(file);
        fs::write(&config, input(name)).unwrap();
        let mut args = vec![
            format!("--runtime={engine}"),
            format!("--config={}", config.display()),
        ];
        if engine == "crio" {
            args.push("--drop-in=false".to_string());
        }
        let before = tree(tmp.path());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = configure(&args);
        assert_eq!(out.status, 1, "{engine}: {}{}", out.stdout, out.stderr);
        assert!(
            out.stderr.contains(&config.display().to_string()) && out.stderr.contains(position),
            "{engine}: {}",
            out.stderr
        );
        assert!(out.stderr.contains("left untouched"), "{}", out.stderr);
        assert_eq!(tree(tmp.path()), before, "{engine}: something was written");
    }
}

#[test]
fn mode_and_backup_are_kept() {
    let tmp = TempDir::new("cfg-mode");
    let config = tmp.path().join("daemon.json");
    fs::write(&config, input("daemon.json")).unwrap();
    fs::set_permissions(&config, fs::Permissions::from_mode(0o600)).unwrap();
    configure_ok(&[
        "--runtime=docker",
        &format!("--config={}", config.display()),
    ]);
    let mode = fs::metadata(&config).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600);
    let backup = tmp.path().join("daemon.json.bak");
    assert_eq!(fs::read_to_string(&backup).unwrap(), input("daemon.json"));
    assert_eq!(
        fs::metadata(&backup).unwrap().permissions().mode() & 0o7777,
        0o600
    );
    // No temp file left behind.
    let names: Vec<String> = fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn runtime_name_and_path_options() {
    let tmp = TempDir::new("cfg-name");
    let config = tmp.path().join("daemon.json");
    let config_arg = format!("--config={}", config.display());
    let out = Command::new(CTK)
        .args(["runtime", "configure", "--runtime=docker", &config_arg])
        .args([
            "--nvidia-runtime-name=gpu",
            "--nvidia-runtime-path=/opt/x/ncr",
            "--dry-run",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("\"gpu\": {\n      \"path\": \"/opt/x/ncr\""),
        "{stdout}"
    );
    assert!(!config.exists());
    let out = Command::new(CTK)
        .args(["runtime", "configure", "--runtime=docker", &config_arg])
        .arg("--nvidia-runtime-path=relative/ncr")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be absolute"));
    // Without --nvidia-runtime-path: the runtime installed next to nvidia-ctk.
    let out = Command::new(CTK)
        .args([
            "runtime",
            "configure",
            "--runtime=docker",
            &config_arg,
            "--dry-run",
        ])
        .output()
        .unwrap();
    let beside = Path::new(CTK)
        .parent()
        .unwrap()
        .join("nvidia-container-runtime");
    let beside = fs::canonicalize(beside).unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains(&format!("\"path\": \"{}\"", beside.display())),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn nvidia_docker_rewrites_run_and_passes_the_rest() {
    let tmp = TempDir::new("nvd");
    let fake = tmp.path().join("fake-docker");
    fs::write(
        &fake,
        "#!/bin/sh\nfor a in \"$@\"; do printf '[%s]' \"$a\"; done\necho\n",
    )
    .unwrap();
    fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
    let run = |args: &[&str], gpu: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_nvidia-docker"));
        cmd.args(args).env("NV_DOCKER", &fake).env_remove("NV_GPU");
        if let Some(gpu) = gpu {
            cmd.env("NV_GPU", gpu);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(
        run(&["run", "--rm", "img", "nvidia-smi"], Some("0 1")),
        "[run][--runtime=nvidia][-e][NVIDIA_VISIBLE_DEVICES=0,1][--rm][img][nvidia-smi]\n"
    );
    assert_eq!(
        run(&["create", "img"], None),
        "[create][--runtime=nvidia][img]\n"
    );
    assert_eq!(run(&["ps", "-a"], Some("0")), "[ps][-a]\n");
    let version = run(&["version"], None);
    assert!(version.starts_with("NVIDIA Docker: "), "{version}");
    assert!(version.ends_with("[version]\n"), "{version}");
}

#[test]
fn containerd_example_is_what_configure_writes() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let tmp = TempDir::new("cfg-ctd-example");
    let config = tmp.path().join("config.toml");
    let original = fs::read_to_string(examples.join("containerd/config.toml")).unwrap();
    fs::write(&config, &original).unwrap();
    configure_ok(&[
        "--runtime=containerd",
        &format!("--config={}", config.display()),
    ]);
    let drop_in = fs::read_to_string(tmp.path().join("conf.d/99-nvidia.toml")).unwrap();
    let dir = tmp.path().display().to_string();
    assert_eq!(
        drop_in.replace(&dir, "/etc/containerd"),
        fs::read_to_string(examples.join("containerd/99-nvidia.toml")).unwrap()
    );
    let main = fs::read_to_string(&config).unwrap();
    assert_eq!(
        main.replace(&dir, "/etc/containerd"),
        original.replace(
            "version = 2\n",
            "version = 2\nimports = [\"/etc/containerd/conf.d/*.toml\"]\n"
        )
    );
    let runtime_class = fs::read_to_string(examples.join("k8s/runtimeclass.yaml")).unwrap();
    assert!(runtime_class.contains("\nhandler: nvidia\n"));
    assert!(runtime_class.contains("runtimeClassName: nvidia\n"));
}
