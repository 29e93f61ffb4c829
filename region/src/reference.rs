//! The configuration reference (`docs/config-reference.md`, `pce config
//! reference`), generated from the configuration types themselves.
//!
//! The types derive a JSON Schema (schemars): their doc comments become the
//! descriptions and their serde defaults the defaults, so a field added to
//! [`NodeConfig`] is in the reference without anyone writing it twice, and a
//! test fails while the committed file is out of date.

use serde_json::{Map, Value};

use crate::config::NodeConfig;

/// One table of the file (the top level, `[tls]`, `[[peers]]`...).
struct Section {
    /// `` `[api]` `` or "Top level".
    title: String,
    /// What the table is for, and whether it may be left out.
    about: String,
    rows: Vec<[String; 4]>,
}

/// The reference as Markdown.
pub fn markdown() -> String {
    let schema = schemars::schema_for!(NodeConfig);
    let root = schema.as_value();
    let defs = root.get("$defs").and_then(Value::as_object);
    let mut sections = Vec::new();
    walk(
        root,
        defs,
        ("", None),
        "Top level".into(),
        String::new(),
        &mut sections,
    );

    let mut out = String::from(
        "# Node configuration reference\n\n\
         Generated from the configuration types (`region/src/config.rs`) by\n\
         `pce config reference`; a test fails while this file is out of date\n\
         (`UPDATE_CONFIG_REFERENCE=1 cargo test -p sc-region reference` rewrites it).\n\n\
         `pce serve --config FILE` reads one TOML file per node. Relative paths are\n\
         relative to the file's directory. Unknown keys are refused, with the\n\
         key's name in the message. `pce config check --config FILE` validates a\n\
         file (and its certificates) without starting anything.\n",
    );
    for s in sections {
        out.push_str(&format!("\n## {}\n\n", s.title));
        if !s.about.is_empty() {
            out.push_str(&format!("{}\n\n", s.about));
        }
        out.push_str("| key | type | default | description |\n|---|---|---|---|\n");
        for [key, ty, default, description] in s.rows {
            out.push_str(&format!("| `{key}` | {ty} | {default} | {description} |\n"));
        }
    }
    out
}

/// Adds the section for the object `schema`, then one for each of its tables.
/// `table_default` is what the whole table stands for when it is left out.
fn walk(
    schema: &Value,
    defs: Option<&Map<String, Value>>,
    (prefix, table_default): (&str, Option<&Value>),
    title: String,
    about: String,
    out: &mut Vec<Section>,
) {
    let Some(props) = schema.get("properties").and_then(Value::as_object) else {
        return;
    };
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut rows = Vec::new();
    let mut tables = Vec::new();
    for (key, field) in props {
        let description = one_line(field.get("description"));
        let (inner, optional, array) = unwrap(field, defs);
        if inner.get("properties").is_some() {
            // A table: its own section.
            let path = format!("{prefix}{key}");
            let title = if array {
                format!("`[[{path}]]` (repeated)")
            } else {
                format!("`[{path}]`")
            };
            let presence = if optional || !required.contains(&key.as_str()) {
                if field.get("default").is_some_and(|d| !d.is_null()) {
                    " May be left out: every key has a default."
                } else {
                    " May be left out."
                }
            } else {
                " Required."
            };
            tables.push((
                inner.clone(),
                format!("{path}."),
                field.get("default").filter(|d| d.is_object()).cloned(),
                title,
                format!("{description}{presence}"),
            ));
            continue;
        }
        let required = required.contains(&key.as_str());
        let default = match (field.get("default"), table_default.and_then(|t| t.get(key))) {
            (Some(v), _) if !v.is_null() => format!("`{}`", toml_value(v)),
            (_, Some(v)) if required => {
                format!("`{}` without the table; required in it", toml_value(v))
            }
            _ if required => "required".into(),
            _ => "none".into(),
        };
        rows.push([key.clone(), type_name(inner, defs), default, description]);
    }
    out.push(Section { title, about, rows });
    for (schema, prefix, default, title, about) in tables {
        walk(
            &schema,
            defs,
            (&prefix, default.as_ref()),
            title,
            about,
            out,
        );
    }
}

