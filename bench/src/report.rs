//! One table on stdout and one JSON document: each row's figure, its ceiling from the same run,
//! the ratio, the target and whether it was met.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::Sizes;

/// Whether a row met its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    Fail,
    /// Smoke mode, or a row without a target.
    NotJudged,
    /// The row could not be measured.
    Error,
}

impl Verdict {
    /// `Pass`/`Fail` when judged, else `NotJudged`.
    pub fn judge(judged: bool, met: bool) -> Self {
        match (judged, met) {
            (false, _) => Verdict::NotJudged,
            (true, true) => Verdict::Pass,
            (true, false) => Verdict::Fail,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::NotJudged => "—",
            Verdict::Error => "ERROR",
        }
    }
}

/// One line of the table (a measurement may give several).
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// The `--only` name of the measurement that made it.
    pub name: String,
    pub what: String,
    pub figure: String,
    pub ceiling: String,
    pub ratio: Option<f64>,
    pub target: String,
    pub verdict: Verdict,
    pub error: Option<String>,
    /// What limits the figure, what was checked, what was seen.
    pub notes: Vec<String>,
    /// Every number behind the row.
    pub metrics: serde_json::Value,
}

impl Row {
    pub fn error(name: &str, error: &anyhow::Error) -> Self {
        Self {
            name: name.into(),
            what: "could not be measured".into(),
            figure: "—".into(),
            ceiling: "—".into(),
            ratio: None,
            target: "—".into(),
            verdict: Verdict::Error,
            error: Some(format!("{error:#}")),
            notes: Vec::new(),
            metrics: serde_json::Value::Null,
        }
    }
}

/// Everything one run measured.
pub struct Report {
    pub run_id: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub profile: String,
    pub smoke: bool,
    pub command: String,
    pub host: serde_json::Value,
    pub sizes: Sizes,
    pub rows: Vec<Row>,
}

impl Report {
    pub fn any_error(&self) -> bool {
        self.rows.iter().any(|r| r.verdict == Verdict::Error)
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "run_id": self.run_id,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "seconds": (self.finished_at - self.started_at).num_milliseconds() as f64 / 1e3,
            "profile": self.profile,
            "smoke": self.smoke,
            "command": self.command,
            "host": self.host,
            "sizes": self.sizes,
            "rows": self.rows,
            "missed": self.rows.iter().filter(|r| r.verdict == Verdict::Fail).map(|r| &r.name).collect::<Vec<_>>(),
            "errors": self.rows.iter().filter(|r| r.verdict == Verdict::Error).map(|r| &r.name).collect::<Vec<_>>(),
        })
    }

    /// The table, its notes, and the misses spelled out.
    pub fn table(&self) -> String {
        let header = [
            "row",
            "what",
            "figure",
            "ceiling / reference (same run)",
            "ratio",
            "target",
            "result",
        ];
        let cells: Vec<[String; 7]> = self
            .rows
            .iter()
            .map(|r| {
                [
                    r.name.clone(),
                    r.what.clone(),
                    r.figure.clone(),
                    r.ceiling.clone(),
                    r.ratio.map_or("—".into(), crate::stats::ratio),
                    r.target.clone(),
                    r.verdict.label().into(),
                ]
            })
            .collect();
        let mut widths = header.map(|h| h.chars().count());
        for row in &cells {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let padded: Vec<String> = cells
                .iter()
                .zip(widths)
                .map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
                .collect();
            format!("| {} |\n", padded.join(" | "))
        };
        let mut out = String::new();
        out.push_str(&format!(
            "\nBenchmark {} ({} binaries{}), {} → {}\n\n",
            self.run_id,
            self.profile,
            if self.smoke {
                ", smoke: tiny sizes, no thresholds"
            } else {
                ""
            },
            self.started_at.format("%Y-%m-%d %H:%M:%S"),
            self.finished_at.format("%H:%M:%S UTC"),
        ));
        out.push_str(&line(&header.map(String::from)));
        out.push_str(&line(&widths.map(|w| "-".repeat(w))));
        for row in &cells {
            out.push_str(&line(row));
        }
        let noted: Vec<&Row> = self
            .rows
            .iter()
            .filter(|r| !r.notes.is_empty() || r.error.is_some())
            .collect();
        if !noted.is_empty() {
            out.push_str("\nNotes:\n");
            for row in noted {
                if let Some(error) = &row.error {
                    out.push_str(&format!("  {}: ERROR {}\n", row.name, error));
                }
                for note in &row.notes {
                    out.push_str(&format!("  {}: {}\n", row.name, note));
                }
            }
        }
        let missed: Vec<&Row> = self
            .rows
            .iter()
            .filter(|r| r.verdict == Verdict::Fail)
            .collect();
        if !missed.is_empty() {
            out.push_str("\nTARGETS MISSED:\n");
            for row in missed {
                out.push_str(&format!(
                    "  ✗ {}: {} is {}{}, target {}\n",
                    row.name,
                    row.what,
                    row.figure,
                    row.ratio.map_or(String::new(), |r| format!(
                        " (ratio {})",
                        crate::stats::ratio(r)
                    )),
                    row.target
                ));
            }
        } else if !self.smoke && !self.any_error() {
            out.push_str("\nEvery target met.\n");
        }
        out.push('\n');
        out
    }
}
