//! CRI-O: the drop-in `crio.conf.d/99-nvidia.toml` with
//! `[crio.runtime.runtimes.<name>]`.

use toml_edit::Item;

use super::toml::*;
use super::{read_optional, sibling_dir, FileChange, Options, Plan, Result, DROP_IN_NAME};

/// CRI-O's cleanup as NVIDIA's installer does it: only a
/// `default_runtime` naming ours is taken out of our drop-in (or the main
/// file); the entries stay, because CRI-O cannot stop the pods whose
/// handler vanished (NVIDIA toolkit commits 0f9036cb, 9fab81c4).
pub fn unset_crio_default(options: &Options) -> Result<Plan> {
    let mut keep = options.clone();
    keep.uninstall = false;
    keep.set_as_default = false;
    let mut plan = super::plan(&keep)?;
    for file in &mut plan.files {
        let Some(text) = &file.after else { continue };
        let mut doc = parse_toml(text, &file.path)?;
        if let Some(runtime) = existing_table_at(doc.as_table_mut(), &["crio", "runtime"]) {
            if runtime.get("default_runtime").and_then(Item::as_str)
                == Some(options.runtime_name.as_str())
            {
                runtime.remove("default_runtime");
            }
        }
        file.after = Some(toml_text(&doc));
    }
    Ok(plan)
}

pub(super) fn plan(options: &Options) -> Result<Plan> {
    let main = options.config_path();
    let drop_in = options.drop_in.unwrap_or(true);
    // CRI-O decodes every drop-in over the config key by key, so ours only
    // needs our entry (unlike containerd's plugin sections).
    let path = if drop_in {
        options
            .drop_in_path()
            .unwrap_or_else(|| sibling_dir(&main, "crio.conf.d").join(DROP_IN_NAME))
    } else {
        main
    };
    let before = read_optional(&path)?;
    let text = before.as_deref().unwrap_or("");
    let mut doc = parse_toml(text, &path)?;
    let name = options.runtime_name.as_str();
    if options.uninstall {
        if let Some(runtimes) =
            existing_table_at(doc.as_table_mut(), &["crio", "runtime", "runtimes"])
        {
            for (entry, _) in options.entries() {
                runtimes.remove(entry);
            }
        }
        if let Some(runtime) = existing_table_at(doc.as_table_mut(), &["crio", "runtime"]) {
            if runtime.get("default_runtime").and_then(Item::as_str) == Some(name) {
                runtime.remove("default_runtime");
            }
        }
    } else {
        if text.trim().is_empty() {
            doc.decor_mut()
                .set_prefix("# Written by `nvidia-ctk runtime configure --runtime=crio`.\n");
        }
        for (entry_name, binary) in options.entries() {
            let mut walk = Walk::new(&path);
            let entry = table_at(
                doc.as_table_mut(),
                &["crio", "runtime", "runtimes", entry_name],
                &mut walk,
            )?;
            set_str(entry, "runtime_path", &binary.to_string_lossy());
            if entry.get("runtime_type").is_none() {
                entry.insert("runtime_type", toml_edit::value("oci"));
            }
        }
        if options.set_as_default {
            let runtime = table_at(
                doc.as_table_mut(),
                &["crio", "runtime"],
                &mut Walk::new(&path),
            )?;
            set_str(runtime, "default_runtime", name);
        }
    }
    let after =
        if options.uninstall && (before.is_none() || (drop_in && has_no_values(doc.as_table()))) {
            None
        } else {
            Some(toml_text(&doc))
        };
    let file = FileChange {
        path,
        before,
        after,
    };
    let mut next_steps = Vec::new();
    if file.changes_anything() {
        next_steps.push("restart CRI-O: systemctl restart crio".to_string());
        if !options.uninstall {
            next_steps.push(format!(
                "Kubernetes: create a RuntimeClass with handler: {name} (examples/k8s/runtimeclass.yaml)"
            ));
        }
    }
    Ok(Plan {
        files: vec![file],
        next_steps,
    })
}
