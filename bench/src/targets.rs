//! The targets of issue 13, each judged against what the run found and
//! printed beside the same-run baseline that bounds it. The targets are set
//! for the full run's shapes (`make bench-full`); a short run prints them
//! for its own, smaller shapes.

use crate::{
    devices::{Disconnect, IdleCost},
    durable::Durable,
    load::Step,
    parts::Receipts,
    report::Row,
};

/// What accepted messages, rows and statements are held against.
pub const RAW_ROWS: &str = "raw durable rows, same shape";
/// What idle devices are held against.
pub const BARE_BIDI: &str = "bare tonic bidi stream, same count";
/// What deliveries are held against.
pub const BARE_STREAMS: &str = "bare tonic streams, same count";
/// What delivery latency is held against.
pub const UNARY: &str = "tonic unary p50, 1 in flight";
/// The receipt service's digest coalescing window (its default), in ms.
const DIGEST_WINDOW_MS: f64 = 500.0;

/// The bounds of one ramp's shape, measured in the same run.
pub struct RampBaseline {
    /// The ramp's part.
    pub part: &'static str,
    /// The shape's durable rows written with nothing in between.
    pub durable: Durable,
    /// Deliveries per second that bare tonic streams carry, as many as the
    /// shape has devices online.
    pub streams: f64,
    /// Their process's CPU per delivery (the bare server and its readers), µs.
    pub streams_cpu_us: f64,
}

/// What a ramp found: each step, and which of them it sustained (users
/// unstrained, the outbox drained within a second).
pub struct Ramp {
    /// The steps run, in order.
    pub steps: Vec<Step>,
    /// Which steps were sustained, in order.
    pub kept: Vec<bool>,
}

impl Ramp {
    /// The sustained steps, in order.
    fn kept_steps(&self) -> impl DoubleEndedIterator<Item = &Step> {
        self.steps
            .iter()
            .zip(&self.kept)
            .filter(|(_, kept)| **kept)
            .map(|(step, _)| step)
    }

    /// The highest sustained step.
    pub fn sustained(&self) -> Option<&Step> {
        self.kept_steps().next_back()
    }

    /// The highest sustained step whose send → delivery p99 is within
    /// `p99_ms`, or else the highest sustained step.
    fn sustained_within(&self, p99_ms: f64) -> Option<&Step> {
        self.kept_steps()
            .rev()
            .find(|step| step.delivery.p99_ms <= p99_ms)
            .or_else(|| self.sustained())
    }

    /// The step at `rate`, if the ramp reached it.
    fn at(&self, rate: f64) -> Option<&Step> {
        self.steps.iter().find(|s| (s.target - rate).abs() < 0.5)
    }

    /// The highest rate it tried.
    fn reached(&self) -> f64 {
        self.steps.last().map_or(0.0, |s| s.target)
    }
}

/// What the parts found that a target is judged on.
#[derive(Default)]
pub struct Findings {
    /// The seeds' scenario's ramp.
    pub seed: Option<Ramp>,
    /// One busy group's ramp.
    pub busy: Option<Ramp>,
    /// The large group's ramp.
    pub large: Option<Ramp>,
    /// Receipt reads in the large group.
    pub large_receipts: Option<Receipts>,
    /// Idle devices, their heartbeats and their mass disconnect.
    pub devices: Option<Devices>,
    /// The push sender's pace.
    pub pushes: Option<Pushes>,
}

/// Pushes per second from the first accepted to the last, and the bound.
pub struct Pushes {
    /// Bare HTTP/2 POSTs to the stand-in.
    pub bare_posts: f64,
    /// Every answer 200.
    pub all_200: f64,
    /// Every token first answered 429 `Retry-After: 1`.
    pub throttled: f64,
}

/// What the devices part found, and its baseline.
pub struct Devices {
    /// The gateway's idle streams.
    pub idle: IdleCost,
    /// Bare tonic bidi streams, as many, heartbeating the same.
    pub bare: IdleCost,
    /// Every gateway stream closing at once.
    pub disconnect: Disconnect,
    /// Presence's entry lifetime.
    pub presence_ttl: std::time::Duration,
}

/// Which side of its bound a figure must be on.
#[derive(Clone, Copy, Debug)]
enum Bound {
    AtLeast(f64),
    AtMost(f64),
}

