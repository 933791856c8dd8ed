//! `$ROOT/toolkit`: our binaries, their wrappers and the runtime's
//! config.toml, installed as one directory swapped in atomically.
//!
//! NVIDIA's installer runs `rm -rf $ROOT/toolkit` and copies the files in
//! again (toolkit/toolkit.go), so for a moment every GPU pod start on the
//! node fails with "no such file". Ours builds the new tree beside the old
//! one and exchanges the two with one `renameat2(RENAME_EXCHANGE)`: a shim
//! exec'ing `$ROOT/toolkit/nvidia-container-runtime` sees the old tree or
//! the new one, never none.

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use toml_edit::{Array, DocumentMut, Item, Table};

use super::{InstallerError, Result, Settings};

/// One of our three runtimes: the engine's handler
/// `<NVIDIA_RUNTIME_NAME><suffix>` and the toolkit's wrapper it runs, with
/// the mode that wrapper's config.toml forces. The `.cdi`/`.legacy`
/// wrappers run copies of nvidia-container-runtime with their own
/// config.toml (ours has no separate binaries for the modes: the config's
/// `mode` forces them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handler {
    pub suffix: &'static str,
    pub wrapper: &'static str,
    pub forced_mode: Option<&'static str>,
}

/// NVIDIA's three, in the order they are registered (the first is the one
/// `NVIDIA_RUNTIME_SET_AS_DEFAULT` makes the default).
pub const HANDLERS: [Handler; 3] = [
    Handler {
        suffix: "",
        wrapper: "nvidia-container-runtime",
        forced_mode: None,
    },
    Handler {
        suffix: "-cdi",
        wrapper: "nvidia-container-runtime.cdi",
        forced_mode: Some("cdi"),
    },
    Handler {
        suffix: "-legacy",
        wrapper: "nvidia-container-runtime.legacy",
        forced_mode: Some("legacy"),
    },
];

impl Handler {
    /// The handler's name in the engine.
    pub fn name(&self, runtime_name: &str) -> String {
        format!("{runtime_name}{}", self.suffix)
    }

    fn of_wrapper(wrapper: &str) -> Option<&'static Handler> {
        HANDLERS.iter().find(|h| h.wrapper == wrapper)
    }
}

/// The tools installed as `X.real` plus a `#!/bin/sh` wrapper `X`
/// (NVIDIA's toolkit/installer wrappers) beside the runtimes' wrappers.
const WRAPPED_TOOLS: &[&str] = &["nvidia-ctk", "nvidia-container-runtime-hook"];
/// Copied as is: the device plugin's CDI specs run it by this path.
const PLAIN: &[&str] = &["nvidia-cdi-hook"];

/// The toolkit dir under `root`.
pub fn toolkit_dir(root: &Path) -> PathBuf {
    root.join("toolkit")
}

/// The config.toml a wrapper points `NVIDIA_CTK_CONFIG_FILE_PATH` at:
/// NVIDIA's `.config/nvidia-container-runtime/config.toml` for every
/// wrapper but the runtimes with a forced mode, which get their own dir
/// (`.config/nvidia-container-runtime.cdi/`).
pub fn config_path(toolkit: &Path, wrapper: &str) -> PathBuf {
    let dir = match Handler::of_wrapper(wrapper) {
        Some(handler) if handler.forced_mode.is_some() => wrapper,
        _ => "nvidia-container-runtime",
    };
    toolkit.join(".config").join(dir).join("config.toml")
}

/// A wrapper's text. `proc_root` is where `modules` is read (NVIDIA's
/// wrappers read `/proc/modules`; ours reads the configured proc root, so
/// a fake driver's procfs works too); `low_level` is what a runtime
/// wrapper execs when the `nvidia` module is not loaded.
pub fn wrapper_text(
    toolkit: &Path,
    name: &str,
    runtime: bool,
    proc_root: &Path,
    low_level: &str,
) -> String {
    let dir = sh_quote(&toolkit.display().to_string());
    let config = sh_quote(&config_path(toolkit, name).display().to_string());
    let real = sh_quote(&toolkit.join(format!("{name}.real")).display().to_string());
    let mut text = String::from("#!/bin/sh\n# Written by nvidia-ctk-installer.\n");
    if runtime {
        let modules = sh_quote(&proc_root.join("modules").display().to_string());
        let low_level = sh_quote(low_level);
        // NVIDIA's runtime wrappers: before the driver container has
        // loaded the module, GPU pods cannot work, but every other pod on
        // the node (the driver's own among them) must still start.
        let _ = write!(
            text,
            "if ! grep -qs '^nvidia ' {modules}; then\n\
             \techo \"nvidia driver modules are not yet loaded, invoking {low_level} directly\" >&2\n\
             \texec {low_level} \"$@\"\n\
             fi\n"
        );
    }
    let _ = writeln!(
        text,
        "PATH={dir}:$PATH NVIDIA_CTK_CONFIG_FILE_PATH={config} exec {real} \"$@\""
    );
    text
}