/// Looks through `$ref`, `Option` and `Vec`: the schema of the value itself,
/// whether it may be absent, and whether it is a list of them.
fn unwrap<'a>(field: &'a Value, defs: Option<&'a Map<String, Value>>) -> (&'a Value, bool, bool) {
    let mut optional = false;
    let mut array = false;
    let mut v = field;
    for _ in 0..4 {
        if let Some(r) = v.get("$ref").and_then(Value::as_str) {
            let name = r.trim_start_matches("#/$defs/");
            match defs.and_then(|d| d.get(name)) {
                Some(d) => v = d,
                None => break,
            }
        } else if let Some(any) = v.get("anyOf").and_then(Value::as_array) {
            optional |= any
                .iter()
                .any(|a| a.get("type") == Some(&Value::from("null")));
            match any
                .iter()
                .find(|a| a.get("type") != Some(&Value::from("null")))
            {
                Some(a) => v = a,
                None => break,
            }
        } else if v.get("type") == Some(&Value::from("array")) && v.get("items").is_some() {
            array = true;
            let items = &v["items"];
            let (inner, _, _) = unwrap(items, defs);
            if inner.get("properties").is_some() {
                v = inner;
            } else {
                break;
            }
        } else {
            break;
        }
    }
    (v, optional, array)
}

/// How a value of `schema` is written in TOML.
fn type_name(schema: &Value, defs: Option<&Map<String, Value>>) -> String {
    if let Some(values) = enum_values(schema) {
        return values
            .iter()
            .map(|v| format!("`\"{v}\"`"))
            .collect::<Vec<_>>()
            .join(" or ");
    }
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    let base = types.iter().find(|t| **t != "null").copied().unwrap_or("");
    match base {
        "integer" => {
            let unsigned = schema.get("minimum").and_then(Value::as_f64) == Some(0.0)
                || schema
                    .get("format")
                    .and_then(Value::as_str)
                    .is_some_and(|f| f.starts_with("uint"));
            if unsigned {
                "integer ≥ 0".into()
            } else {
                "integer".into()
            }
        }
        "string" => "string".into(),
        "boolean" => "boolean".into(),
        "array" => format!("list of {}", type_name(&schema["items"], defs)),
        other => {
            let (inner, _, _) = unwrap(schema, defs);
            if !std::ptr::eq(inner, schema) {
                type_name(inner, defs)
            } else {
                other.to_string()
            }
        }
    }
}

/// The values of a string enum (written as `enum` or as `oneOf` of consts).
fn enum_values(schema: &Value) -> Option<Vec<String>> {
    if let Some(e) = schema.get("enum").and_then(Value::as_array) {
        return Some(
            e.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect(),
        );
    }
    let one_of = schema.get("oneOf")?.as_array()?;
    let values: Vec<String> = one_of
        .iter()
        .filter_map(|o| {
            o.get("const")
                .or_else(|| o.get("enum").and_then(|e| e.get(0)))
                .and_then(Value::as_str)
                .map(String::from)
        })
        .collect();
    (values.len() == one_of.len()).then_some(values)
}

/// A default as TOML writes it.
fn toml_value(v: &Value) -> String {
    match v {
        Value::String(s) => format!("\"{s}\""),
        Value::Array(a) if a.is_empty() => "[]".into(),
        other => other.to_string(),
    }
}

/// A doc comment on one line, safe inside a Markdown table.
fn one_line(description: Option<&Value>) -> String {
    description
        .and_then(Value::as_str)
        .unwrap_or("")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// The committed reference is what the types say; with
    /// `UPDATE_CONFIG_REFERENCE=1` the test rewrites it instead.
    #[test]
    fn the_committed_reference_matches_the_config_types() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/config-reference.md");
        let now = super::markdown();
        if std::env::var_os("UPDATE_CONFIG_REFERENCE").is_some() {
            std::fs::write(&path, &now).expect("writes the reference");
            return;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == now,
            "docs/config-reference.md is out of date: run UPDATE_CONFIG_REFERENCE=1 cargo test -p sc-region reference"
        );
    }

    #[test]
    fn every_field_is_in_the_reference_with_its_default() {
        let md = super::markdown();
        for needle in [
            "## `[tls]`",
            "## `[[peers]]` (repeated)",
            "## `[ven]`",
            "## `[metrics]`",
            "| `offline_after_secs` | integer ≥ 0 | `60` |",
            "| `profile` | `\"lan\"` or `\"wan\"` | `\"lan\"` |",
            "| `id` | integer ≥ 0 | required |",
            "| `heartbeat_ms` | integer ≥ 0 | none |",
        ] {
            assert!(md.contains(needle), "no {needle:?} in:\n{md}");
        }
        // Every key has words saying what it is for.
        for line in md.lines().filter(|l| l.starts_with("| `")) {
            assert!(!line.ends_with("|  |"), "undocumented: {line}");
        }
    }
}
