//! Charts of a run, as SVG files BENCHMARKS.md embeds: for each group ramp,
//! latency percentiles against the offered rate and CPU per 1,000 messages by
//! process against the offered rate; and the gateway's memory per idle stream
//! beside the bare stream's. Written by hand (a few lines, plain SVG) rather
//! than through a plotting crate: the charts are simple and the output is
//! reviewable text.

use std::{fmt::Write as _, path::Path};

use crate::targets::{Findings, Ramp};

/// One line of a chart: its name and points.
struct Series {
    name: String,
    points: Vec<(f64, f64)>,
}

/// A line chart over a linear x axis and a linear y axis from 0.
struct LineChart<'a> {
    title: &'a str,
    x_label: &'a str,
    y_label: &'a str,
    series: Vec<Series>,
}

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 400.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 190.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
const COLOURS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
];

/// A round step for about five ticks up to `max`.
fn tick_step(max: f64) -> f64 {
    let rough = (max / 5.0).max(f64::MIN_POSITIVE);
    let magnitude = 10f64.powf(rough.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|step| *step >= rough)
        .unwrap_or(magnitude * 10.0)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

impl LineChart<'_> {
    fn svg(&self) -> String {
        let points = self.series.iter().flat_map(|s| s.points.iter());
        let (x_max, y_max) = points.fold((0.0f64, 0.0f64), |(x, y), (px, py)| {
            (x.max(*px), y.max(*py))
        });
        let (x_step, y_step) = (tick_step(x_max), tick_step(y_max));
        let x_top = (x_max / x_step).ceil().max(1.0) * x_step;
        let y_top = (y_max / y_step).ceil().max(1.0) * y_step;
        let plot_w = WIDTH - LEFT - RIGHT;
        let plot_h = HEIGHT - TOP - BOTTOM;
        let x_at = |x: f64| LEFT + x / x_top * plot_w;
        let y_at = |y: f64| TOP + plot_h - y / y_top * plot_h;
        let mut svg = String::new();
        let _ = writeln!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="22" font-size="14" font-weight="bold">{}</text>"#,
            LEFT,
            escape(self.title)
        );
        let mut tick = 0.0;
        while tick <= y_top + y_step / 2.0 {
            let y = y_at(tick);
            let _ = writeln!(
                svg,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                LEFT + plot_w,
                LEFT - 6.0,
                y + 4.0,
                label(tick)
            );
            tick += y_step;
        }
        let mut tick = 0.0;
        while tick <= x_top + x_step / 2.0 {
            let x = x_at(tick);
            let _ = writeln!(
                svg,
                r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#999"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                TOP + plot_h,
                TOP + plot_h + 5.0,
                TOP + plot_h + 18.0,
                label(tick)
            );
            tick += x_step;
        }
        let _ = writeln!(
            svg,
            r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333"/>"##
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            LEFT + plot_w / 2.0,
            HEIGHT - 12.0,
            escape(self.x_label)
        );
        let _ = writeln!(
            svg,
            r#"<text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">{}</text>"#,
            TOP + plot_h / 2.0,
            TOP + plot_h / 2.0,
            escape(self.y_label)
        );
        for (i, series) in self.series.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let path: Vec<String> = series
                .points
                .iter()
                .map(|(x, y)| format!("{:.1},{:.1}", x_at(*x), y_at(*y)))
                .collect();
            let _ = writeln!(
                svg,
                r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#,
                path.join(" ")
            );
            for (x, y) in &series.points {
                let _ = writeln!(
                    svg,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"/>"#,
                    x_at(*x),
                    y_at(*y)
                );
            }
            let legend_y = TOP + 14.0 + 18.0 * i as f64;
            let legend_x = LEFT + plot_w + 14.0;
            let _ = writeln!(
                svg,
                r#"<line x1="{legend_x:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{colour}" stroke-width="2"/><text x="{:.1}" y="{legend_y:.1}">{}</text>"#,
                legend_y - 4.0,
                legend_x + 18.0,
                legend_y - 4.0,
                legend_x + 24.0,
                escape(&series.name)
            );
        }
        svg.push_str("</svg>\n");
        svg
    }
}