/// One target: what is judged, its unit and bound, and the baseline beside it.
struct Target<'a> {
    figure: String,
    value: Option<f64>,
    unit: &'a str,
    bound: Bound,
    baseline: (&'a str, f64),
}

impl Target<'_> {
    fn row(self, reached: &str) -> Row {
        let (rule, bound) = match self.bound {
            Bound::AtLeast(b) => ("≥", b),
            Bound::AtMost(b) => ("≤", b),
        };
        let verdict = match (self.value, self.bound) {
            (None, _) => format!("not reached ({reached})"),
            (Some(v), Bound::AtLeast(b)) if v >= b => "met".to_owned(),
            (Some(v), Bound::AtMost(b)) if v <= b => "met".to_owned(),
            (Some(_), _) => "not met".to_owned(),
        };
        // Bounds derived from a baseline print rounded.
        let bound = if bound >= 100.0 {
            format!("{bound:.0}")
        } else {
            let places = format!("{bound:.3}");
            places
                .trim_end_matches('0')
                .trim_end_matches('.')
                .to_owned()
        };
        Row::plain(
            "targets",
            &format!("{} (target {rule} {bound})", self.figure),
            self.value.unwrap_or(f64::NAN),
            &format!("{}, {verdict}", self.unit),
        )
        .against(self.baseline.0, self.baseline.1)
    }
}

/// Parley's CPU per message in a step: the services, MariaDB and Redis (not
/// the load generator).
pub fn parley_cpu_ms(step: &Step) -> f64 {
    step.cpu_per_1000
        .iter()
        .filter(|(name, _)| *name != crate::load::LOAD_GENERATOR)
        .map(|(_, cpu)| cpu)
        .sum()
}

/// The gateway's CPU per delivery in a step, in µs: its CPU per message over
/// the deliveries per message.
fn gateway_cpu_us_per_delivery(step: &Step) -> Option<f64> {
    let (_, cpu_per_1000) = step
        .cpu_per_1000
        .iter()
        .find(|(name, _)| *name == "gateway")?;
    let deliveries_per_message = step.deliveries / step.accepted;
    (deliveries_per_message.is_finite() && deliveries_per_message > 0.0)
        .then(|| cpu_per_1000 * 1000.0 / deliveries_per_message)
}

/// A ramp's rate, deliveries and latency targets ("this rate with that
/// p99"), judged at the highest sustained step within the latency bound.
fn ramp_targets<'a>(
    part: &str,
    ramp: &Ramp,
    base: &'a RampBaseline,
    (rate, deliveries, p99_ms): (f64, f64, f64),
    unary_p50_ms: f64,
) -> Vec<Target<'a>> {
    let sustained = ramp.sustained_within(p99_ms);
    let within = if p99_ms.is_finite() {
        format!(" with p99 ≤ {p99_ms} ms")
    } else {
        String::new()
    };
    vec![
        Target {
            figure: format!("{part}: highest rate sustained{within}"),
            value: Some(sustained.map_or(0.0, |s| s.target)),
            unit: "msg/s",
            bound: Bound::AtLeast(rate),
            baseline: (RAW_ROWS, base.durable.messages_per_second),
        },
        Target {
            figure: format!("{part}: deliveries at it"),
            value: sustained.map(|s| s.deliveries),
            unit: "deliv/s",
            bound: Bound::AtLeast(deliveries),
            baseline: (BARE_STREAMS, base.streams),
        },
        Target {
            figure: format!("{part}: send→delivery p99 at it"),
            value: sustained.map(|s| s.delivery.p99_ms),
            unit: "ms",
            bound: Bound::AtMost(p99_ms),
            baseline: (UNARY, unary_p50_ms),
        },
    ]
}

