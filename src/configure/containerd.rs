//! containerd's `config.toml`, versions 1, 2 and 3: the runtime entry in
//! the CRI plugin's section, as a drop-in plus the `imports` line (v2, v3),
//! or in place (v1).

use std::path::Path;

use toml_edit::{Array, DocumentMut, Item, Table, TableLike};

use super::toml::*;
use super::{
    read_optional, sibling_dir, ConfigureError, FileChange, Options, Plan, Result, DROP_IN_NAME,
};

/// containerd's shim for runc-compatible runtimes (the one that honours
/// `options.BinaryName`).
const RUNC_V2_SHIM: &str = "io.containerd.runc.v2";
/// containerd 1.x's legacy shim, configured through `options.Runtime`.
const LINUX_V1_SHIM: &str = "io.containerd.runtime.v1.linux";

/// The CRI plugin's key in each containerd config version: `cri` (v1),
/// `io.containerd.grpc.v1.cri` (v2, containerd 1.x), and
/// `io.containerd.cri.v1.runtime` (v3, containerd 2.x), where the runtimes
/// live.
pub fn containerd_cri_plugin(version: i64) -> Option<&'static str> {
    match version {
        1 => Some("cri"),
        2 => Some("io.containerd.grpc.v1.cri"),
        3 => Some("io.containerd.cri.v1.runtime"),
        _ => None,
    }
}

fn containerd_version(
    doc: &DocumentMut,
    text: &str,
    path: &Path,
    options: &Options,
) -> Result<i64> {
    match doc.get("version") {
        Some(item) => item.as_integer().ok_or_else(|| ConfigureError::Shape {
            path: path.to_path_buf(),
            key: "version".to_string(),
            found: item_kind(item),
            expected: "an integer",
        }),
        // A new file gets the requested version; containerd reads an
        // existing file without `version` as version 1.
        None if text.trim().is_empty() => Ok(options.containerd_config_version.unwrap_or(2)),
        None => Ok(1),
    }
}

