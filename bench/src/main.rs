//! `parley-bench`: the seeds' scenario under load against the suite on
//! MariaDB and Redis, with the same machine's raw limits measured in the same
//! run, so every headline figure comes with a ratio that holds on any box.
//! `make bench` runs the short version; `make bench-full` all five parts.

#![forbid(unsafe_code)]

mod baseline;
mod cluster;
mod devices;
mod durable;
mod load;
mod parts;
mod plot;
mod report;
mod streams;
mod targets;

use std::{path::PathBuf, time::Duration};

use clap::Parser;

use crate::{
    cluster::Cluster,
    durable::GroupShape,
    load::{Load, Step, Window},
    report::{Machine, Report, Row},
    targets::{
        BARE_BIDI, BARE_STREAMS, Findings, RAW_ROWS, Ramp, RampBaseline, UNARY, parley_cpu_ms,
    },
};

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "parley-bench",
    about = "Parley under load, beside the machine's own limits"
)]
struct Cli {
    /// Run every part (seed scenario, large group, connections, push,
    /// baselines) at full size; without it, the short run.
    #[arg(long)]
    full: bool,
    /// Run only these parts (`groups`: the seed scenario, its overload, the
    /// busy and large groups; `devices`: idle connections, disconnects and
    /// pushes), with only the baselines they are judged against.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Option<Vec<PartSet>>,
    /// Idle device streams in the connections part, instead of the plan's
    /// (1,000 short, 50,000 full).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    idle_streams: Option<u32>,
    /// Offline members with a token in the push part (each gets one push),
    /// instead of the plan's (300 short, 2,000 full).
    #[arg(long, value_parser = clap::value_parser!(u32).range(2..=100_000))]
    push_members: Option<u32>,
    /// Where to write the JSON result.
    #[arg(long, default_value = "bench-results.json")]
    json: PathBuf,
    /// Also draw the run's charts (latency and CPU against the offered rate
    /// for each group ramp, memory per idle stream) as SVG files here.
    #[arg(long)]
    plots: Option<PathBuf>,
    /// Also count MariaDB's statements by their text (its performance schema,
    /// which costs it some CPU, so CPU figures of such a run read high): the
    /// most frequent ones per message at each step of the seed scenario.
    #[arg(long)]
    statements: bool,
    /// The seed scenario's groups, instead of the plan's (5 short, 20 full).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    groups: Option<u32>,
    /// Members of each seed group (default 200).
    #[arg(long, value_parser = clap::value_parser!(u32).range(2..=100_000))]
    members: Option<u32>,
    /// Devices online in each seed group, its sender among them (default 40).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    online: Option<u32>,
    /// The seed ramp's rates, messages per second over all groups, in order
    /// (e.g. `100,200,400`), instead of the plan's.
    #[arg(long, value_delimiter = ',')]
    rates: Option<Vec<f64>>,
    /// Seconds each step of the ramp sends for (default 8 short, 15 full).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=3_600))]
    step_secs: Option<u64>,
    /// A seed reader acks after this many messages, or after a second with
    /// any unacked (default 10).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    ack_every: Option<u64>,
}

/// The parts of a run that can be chosen alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum PartSet {
    /// Group traffic: the seed scenario, overload, busy and large groups.
    Groups,
    /// Devices: idle connections, disconnects, pushes.
    Devices,
}

impl Cli {
    /// Whether `set` is part of this run.
    fn runs(&self, set: PartSet) -> bool {
        self.only.as_ref().is_none_or(|only| only.contains(&set))
    }

    /// Applies the scenario's shape from the flags to `plan`; says what is
    /// wrong with them, if anything.
    fn shape(&self, plan: &mut Plan) -> Result<(), String> {
        if let Some(groups) = self.groups {
            plan.seed_groups = groups as usize;
        }
        if let Some(members) = self.members {
            plan.seed_members = members as usize;
        }
        if let Some(online) = self.online {
            plan.seed_online = online as usize;
        }
        if plan.seed_online > plan.seed_members {
            return Err(format!(
                "--online ({}) is more than --members ({})",
                plan.seed_online, plan.seed_members
            ));
        }
        if let Some(rates) = &self.rates {
            if rates.is_empty() || rates.iter().any(|r| !r.is_finite() || *r <= 0.0) {
                return Err("--rates takes positive numbers, e.g. 100,200,400".to_owned());
            }
            plan.seed_rates = rates.clone();
        }
        if let Some(secs) = self.step_secs {
            plan.step = Duration::from_secs(secs);
        }
        if let Some(every) = self.ack_every {
            plan.ack_every = every;
        }
        Ok(())
    }
}

fn progress(line: &str) {
    eprintln!("[{:>6.1}s] {line}", started().elapsed().as_secs_f64());
}

fn started() -> std::time::Instant {
    static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *STARTED.get_or_init(std::time::Instant::now)
}

/// Sizes of one run.
struct Plan {
    baseline: Duration,
    seed_groups: usize,
    seed_members: usize,
    seed_online: usize,
    seed_rates: Vec<f64>,
    /// A seed reader acks after this many messages.
    ack_every: u64,
    step: Duration,
    /// Large group (2,000 members, 400 online) rates; empty: skipped.
    large_rates: Vec<f64>,
    /// One busy group's ramp (200 members, 40 online, one sender); empty:
    /// only its overload part runs.
    busy_rates: Vec<f64>,
    /// Members of the cursor-tier group whose receipts are read; 0: skipped.
    huge_members: usize,
    idle_streams: usize,
    idle_for: Duration,
    push_members: usize,
    /// The seed scenario at its sustained rate, then at multiples of it,
    /// then back.
    overload: Overload,
}

