//! The benchmark: Tiny SNS measured against this machine's own limits.
//!
//! `bench` starts its own systems from the binaries beside it (the release
//! build, normally) in a scratch directory, drives simulated users over gRPC
//! (no terminal clients), and prints one table. Every figure that could be
//! read as "fast" stands beside a baseline measured in the same run, so that
//! the figures hold on a noisy shared machine:
//!
//! | scenario | measures | baseline |
//! |---|---|---|
//! | `echo` | a bare tonic unary echo at C = 1, 8, 64 | (it is the baseline) |
//! | `post` | acknowledged posts/s and latency at C = 1, 8, 64, mirrored, with `SNS_FSYNC` on and off | `echo` at the same C, measured just before |
//! | `delivery` | post-to-screen latency at 1,000 posts/s, in-cluster and cross-cluster, 30 s cycle | the targets (20 ms, 100 ms) |
//! | `timeline-open` | time to the last 20 posts with 1,000,000 posts of history | the same with 100 |
//! | `failover` | SIGKILL of the master to the next acknowledged post; acknowledged posts lost | the failure window |
//! | `resync` | a deleted ~100 MB directory rebuilt from the peer | `cp -r` of it |
//! | `quiet-cycle` | synchronizer CPU in one quiet cycle on 1,000,000 posts | the same on 100 |
//! | `scale` | Login and Follow rates, masters' RSS, LIST and timeline open with 100,000 users and 1,000,000 follows; LIST at 1,000,000 users | the same with 100 users |
//! | `chaos` | randomized faults under posting load: every acknowledged post and follow exactly once where it belongs, replicas equal; recovery times | the failure window |
//!
//! `chaos` is a check, not a measurement: it is not part of the default run
//! (it runs for `--duration` seconds) and fails (exit 1) if anything was
//! lost, doubled, unexpected or divergent. `scale` is not part of it either:
//! it takes minutes.
//!
//! `--quick` runs each scenario briefly (CI does, so that the tool never
//! rots); its figures mean little. `--json` writes every figure and the
//! samples behind the charts; `--plot` draws the charts as PNG.
//!
//! Modules: [`system`] starts and kills processes, [`user`] is a simulated
//! user, [`echo`] the baseline server, [`load`], [`history`] and
//! [`failover`] the scenarios, [`chaos`] (with [`audit`], its check of the
//! files) the fault run, [`stats`] and [`report`] the figures, and
//! [`plot`] the charts.

/// The echo baseline's generated gRPC code.
pub mod proto {
    tonic::include_proto!("tinysns.bench");
}

pub mod audit;
pub mod chaos;
pub mod echo;
pub mod failover;
pub mod history;
pub mod load;
pub mod plot;
pub mod redis;
pub mod report;
pub mod scale;
pub mod stats;
pub mod system;
pub mod user;

use report::{Machine, Outcome, Report};
use std::path::PathBuf;
use std::time::{Duration, Instant};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Echo,
    Post,
    Delivery,
    TimelineOpen,
    Failover,
    Resync,
    QuietCycle,
    Chaos,
    Scale,
}

impl Scenario {
    pub const ALL: [Scenario; 7] = [
        Scenario::Echo,
        Scenario::Post,
        Scenario::Delivery,
        Scenario::TimelineOpen,
        Scenario::Failover,
        Scenario::Resync,
        Scenario::QuietCycle,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Echo => "echo",
            Scenario::Post => "post",
            Scenario::Delivery => "delivery",
            Scenario::TimelineOpen => "timeline-open",
            Scenario::Failover => "failover",
            Scenario::Resync => "resync",
            Scenario::QuietCycle => "quiet-cycle",
            Scenario::Chaos => "chaos",
            Scenario::Scale => "scale",
        }
    }

    /// Whether it can run against a system it did not start (it kills
    /// processes or writes a history first otherwise).
    fn can_attach(self) -> bool {
        matches!(self, Scenario::Echo | Scenario::Post | Scenario::Delivery)
    }
}

