//! The spec dirs: every spec file in them loaded (later dirs overriding
//! earlier ones, broken files reported without hiding the good ones), and
//! qualified names resolved to the CDI edits they stand for, in CDI's order.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::name::{parse_qualified_name, QualifiedName};
use super::spec::{Edits, Format, Spec};
use super::CdiError;

/// A spec file that parsed and validated.
#[derive(Debug, Clone)]
pub struct LoadedSpec {
    pub path: PathBuf,
    /// Index of its dir in the search list: later dirs override earlier.
    pub priority: usize,
    pub spec: Spec,
}

/// A spec file that did not parse or validate, with what could still be
/// read of it (its kind and device names, when it is at least YAML).
#[derive(Debug, Clone)]
pub struct BrokenSpec {
    pub path: PathBuf,
    pub problem: String,
    pub kind: Option<String>,
    pub device_names: Vec<String>,
}

/// Where a qualified name resolves to.
#[derive(Debug, Clone)]
enum Entry {
    /// (index in `specs`, index in its devices)
    Found(usize, usize),
    /// Two files of the same dir define it.
    Conflict {
        dir: PathBuf,
        first: PathBuf,
        second: PathBuf,
    },
}

/// Every spec in the spec dirs.
#[derive(Debug, Clone)]
pub struct Registry {
    pub dirs: Vec<PathBuf>,
    pub specs: Vec<LoadedSpec>,
    pub broken: Vec<BrokenSpec>,
    /// Qualified names in first-seen order (dirs, then file names, then the
    /// order in the file), each once.
    names: Vec<String>,
    entries: HashMap<String, Entry>,
}

impl Registry {
    /// Reads every `.json` / `.yaml` file of `dirs` (sorted by name, so the
    /// order does not depend on the filesystem). A missing dir is empty; an
    /// unreadable or invalid file is recorded in `broken` and skipped.
    pub fn load(dirs: &[PathBuf]) -> Registry {
        let mut registry = Registry {
            dirs: dirs.to_vec(),
            specs: Vec::new(),
            broken: Vec::new(),
            names: Vec::new(),
            entries: HashMap::new(),
        };
        for (priority, dir) in dirs.iter().enumerate() {
            let entries = match std::fs::read_dir(dir) {
                Ok(entries) => entries,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                Err(error) => {
                    registry.broken.push(BrokenSpec {
                        path: dir.clone(),
                        problem: format!("cannot read the spec dir: {error}"),
                        kind: None,
                        device_names: Vec::new(),
                    });
                    continue;
                }
            };
            let mut files: Vec<PathBuf> = entries
                .filter_map(|entry| entry.ok())
                .map(|entry| entry.path())
                .filter(|path| Format::from_path(path).is_some())
                .filter(|path| !is_hidden(path))
                .collect();
            files.sort();
            for path in files {
                if !path.is_file() {
                    continue;
                }
                match load_file(&path) {
                    Ok(spec) => registry.specs.push(LoadedSpec {
                        path,
                        priority,
                        spec,
                    }),
                    Err(problem) => registry.broken.push(salvage(path, problem)),
                }
            }
        }
        registry.index();
        registry
    }

    fn index(&mut self) {
        for (spec_index, loaded) in self.specs.iter().enumerate() {
            for (device_index, device) in loaded.spec.devices.iter().enumerate() {
                let name = format!("{}={}", loaded.spec.kind, device.name);
                let entry = Entry::Found(spec_index, device_index);
                let Some(previous) = self.entries.get(&name) else {
                    self.names.push(name.clone());
                    self.entries.insert(name, entry);
                    continue;
                };
                // A later dir overrides an earlier one; within one dir the
                // two definitions conflict (the CDI library's rule).
                let previous_path = match previous {
                    Entry::Found(s, _) if self.specs[*s].priority < loaded.priority => {
                        self.entries.insert(name, entry);
                        continue;
                    }
                    Entry::Found(s, _) => self.specs[*s].path.clone(),
                    Entry::Conflict { .. } => continue,
                };
                let dir = loaded.path.parent().unwrap_or(Path::new("/")).to_path_buf();
                self.entries.insert(
                    name,
                    Entry::Conflict {
                        dir,
                        first: previous_path,
                        second: loaded.path.clone(),
                    },
                );
            }
        }
    }

    /// Every qualified device name, each once, in first-seen order.
    pub fn device_names(&self) -> &[String] {
        &self.names
    }

    /// Names defined twice in one dir, with the message that resolving
    /// them gives.
    pub fn conflicts(&self) -> Vec<String> {
        self.names
            .iter()
            .filter_map(|name| match self.resolve_one(name) {
                Err(error @ CdiError::Conflict { .. }) => Some(error.to_string()),
                _ => None,
            })
            .collect()
    }