/// The lengths of the overload part's phases.
struct Overload {
    nominal: Duration,
    /// Each overload window's length.
    doubled: Duration,
    /// One-second windows watched after the overload.
    recovery_windows: u32,
}

impl Plan {
    fn short() -> Self {
        Self {
            baseline: Duration::from_secs(3),
            seed_groups: 5,
            seed_members: 200,
            seed_online: 40,
            seed_rates: vec![100.0, 200.0, 400.0],
            ack_every: load::ACK_EVERY,
            step: Duration::from_secs(8),
            large_rates: Vec::new(),
            busy_rates: Vec::new(),
            huge_members: 0,
            idle_streams: 1_000,
            idle_for: Duration::from_secs(10),
            push_members: 300,
            overload: Overload {
                nominal: Duration::from_secs(5),
                doubled: Duration::from_secs(10),
                recovery_windows: 8,
            },
        }
    }

    fn full() -> Self {
        Self {
            baseline: Duration::from_secs(5),
            seed_groups: 20,
            seed_members: 200,
            seed_online: 40,
            seed_rates: vec![50.0, 100.0, 200.0, 400.0, 700.0, 1_000.0],
            ack_every: load::ACK_EVERY,
            step: Duration::from_secs(15),
            large_rates: vec![25.0, 50.0, 100.0, 150.0, 200.0],
            busy_rates: vec![250.0, 500.0, 750.0, 1_000.0, 1_250.0],
            huge_members: 20_000,
            idle_streams: 50_000,
            idle_for: Duration::from_secs(30),
            push_members: 2_000,
            overload: Overload {
                nominal: Duration::from_secs(10),
                doubled: Duration::from_secs(30),
                recovery_windows: 10,
            },
        }
    }
}

/// The machine's limits, measured before the suite starts.
struct Baselines {
    publish: f64,
    unary_p50_ms: f64,
    /// Each ramp's own bounds.
    ramps: Vec<RampBaseline>,
}

impl Baselines {
    /// The bounds of the ramp of `part`.
    fn of(&self, part: &str) -> Result<&RampBaseline, String> {
        self.ramps
            .iter()
            .find(|r| r.part == part)
            .ok_or_else(|| format!("no baseline measured for {part}"))
    }
}

/// The ramps a plan runs: the seed scenario, then (in the full run) one busy
/// group and the large group.
fn ramps(plan: &Plan) -> Vec<(Shape, Vec<f64>)> {
    let mut ramps = vec![(Shape::seed(plan), plan.seed_rates.clone())];
    if !plan.busy_rates.is_empty() {
        ramps.push((Shape::busy(), plan.busy_rates.clone()));
    }
    if !plan.large_rates.is_empty() {
        ramps.push((Shape::large(), plan.large_rates.clone()));
    }
    ramps
}

/// Each ramp's shape written as raw durable rows, and carried by bare
/// tonic streams.
async fn ramp_baselines(
    plan: &Plan,
    mariadb: &parley_testkit::OwnMariaDb,
    rows: &mut Vec<Row>,
) -> Result<Vec<RampBaseline>, String> {
    let mut measured = Vec::new();
    for (shape, _) in ramps(plan) {
        let part = shape.part;
        let size = format!(
            "{}×{} members, {} online",
            shape.groups, shape.members, shape.online
        );
        progress(&format!(
            "baseline: raw durable rows, {part} shape ({size})"
        ));
        let scratch = baseline::Scratch::create(&mariadb.server_url()).await?;
        let durable = scratch
            .durable_messages(shape.group_shape(), plan.baseline, mariadb.pid())
            .await;
        scratch.drop().await;
        let durable = durable?;
        let devices = shape.groups.saturating_mul(shape.online);
        progress(&format!(
            "baseline: bare tonic streams, {devices} streams ({} per connection)",
            shape.per_connection
        ));
        let streams = streams::bare_streams(devices, shape.per_connection, plan.baseline).await?;
        rows.extend([
            Row::plain(
                "baseline",
                &format!("raw durable rows, {part} shape ({size}): messages"),
                durable.messages_per_second,
                "msg/s",
            ),
            Row::plain(
                "baseline",
                &format!("raw durable rows, {part} shape: rows per message"),
                durable.rows_per_message,
                "rows",
            ),
            Row::plain(
                "baseline",
                &format!("raw durable rows, {part} shape: statements per message"),
                durable.statements_per_message,
                "stmts",
            ),
            Row::plain(
                "baseline",
                &format!("raw durable rows, {part} shape: MariaDB CPU per message"),
                durable.mariadb_cpu_ms,
                "cpu-ms",
            ),
            Row::plain(
                "baseline",
                &format!(
                    "bare tonic streams, pre-encoded frames, {devices} streams ({} per connection)",
                    shape.per_connection
                ),
                streams.per_second,
                "deliv/s",
            ),
            Row::plain(
                "baseline",
                &format!(
                    "bare tonic streams, {devices} streams: CPU per delivery, server and readers"
                ),
                streams.cpu_us_per_delivery,
                "µs",
            ),
        ]);
        measured.push(RampBaseline {
            part,
            durable,
            streams: streams.per_second,
            streams_cpu_us: streams.cpu_us_per_delivery,
        });
    }
    Ok(measured)
}