/// Tiny SNS benchmark: measures the system beside this machine's own limits.
#[derive(clap::Parser, Debug)]
#[command(
    name = "bench",
    version,
    disable_help_flag = true,
    after_help = "Scenarios (each beside a baseline measured in the same run):
  echo           a bare tonic unary echo at each --levels concurrency (the baseline)
  post           acknowledged posts/s and latency, mirrored, SNS_FSYNC on and off, beside echo
  delivery       post-to-screen latency at 1,000 posts/s, in-cluster and cross-cluster
  timeline-open  time to the last 20 posts with 1,000,000 posts of history, beside 100
  failover       SIGKILLs of a master under posting load (SNS_HEARTBEAT_MS=100): time to
                 the next acknowledged post, acknowledged posts missing
  resync         a deleted ~100 MB directory rebuilt from the peer, beside cp -r
  quiet-cycle    synchronizer CPU in one quiet 30 s cycle on 1,000,000 posts, beside 100
  chaos          (not in the default run) --posters across 3 clusters for --duration s
                 while seeded random faults (SIGKILL, SIGSTOP, restarts with and without
                 the directory) hit masters, slaves, synchronizers and the coordinator,
                 one at a time per cluster; then checks every file: acknowledged posts
                 and follows exactly once where they belong, replicas equal (exit 1 if not)
  scale          (not in the default run: minutes) 100,000 users and 1,000,000 follows
                 through the API: Login and Follow rates, masters' RSS growth, LIST at
                 100,000 and 1,000,000 users (SNS_MAX_USERS) with this project's client,
                 timeline open for a user who follows 1,000; each beside 100 users

Systems are started from the binaries beside this one (build them with
cargo build --release) in a scratch directory, with every process's log."
)]
pub struct Args {
    /// Scenarios to run (default: all but chaos), in this order.
    #[arg(value_enum)]
    pub scenarios: Vec<Scenario>,
    /// Run every scenario briefly: a check that each runs, not a measurement.
    #[arg(long)]
    pub quick: bool,
    /// Concurrency levels of echo and post.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64",
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub levels: Vec<u64>,
    /// Write every figure, and the samples behind the charts, as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Draw the charts as PNG files in this directory.
    #[arg(long, value_name = "DIR")]
    pub plot: Option<PathBuf>,
    /// Attach to the coordinator on this host instead of starting systems
    /// (then only echo, post and delivery run; users are created with ids
    /// far above the usual ones).
    #[arg(short = 'h', requires = "port")]
    pub host: Option<String>,
    /// Port of the coordinator to attach to.
    #[arg(short = 'k', requires = "host", value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,
    /// Where started systems keep their data and logs (default: a new
    /// directory in the system's temporary directory, removed at the end).
    #[arg(long, value_name = "DIR")]
    pub scratch: Option<PathBuf>,
    /// Keep the scratch directory (data and every process's log).
    #[arg(long)]
    pub keep: bool,
    /// chaos: how long faults are injected, in seconds (--quick: 20).
    #[arg(long, value_name = "S", default_value_t = 120,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub duration: u64,
    /// chaos: simulated users posting (spread over the 3 clusters).
    #[arg(long, value_name = "N", default_value_t = 6,
          value_parser = clap::value_parser!(u64).range(2..=300))]
    pub posters: u64,
    /// chaos: seed of the fault schedule (default: random; the report
    /// prints it so that a run can be repeated).
    #[arg(long, value_name = "X")]
    pub seed: Option<u64>,
    /// chaos: faults injected per minute (at most one at a time per
    /// cluster, plus one of the coordinator).
    #[arg(long, value_name = "N", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=6000))]
    pub rate: u64,
    /// chaos: each poster's pause between two operations, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 50,
          value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub interval_ms: u64,
    /// Internal: serve the echo baseline and print its port.
    #[arg(long, hide = true)]
    pub serve_echo: bool,
    /// Print help.
    #[arg(long = "help", action = clap::ArgAction::Help)]
    pub help: Option<bool>,
}

/// What every scenario needs to know about the run.
pub struct Ctx {
    pub quick: bool,
    pub scratch: PathBuf,
    /// The coordinator attached to, if any.
    pub attach: Option<String>,
    pub levels: Vec<usize>,
    pub chaos: ChaosArgs,
}

/// What `chaos` is told on the command line.
#[derive(Debug, Clone)]
pub struct ChaosArgs {
    pub duration: Duration,
    pub posters: u64,
    pub seed: u64,
    pub rate_per_min: u64,
    pub interval: Duration,
}

impl Ctx {
    pub fn warmup(&self) -> Duration {
        Duration::from_millis(if self.quick { 200 } else { 1000 })
    }

    pub fn measure(&self) -> Duration {
        Duration::from_millis(if self.quick { 500 } else { 5000 })
    }