/// Every target the run has figures for, judged, as rows.
pub fn rows(found: &Findings, bases: &[RampBaseline], unary_p50_ms: f64) -> Vec<Row> {
    let base = |part: &str| bases.iter().find(|b| b.part == part);
    let mut rows = Vec::new();
    if let (Some(ramp), Some(base)) = (&found.seed, base("seed")) {
        let reached = format!("the ramp stopped at {:.0} msg/s", ramp.reached());
        let mut targets = ramp_targets(
            "seed",
            ramp,
            base,
            (1_000.0, 39_000.0, f64::INFINITY),
            unary_p50_ms,
        );
        // The seeds' latency target is at 700 msg/s, not at the top rate, so
        // their rate is judged at the highest sustained step.
        targets.pop();
        let sustained = ramp.sustained();
        targets.extend([
            Target {
                figure: "seed: send→delivery p99 @700/s".to_owned(),
                value: ramp.at(700.0).map(|s| s.delivery.p99_ms),
                unit: "ms",
                bound: Bound::AtMost(100.0),
                baseline: (UNARY, unary_p50_ms),
            },
            Target {
                figure: "seed: ack→digest p99 at the sustained rate".to_owned(),
                value: sustained.map(|s| s.digest.p99_ms),
                unit: "ms",
                bound: Bound::AtMost(DIGEST_WINDOW_MS + 100.0),
                baseline: ("the digest coalescing window", DIGEST_WINDOW_MS),
            },
            Target {
                figure: "seed: CPU per message at it, services + MariaDB + Redis".to_owned(),
                value: sustained.map(parley_cpu_ms),
                unit: "cpu-ms",
                bound: Bound::AtMost(2.0),
                baseline: (
                    "MariaDB CPU of the raw durable rows",
                    base.durable.mariadb_cpu_ms,
                ),
            },
            Target {
                figure: "seed: gateway CPU per delivery at it".to_owned(),
                value: sustained.and_then(gateway_cpu_us_per_delivery),
                unit: "µs",
                bound: Bound::AtMost(10.0),
                baseline: (
                    "bare tonic streams' process (server and readers), per delivery",
                    base.streams_cpu_us,
                ),
            },
            Target {
                figure: "seed: SQL statements per message at it".to_owned(),
                value: sustained.map(|s| s.statements_per_message),
                unit: "stmts",
                bound: Bound::AtMost(8.0),
                baseline: (RAW_ROWS, base.durable.statements_per_message),
            },
        ]);
        rows.extend(targets.into_iter().map(|t| t.row(&reached)));
    }
    if let (Some(ramp), Some(base)) = (&found.busy, base("busy")) {
        let reached = format!("the ramp stopped at {:.0} msg/s", ramp.reached());
        let targets = ramp_targets("busy", ramp, base, (1_000.0, 39_000.0, 100.0), unary_p50_ms);
        rows.extend(targets.into_iter().map(|t| t.row(&reached)));
    }
    if let (Some(ramp), Some(base)) = (&found.large, base("large")) {
        let reached = format!("the ramp stopped at {:.0} msg/s", ramp.reached());
        let mut targets = ramp_targets("large", ramp, base, (150.0, 60_000.0, 200.0), unary_p50_ms);
        if let Some(reads) = &found.large_receipts {
            targets.push(Target {
                figure: "large: GetReceipts p99, 50 msgs".to_owned(),
                value: Some(reads.counts.p99_ms),
                unit: "ms",
                bound: Bound::AtMost(1.5 * reads.raw_counts.p99_ms),
                baseline: (
                    "the same SQL straight to MariaDB, p99",
                    reads.raw_counts.p99_ms,
                ),
            });
        }
        rows.extend(targets.into_iter().map(|t| t.row(&reached)));
    }
    if let Some(devices) = &found.devices {
        rows.extend(device_targets(devices).into_iter().map(|t| t.row("")));
    }
    if let Some(pushes) = &found.pushes {
        let targets = [
            Target {
                figure: "push: pushes/s, all 200, first to last accepted".to_owned(),
                value: Some(pushes.all_200),
                unit: "push/s",
                bound: Bound::AtLeast(0.5 * pushes.bare_posts),
                baseline: ("bare HTTP/2 POSTs to the stand-in", pushes.bare_posts),
            },
            Target {
                figure: "push: pushes/s after a 429 Retry-After: 1, first to last accepted"
                    .to_owned(),
                value: Some(pushes.throttled),
                unit: "push/s",
                bound: Bound::AtLeast(0.5 * pushes.all_200),
                baseline: ("the all-200 pace", pushes.all_200),
            },
        ];
        rows.extend(targets.into_iter().map(|t| t.row("")));
    }
    rows
}