pub(super) fn plan(options: &Options) -> Result<Plan> {
    let path = options.config_path();
    let before = read_optional(&path)?;
    let text = before.as_deref().unwrap_or("");
    let mut doc = parse_toml(text, &path)?;
    let version = containerd_version(&doc, text, &path, options)?;
    let plugin = containerd_cri_plugin(version).ok_or(ConfigureError::ContainerdVersion {
        path: path.clone(),
        version,
    })?;
    let drop_in = options.drop_in.unwrap_or(version >= 2);
    if drop_in && version < 2 {
        return Err(ConfigureError::DropInNeedsVersion2 { path });
    }
    let runtimes_keys = ["plugins", plugin, "containerd", "runtimes"];
    let containerd_keys = ["plugins", plugin, "containerd"];
    if text.trim().is_empty() && !options.uninstall {
        doc.insert("version", toml_edit::value(version));
    }

    let mut files = Vec::new();
    let mut notes = Vec::new();
    if drop_in {
        let drop_in_path = options
            .drop_in_path()
            .unwrap_or_else(|| sibling_dir(&path, "conf.d").join(DROP_IN_NAME));
        let drop_in_before = read_optional(&drop_in_path)?;
        if let Some(text) = &drop_in_before {
            // Validate it too: we replace it, but a broken file there means
            // the admin edited it, and they should hear about it first.
            parse_toml(text, &drop_in_path)?;
        }
        let import = drop_in_glob(
            options
                .drop_in_host_path
                .as_deref()
                .unwrap_or(&drop_in_path),
        );
        let drop_in_after = if options.uninstall {
            None
        } else {
            Some(containerd_drop_in(
                &doc,
                version,
                plugin,
                options,
                &path,
                &drop_in_path,
            )?)
        };
        // Uninstall also takes out an entry of ours that an earlier run
        // with --drop-in=false put in the main file.
        if options.uninstall {
            remove_containerd_entry(&mut doc, &runtimes_keys, &containerd_keys, options);
        }
        let others_use_glob = other_drop_ins(&drop_in_path);
        let imports_changed = if options.uninstall {
            !others_use_glob && remove_import(&mut doc, &import)
        } else {
            add_import(&mut doc, &import, &path)?
        };
        files.push(FileChange {
            path: drop_in_path.clone(),
            before: drop_in_before,
            after: drop_in_after,
        });
        let after = toml_text(&doc);
        files.push(FileChange {
            path: path.clone(),
            after: if before.is_none() && after.trim().is_empty() {
                None
            } else {
                Some(after)
            },
            before,
        });
        if !options.uninstall {
            notes.push(format!(
                "{} holds a copy of the [plugins.\"{plugin}\"] section of {}: containerd replaces a plugin's whole section with the imported one (it does not merge keys), so after editing that section in {}, run this command again",
                drop_in_path.display(),
                path.display(),
                path.display()
            ));
        } else if !imports_changed && others_use_glob {
            notes.push(format!(
                "kept `imports = [\"{import}\"]` in {}: other drop-ins use it",
                path.display()
            ));
        }
    } else {
        if options.uninstall {
            remove_containerd_entry(&mut doc, &runtimes_keys, &containerd_keys, options);
        } else {
            let runtimes = table_at(doc.as_table_mut(), &runtimes_keys, &mut Walk::new(&path))?;
            for (name, binary) in options.entries() {
                set_containerd_runtime(runtimes, name, binary, options, &path)?;
            }
            if options.enable_cdi {
                enable_cdi(&mut doc, plugin, &path)?;
            }
            if options.set_as_default {
                let containerd =
                    table_at(doc.as_table_mut(), &containerd_keys, &mut Walk::new(&path))?;
                set_str(containerd, "default_runtime_name", &options.runtime_name);
            }
        }
        let after = toml_text(&doc);
        files.push(FileChange {
            path: path.clone(),
            after: if before.is_none() && options.uninstall {
                None
            } else {
                Some(after)
            },
            before,
        });
    }
    let mut next_steps = Vec::new();
    if files.iter().any(FileChange::changes_anything) {
        // containerd reads its config only at start.
        next_steps.push("restart containerd: systemctl restart containerd".to_string());
        if !options.uninstall {
            next_steps.push(format!(
                "Kubernetes: create a RuntimeClass with handler: {} (examples/k8s/runtimeclass.yaml) and set runtimeClassName: {} in the pod spec",
                options.runtime_name, options.runtime_name
            ));
            next_steps.push(format!(
                "without CRI: ctr run --runc-binary {} ...",
                options.runtime_path.display()
            ));
        }
        next_steps.extend(notes);
    }
    Ok(Plan { files, next_steps })
}

/// The `imports` entry that covers our drop-in: every `*.toml` of its dir,
/// so that the admin's other drop-ins there are read too.
fn drop_in_glob(drop_in: &Path) -> String {
    drop_in
        .parent()
        .unwrap_or(Path::new("/"))
        .join("*.toml")
        .to_string_lossy()
        .into_owned()
}

/// True if the drop-in's dir holds `*.toml` files other than ours.
fn other_drop_ins(drop_in: &Path) -> bool {
    let Some(dir) = drop_in.parent() else {
        return false;
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|entry| {
        let name = entry.file_name();
        Some(name.as_os_str()) != drop_in.file_name()
            && Path::new(&name).extension().is_some_and(|e| e == "toml")
    })
}

/// Adds `import` to the top-level `imports` array unless it (or our
/// drop-in's exact path) is already there. Returns whether it changed.
fn add_import(doc: &mut DocumentMut, import: &str, path: &Path) -> Result<bool> {
    // toml_edit writes root keys before all tables, so a new `imports`
    // stays a top-level key.
    let item = doc
        .as_table_mut()
        .entry("imports")
        .or_insert_with(|| toml_edit::value(Array::new()));
    let kind = item_kind(item);
    let Some(array) = item.as_array_mut() else {
        return Err(ConfigureError::Shape {
            path: path.to_path_buf(),
            key: "imports".to_string(),
            found: kind,
            expected: "an array of paths",
        });
    };
    if array.iter().any(|v| v.as_str() == Some(import)) {
        return Ok(false);
    }
    array.push(import);
    Ok(true)
}