async fn baselines(
    plan: &Plan,
    mariadb: &parley_testkit::OwnMariaDb,
    groups: bool,
    rows: &mut Vec<Row>,
) -> Result<Baselines, String> {
    let part = "baseline";
    let scratch = baseline::Scratch::create(&mariadb.server_url()).await?;
    progress("baseline: MariaDB single-row commits");
    let commits = scratch.single_row_commits(plan.baseline).await?;
    progress("baseline: MariaDB 500-row inserts");
    let multi_rows = scratch.multi_row_inserts(plan.baseline).await?;
    scratch.drop().await;
    let redis = parley_testkit::TestRedis::start().await;
    progress("baseline: Redis PUBLISH and SET");
    let (publish, set) = baseline::redis_ops(&redis.url(), plan.baseline).await?;
    drop(redis);
    progress("baseline: tonic unary echo");
    let (unary, unary_latency) =
        baseline::tonic_unary(baseline::UNARY_IN_FLIGHT, plan.baseline).await?;
    let (_, lone_latency) = baseline::tonic_unary(1, plan.baseline).await?;
    progress("baseline: bare in-process fan-out to 40 subscribers");
    let fanout = baseline::bare_fanout(40, plan.baseline).await;
    let ramps = if groups {
        ramp_baselines(plan, mariadb, rows).await?
    } else {
        Vec::new()
    };
    let connections = baseline::DB_CONNECTIONS;
    rows.extend([
        Row::plain(
            part,
            &format!("MariaDB single-row commits ({connections} conns)"),
            commits,
            "/s",
        ),
        Row::plain(
            part,
            &format!("MariaDB rows in 500-row inserts ({connections} conns)"),
            multi_rows,
            "rows/s",
        ),
        Row::plain(part, "Redis PUBLISH (16 conns)", publish, "/s"),
        Row::plain(part, "Redis SET (16 conns)", set, "/s"),
        Row::plain(part, "tonic unary echo (64 in flight)", unary, "/s"),
        Row::plain(
            part,
            "tonic unary echo p50 (64 in flight)",
            unary_latency.p50_ms,
            "ms",
        ),
        Row::plain(
            part,
            "tonic unary echo p50 (1 in flight)",
            lone_latency.p50_ms,
            "ms",
        ),
        Row::plain(part, "bare fan-out to 40 channels", fanout, "deliv/s"),
    ]);
    Ok(Baselines {
        publish,
        unary_p50_ms: lone_latency.p50_ms,
        ramps,
    })
}