/// Issue 14's targets for idle devices and their mass disconnect.
fn device_targets(devices: &Devices) -> Vec<Target<'static>> {
    let Devices {
        idle,
        bare,
        disconnect,
        presence_ttl,
    } = devices;
    vec![
        Target {
            figure: format!("devices: gateway memory per idle stream ({})", idle.streams),
            value: Some(idle.bytes_per_stream / 1024.0),
            unit: "KiB",
            bound: Bound::AtMost(10.0),
            baseline: (BARE_BIDI, bare.bytes_per_stream / 1024.0),
        },
        Target {
            figure: "devices: gateway CPU per client heartbeat".to_owned(),
            value: Some(idle.cpu_us_per_heartbeat),
            unit: "µs",
            bound: Bound::AtMost(2.0),
            baseline: (BARE_BIDI, bare.cpu_us_per_heartbeat),
        },
        Target {
            figure: format!(
                "devices: {} closed at once, all offline after ({} BatchOffline calls, {} ERROR lines)",
                idle.streams, disconnect.batch_calls, disconnect.log_errors
            ),
            value: disconnect.took.map(|t| t.as_secs_f64()),
            unit: "s",
            bound: Bound::AtMost(presence_ttl.as_secs_f64()),
            baseline: ("the presence TTL", presence_ttl.as_secs_f64()),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(value: Option<f64>, bound: Bound) -> Row {
        Target {
            figure: "f".to_owned(),
            value,
            unit: "ms",
            bound,
            baseline: ("b", 1.0),
        }
        .row("the ramp stopped at 400 msg/s")
    }

    fn step(target: f64, p99_ms: f64) -> Step {
        Step {
            target,
            accepted: target,
            refused: 0,
            deliveries: target * 39.0,
            acks: 0.0,
            delivery: crate::report::Quantiles {
                p99_ms,
                ..Default::default()
            },
            digest: crate::report::Quantiles::default(),
            backlog: 0,
            drained: std::time::Duration::ZERO,
            rows_per_message: 0.0,
            statements_per_message: 0.0,
            statements_by_kind: Vec::new(),
            top_statements: Vec::new(),
            cpu_per_1000: Vec::new(),
            db_error: None,
            calls: Err(String::new()),
        }
    }

    #[test]
    fn a_rate_with_a_latency_bound_is_judged_at_the_highest_step_within_it() {
        let ramp = Ramp {
            steps: vec![step(750.0, 65.0), step(1_000.0, 82.0), step(1_250.0, 105.0)],
            kept: vec![true, true, true],
        };
        let at = |p99_ms: f64| ramp.sustained_within(p99_ms).map(|s| s.target);
        assert_eq!(at(100.0), Some(1_000.0));
        assert_eq!(at(f64::INFINITY), Some(1_250.0));
        assert_eq!(
            at(50.0),
            Some(1_250.0),
            "none within: the highest sustained"
        );
        let fell_behind = Ramp {
            kept: vec![true, false, true],
            ..ramp
        };
        assert_eq!(
            fell_behind.sustained_within(100.0).map(|s| s.target),
            Some(750.0),
            "a step whose outbox fell behind is not sustained"
        );
    }

    #[test]
    fn a_target_says_whether_it_is_met() {
        assert_eq!(target(Some(90.0), Bound::AtMost(100.0)).unit, "ms, met");
        assert_eq!(
            target(Some(110.0), Bound::AtMost(100.0)).unit,
            "ms, not met"
        );
        assert_eq!(target(Some(1000.0), Bound::AtLeast(1000.0)).unit, "ms, met");
        assert_eq!(
            target(Some(999.0), Bound::AtLeast(1000.0)).unit,
            "ms, not met"
        );
        let missing = target(None, Bound::AtMost(100.0));
        assert_eq!(
            missing.unit,
            "ms, not reached (the ramp stopped at 400 msg/s)"
        );
        assert!(missing.value.is_nan());
        assert_eq!(missing.figure, "f (target ≤ 100)");
        assert_eq!(missing.baseline_value, Some(1.0));
        // A bound derived from a baseline prints without float noise.
        assert_eq!(
            target(None, Bound::AtMost(0.362 * 3.0)).figure,
            "f (target ≤ 1.086)"
        );
        assert_eq!(target(None, Bound::AtMost(2.0)).figure, "f (target ≤ 2)");
    }
}
