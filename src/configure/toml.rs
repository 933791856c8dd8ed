//! The TOML editing that containerd's, CRI-O's and podman's configs share:
//! parse with positions, walk to a table creating it, set a string, copy a
//! table without its formatting, and print the document back.

use std::path::Path;

use toml_edit::{DocumentMut, Item, Table, TableLike, Value};

use super::{line_column, ConfigureError, Result};

pub(super) fn parse_toml(text: &str, path: &Path) -> Result<DocumentMut> {
    text.parse::<DocumentMut>().map_err(|error| {
        let (line, column) = error
            .span()
            .map_or((0, 0), |span| line_column(text, span.start));
        ConfigureError::Parse {
            path: path.to_path_buf(),
            format: "TOML",
            line,
            column,
            message: crate::logging::one_line(error.message()),
        }
    })
}

pub(super) fn item_kind(item: &Item) -> &'static str {
    match item {
        Item::None => "missing",
        Item::Value(Value::String(_)) => "a string",
        Item::Value(Value::Integer(_)) => "an integer",
        Item::Value(Value::Float(_)) => "a float",
        Item::Value(Value::Boolean(_)) => "a boolean",
        Item::Value(Value::Datetime(_)) => "a datetime",
        Item::Value(Value::Array(_)) => "an array",
        Item::Value(Value::InlineTable(_)) | Item::Table(_) => "a table",
        Item::ArrayOfTables(_) => "an array of tables",
    }
}

/// A dotted key path and the file, for error messages while walking.
pub(super) struct Walk<'p> {
    path: &'p Path,
    pub(super) keys: Vec<String>,
}

impl<'p> Walk<'p> {
    pub(super) fn new(path: &'p Path) -> Self {
        Walk {
            path,
            keys: Vec::new(),
        }
    }

    pub(super) fn shape(&self, key: &str, item: &Item, expected: &'static str) -> ConfigureError {
        let mut keys = self.keys.clone();
        keys.push(key.to_string());
        ConfigureError::Shape {
            path: self.path.to_path_buf(),
            key: keys.join("."),
            found: item_kind(item),
            expected,
        }
    }
}

/// The table at `keys` below `table`, created (as implicit tables, so that
/// no empty `[a]` headers appear) where missing.
pub(super) fn table_at<'t>(
    table: &'t mut dyn TableLike,
    keys: &[&str],
    walk: &mut Walk,
) -> Result<&'t mut dyn TableLike> {
    let Some((first, rest)) = keys.split_first() else {
        return Ok(table);
    };
    let child = table.entry(first).or_insert_with(|| {
        let mut child = Table::new();
        child.set_implicit(true);
        Item::Table(child)
    });
    if !child.is_table_like() {
        return Err(walk.shape(first, child, "a table"));
    }
    walk.keys.push(first.to_string());
    match child.as_table_like_mut() {
        Some(child) => table_at(child, rest, walk),
        None => Err(walk.shape(first, &Item::None, "a table")),
    }
}

/// The table at `keys` below `table` if it exists, without creating any.
pub(super) fn existing_table_at<'t>(
    table: &'t mut dyn TableLike,
    keys: &[&str],
) -> Option<&'t mut dyn TableLike> {
    let Some((first, rest)) = keys.split_first() else {
        return Some(table);
    };
    let child = table.get_mut(first)?.as_table_like_mut()?;
    existing_table_at(child, rest)
}

/// Sets `key` to a string unless it already is that string (so that the
/// admin's formatting of an unchanged value survives).
pub(super) fn set_str(table: &mut dyn TableLike, key: &str, value: &str) {
    match table.get_mut(key).and_then(Item::as_value_mut) {
        Some(old) if old.as_str() == Some(value) => {}
        Some(old) => {
            // Keep the line's indentation and trailing comment.
            let decor = old.decor().clone();
            *old = Value::from(value);
            *old.decor_mut() = decor;
        }
        None => {
            table.insert(key, toml_edit::value(value));
        }
    }
}

/// A copy of `item` with comments and blank lines dropped and the
/// indentation of every header and key kept: for an entry cloned from
/// another one (runc's), whose comments speak about that one.
pub(super) fn fresh_copy(item: &Item) -> Item {
    match item {
        Item::Value(value) => {
            let mut value = value.clone();
            value.decor_mut().set_prefix(" ");
            Item::Value(value)
        }
        Item::Table(table) => Item::Table(fresh_table(table)),
        Item::ArrayOfTables(array) => {
            let mut copy = toml_edit::ArrayOfTables::new();
            for table in array.iter() {
                copy.push(fresh_table(table));
            }
            Item::ArrayOfTables(copy)
        }
        Item::None => Item::None,
    }
}

pub(super) fn fresh_table(table: &Table) -> Table {
    let mut copy = Table::new();
    copy.set_implicit(table.is_implicit());
    copy.set_dotted(table.is_dotted());
    let indent = indentation(table.decor().prefix());
    copy.decor_mut().set_prefix(format!("\n{indent}"));
    for (key, item) in table.iter() {
        copy.insert(key, fresh_copy(item));
        let key_indent = table.key(key).map(|k| indentation(k.leaf_decor().prefix()));
        if let (Some(indent), Some(mut key)) = (key_indent, copy.key_mut(key)) {
            key.leaf_decor_mut().set_prefix(indent);
        }
    }
    copy
}

/// The whitespace after the last newline of a decor prefix: the line's
/// indentation.
pub(super) fn indentation(prefix: Option<&toml_edit::RawString>) -> String {
    let text = prefix.and_then(|raw| raw.as_str()).unwrap_or("");
    let last_line = text.rsplit('\n').next().unwrap_or("");
    if last_line.chars().all(|c| c == ' ' || c == '\t') {
        last_line.to_string()
    } else {
        String::new()
    }
}

/// The indentation of a table's first key.
pub(super) fn first_key_indent(table: &dyn TableLike) -> Option<String> {
    let (first, _) = table.iter().next()?;
    let key = table.key(first)?;
    Some(indentation(key.leaf_decor().prefix()))
}

/// The document's text, ending in a newline unless empty (removing the last
/// key can take the final newline with it).
pub(super) fn toml_text(doc: &DocumentMut) -> String {
    let mut text = doc.to_string();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

/// True when the document holds no key-value at any depth.
pub(super) fn has_no_values(table: &dyn TableLike) -> bool {
    table.iter().all(|(_, item)| match item.as_table_like() {
        Some(child) => has_no_values(child),
        None => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_error_position() {
        let error = parse_toml("a = 1\nb = = 2\n", Path::new("/c.toml")).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("line 2, column 5"), "{message}");
    }
}
