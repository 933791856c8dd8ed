//! podman's `containers.conf`: `[engine.runtimes] <name> = [path]`.

use toml_edit::{Array, Item, Value};

use super::toml::*;
use super::{read_optional, FileChange, Options, Plan, Result};

pub(super) fn plan(options: &Options) -> Result<Plan> {
    let path = options.config_path();
    let before = read_optional(&path)?;
    let text = before.as_deref().unwrap_or("");
    let mut doc = parse_toml(text, &path)?;
    let name = options.runtime_name.as_str();
    let runtime_path = options.runtime_path.to_string_lossy();
    if options.uninstall {
        if let Some(runtimes) = existing_table_at(doc.as_table_mut(), &["engine", "runtimes"]) {
            runtimes.remove(name);
        }
        if let Some(engine) = existing_table_at(doc.as_table_mut(), &["engine"]) {
            if engine.get("runtime").and_then(Item::as_str) == Some(name) {
                engine.remove("runtime");
            }
        }
    } else {
        let runtimes = table_at(
            doc.as_table_mut(),
            &["engine", "runtimes"],
            &mut Walk::new(&path),
        )?;
        // podman takes the first path of the list that exists.
        let listed = runtimes
            .get(name)
            .and_then(Item::as_array)
            .and_then(|a| a.get(0))
            .and_then(Value::as_str)
            == Some(runtime_path.as_ref());
        if !listed {
            let mut paths = Array::new();
            paths.push(runtime_path.as_ref());
            runtimes.insert(name, toml_edit::value(paths));
        }
        if options.set_as_default {
            let engine = table_at(doc.as_table_mut(), &["engine"], &mut Walk::new(&path))?;
            set_str(engine, "runtime", name);
        }
    }
    let file = FileChange {
        after: if before.is_none() && options.uninstall {
            None
        } else {
            Some(toml_text(&doc))
        },
        path,
        before,
    };
    let mut next_steps = Vec::new();
    if file.changes_anything() && !options.uninstall {
        // podman reads containers.conf on every command: no daemon.
        next_steps.push(format!(
            "nothing to restart (podman reads containers.conf on every command): podman run --runtime {name} -e NVIDIA_VISIBLE_DEVICES=all IMAGE nvidia-smi -L"
        ));
    }
    Ok(Plan {
        files: vec![file],
        next_steps,
    })
}
