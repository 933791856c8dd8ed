//! Driver capabilities (contract.md §3): `compute`, `compat32`, `graphics`,
//! `utility`, `video`, `display`, `ngx`, as a small set.

use std::fmt;

use super::RequestError;

/// A driver capability (contract.md §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Capability {
    Compute,
    Compat32,
    Graphics,
    Utility,
    Video,
    Display,
    Ngx,
}

impl Capability {
    pub const ALL: [Capability; 7] = [
        Capability::Compute,
        Capability::Compat32,
        Capability::Graphics,
        Capability::Utility,
        Capability::Video,
        Capability::Display,
        Capability::Ngx,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Capability::Compute => "compute",
            Capability::Compat32 => "compat32",
            Capability::Graphics => "graphics",
            Capability::Utility => "utility",
            Capability::Video => "video",
            Capability::Display => "display",
            Capability::Ngx => "ngx",
        }
    }

    pub fn from_name(name: &str) -> Option<Capability> {
        Capability::ALL.into_iter().find(|c| c.name() == name)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of capabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities(u8);

impl Capabilities {
    pub fn all() -> Capabilities {
        Capability::ALL.into_iter().collect()
    }

    pub fn contains(self, capability: Capability) -> bool {
        self.0 & capability.bit() != 0
    }

    pub fn insert(&mut self, capability: Capability) {
        self.0 |= capability.bit();
    }

    pub fn intersection(self, other: Capabilities) -> Capabilities {
        Capabilities(self.0 & other.0)
    }

    pub fn iter(self) -> impl Iterator<Item = Capability> {
        Capability::ALL
            .into_iter()
            .filter(move |c| self.contains(*c))
    }

    /// Parses a comma list (`all` = every capability); `variable` names the
    /// source in the error.
    pub fn parse(list: &str, variable: &str) -> Result<Capabilities, RequestError> {
        let mut set = Capabilities::default();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "all" {
                set = Capabilities::all();
                continue;
            }
            match Capability::from_name(name) {
                Some(capability) => set.insert(capability),
                None => {
                    return Err(RequestError::UnknownCapability {
                        variable: variable.to_string(),
                        name: name.to_string(),
                    })
                }
            }
        }
        Ok(set)
    }
}

impl FromIterator<Capability> for Capabilities {
    fn from_iter<I: IntoIterator<Item = Capability>>(iter: I) -> Self {
        let mut set = Capabilities::default();
        for capability in iter {
            set.insert(capability);
        }
        set
    }
}

impl fmt::Display for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(Capability::name).collect();
        f.write_str(&names.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::request::test_support::{request, spec_with_env};
    use crate::request::Request;

    #[test]
    fn capabilities() {
        let caps = |env: &[&str]| request(env).unwrap().unwrap().capabilities.to_string();
        assert_eq!(caps(&["NVIDIA_VISIBLE_DEVICES=all"]), "compute,utility");
        assert_eq!(
            caps(&["NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_DRIVER_CAPABILITIES="]),
            "compute,utility"
        );
        assert_eq!(
            caps(&[
                "NVIDIA_VISIBLE_DEVICES=all",
                "NVIDIA_DRIVER_CAPABILITIES=utility"
            ]),
            "utility"
        );
        assert_eq!(
            caps(&[
                "NVIDIA_VISIBLE_DEVICES=all",
                "NVIDIA_DRIVER_CAPABILITIES=all"
            ]),
            "compute,compat32,graphics,utility,video,display,ngx"
        );
        let error = request(&[
            "NVIDIA_VISIBLE_DEVICES=all",
            "NVIDIA_DRIVER_CAPABILITIES=compute,gpu",
        ])
        .unwrap_err();
        assert_eq!(
            error,
            RequestError::UnknownCapability {
                variable: "NVIDIA_DRIVER_CAPABILITIES".into(),
                name: "gpu".into()
            }
        );
        // The admin's supported list caps the request.
        let config = Config {
            supported_driver_capabilities: "utility".into(),
            ..Default::default()
        };
        let request = Request::from_spec(
            &spec_with_env(&["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_DRIVER_CAPABILITIES=all"]),
            &config,
        )
        .unwrap()
        .unwrap();
        assert_eq!(request.capabilities.to_string(), "utility");
    }
}
