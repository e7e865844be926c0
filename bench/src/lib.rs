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
//!
//! `--quick` runs each scenario briefly (CI does, so that the tool never
//! rots); its figures mean little. `--json` writes every figure and the
//! samples behind the charts; `--plot` draws the charts as PNG.
//!
//! Modules: [`system`] starts and kills processes, [`user`] is a simulated
//! user, [`echo`] the baseline server, [`load`], [`history`] and
//! [`failover`] the scenarios, [`stats`] and [`report`] the figures, and
//! [`plot`] the charts.

/// The echo baseline's generated gRPC code.
pub mod proto {
    tonic::include_proto!("tinysns.bench");
}

pub mod echo;
pub mod failover;
pub mod history;
pub mod load;
pub mod plot;
pub mod report;
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

Systems are started from the binaries beside this one (build them with
cargo build --release) in a scratch directory, with every process's log."
)]
pub struct Args {
    /// Scenarios to run (default: all), in this order.
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