/// `'text'` for sh.
fn sh_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// What config.toml says, from the installer's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeSettings {
    pub runtimes: Vec<String>,
}

/// The runtime's config.toml for the wrapper `name` (NVIDIA's
/// toolkit.go: the defaults, then the installer's keys). `mode` forced for
/// the `.cdi` and `.legacy` runtimes.
pub fn config_text(settings: &Settings, toolkit: &Path, name: &str, runtimes: &[String]) -> String {
    let mut doc = DocumentMut::new();
    doc.decor_mut()
        .set_prefix("# Written by nvidia-ctk-installer; rewritten on every start of it.\n");
    let c = &settings.runtime_config;
    doc.insert(
        "accept-nvidia-visible-devices-envvar-when-unprivileged",
        toml_edit::value(c.accept_envvar_when_unprivileged),
    );
    doc.insert(
        "accept-nvidia-visible-devices-as-volume-mounts",
        toml_edit::value(c.accept_as_volume_mounts),
    );
    let driver_root = settings.driver_root.display().to_string();
    let mut cli = Table::new();
    cli.insert("root", toml_edit::value(driver_root.as_str()));
    // Ours never runs ldconfig; the key is NVIDIA's and kept for its tools.
    cli.insert(
        "ldconfig",
        toml_edit::value(format!(
            "@{}",
            settings.driver_root.join("sbin/ldconfig").display()
        )),
    );
    doc.insert("nvidia-container-cli", Item::Table(cli));

    let mut runtime = Table::new();
    let mut list = Array::new();
    for r in runtimes {
        list.push(r.as_str());
    }
    runtime.insert("runtimes", toml_edit::value(list));
    let mode = Handler::of_wrapper(name)
        .and_then(|handler| handler.forced_mode)
        .or(c.mode.as_deref());
    if let Some(mode) = mode {
        runtime.insert("mode", toml_edit::value(mode));
    }
    let optional = [
        ("debug", &c.debug),
        ("log-level", &c.log_level),
        ("proc-root", &c.proc_root),
        ("sys-root", &c.sys_root),
    ];
    for (key, value) in optional {
        if let Some(value) = value {
            runtime.insert(key, toml_edit::value(value.as_str()));
        }
    }
    if let Some(dev_root) = &settings.dev_root {
        runtime.insert("dev-root", toml_edit::value(dev_root.display().to_string()));
    }
    let mut cdi = Table::new();
    if let Some(kind) = &c.default_kind {
        cdi.insert("default-kind", toml_edit::value(kind.as_str()));
    }
    if let Some(prefixes) = &c.annotation_prefixes {
        let mut list = Array::new();
        for p in prefixes {
            list.push(p.as_str());
        }
        cdi.insert("annotation-prefixes", toml_edit::value(list));
    }
    // The runtime must read the specs where this installer writes them
    // (NVIDIA's default dirs, with CDI_OUTPUT_DIR in place of the second).
    let output = settings.cdi_output_dir.display().to_string();
    if output != "/var/run/cdi" {
        let mut dirs = Array::new();
        dirs.push("/etc/cdi");
        dirs.push(output.as_str());
        cdi.insert("spec-dirs", toml_edit::value(dirs));
    }
    if !cdi.is_empty() {
        let mut modes = Table::new();
        modes.set_implicit(true);
        modes.insert("cdi", Item::Table(cdi));
        runtime.insert("modes", Item::Table(modes));
    }
    doc.insert("nvidia-container-runtime", Item::Table(runtime));

    let mut hook = Table::new();
    hook.insert(
        "path",
        toml_edit::value(
            toolkit
                .join("nvidia-container-runtime-hook")
                .display()
                .to_string(),
        ),
    );
    // NVIDIA's key; the hook is only ever run by our runtime here.
    hook.insert("skip-mode-detection", toml_edit::value(true));
    doc.insert("nvidia-container-runtime-hook", Item::Table(hook));
    let mut ctk = Table::new();
    ctk.insert(
        "path",
        toml_edit::value(toolkit.join("nvidia-ctk").display().to_string()),
    );
    doc.insert("nvidia-ctk", Item::Table(ctk));
    doc.to_string()
}

