//! Qualified device names (SPEC.md "Kind", "Devices"; the CDI library's
//! parser package): `vendor/class=name`, parsed and validated. Imports
//! nothing from the crate: the request layer below CDI's registry uses it.

/// A name or kind that is not valid, with what is wrong and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} \"{name}\" is not valid: {problem}")]
pub struct NameError {
    pub what: &'static str,
    pub name: String,
    pub problem: String,
}

/// A parsed `vendor/class=name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QualifiedName {
    pub kind: String,
    pub name: String,
}

impl std::fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.kind, self.name)
    }
}

/// Whether a request item is meant as a CDI name: it has the `/` of a kind
/// and the `=` before the device name (no GPU id has either).
pub fn looks_qualified(item: &str) -> bool {
    item.contains('/') && item.contains('=')
}

/// Parses and validates a fully qualified device name.
pub fn parse_qualified_name(text: &str) -> Result<QualifiedName, NameError> {
    let bad = |problem: String| NameError {
        what: "CDI device name",
        name: text.to_string(),
        problem: format!("{problem}; use vendor/class=name, e.g. nvidia.com/gpu=0"),
    };
    let (kind, name) = text
        .split_once('=')
        .ok_or_else(|| bad("it has no =".to_string()))?;
    parse_kind(kind).map_err(&bad)?;
    validate_device_name(name).map_err(|problem| bad(format!("device name: {problem}")))?;
    Ok(QualifiedName {
        kind: kind.to_string(),
        name: name.to_string(),
    })
}

/// `vendor/class`: the vendor a domain-like name (letters, digits, `-`,
/// `_`, `.`; starts with a letter, ends alphanumeric), the class letters,
/// digits, `-`, `_` (starts with a letter, ends alphanumeric).
pub fn parse_kind(kind: &str) -> Result<(&str, &str), String> {
    let (vendor, class) = kind
        .split_once('/')
        .ok_or_else(|| "a kind is vendor/class, and this has no /".to_string())?;
    check_chars(vendor, "vendor", |c| c == '-' || c == '_' || c == '.')?;
    check_chars(class, "class", |c| c == '-' || c == '_')?;
    Ok((vendor, class))
}

/// A device name: letters, digits, `-`, `_`, `.`, `:`; starts and ends
/// alphanumeric.
pub fn validate_device_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("it is empty".to_string());
    }
    let first_last_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_last_ok(name.chars().next()) || !first_last_ok(name.chars().last()) {
        return Err("it must start and end with a letter or digit".to_string());
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')))
    {
        return Err(format!("'{bad}' is not allowed (letters, digits, - _ . :)"));
    }
    Ok(())
}

fn check_chars(part: &str, what: &str, extra: impl Fn(char) -> bool) -> Result<(), String> {
    let mut chars = part.chars();
    match chars.next() {
        None => return Err(format!("the {what} is empty")),
        Some(first) if !first.is_ascii_alphabetic() => {
            return Err(format!("the {what} must start with a letter"))
        }
        Some(_) => {}
    }
    if !part
        .chars()
        .last()
        .is_some_and(|c| c.is_ascii_alphanumeric())
    {
        return Err(format!("the {what} must end with a letter or digit"));
    }
    if let Some(bad) = part
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || extra(c)))
    {
        return Err(format!("'{bad}' is not allowed in the {what}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let ok = parse_qualified_name("nvidia.com/gpu=0").unwrap();
        assert_eq!(ok.kind, "nvidia.com/gpu");
        assert_eq!(ok.name, "0");
        assert!(parse_qualified_name("example.com/device=foo:bar.1").is_ok());
        assert!(parse_qualified_name("nvidia.com/gpu=GPU-6b4f0c2a-1d").is_ok());
        for bad in [
            "nvidia.com/gpu=",
            "nvidia.com=0",
            "/gpu=0",
            "nvidia.com/=0",
            "nvidia.com/gpu=-0",
            "nvidia.com/gpu=a b",
            "nvidia.com/gpu/x=0",
            "1nvidia.com/gpu=0",
        ] {
            let error = parse_qualified_name(bad).unwrap_err();
            assert!(error.to_string().contains(bad), "{bad}: {error}");
        }
        assert!(looks_qualified("nvidia.com/gpu=0"));
        assert!(!looks_qualified("GPU-abc"));
        assert!(!looks_qualified("0000:3b:00.0"));
    }
}