fn remove_import(doc: &mut DocumentMut, import: &str) -> bool {
    let root = doc.as_table_mut();
    let Some(array) = root.get_mut("imports").and_then(Item::as_array_mut) else {
        return false;
    };
    let before = array.len();
    array.retain(|v| v.as_str() != Some(import));
    let changed = array.len() != before;
    if array.is_empty() {
        root.remove("imports");
    }
    changed
}

fn remove_containerd_entry(
    doc: &mut DocumentMut,
    runtimes_keys: &[&str],
    containerd_keys: &[&str],
    options: &Options,
) {
    if let Some(runtimes) = existing_table_at(doc.as_table_mut(), runtimes_keys) {
        for (name, _) in options.entries() {
            runtimes.remove(name);
        }
    }
    if let Some(containerd) = existing_table_at(doc.as_table_mut(), containerd_keys) {
        if containerd
            .get("default_runtime_name")
            .and_then(Item::as_str)
            == Some(options.runtime_name.as_str())
        {
            containerd.remove("default_runtime_name");
        }
    }
}

/// Our runtime entry in `runtimes`: a copy of the runc entry (so that
/// `SystemdCgroup` and the other shim options match what the node's other
/// pods get) with `BinaryName` pointing at us. An existing entry of ours
/// keeps everything the admin set in it but the binary.
fn set_containerd_runtime(
    runtimes: &mut dyn TableLike,
    name: &str,
    binary: &Path,
    options: &Options,
    path: &Path,
) -> Result<()> {
    if runtimes.get(name).is_none() {
        let entry = match runtimes.get("runc") {
            Some(runc) if runc.is_table_like() => fresh_copy(runc),
            _ => {
                let mut table = Table::new();
                table.decor_mut().set_prefix("\n");
                Item::Table(table)
            }
        };
        runtimes.insert(name, entry);
    }
    let mut walk = Walk::new(path);
    walk.keys.extend(["runtimes".to_string()]);
    let entry = table_at(runtimes, &[name], &mut walk)?;
    if entry.get("runtime_type").is_none() {
        entry.insert("runtime_type", toml_edit::value(RUNC_V2_SHIM));
    }
    // The v1 shim takes the runtime binary as `Runtime`; runc.v2 as
    // `BinaryName` (containerd's runc options).
    let binary_key = if entry.get("runtime_type").and_then(Item::as_str) == Some(LINUX_V1_SHIM) {
        "Runtime"
    } else {
        "BinaryName"
    };
    // A new BinaryName lines up with the options copied from runc.
    let indent = entry
        .get("options")
        .and_then(Item::as_table_like)
        .and_then(first_key_indent);
    walk.keys.push(name.to_string());
    add_container_annotations(entry, &options.container_annotations, &walk)?;
    let options_table = table_at(entry, &["options"], &mut walk)?;
    let path_text = binary.to_string_lossy();
    let new_key = options_table.get(binary_key).is_none();
    set_str(options_table, binary_key, &path_text);
    if let (true, Some(indent)) = (new_key, indent) {
        if let Some(mut key) = options_table.key_mut(binary_key) {
            key.leaf_decor_mut().set_prefix(indent);
        }
    }
    Ok(())
}

/// `enable_cdi = true` in the CRI plugin's section (containerd 1.7+ and
/// 2.x read it there; containerd 2.x's default is already true, 1.7's false).
fn enable_cdi(doc: &mut DocumentMut, plugin: &str, path: &Path) -> Result<()> {
    let section = table_at(
        doc.as_table_mut(),
        &["plugins", plugin],
        &mut Walk::new(path),
    )?;
    if section.get("enable_cdi").and_then(Item::as_bool) != Some(true) {
        section.insert("enable_cdi", toml_edit::value(true));
    }
    Ok(())
}

