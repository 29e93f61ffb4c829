//! Where a benchmark's figures go: a table on stdout for people, or, with
//! `--json`, one JSON document on stdout for scripts (CI trend lines), the
//! table then going to stderr so a person watching still sees it.

use std::fmt::Display;

use anyhow::Result;
use serde_json::{Map, Value};

/// The figures of one run.
pub struct Report {
    json: bool,
    doc: Map<String, Value>,
}

impl Report {
    /// A report of the benchmark `bench` (its name in `pce bench NAME`).
    pub fn new(bench: &str, json: bool) -> Report {
        let mut doc = Map::new();
        doc.insert("bench".into(), Value::from(bench));
        doc.insert("version".into(), Value::from(env!("CARGO_PKG_VERSION")));
        Report { json, doc }
    }

    /// One line of the human table (or note).
    pub fn line(&self, text: impl Display) {
        if self.json {
            eprintln!("{text}");
        } else {
            println!("{text}");
        }
    }

    /// Appends `row` to the list `table` of the JSON document.
    pub fn row(&mut self, table: &str, row: Value) {
        let list = self
            .doc
            .entry(table.to_string())
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(rows) = list {
            rows.push(row);
        }
    }

    /// Sets one figure (or the run's options) in the JSON document.
    pub fn set(&mut self, key: &str, value: Value) {
        self.doc.insert(key.to_string(), value);
    }

    /// Prints the JSON document, when asked for.
    pub fn finish(self) -> Result<()> {
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&Value::Object(self.doc))?
            );
        }
        Ok(())
    }
}
