//! What each step prints: an indicatif bar while it works (only when stderr is a terminal) and
//! one plain line when it ends — rows, bytes, seconds, rows/s — which also becomes its report check.

use crate::report::Check;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::Instant;

/// Figures of one finished step.
#[derive(Debug, Clone, PartialEq)]
pub struct StepStats {
    pub step: String,
    pub rows: u64,
    pub bytes: u64,
    pub seconds: f64,
}

impl StepStats {
    pub fn new(step: impl Into<String>, rows: u64, bytes: u64, started: Instant) -> Self {
        Self { step: step.into(), rows, bytes, seconds: started.elapsed().as_secs_f64() }
    }

    pub fn rows_per_s(&self) -> f64 {
        if self.seconds > 0.0 {
            self.rows as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// `export: 1000 rows, 1.2 MB, 0.31 s, 3226 rows/s`.
    pub fn line(&self) -> String {
        let bytes = if self.bytes > 0 { format!(", {}", human_bytes(self.bytes)) } else { String::new() };
        format!("{}: {} rows{bytes}, {:.2} s, {:.0} rows/s", self.step, self.rows, self.seconds, self.rows_per_s())
    }

    /// The step as a report check carrying its figures.
    pub fn check(&self, passed: bool, detail: impl Into<String>) -> Check {
        let check = Check::new(self.step.clone(), passed, detail)
            .metric("rows", self.rows)
            .metric("seconds", round3(self.seconds))
            .metric("rows_per_s", self.rows_per_s().round());
        if self.bytes > 0 {
            check.metric("bytes", self.bytes)
        } else {
            check
        }
    }
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KB", "MB", "GB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// A byte-count bar on stderr when it is a terminal; nothing otherwise.
#[derive(Debug, Clone)]
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    pub fn bytes(label: &str, total: Option<u64>) -> Self {
        if !std::io::stderr().is_terminal() {
            return Self { bar: None };
        }
        let bar = match total {
            Some(t) => ProgressBar::new(t).with_style(
                ProgressStyle::with_template("{msg:28} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}")
                    .expect("a valid template")
                    .progress_chars("=> "),
            ),
            None => ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template("{spinner} {msg:28} {bytes} {bytes_per_sec}").expect("a valid template"),
            ),
        };
        bar.set_message(label.to_string());
        Self { bar: Some(bar) }
    }

    pub fn inc(&self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Prints a step's line on stderr (human output; `--json` keeps stdout for the report).
pub fn say(line: &str) {
    eprintln!("{line}");
}
