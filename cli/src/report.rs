//! The one report shape (SPEC §3) and the one status table every report command prints.
//!
//! Status commands (`infra status`, `status`, `db status`, `doctor`) and suites (`test event-hub`,
//! `migrate validate|run`, `ws probe`, `test proxy`) all build a [`Report`] of [`Check`]s; with
//! `--json` it goes to stdout as JSON, otherwise as a comfy-table. A report with a failed check
//! makes the command exit 1.

use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, Color, ContentArrangement, Table};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One line of a report: a component's health or one check of a suite.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub metrics: Map<String, Value>,
}

impl Check {
    pub fn new(name: impl Into<String>, passed: bool, detail: impl Into<String>) -> Self {
        Self { name: name.into(), passed, detail: detail.into(), metrics: Map::new() }
    }

    /// Adds a figure to the check (builder style).
    pub fn metric(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.metrics.insert(key.to_string(), value.into());
        self
    }
}

/// A whole report: `passed` is true only when every check passed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub command: String,
    pub passed: bool,
    pub checks: Vec<Check>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub metrics: Map<String, Value>,
}

/// Returned by [`Report::emit`] when a check failed, so `main` exits 1 with one line.
#[derive(Debug, thiserror::Error)]
#[error("{command}: {n_failed} of {n_checks} checks failed ({names})")]
pub struct ChecksFailed {
    pub command: String,
    pub n_failed: usize,
    pub n_checks: usize,
    pub names: String,
}

impl Report {
    pub fn new(command: impl Into<String>) -> Self {
        Self { command: command.into(), passed: true, checks: Vec::new(), metrics: Map::new() }
    }

    pub fn push(&mut self, check: Check) {
        self.passed &= check.passed;
        self.checks.push(check);
    }

    pub fn metric(&mut self, key: &str, value: impl Into<Value>) {
        self.metrics.insert(key.to_string(), value.into());
    }

    /// The human table: one row per check, figures in the last column.
    pub fn table(&self) -> Table {
        let mut table = Table::new();
        table.load_preset(UTF8_FULL_CONDENSED).set_content_arrangement(ContentArrangement::Dynamic);
        table.set_header(vec!["check", "result", "detail", "figures"]);
        for c in &self.checks {
            let result = if c.passed { Cell::new("ok").fg(Color::Green) } else { Cell::new("FAIL").fg(Color::Red) };
            table.add_row(vec![
                Cell::new(&c.name),
                result,
                Cell::new(&c.detail),
                Cell::new(format_metrics(&c.metrics)),
            ]);
        }
        table
    }

    /// Prints the report (JSON on stdout with `--json`, else the table and a summary line) and
    /// returns an error naming the failed checks when any failed.
    pub fn emit(&self, json: bool) -> anyhow::Result<()> {
        if json {
            println!("{}", serde_json::to_string_pretty(self).expect("a report always serialises"));
        } else {
            println!("{}", self.table());
            if !self.metrics.is_empty() {
                println!("{}", format_metrics(&self.metrics));
            }
        }
        self.into_result()
    }

    /// `Ok` when every check passed, else [`ChecksFailed`].
    pub fn into_result(&self) -> anyhow::Result<()> {
        if self.passed {
            return Ok(());
        }
        let failed: Vec<&str> = self.checks.iter().filter(|c| !c.passed).map(|c| c.name.as_str()).collect();
        Err(ChecksFailed {
            command: self.command.clone(),
            n_failed: failed.len(),
            n_checks: self.checks.len(),
            names: failed.join(", "),
        }
        .into())
    }
}

/// `key=value` pairs in a stable order, numbers rounded for reading.
pub fn format_metrics(metrics: &Map<String, Value>) -> String {
    metrics
        .iter()
        .map(|(k, v)| match v {
            Value::Number(n) if n.is_f64() => format!("{k}={:.2}", n.as_f64().unwrap_or_default()),
            Value::String(s) => format!("{k}={s}"),
            other => format!("{k}={other}"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_with_one_failed_check_fails_and_names_it() {
        let mut r = Report::new("infra status");
        r.push(Check::new("redis", true, "running"));
        r.push(Check::new("auth_db", false, "stopped"));
        assert!(!r.passed);
        let err = r.into_result().unwrap_err().to_string();
        assert!(err.contains("1 of 2 checks failed (auth_db)"), "{err}");
    }

    #[test]
    fn the_json_shape_matches_the_spec() {
        let mut r = Report::new("test event-hub");
        r.push(Check::new("broker-restart-persistence", true, "10/10 delivered").metric("lost", 0));
        r.metric("publish_msgs_per_s", 25000.0);
        let v: Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["command"], "test event-hub");
        assert_eq!(v["passed"], true);
        assert_eq!(v["checks"][0]["metrics"]["lost"], 0);
        assert_eq!(v["metrics"]["publish_msgs_per_s"], 25000.0);
        let back: Report = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }
}