/// Adds each of `annotations` missing from the entry's
/// `container_annotations` (the admin's own stay, in their order).
fn add_container_annotations(
    entry: &mut dyn TableLike,
    annotations: &[String],
    walk: &Walk,
) -> Result<()> {
    if annotations.is_empty() {
        return Ok(());
    }
    let new_key = entry.get("container_annotations").is_none();
    let indent = first_key_indent(entry);
    let item = entry
        .entry("container_annotations")
        .or_insert(toml_edit::value(Array::new()));
    let Some(array) = item.as_array_mut() else {
        return Err(walk.shape("container_annotations", item, "an array of strings"));
    };
    for annotation in annotations {
        if !array.iter().any(|v| v.as_str() == Some(annotation)) {
            array.push(annotation.as_str());
        }
    }
    // A new key lines up with the entry's others (runtime_type).
    if let (true, Some(indent)) = (new_key, indent) {
        if let Some(mut key) = entry.key_mut("container_annotations") {
            key.leaf_decor_mut().set_prefix(indent);
        }
    }
    Ok(())
}

/// The drop-in's text: the main file's CRI plugin section with our runtime
/// added. containerd (1.x: `mergeConfig` replaces `to.Plugins[k]` with the
/// imported file's) takes a plugin's section whole from the last file that
/// has it, so a drop-in holding only our runtime would wipe the admin's
/// CRI settings (runc's `SystemdCgroup`, `sandbox_image`, ...).
fn containerd_drop_in(
    main: &DocumentMut,
    version: i64,
    plugin: &str,
    options: &Options,
    main_path: &Path,
    drop_in_path: &Path,
) -> Result<String> {
    let mut doc = DocumentMut::new();
    doc.decor_mut().set_prefix(format!(
        "# Written by `nvidia-ctk runtime configure --runtime=containerd`: the {} runtime.\n\
         # It holds a copy of the [plugins.\"{plugin}\"] section of {} because containerd\n\
         # replaces a plugin's whole section with the imported one. Edit that file, then run\n\
         # the command again; edits made here are lost on the next run.\n",
        options.runtime_name,
        main_path.display()
    ));
    doc.insert("version", toml_edit::value(version));
    let mut plugins = Table::new();
    plugins.set_implicit(true);
    let section = main
        .get("plugins")
        .and_then(|plugins| plugins.get(plugin))
        .map(fresh_copy);
    let mut section = match section {
        Some(Item::Table(table)) => table,
        Some(other) => {
            // An inline table or dotted keys: normalise to a table.
            let mut table = Table::new();
            if let Some(like) = other.as_table_like() {
                for (key, item) in like.iter() {
                    table.insert(key, fresh_copy(item));
                }
            }
            table
        }
        None => Table::new(),
    };
    section.set_implicit(true);
    section.set_dotted(false);
    section.decor_mut().clear();
    plugins.insert(plugin, Item::Table(section));
    doc.insert("plugins", Item::Table(plugins));
    let path = drop_in_path;
    let runtimes = table_at(
        doc.as_table_mut(),
        &["plugins", plugin, "containerd", "runtimes"],
        &mut Walk::new(path),
    )?;
    for (name, binary) in options.entries() {
        set_containerd_runtime(runtimes, name, binary, options, path)?;
    }
    if options.enable_cdi {
        enable_cdi(&mut doc, plugin, path)?;
    }
    if options.set_as_default {
        let containerd = table_at(
            doc.as_table_mut(),
            &["plugins", plugin, "containerd"],
            &mut Walk::new(path),
        )?;
        set_str(containerd, "default_runtime_name", &options.runtime_name);
    }
    Ok(toml_text(&doc))
}