/// A tick's text: whole numbers without decimals.
fn label(value: f64) -> String {
    if (value - value.round()).abs() < 1e-9 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

/// One figure of a ramp's step.
type Figure = fn(&crate::load::Step) -> f64;

/// Latency against the offered rate for one ramp.
fn latency(part: &str, ramp: &Ramp) -> String {
    let percentiles: [(&str, Figure); 5] = [
        ("send→delivery p50", |s| s.delivery.p50_ms),
        ("send→delivery p95", |s| s.delivery.p95_ms),
        ("send→delivery p99", |s| s.delivery.p99_ms),
        ("ack→digest p50", |s| s.digest.p50_ms),
        ("ack→digest p99", |s| s.digest.p99_ms),
    ];
    let series = percentiles
        .into_iter()
        .map(|(name, of)| Series {
            name: name.to_owned(),
            points: ramp.steps.iter().map(|s| (s.target, of(s))).collect(),
        })
        .collect();
    let title = format!("{part}: latency against the offered rate");
    LineChart {
        title: &title,
        x_label: "offered rate (messages per second, all groups)",
        y_label: "milliseconds",
        series,
    }
    .svg()
}

/// CPU per 1,000 accepted messages by process against the offered rate.
fn cpu(part: &str, ramp: &Ramp) -> String {
    let mut names: Vec<&str> = Vec::new();
    for step in &ramp.steps {
        for (name, _) in &step.cpu_per_1000 {
            if !names.contains(name) {
                names.push(name);
            }
        }
    }
    let series = names
        .iter()
        .map(|name| Series {
            name: (*name).to_owned(),
            points: ramp
                .steps
                .iter()
                .filter_map(|s| {
                    let cpu = s.cpu_per_1000.iter().find(|(n, _)| n == name)?.1;
                    Some((s.target, cpu))
                })
                .collect(),
        })
        .collect();
    let title = format!("{part}: CPU per 1,000 messages by process");
    LineChart {
        title: &title,
        x_label: "offered rate (messages per second, all groups)",
        y_label: "CPU seconds per 1,000 messages",
        series,
    }
    .svg()
}

/// The gateway's memory per idle stream beside the bare stream's, as bars.
fn memory(findings: &Findings) -> Option<String> {
    let devices = findings.devices.as_ref()?;
    let bars = [
        ("Parley gateway", devices.idle.bytes_per_stream / 1024.0),
        (
            "bare tonic bidi stream",
            devices.bare.bytes_per_stream / 1024.0,
        ),
    ];
    let top = bars.iter().map(|(_, v)| *v).fold(0.0f64, f64::max);
    let step = tick_step(top);
    let top = (top / step).ceil().max(1.0) * step;
    let (left, width, height) = (180.0, 520.0, 160.0);
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="720" height="{height}" viewBox="0 0 720 {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{left}" y="22" font-size="14" font-weight="bold">Memory per idle stream, {} streams (KiB, resident)</text>"#,
        devices.idle.streams
    );
    for (i, (name, kib)) in bars.iter().enumerate() {
        let y = 45.0 + 40.0 * i as f64;
        let w = kib / top * width;
        let colour = COLOURS[i];
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{name}</text><rect x="{left}" y="{y:.1}" width="{w:.1}" height="24" fill="{colour}"/><text x="{:.1}" y="{:.1}">{kib:.2} KiB</text>"#,
            left - 8.0,
            y + 16.0,
            left + w + 6.0,
            y + 16.0
        );
    }
    svg.push_str("</svg>\n");
    Some(svg)
}

/// Writes every chart of `findings` into `dir`; returns the files written.
pub fn write(dir: &Path, findings: &Findings) -> Result<Vec<String>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut charts: Vec<(String, String)> = Vec::new();
    for (part, ramp) in [
        ("seed", &findings.seed),
        ("busy", &findings.busy),
        ("large", &findings.large),
    ] {
        if let Some(ramp) = ramp.as_ref().filter(|r| !r.steps.is_empty()) {
            charts.push((format!("{part}-latency.svg"), latency(part, ramp)));
            charts.push((format!("{part}-cpu.svg"), cpu(part, ramp)));
        }
    }
    if let Some(svg) = memory(findings) {
        charts.push(("memory-per-stream.svg".into(), svg));
    }
    let mut written = Vec::new();
    for (name, svg) in charts {
        let path = dir.join(&name);
        std::fs::write(&path, svg).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        written.push(path.display().to_string());
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_data() {
        assert_eq!(tick_step(100.0), 20.0);
        assert_eq!(tick_step(9.0), 2.0);
        assert_eq!(tick_step(1_200.0), 250.0);
        assert!(tick_step(0.0) > 0.0, "an empty chart still has a step");
    }

    #[test]
    fn a_chart_draws_each_series_with_its_points_and_name() {
        let svg = LineChart {
            title: "t <1>",
            x_label: "x",
            y_label: "y",
            series: vec![
                Series {
                    name: "a".into(),
                    points: vec![(100.0, 10.0), (200.0, 30.0)],
                },
                Series {
                    name: "b & c".into(),
                    points: vec![(100.0, 5.0)],
                },
            ],
        }
        .svg();
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches("<circle").count(), 3);
        assert!(
            svg.contains("t &lt;1&gt;") && svg.contains("b &amp; c"),
            "text is escaped"
        );
        // The highest point sits at the top tick or below it, never above the plot.
        assert!(!svg.contains("cy=\"-"), "{svg}");
    }
}
