//! What a run found: figures with their baselines, printed as a table and
//! written as JSON for comparing runs.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency quantiles, in milliseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Quantiles {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl Quantiles {
    /// The quantiles of a histogram of microseconds.
    pub fn of(histogram: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        if histogram.is_empty() {
            return Self::default();
        }
        Self {
            count: histogram.len(),
            p50_ms: ms(histogram.value_at_quantile(0.50)),
            p95_ms: ms(histogram.value_at_quantile(0.95)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            max_ms: ms(histogram.max()),
        }
    }

    /// "p50/p95/p99/max" in milliseconds.
    pub fn brief(&self) -> String {
        format!(
            "{:.1}/{:.1}/{:.1}/{:.1}",
            self.p50_ms, self.p95_ms, self.p99_ms, self.max_ms
        )
    }
}

/// One line of the result: a figure, and the machine's own limit it is held
/// against, if any.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// Which part of the benchmark.
    pub part: String,
    /// What was measured.
    pub figure: String,
    /// The value.
    pub value: f64,
    /// Its unit, or the value's text when it is not one number.
    pub unit: String,
    /// The baseline it is compared with.
    pub baseline: Option<String>,
    /// The baseline's value, in the same unit.
    pub baseline_value: Option<f64>,
}

impl Row {
    /// A figure without a baseline.
    pub fn plain(part: &str, figure: &str, value: f64, unit: &str) -> Self {
        Self {
            part: part.to_owned(),
            figure: figure.to_owned(),
            value,
            unit: unit.to_owned(),
            baseline: None,
            baseline_value: None,
        }
    }

    /// A figure held against `baseline`.
    pub fn against(mut self, baseline: &str, value: f64) -> Self {
        self.baseline = Some(baseline.to_owned());
        self.baseline_value = Some(value);
        self
    }

    /// value / baseline.
    pub fn ratio(&self) -> Option<f64> {
        self.baseline_value
            .filter(|b| *b > 0.0)
            .map(|b| self.value / b)
    }
}

/// The machine the run was on.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    /// Logical CPUs.
    pub cpus: usize,
    /// Memory, in GiB.
    pub memory_gib: f64,
    /// CPU model.
    pub cpu_model: String,
}

impl Machine {
    /// Reads this machine.
    pub fn this() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let kb: f64 = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        Self {
            cpus: std::thread::available_parallelism().map_or(0, usize::from),
            memory_gib: kb / 1024.0 / 1024.0,
            cpu_model: cpuinfo
                .lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
                .unwrap_or_default(),
        }
    }
}

/// A whole run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The command line.
    pub command: String,
    /// The machine.
    pub machine: Machine,
    /// Every figure.
    pub rows: Vec<Row>,
}

fn number(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.4}")
    }
}

impl Report {
    /// The table printed at the end of a run.
    pub fn table(&self) -> String {
        let mut out = format!(
            "machine: {} CPUs, {:.1} GiB, {}\n",
            self.machine.cpus, self.machine.memory_gib, self.machine.cpu_model
        );
        out.push_str(&format!(
            "{:<13} {:<44} {:>12} {:<9} {:<34} {:>12} {:>8}\n",
            "part", "figure", "value", "unit", "baseline", "value", "ratio"
        ));
        for row in &self.rows {
            out.push_str(&format!(
                "{:<13} {:<44} {:>12} {:<9} {:<34} {:>12} {:>8}\n",
                row.part,
                row.figure,
                number(row.value),
                row.unit,
                row.baseline.clone().unwrap_or_default(),
                row.baseline_value.map(number).unwrap_or_default(),
                row.ratio().map(|r| format!("{r:.3}")).unwrap_or_default(),
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_microseconds() {
        let mut histogram = Histogram::<u64>::new(3).expect("histogram");
        for us in 1..=1000 {
            histogram.record(us * 1000).expect("in range");
        }
        let q = Quantiles::of(&histogram);
        assert_eq!(q.count, 1000);
        assert!((q.p50_ms - 500.0).abs() < 1.0, "p50 {}", q.p50_ms);
        assert!((q.p99_ms - 990.0).abs() < 1.0, "p99 {}", q.p99_ms);
        assert!((q.max_ms - 1000.0).abs() < 1.0, "max {}", q.max_ms);
        assert_eq!(Quantiles::of(&Histogram::new(3).expect("h")).count, 0);
    }

    #[test]
    fn a_ratio_needs_a_positive_baseline() {
        let row = Row::plain("p", "f", 50.0, "/s");
        assert_eq!(row.ratio(), None);
        assert_eq!(row.clone().against("b", 200.0).ratio(), Some(0.25));
        assert_eq!(row.against("b", 0.0).ratio(), None);
    }

    #[test]
    fn the_table_shows_value_baseline_and_ratio() {
        let report = Report {
            command: "parley-bench".into(),
            machine: Machine {
                cpus: 2,
                memory_gib: 4.0,
                cpu_model: "test".into(),
            },
            rows: vec![Row::plain("seed", "accepted", 150.0, "msg/s").against("commits", 12_000.0)],
        };
        let table = report.table();
        assert!(table.starts_with("machine: 2 CPUs, 4.0 GiB, test"));
        let line = table.lines().last().expect("a row");
        for cell in [
            "seed", "accepted", "150", "msg/s", "commits", "12000", "0.013",
        ] {
            assert!(line.contains(cell), "{cell} missing from {line:?}");
        }
    }
}