    /// Added to every simulated user id: 0 on a system of our own; on an
    /// attached one, far above the ids people use (a multiple of 3, so that
    /// users keep the clusters they would have).
    pub fn user_base(&self) -> u64 {
        match self.attach {
            None => 0,
            Some(_) => 3_000_000 * rand::random_range(1..1000u64),
        }
    }

    pub fn coordinator(&self, sys: Option<&system::System>) -> String {
        match (sys, &self.attach) {
            (Some(s), _) => s.coordinator(),
            (None, Some(a)) => a.clone(),
            (None, None) => String::new(),
        }
    }
}

async fn run_one(s: Scenario, ctx: &Ctx) -> Result<Outcome, BoxError> {
    match s {
        Scenario::Echo => load::echo(ctx).await,
        Scenario::Post => load::post(ctx).await,
        Scenario::Delivery => load::delivery(ctx).await,
        Scenario::TimelineOpen => history::timeline_open(ctx).await,
        Scenario::Failover => failover::failover(ctx).await,
        Scenario::Resync => history::resync(ctx).await,
        Scenario::QuietCycle => history::quiet_cycle(ctx).await,
        Scenario::Chaos => chaos::chaos(ctx).await,
        Scenario::Scale => scale::scale(ctx).await,
    }
}

/// Runs the scenarios; returns the exit status (1 if any failed to run).
pub async fn run(args: Args) -> i32 {
    let scenarios = if args.scenarios.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        args.scenarios.clone()
    };
    let attach = args
        .host
        .as_ref()
        .zip(args.port)
        .map(|(h, p)| format!("{h}:{p}"));
    let (scratch, ours) = match &args.scratch {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("tiny-sns-bench-{}", std::process::id())),
            true,
        ),
    };
    if let Err(e) = std::fs::create_dir_all(&scratch) {
        eprintln!("bench: cannot create {}: {e}", scratch.display());
        return 1;
    }
    let ctx = Ctx {
        quick: args.quick,
        scratch: scratch.clone(),
        attach,
        levels: args.levels.iter().map(|&l| l as usize).collect(),
        chaos: ChaosArgs {
            duration: Duration::from_secs(if args.quick { 20 } else { args.duration }),
            posters: args.posters,
            // Small enough to read, type and print exactly.
            seed: args
                .seed
                .unwrap_or_else(|| rand::random_range(1..1_000_000)),
            rate_per_min: args.rate,
            interval: Duration::from_millis(args.interval_ms),
        },
    };
    let mut outcomes = Vec::new();
    for s in scenarios {
        if ctx.attach.is_some() && !s.can_attach() {
            eprintln!(
                "bench: {}: skipped (it needs a system of its own)",
                s.name()
            );
            continue;
        }
        eprintln!("bench: {} ...", s.name());
        let started = Instant::now();
        let mut outcome = match run_one(s, &ctx).await {
            Ok(o) => o,
            Err(e) => {
                let mut o = Outcome::new(s.name());
                o.error = Some(e.to_string());
                o
            }
        };
        outcome.seconds = started.elapsed().as_secs_f64();
        match &outcome.error {
            Some(e) => eprintln!(
                "bench: {} FAILED after {:.1} s: {e}",
                s.name(),
                outcome.seconds
            ),
            None => eprintln!("bench: {} done in {:.1} s", s.name(), outcome.seconds),
        }
        outcomes.push(outcome);
    }
    let report = Report {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        machine: Machine::read(),
        quick: args.quick,
        outcomes,
    };
    let m = &report.machine;
    println!(
        "Tiny SNS bench{} on {} cores, {} GiB ({})\n",
        if args.quick {
            " (quick: figures mean little)"
        } else {
            ""
        },
        m.cores,
        m.memory_gib,
        m.cpu
    );
    print!("{}", report.table());
    let mut status = i32::from(report.outcomes.iter().any(|o| o.error.is_some()));
    if let Some(path) = &args.json
        && let Err(e) = report.write_json(path)
    {
        eprintln!("bench: {e}");
        status = 1;
    }
    if let Some(dir) = &args.plot {
        match report.plot(dir) {
            Ok(files) => eprintln!("bench: {} charts in {}", files.len(), dir.display()),
            Err(e) => {
                eprintln!("bench: cannot draw the charts: {e}");
                status = 1;
            }
        }
    }
    if ours && !args.keep {
        let _ = std::fs::remove_dir_all(&scratch);
    } else {
        eprintln!("bench: data and logs kept in {}", scratch.display());
    }
    status
}