fn step_rows(part: &str, step: &Step, base: &Baselines, ramp: &RampBaseline, rows: &mut Vec<Row>) {
    let at = format!("@{:.0}/s", step.target);
    rows.push(
        Row::plain(
            part,
            &format!("{at} accepted messages"),
            step.accepted,
            "msg/s",
        )
        .against(RAW_ROWS, ramp.durable.messages_per_second),
    );
    rows.push(
        Row::plain(
            part,
            &format!("{at} deliveries"),
            step.deliveries,
            "deliv/s",
        )
        .against(BARE_STREAMS, ramp.streams),
    );
    rows.push(Row::plain(
        part,
        &format!("{at} ack frames from readers"),
        step.acks,
        "acks/s",
    ));
    rows.push(
        Row::plain(
            part,
            &format!("{at} bus publishes (≤1 per message)"),
            step.accepted,
            "msg/s",
        )
        .against("Redis PUBLISH", base.publish),
    );
    rows.push(
        Row::plain(
            part,
            &format!("{at} send→delivery p50"),
            step.delivery.p50_ms,
            "ms",
        )
        .against(UNARY, base.unary_p50_ms),
    );
    rows.push(Row::plain(
        part,
        &format!("{at} send→delivery p50/p95/p99/max"),
        step.delivery.p99_ms,
        &format!("{} ms", step.delivery.brief()),
    ));
    let digest = if step.digest.count == 0 {
        "none within the step".to_owned()
    } else {
        format!("{} ms", step.digest.brief())
    };
    rows.push(Row::plain(
        part,
        &format!("{at} ack→digest p50/p95/p99/max"),
        step.digest.p99_ms,
        &digest,
    ));
    rows.push(Row::plain(
        part,
        &format!("{at} outbox backlog at the step's end"),
        step.backlog as f64,
        "entries",
    ));
    rows.push(Row::plain(
        part,
        &format!("{at} backlog drained in"),
        step.drained.as_secs_f64(),
        "s",
    ));
    match &step.db_error {
        None => rows.extend([
            Row::plain(
                part,
                &format!("{at} rows written per message"),
                step.rows_per_message,
                "rows",
            )
            .against(RAW_ROWS, ramp.durable.rows_per_message),
            Row::plain(
                part,
                &format!("{at} SQL statements per message"),
                step.statements_per_message,
                &format!(
                    "stmts ({})",
                    step.statements_by_kind
                        .iter()
                        .map(|(kind, count)| format!("{kind} {count:.1}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
            .against(RAW_ROWS, ramp.durable.statements_per_message),
        ]),
        Some(error) => progress(&format!(
            "{part}: rows and statements not measured: {error}"
        )),
    }
    match &step.calls {
        Ok(calls) => {
            let rpcs: f64 = calls.rpcs.iter().map(|(_, n)| n).sum();
            rows.push(Row::plain(
                part,
                &format!("{at} RPCs per message"),
                rpcs,
                &format!(
                    "rpcs (answered by {})",
                    calls
                        .rpcs
                        .iter()
                        .map(|(service, n)| format!("{service} {n:.2}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
            rows.push(Row::plain(
                part,
                &format!("{at} Redis commands per message"),
                calls.redis,
                "cmds",
            ));
        }
        Err(error) => progress(&format!(
            "{part}: RPCs and Redis commands not counted: {error}"
        )),
    }
    for (statement, count) in &step.top_statements {
        rows.push(Row::plain(
            part,
            &format!("{at} per message: {statement}"),
            *count,
            "stmts",
        ));
    }
    for (service, cpu) in &step.cpu_per_1000 {
        rows.push(Row::plain(
            part,
            &format!("{at} CPU s per 1k msgs: {service}"),
            *cpu,
            "cpu-s",
        ));
    }
    rows.push(
        Row::plain(
            part,
            &format!("{at} CPU per message: services, MariaDB and Redis"),
            parley_cpu_ms(step),
            "cpu-ms",
        )
        .against(
            "MariaDB CPU of the raw durable rows",
            ramp.durable.mariadb_cpu_ms,
        ),
    );
    if step.refused > 0 {
        rows.push(Row::plain(
            part,
            &format!("{at} sends refused"),
            step.refused as f64,
            "msgs",
        ));
    }
}

/// The groups one part drives.
struct Shape {
    part: &'static str,
    groups: usize,
    members: usize,
    online: usize,
    /// A reader acks after this many messages.
    ack_every: u64,
    /// Device streams on one HTTP/2 connection.
    per_connection: usize,
}

impl Shape {
    /// The seeds' scenario, in the plan's shape.
    fn seed(plan: &Plan) -> Self {
        Self {
            part: "seed",
            groups: plan.seed_groups,
            members: plan.seed_members,
            online: plan.seed_online,
            ack_every: plan.ack_every,
            per_connection: load::STREAMS_PER_CONNECTION,
        }
    }

    /// One large group: 2,000 members, 400 online.
    fn large() -> Self {
        Self {
            part: "large",
            groups: 1,
            members: 2_000,
            online: 400,
            ack_every: load::ACK_EVERY,
            per_connection: load::STREAMS_PER_CONNECTION,
        }
    }

    /// One busy group: its one sender's stream carries every message, and
    /// its devices each have a connection of their own (the seed scenario's
    /// share one per 50, as behind a proxy).
    fn busy() -> Self {
        Self {
            part: "busy",
            groups: 1,
            members: 200,
            online: 40,
            ack_every: load::ACK_EVERY,
            per_connection: 1,
        }
    }

    fn group_shape(&self) -> GroupShape {
        GroupShape {
            groups: self.groups,
            members: self.members,
            online: self.online,
            ack_every: self.ack_every,
        }
    }
}

/// Drives a shape up the `rates` until its users feel it (or the outbox is
/// past [`LAG_CEILING`]); returns the load and what each step found.
async fn group_load(
    cluster: &Cluster,
    shape: &Shape,
    rates: &[f64],
    plan: &Plan,
    base: &Baselines,
    rows: &mut Vec<Row>,
) -> Result<(Load, Ramp), String> {
    let part = shape.part;
    let ramp_base = base.of(part)?;
    let load = Load::start(
        cluster,
        part,
        (shape.groups, shape.members, shape.online),
        (shape.per_connection, shape.ack_every),
        &progress,
    )
    .await?;
    let mut ramp = Ramp {
        steps: Vec::new(),
        kept: Vec::new(),
    };
    for rate in rates {
        progress(&format!("{part}: {rate:.0} msg/s for {:?}", plan.step));
        let step = load.step(cluster, *rate, plan.step).await?;
        progress(&format!(
            "{part}: accepted {:.0}/s, {:.0} deliveries/s, p50 {:.1} ms, \
             {} left behind, drained in {:.1} s",
            step.accepted,
            step.deliveries,
            step.delivery.p50_ms,
            step.backlog,
            step.drained.as_secs_f64()
        ));
        step_rows(part, &step, base, ramp_base, rows);
        let felt = felt(&step);
        let drained = step.drained;
        ramp.steps.push(step);
        ramp.kept.push(felt.is_none() && drained <= KEEP_UP);
        if let Some(why) = felt {
            progress(&format!(
                "{part}: users feel it at {rate:.0} msg/s ({why}); ramp stops"
            ));
            break;
        }
        if drained > KEEP_UP {
            progress(&format!(
                "{part}: the outbox fell behind at {rate:.0} msg/s (drained in {:.1} s)",
                drained.as_secs_f64()
            ));
        }
        if drained > LAG_CEILING {
            progress(&format!(
                "{part}: the outbox is more than {LAG_CEILING:?} behind; ramp stops"
            ));
            break;
        }
    }
    rows.push(Row::plain(
        part,
        "highest rate sustained (users unstrained, outbox drained within 1 s)",
        ramp.sustained().map_or(0.0, |s| s.target),
        "msg/s",
    ));
    Ok((load, ramp))
}

/// The one busy group's nominal rate when its ramp did not run (the short
/// run): what its sender's stream carries with room to spare. After a ramp,
/// its overload starts from the rate the ramp sustained.
const BUSY_NOMINAL: f64 = 50.0;

/// Multiples of the sustained rate the overload part drives: twice it, and
/// four times it (past what the send path itself takes here).
const OVERLOADS: [f64; 2] = [2.0, 4.0];

/// The seed scenario at its sustained rate, then at each multiple of it in
/// [`OVERLOADS`] (the excess should be refused with a reason, the admitted
/// sends stay fast, no stream is cut, memory stays bounded), each followed by
/// the sustained rate again, watched one second at a time until latency is
/// nominal again.
async fn overload(
    part: &'static str,
    cluster: &Cluster,
    load: &Load,
    rate: f64,
    plan: &Overload,
    rows: &mut Vec<Row>,
) -> Result<(), String> {
    load.pause();
    cluster.quiesce(Duration::from_secs(600)).await?;
    progress(&format!(
        "{part}: nominal {rate:.0} msg/s for {:?}",
        plan.nominal
    ));
    let nominal = load.window(rate, plan.nominal).await;
    window_rows(part, "nominal", &nominal, None, rows);
    let range = nominal_seconds(part, load, rate, plan, rows).await;
    for multiple in OVERLOADS {
        overload_window(part, cluster, load, rate * multiple, &nominal, plan, rows).await;
        recovery(part, load, rate, multiple, range, plan, rows).await;
        load.pause();
        cluster.quiesce(Duration::from_secs(600)).await?;
    }
    Ok(())
}

/// One overload window at `offered` msg/s, with the gateway's memory sampled.
async fn overload_window(
    part: &str,
    cluster: &Cluster,
    load: &Load,
    offered: f64,
    nominal: &Window,
    plan: &Overload,
    rows: &mut Vec<Row>,
) {
    let what = format!("{:.0}×", offered / nominal.offered);
    progress(&format!(
        "{part}: {offered:.0} msg/s for {:?}",
        plan.doubled
    ));
    let rss_before = cluster.rss_bytes("gateway");
    let sampling = std::sync::atomic::AtomicBool::new(true);
    let peak = async {
        let mut peak = rss_before;
        while sampling.load(std::sync::atomic::Ordering::Relaxed) {
            peak = peak.max(cluster.rss_bytes("gateway"));
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        peak
    };
    let window = async {
        let window = load.window(offered, plan.doubled).await;
        sampling.store(false, std::sync::atomic::Ordering::Relaxed);
        window
    };
    let (over, peak) = tokio::join!(window, peak);
    window_rows(part, &what, &over, Some(nominal), rows);
    let refusals = over.exhausted + over.unavailable;
    let mib = |bytes: u64| bytes as f64 / 1048576.0;
    rows.extend([
        Row::plain(
            part,
            &format!("{what} sends refused RESOURCE_EXHAUSTED"),
            over.exhausted as f64,
            "msgs",
        ),
        Row::plain(
            part,
            &format!("{what} sends refused UNAVAILABLE"),
            over.unavailable as f64,
            "msgs",
        ),
        Row::plain(
            part,
            &format!("{what} refusals with a retry hint"),
            100.0 * over.hinted as f64 / refusals.max(1) as f64,
            "%",
        ),
        Row::plain(
            part,
            &format!("{what} gateway RSS before"),
            mib(rss_before),
            "MiB",
        ),
        Row::plain(part, &format!("{what} gateway RSS peak"), mib(peak), "MiB"),
    ]);
    progress(&format!(
        "{part}: {what}: accepted {:.0}/s, refused {refusals}, admitted send p99 {:.1} ms (nominal {:.1}), {} streams lost",
        over.accepted, over.send.p99_ms, nominal.send.p99_ms, over.lost
    ));
    for reason in load.lost_reasons() {
        progress(&format!("{part}: lost stream: {reason}"));
    }
}

/// The sustained rate one second at a time, as recovery is watched: the
/// highest send and delivery p99 of those seconds is the range nominal load
/// itself shows at that scale (a second's p99 is the worst of few sends, so
/// it is noisier than the nominal window's).
async fn nominal_seconds(
    part: &str,
    load: &Load,
    rate: f64,
    plan: &Overload,
    rows: &mut Vec<Row>,
) -> (f64, f64) {
    let mut range = (0.0_f64, 0.0_f64);
    for _ in 0..plan.recovery_windows {
        let window = load.window(rate, Duration::from_secs(1)).await;
        range = (
            range.0.max(window.send.p99_ms),
            range.1.max(window.delivery.p99_ms),
        );
    }
    progress(&format!(
        "{part}: nominal, one second at a time: send p99 up to {:.1} ms, delivery p99 up to {:.1} ms",
        range.0, range.1
    ));
    rows.push(Row::plain(
        part,
        "nominal: highest one-second send p99",
        range.0,
        "ms",
    ));
    rows.push(Row::plain(
        part,
        "nominal: highest one-second delivery p99",
        range.1,
        "ms",
    ));
    range
}

/// The sustained rate again after an overload, one second at a time, until
/// both p99s are back within what nominal load showed second by second.
async fn recovery(
    part: &str,
    load: &Load,
    rate: f64,
    multiple: f64,
    (send_range, delivery_range): (f64, f64),
    plan: &Overload,
    rows: &mut Vec<Row>,
) {
    let mut back = None;
    let mut lost = 0;
    for second in 1..=plan.recovery_windows {
        let window = load.window(rate, Duration::from_secs(1)).await;
        lost += window.lost;
        progress(&format!(
            "{part}: after {multiple:.0}×, second {second}: send p99 {:.1} ms, delivery p99 {:.1} ms",
            window.send.p99_ms, window.delivery.p99_ms
        ));
        let nominal_again =
            window.send.p99_ms <= send_range && window.delivery.p99_ms <= delivery_range;
        if back.is_none() && nominal_again {
            back = Some(second);
        }
    }
    rows.push(Row::plain(
        part,
        &format!("after {multiple:.0}×: seconds until send and delivery p99 are within nominal's one-second range"),
        back.map_or(f64::INFINITY, f64::from),
        "s",
    ));
    rows.push(Row::plain(
        part,
        &format!("after {multiple:.0}×: streams lost"),
        lost as f64,
        "streams",
    ));
}

fn window_rows(
    part: &str,
    what: &str,
    window: &Window,
    nominal: Option<&Window>,
    rows: &mut Vec<Row>,
) {
    let at = format!("{what} @{:.0}/s", window.offered);
    rows.push(Row::plain(
        part,
        &format!("{at} accepted"),
        window.accepted,
        "msg/s",
    ));
    rows.push(Row::plain(
        part,
        &format!("{at} deliveries"),
        window.deliveries,
        "deliv/s",
    ));
    let mut send = Row::plain(
        part,
        &format!(
            "{at} admitted send p99 (p50/p95/p99/max {} ms)",
            window.send.brief()
        ),
        window.send.p99_ms,
        "ms",
    );
    let mut delivery = Row::plain(
        part,
        &format!(
            "{at} send→delivery p99 (p50/p95/p99/max {} ms)",
            window.delivery.brief()
        ),
        window.delivery.p99_ms,
        "ms",
    );
    if let Some(nominal) = nominal {
        send = send.against("nominal send p99", nominal.send.p99_ms);
        delivery = delivery.against("nominal delivery p99", nominal.delivery.p99_ms);
    }
    rows.extend([send, delivery]);
    rows.push(Row::plain(
        part,
        &format!("{at} streams lost"),
        window.lost as f64,
        "streams",
    ));
}

/// Why the users of a step would feel the load, if they would: sends refused
/// or slowed, or deliveries late ([`FELT_DELIVERY_P99_MS`] at p99). The
/// outbox's lag (receipts and pushes) is judged apart.
fn felt(step: &Step) -> Option<&'static str> {
    if step.accepted < 0.95 * step.target {
        Some("sends accepted below 95% of the rate")
    } else if step.delivery.p99_ms > FELT_DELIVERY_P99_MS {
        Some("send → delivery p99 above 500 ms")
    } else {
        None
    }
}

/// Delivery p99 past which a user feels the load.
const FELT_DELIVERY_P99_MS: f64 = 500.0;

/// How soon after a step the outbox (receipts, offline hand-off) must have
/// drained for the rate to count as sustained.
const KEEP_UP: Duration = Duration::from_secs(1);

/// How far behind the outbox may fall before the ramp stops anyway: past it,
/// the next step would mostly measure the backlog.
const LAG_CEILING: Duration = Duration::from_secs(10);

/// The gateway's heartbeat interval in the benchmark (its default).
const HEARTBEAT: Duration = Duration::from_secs(10);
/// Presence's entry lifetime (its default).
const PRESENCE_TTL: Duration = Duration::from_secs(15);

async fn parts(
    cli: &Cli,
    cluster: &Cluster,
    fcm: &parley_testkit::fcm::MockFcm,
    plan: &Plan,
    base: &Baselines,
    rows: &mut Vec<Row>,
) -> Result<(), String> {
    let mut found = Findings::default();
    if cli.runs(PartSet::Groups) {
        group_parts(cluster, plan, base, rows, &mut found).await?;
    }
    if cli.runs(PartSet::Devices) {
        device_parts(cluster, fcm, plan, rows, &mut found).await?;
    }
    rows.extend(targets::rows(&found, &base.ramps, base.unary_p50_ms));
    if let Some(dir) = &cli.plots {
        let written = plot::write(dir, &found)?;
        progress(&format!("charts: {}", written.join(", ")));
    }
    Ok(())
}

/// The seed scenario and its overload, the busy group, the large and huge
/// groups.
async fn group_parts(
    cluster: &Cluster,
    plan: &Plan,
    base: &Baselines,
    rows: &mut Vec<Row>,
    found: &mut Findings,
) -> Result<(), String> {
    let (seed, ramp) = group_load(
        cluster,
        &Shape::seed(plan),
        &plan.seed_rates,
        plan,
        base,
        rows,
    )
    .await?;
    let rate = ramp
        .sustained()
        .map_or(plan.seed_rates[0] / 2.0, |s| s.target);
    found.seed = Some(ramp);
    overload("overload", cluster, &seed, rate, &plan.overload, rows).await?;
    seed.stop().await;
    // One busy group: its one sender's stream carries every message, so
    // past one send per round trip the stream's own queue is what sheds.
    let busy = Shape::busy();
    let mut busy_nominal = BUSY_NOMINAL;
    let busy = if plan.busy_rates.is_empty() {
        Load::start(
            cluster,
            busy.part,
            (busy.groups, busy.members, busy.online),
            (busy.per_connection, busy.ack_every),
            &progress,
        )
        .await?
    } else {
        let (load, ramp) = group_load(cluster, &busy, &plan.busy_rates, plan, base, rows).await?;
        if let Some(sustained) = ramp.sustained() {
            busy_nominal = sustained.target;
        }
        found.busy = Some(ramp);
        load
    };
    overload(
        "busy group",
        cluster,
        &busy,
        busy_nominal,
        &plan.overload,
        rows,
    )
    .await?;
    busy.stop().await;

    if !plan.large_rates.is_empty() {
        let (large, ramp) = group_load(
            cluster,
            &Shape::large(),
            &plan.large_rates,
            plan,
            base,
            rows,
        )
        .await?;
        found.large = Some(ramp);
        let gid = large.gids[0];
        progress("large: 50 more messages, then receipt reads");
        let msgids = parts::send_messages(cluster, "large0", gid, 50).await?;
        let reads = parts::receipt_reads(cluster, "large0", gid, &msgids).await?;
        large.stop().await;
        receipt_rows("large", "2,000", &reads, base, rows);
        found.large_receipts = Some(reads);
    }
    if plan.huge_members > 0 {
        progress(&format!("huge: a group of {} members", plan.huge_members));
        let gid = load::create_group(cluster, "huge0", plan.huge_members).await?;
        let msgids = parts::send_messages(cluster, "huge0", gid, 50).await?;
        let reads = parts::receipt_reads(cluster, "huge0", gid, &msgids).await?;
        receipt_rows("huge", &plan.huge_members.to_string(), &reads, base, rows);
    }

    Ok(())
}

/// Idle connections and pushes.
async fn device_parts(
    cluster: &Cluster,
    fcm: &parley_testkit::fcm::MockFcm,
    plan: &Plan,
    rows: &mut Vec<Row>,
    found: &mut Findings,
) -> Result<(), String> {
    cluster.quiesce(Duration::from_secs(600)).await?;
    let streams = plan.idle_streams;
    progress(&format!(
        "devices: a bare tonic bidi server with {streams} idle echo streams"
    ));
    let bare = devices::bare(streams, HEARTBEAT, plan.idle_for).await?;
    progress(&format!("devices: opening {streams} idle gateway streams"));
    // Browsers too: as many WebSockets, up to 10,000 (each is a connection of
    // its own, and so a file descriptor on both sides).
    let sockets = streams.min(10_000);
    let (idle, disconnect, per_socket) = devices::gateway(
        cluster,
        (streams, sockets),
        (HEARTBEAT, plan.idle_for, PRESENCE_TTL),
        &progress,
    )
    .await?;
    device_rows(&idle, &bare, &disconnect, rows);
    rows.push(
        Row::plain(
            "devices",
            &format!("gateway memory per idle WebSocket ({sockets}, settled)"),
            per_socket / 1024.0,
            "KiB",
        )
        .against("an idle gRPC stream", idle.bytes_per_stream / 1024.0),
    );
    found.devices = Some(targets::Devices {
        idle,
        bare,
        disconnect,
        presence_ttl: PRESENCE_TTL,
    });

    let part = "push";
    progress("push: bare HTTP/2 client against the FCM stand-in");
    let ceiling = parts::fcm_baseline(fcm, plan.baseline).await?;
    rows.push(Row::plain(
        "baseline",
        "bare HTTP/2 POSTs to the FCM stand-in (64 in flight)",
        ceiling,
        "req/s",
    ));
    let mut paces = Vec::new();
    for (throttled, label) in [
        (false, "pushes, all 200"),
        (true, "pushes, each first 429 Retry-After 1"),
    ] {
        progress(&format!(
            "push: {} offline members, {label}",
            plan.push_members
        ));
        let prefix = if throttled { "push429" } else { "push200" };
        cluster.quiesce(Duration::from_secs(600)).await?;
        let pushes = parts::pushes(cluster, fcm, prefix, plan.push_members, throttled).await?;
        rows.push(
            Row::plain(
                part,
                &format!("{label} ({}), end to end", pushes.pushes),
                pushes.per_second,
                "push/s",
            )
            .against("bare HTTP/2 POSTs", ceiling),
        );
        rows.push(
            Row::plain(
                part,
                &format!("{label}, first to last accepted"),
                pushes.pace,
                "push/s",
            )
            .against("bare HTTP/2 POSTs", ceiling),
        );
        for (process, cpu_us) in &pushes.cpu_us {
            rows.push(Row::plain(
                part,
                &format!("{label}, CPU per push: {process}"),
                *cpu_us,
                "µs",
            ));
        }
        if let Some((rows_written, statements)) = pushes.db {
            rows.push(Row::plain(
                part,
                &format!("{label}, MariaDB rows written per push"),
                rows_written,
                "rows",
            ));
            rows.push(Row::plain(
                part,
                &format!("{label}, MariaDB statements per push"),
                statements,
                "stmts",
            ));
        }
        paces.push(pushes.pace);
    }
    if let [all_200, throttled] = paces[..] {
        found.pushes = Some(targets::Pushes {
            bare_posts: ceiling,
            all_200,
            throttled,
        });
    }
    Ok(())
}

/// The devices part's figures, each beside the bare stream's.
fn device_rows(
    idle: &devices::IdleCost,
    bare: &devices::IdleCost,
    disconnect: &devices::Disconnect,
    rows: &mut Vec<Row>,
) {
    let part = "devices";
    let streams = idle.streams;
    rows.extend([
        Row::plain(
            part,
            &format!("gateway memory per idle stream ({streams}, settled)"),
            idle.bytes_per_stream / 1024.0,
            "KiB",
        )
        .against(BARE_BIDI, bare.bytes_per_stream / 1024.0),
        Row::plain(
            part,
            &format!(
                "gateway CPU per client heartbeat ({} answered, {} refused)",
                idle.heartbeats, idle.refused
            ),
            idle.cpu_us_per_heartbeat,
            "µs",
        )
        .against(
            &format!("{BARE_BIDI}: CPU per echo"),
            bare.cpu_us_per_heartbeat,
        ),
        Row::plain(
            part,
            &format!("all {streams} closed at once: presence has none after"),
            disconnect.took.map_or(f64::NAN, |t| t.as_secs_f64()),
            "s",
        )
        .against("the presence TTL", PRESENCE_TTL.as_secs_f64()),
        Row::plain(
            part,
            "presence calls for them: BatchOffline / Offline",
            disconnect.batch_calls as f64,
            &format!("batches / {} single", disconnect.single_calls),
        ),
        Row::plain(
            part,
            "gateway log lines meanwhile: ERROR / WARN",
            disconnect.log_errors as f64,
            &format!("errors / {} warnings", disconnect.log_warnings),
        ),
    ]);
}

fn receipt_rows(
    part: &str,
    size: &str,
    reads: &parts::Receipts,
    base: &Baselines,
    rows: &mut Vec<Row>,
) {
    let calls = [
        (
            format!("GetReceipts, 50 msgs, {size} members"),
            &reads.counts,
        ),
        ("ListReceiptMembers page of 200".to_owned(), &reads.page),
    ];
    for (call, latency) in calls {
        rows.push(
            Row::plain(part, &format!("{call} p50"), latency.p50_ms, "ms")
                .against(UNARY, base.unary_p50_ms),
        );
        rows.push(Row::plain(
            part,
            &format!("{call} p50/p95/p99/max"),
            latency.p99_ms,
            &format!("{} ms", latency.brief()),
        ));
    }
    rows.push(
        Row::plain(
            part,
            &format!("GetReceipts, 50 msgs, {size} members p99"),
            reads.counts.p99_ms,
            "ms",
        )
        .against(
            &format!(
                "its SQL straight to MariaDB (p50/p95/p99/max {} ms)",
                reads.raw_counts.brief()
            ),
            reads.raw_counts.p99_ms,
        ),
    );
}

async fn run(cli: &Cli) -> Result<Report, String> {
    let mut plan = if cli.full {
        Plan::full()
    } else {
        Plan::short()
    };
    if let Some(streams) = cli.idle_streams {
        plan.idle_streams = streams as usize;
    }
    if let Some(members) = cli.push_members {
        plan.push_members = members as usize;
    }
    cli.shape(&mut plan)?;
    let mut rows = Vec::new();
    progress("starting a MariaDB of the benchmark's own (private data directory and port)");
    let schema = if cli.statements {
        vec!["--performance-schema=ON".to_owned()]
    } else {
        Vec::new()
    };
    let mariadb = parley_testkit::OwnMariaDb::start(&schema).await;
    let base = baselines(&plan, &mariadb, cli.runs(PartSet::Groups), &mut rows).await?;
    progress(&format!(
        "starting the suite (release binaries, MariaDB, Redis); service logs in {}",
        cluster::log_dir()?.display()
    ));
    let fcm = parley_testkit::fcm::MockFcm::start().await;
    let cluster = Cluster::start(&parts::push_env(&fcm), &mariadb, cli.statements).await?;
    let outcome = parts(cli, &cluster, &fcm, &plan, &base, &mut rows).await;
    cluster.stop().await;
    outcome?;
    Ok(Report {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        machine: Machine::this(),
        rows,
    })
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // The bare stream server, as the benchmark's own child process.
    if std::env::args().nth(1).as_deref() == Some(streams::SERVE_BARE) {
        if let Err(error) = streams::serve_bare().await {
            eprintln!("parley-bench {}: {error}", streams::SERVE_BARE);
        }
        return std::process::ExitCode::FAILURE;
    }
    let cli = Cli::parse();
    let _ = started();
    match run(&cli).await {
        Ok(report) => {
            println!("{}", report.table());
            match serde_json::to_string_pretty(&report) {
                Ok(json) => match std::fs::write(&cli.json, json) {
                    Ok(()) => eprintln!("JSON written to {}", cli.json.display()),
                    Err(e) => eprintln!("cannot write {}: {e}", cli.json.display()),
                },
                Err(e) => eprintln!("cannot encode the result: {e}"),
            }
            std::process::ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("parley-bench: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
