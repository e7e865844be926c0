//! What a run found: a table for people, the raw figures as JSON, and charts.

use super::stats::Summary;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;

/// Where the run happened, so that figures are read beside their machine.
#[derive(Debug, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub memory_gib: f64,
    pub cpu: String,
    pub kernel: String,
}

impl Machine {
    pub fn read() -> Machine {
        let file = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let meminfo = file("/proc/meminfo");
        let kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0);
        let cpuinfo = file("/proc/cpuinfo");
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            .unwrap_or_default();
        Machine {
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory_gib: (kib / (1024.0 * 1024.0) * 10.0).round() / 10.0,
            cpu,
            kernel: file("/proc/sys/kernel/osrelease").trim().to_string(),
        }
    }
}

/// A figure beside what it is compared with.
#[derive(Debug, Clone, Serialize)]
pub struct Baseline {
    pub what: String,
    pub value: f64,
}

/// What the figure must show, and whether it does.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub text: String,
    pub met: bool,
}

/// One line of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub what: String,
    pub value: f64,
    pub unit: String,
    pub baseline: Option<Baseline>,
    pub target: Option<Target>,
}

impl Row {
    pub fn new(what: impl Into<String>, value: f64, unit: &str) -> Row {
        Row {
            what: what.into(),
            value,
            unit: unit.to_string(),
            baseline: None,
            target: None,
        }
    }

    pub fn beside(mut self, what: impl Into<String>, value: f64) -> Row {
        self.baseline = Some(Baseline {
            what: what.into(),
            value,
        });
        self
    }

    pub fn target(mut self, text: impl Into<String>, met: bool) -> Row {
        self.target = Some(Target {
            text: text.into(),
            met,
        });
        self
    }
}

/// A chart to draw with `--plot`; its data also goes to the JSON file.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Chart {
    /// Latency distributions (milliseconds), one line per series.
    Cdf {
        file: String,
        title: String,
        x_label: String,
        series: Vec<(String, Vec<f64>)>,
    },
    /// A rate over time, with marked instants (e.g. kills).
    Throughput {
        file: String,
        title: String,
        y_label: String,
        points: Vec<(f64, f64)>,
        marks: Vec<(f64, String)>,
    },
    Bars {
        file: String,
        title: String,
        y_label: String,
        bars: Vec<(String, f64)>,
    },
}

/// Everything one scenario found.
#[derive(Debug, Default, Serialize)]
pub struct Outcome {
    pub scenario: String,
    pub rows: Vec<Row>,
    pub summaries: Vec<(String, Summary)>,
    pub notes: Vec<String>,
    pub charts: Vec<Chart>,
    pub error: Option<String>,
    pub seconds: f64,
}

impl Outcome {
    pub fn new(scenario: &str) -> Outcome {
        Outcome {
            scenario: scenario.to_string(),
            ..Default::default()
        }
    }

    /// Rows for the percentiles of a latency distribution.
    pub fn latency(&mut self, what: &str, s: Summary) {
        self.summaries.push((what.to_string(), s));
        self.rows.push(Row::new(format!("{what} p50"), s.p50, "ms"));
        self.rows.push(Row::new(format!("{what} p99"), s.p99, "ms"));
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub command: String,
    pub machine: Machine,
    pub quick: bool,
    pub outcomes: Vec<Outcome>,
}

fn num(v: f64) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    let a = v.abs();
    if a >= 1000.0 {
        // Thousands separated, no decimals.
        let s = format!("{:.0}", v);
        let (sign, digits) = s.split_at(if v < 0.0 { 1 } else { 0 });
        let mut out = String::new();
        for (i, ch) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(ch);
        }
        format!("{sign}{out}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

impl Report {
    /// The table a person reads.
    pub fn table(&self) -> String {
        let mut lines: Vec<[String; 6]> = vec![[
            "scenario".into(),
            "measure".into(),
            "value".into(),
            "baseline (same run)".into(),
            "ratio".into(),
            "target".into(),
        ]];
        for o in &self.outcomes {
            if let Some(e) = &o.error {
                lines.push([
                    o.scenario.clone(),
                    format!("FAILED: {e}"),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                ]);
            }
            for r in &o.rows {
                let (base, ratio) = match &r.baseline {
                    Some(b) => (
                        format!("{} {} {}", b.what, num(b.value), r.unit),
                        format!("{:.2}x", r.value / b.value),
                    ),
                    None => (String::new(), String::new()),
                };
                let target = match &r.target {
                    Some(t) => format!("{} {}", t.text, if t.met { "ok" } else { "MISSED" }),
                    None => String::new(),
                };
                lines.push([
                    o.scenario.clone(),
                    r.what.clone(),
                    format!("{} {}", num(r.value), r.unit),
                    base,
                    ratio,
                    target,
                ]);
            }
        }
        let mut widths = [0usize; 6];
        for l in &lines {
            for (w, c) in widths.iter_mut().zip(l) {
                *w = (*w).max(c.chars().count());
            }
        }
        let mut out = String::new();
        for (i, l) in lines.iter().enumerate() {
            let mut row = String::new();
            for (j, (w, c)) in widths.iter().zip(l).enumerate() {
                if j == 2 {
                    let _ = write!(row, "{c:>w$}  ");
                } else {
                    let _ = write!(row, "{c:<w$}  ");
                }
            }
            out.push_str(row.trim_end());
            out.push('\n');
            if i == 0 {
                let total: usize = widths.iter().sum::<usize>() + 2 * 5;
                out.push_str(&"-".repeat(total));
                out.push('\n');
            }
        }
        for o in &self.outcomes {
            for n in &o.notes {
                let _ = writeln!(out, "{}: {n}", o.scenario);
            }
        }
        out
    }

    pub fn write_json(&self, path: &Path) -> Result<(), String> {
        let text = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Draws every chart into `dir`; returns the files written.
    pub fn plot(&self, dir: &Path) -> Result<Vec<String>, String> {
        use super::plot;
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut written = Vec::new();
        for o in &self.outcomes {
            for c in &o.charts {
                let file = match c {
                    Chart::Cdf {
                        file,
                        title,
                        x_label,
                        series,
                    } => {
                        let series: Vec<plot::Series> = series
                            .iter()
                            .map(|(label, values)| plot::Series {
                                label: label.clone(),
                                values: values.clone(),
                            })
                            .collect();
                        plot::latency_cdf(&dir.join(file), title, x_label, &series)?;
                        file
                    }
                    Chart::Throughput {
                        file,
                        title,
                        y_label,
                        points,
                        marks,
                    } => {
                        plot::throughput(&dir.join(file), title, y_label, points, marks)?;
                        file
                    }
                    Chart::Bars {
                        file,
                        title,
                        y_label,
                        bars,
                    } => {
                        plot::bars(&dir.join(file), title, y_label, bars)?;
                        file
                    }
                };
                written.push(file.clone());
            }
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(num(41234.4), "41,234");
        assert_eq!(num(1234567.0), "1,234,567");
        assert_eq!(num(512.3), "512");
        assert_eq!(num(12.34), "12.3");
        assert_eq!(num(0.123), "0.12");
        assert_eq!(num(f64::NAN), "-");
    }
}