    fn dirs_text(&self) -> String {
        self.dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn resolve_one(&self, name: &str) -> Result<(usize, usize), CdiError> {
        let qualified = parse_qualified_name(name)?;
        match self.entries.get(name) {
            Some(Entry::Found(spec, device)) => Ok((*spec, *device)),
            Some(Entry::Conflict { dir, first, second }) => Err(CdiError::Conflict {
                name: name.to_string(),
                dir: dir.clone(),
                first: first.clone(),
                second: second.clone(),
            }),
            None => Err(self.unresolvable(&qualified)),
        }
    }

    /// The error for a name no valid spec defines: a broken file that
    /// names it is the cause; otherwise the dirs searched, the broken files
    /// that might define it, and what this kind does offer.
    fn unresolvable(&self, qualified: &QualifiedName) -> CdiError {
        let of_kind = |broken: &&BrokenSpec| broken.kind.as_deref() == Some(&qualified.kind);
        if let Some(broken) = self
            .broken
            .iter()
            .filter(of_kind)
            .find(|b| b.device_names.contains(&qualified.name))
        {
            return CdiError::OnlyInBroken {
                name: qualified.to_string(),
                path: broken.path.clone(),
                problem: broken.problem.clone(),
            };
        }
        let mut hints = Vec::new();
        let suspects: Vec<String> = self
            .broken
            .iter()
            .filter(|b| b.kind.is_none() || of_kind(b))
            .map(|b| format!("{} ({})", b.path.display(), b.problem))
            .collect();
        if !suspects.is_empty() {
            hints.push(format!(
                "spec files that could not be read and may define it: {}",
                suspects.join("; ")
            ));
        }
        let prefix = format!("{}=", qualified.kind);
        let offered: Vec<&str> = self
            .names
            .iter()
            .filter(|n| n.starts_with(&prefix))
            .map(String::as_str)
            .collect();
        if !offered.is_empty() {
            hints.push(format!(
                "{} devices there: {}",
                qualified.kind,
                offered.join(", ")
            ));
        }
        let hint = if hints.is_empty() {
            String::new()
        } else {
            format!(" ({})", hints.join("; "))
        };
        CdiError::Unresolvable {
            name: qualified.to_string(),
            dirs: self.dirs_text(),
            hint,
        }
    }

    /// The edits of these devices, in CDI's order: a spec's common edits
    /// once, before its first device's own; a device named twice, once.
    pub fn resolve(&self, names: &[String]) -> Result<Resolved, CdiError> {
        let mut resolved = Resolved::default();
        let mut specs_seen: Vec<usize> = Vec::new();
        let mut devices_seen = std::collections::HashSet::new();
        for name in names {
            let (spec_index, device_index) = self.resolve_one(name)?;
            if !devices_seen.insert((spec_index, device_index)) {
                continue;
            }
            let loaded = &self.specs[spec_index];
            if !specs_seen.contains(&spec_index) {
                specs_seen.push(spec_index);
                resolved.add(&loaded.spec.container_edits, name, &loaded.path);
            }
            let device = &loaded.spec.devices[device_index];
            resolved.add(&device.container_edits, name, &loaded.path);
        }
        Ok(resolved)
    }
}

/// The CDI edits that qualified names resolve to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    /// Every part's edits in order, merged: what an engine that applies the
    /// specs itself adds to the container.
    pub edits: Edits,
    /// The same, one entry per spec's common edits and per device, so that
    /// an edit that cannot be applied is reported with the device and file
    /// it came from.
    pub parts: Vec<ResolvedPart>,
}

/// One spec's common edits, or one device's, with where they came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedPart {
    /// The qualified name that brought them in.
    pub name: String,
    /// The spec file.
    pub path: PathBuf,
    pub edits: Edits,
}

impl Resolved {
    fn add(&mut self, edits: &Edits, name: &str, path: &Path) {
        let merged = &mut self.edits;
        merged.env.extend(edits.env.iter().cloned());
        merged
            .device_nodes
            .extend(edits.device_nodes.iter().cloned());
        merged.hooks.extend(edits.hooks.iter().cloned());
        merged.mounts.extend(edits.mounts.iter().cloned());
        merged
            .additional_gids
            .extend(edits.additional_gids.iter().copied());
        if edits.intel_rdt.is_some() {
            merged.intel_rdt.clone_from(&edits.intel_rdt);
        }
        if edits.net_devices.is_some() {
            merged.net_devices.clone_from(&edits.net_devices);
        }
        self.parts.push(ResolvedPart {
            name: name.to_string(),
            path: path.to_path_buf(),
            edits: edits.clone(),
        });
    }
}

/// A spec file's text, up to [`crate::bounded::CDI_SPEC`].
fn read_to_string(path: &Path) -> std::io::Result<String> {
    crate::bounded::read_file_to_string(path, crate::bounded::CDI_SPEC)
}

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

fn load_file(path: &Path) -> Result<Spec, String> {
    let text =
        read_to_string(path).map_err(|error| match crate::bounded::is_too_large(&error) {
            true => error.to_string(),
            false => format!("cannot read it: {error}"),
        })?;
    // The extension was checked by the caller.
    let format = Format::from_path(path).unwrap_or(Format::Yaml);
    Spec::parse(&text, format).map_err(|problem| crate::logging::one_line(&problem))
}

/// What can still be read of a broken file: its kind and device names if
/// it is YAML (JSON is YAML) at all.
fn salvage(path: PathBuf, problem: String) -> BrokenSpec {
    let loose: Option<Value> = read_to_string(&path)
        .ok()
        .and_then(|text| serde_norway::from_str(&text).ok());
    let kind = loose
        .as_ref()
        .and_then(|v| v.get("kind"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let device_names = loose
        .as_ref()
        .and_then(|v| v.get("devices"))
        .and_then(Value::as_array)
        .map(|devices| {
            devices
                .iter()
                .filter_map(|d| match d.get("name")? {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    BrokenSpec {
        path,
        problem,
        kind,
        device_names,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_over_the_limit_is_broken_for_its_size_not_its_syntax() {
        let dir = std::env::temp_dir().join(format!("ncr-cdi-limit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = std::fs::File::create(dir.join("huge.yaml")).unwrap();
        file.set_len(crate::bounded::CDI_SPEC.bytes + 1).unwrap();
        let registry = Registry::load(std::slice::from_ref(&dir));
        assert_eq!(registry.broken.len(), 1);
        let problem = &registry.broken[0].problem;
        assert!(
            problem.starts_with("a CDI spec is larger than 16 MiB"),
            "{problem}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