/// Installs the toolkit under `settings.root`: builds `.toolkit.new` beside
/// `toolkit`, then swaps it in. Returns the toolkit dir.
pub fn install(settings: &Settings, runtimes: &[String]) -> Result<PathBuf> {
    let toolkit = toolkit_dir(&settings.root);
    let staging = settings
        .root
        .join(format!(".toolkit.new-{}", std::process::id()));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| InstallerError::Install { path, source }
    };
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(io(&staging))?;
    let result =
        fill(settings, &toolkit, &staging, runtimes).and_then(|()| swap_in(&staging, &toolkit));
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result.map(|()| toolkit)
}

fn fill(settings: &Settings, toolkit: &Path, staging: &Path, runtimes: &[String]) -> Result<()> {
    let low_level = runtimes.first().map_or("runc", String::as_str);
    let proc_root = settings
        .runtime_config
        .proc_root
        .as_deref()
        .map_or_else(|| PathBuf::from("/proc"), PathBuf::from);
    let runtimes_wrappers = HANDLERS
        .iter()
        .map(|handler| (handler.wrapper, "nvidia-container-runtime", true));
    let tools = WRAPPED_TOOLS.iter().map(|&name| (name, name, false));
    for (name, source, runtime) in runtimes_wrappers.chain(tools) {
        copy_binary(
            &settings.source_dir.join(source),
            &staging.join(format!("{name}.real")),
        )?;
        let text = wrapper_text(toolkit, name, runtime, &proc_root, low_level);
        write_file(&staging.join(name), text.as_bytes(), 0o755)?;
        let config = config_path(staging, name);
        write_file(
            &config,
            config_text(settings, toolkit, name, runtimes).as_bytes(),
            0o644,
        )?;
    }
    for name in PLAIN {
        copy_binary(&settings.source_dir.join(name), &staging.join(name))?;
    }
    // NVIDIA's name for the hook (CRI-O's hook mode, old docker configs).
    let link = staging.join("nvidia-container-toolkit");
    std::os::unix::fs::symlink("nvidia-container-runtime-hook", &link).map_err(|source| {
        InstallerError::Install {
            path: link.clone(),
            source,
        }
    })?;
    Ok(())
}

fn copy_binary(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to).map_err(|source| InstallerError::Source {
        path: from.to_path_buf(),
        source,
    })?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755)).map_err(|source| {
        InstallerError::Install {
            path: to.to_path_buf(),
            source,
        }
    })
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let error = |source| InstallerError::Install {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(error)?;
    }
    std::fs::write(path, bytes).map_err(error)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(error)
}

/// Exchanges `staging` and `toolkit` (or renames `staging` there when
/// there is no toolkit yet), then removes the old tree.
fn swap_in(staging: &Path, toolkit: &Path) -> Result<()> {
    use nix::fcntl::{renameat2, RenameFlags};
    let error = |source: std::io::Error| InstallerError::Install {
        path: toolkit.to_path_buf(),
        source,
    };
    if toolkit.symlink_metadata().is_ok() {
        renameat2(None, staging, None, toolkit, RenameFlags::RENAME_EXCHANGE)
            .map_err(|errno| error(errno.into()))?;
        // `staging` now holds the previous toolkit.
        std::fs::remove_dir_all(staging).map_err(error)?;
    } else {
        std::fs::rename(staging, toolkit).map_err(error)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_wrappers_fall_back_without_the_module() {
        let text = wrapper_text(
            Path::new("/usr/local/nvidia/toolkit"),
            "nvidia-container-runtime.cdi",
            true,
            Path::new("/proc"),
            "runc",
        );
        assert!(text.starts_with("#!/bin/sh\n"), "{text}");
        assert!(
            text.contains("grep -qs '^nvidia ' '/proc/modules'"),
            "{text}"
        );
        assert!(text.contains("exec 'runc' \"$@\""), "{text}");
        assert!(text.contains("NVIDIA_CTK_CONFIG_FILE_PATH='/usr/local/nvidia/toolkit/.config/nvidia-container-runtime.cdi/config.toml'"), "{text}");
        assert!(
            text.contains(
                "exec '/usr/local/nvidia/toolkit/nvidia-container-runtime.cdi.real' \"$@\""
            ),
            "{text}"
        );
        let ctk = wrapper_text(
            Path::new("/t"),
            "nvidia-ctk",
            false,
            Path::new("/proc"),
            "runc",
        );
        assert!(!ctk.contains("modules"), "{ctk}");
        assert!(ctk.contains("PATH='/t':$PATH"), "{ctk}");
    }

    #[test]
    fn sh_quote_survives_quotes() {
        assert_eq!(sh_quote("a'b"), "'a'\\''b'");
    }
}
