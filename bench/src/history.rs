//! The scenarios on a long history: `timeline-open`, `quiet-cycle` and
//! `resync`.
//!
//! A history of a million posts would take minutes to post through the
//! system, so the bench writes it the way a long-running system would have
//! left it: the files of SPEC §3 and the synchronizers' cursors (all sent),
//! in both servers of each cluster, before it starts the processes. Users 1
//! and 4 (cluster 1) follow 5 and 2 (cluster 2); 5 has posted 100 times and
//! 2 as often as the history is long.

use super::Ctx;
use super::report::{Chart, Outcome, Row};
use super::stats::Samples;
use super::system::{Settings, System, in_service_slave};
use super::user::User;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};
use tinysns::config::{cluster_dir, server_dir};
use tinysns::storage::{FollowEvent, Post};
use tinysns::timefmt::{self, Nanos};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The reader with a short history and the one with a long one.
pub const SHORT_READER: u64 = 1;
pub const LONG_READER: u64 = 4;
const SHORT_AUTHOR: u64 = 5;
const LONG_AUTHOR: u64 = 2;
pub const SHORT_POSTS: u64 = 100;

/// The long history's length.
pub fn long_posts(ctx: &Ctx) -> u64 {
    if ctx.quick { 10_000 } else { 1_000_000 }
}

fn posts_of(author: u64, n: u64, t0: Nanos) -> Vec<u8> {
    let mut out = Vec::with_capacity(n as usize * 96);
    for i in 0..n {
        let p = Post {
            author,
            time: t0 + i as i64 * 1_000_000,
            text: format!("post {i} of {author}, one line of history like any other"),
        };
        out.extend_from_slice(p.encode().as_bytes());
    }
    out
}

/// The files of one cluster's server directories: names and contents.
type Files<'a> = (u32, Vec<(String, &'a [u8])>);

/// Writes the history of `long` posts under `data` (see the module doc).
pub fn write_history(data: &Path, long: u64) -> std::io::Result<()> {
    // Two hours ago, a millisecond apart: all of it in the past.
    let t0 = timefmt::now() - 2 * 3600 * 1_000_000_000;
    let follow_at = t0 - 1_000_000_000;
    let follow = |user| {
        FollowEvent {
            user,
            follow: true,
            time: follow_at,
        }
        .encode()
    };
    let long_posts = posts_of(LONG_AUTHOR, long, t0);
    let short_posts = posts_of(SHORT_AUTHOR, SHORT_POSTS, t0);
    let last = |n: u64| t0 + (n as i64 - 1) * 1_000_000;
    let users: &[u8] = b"1\n4\n2\n5\n";
    let (f_short, f_long) = (follow(SHORT_AUTHOR), follow(LONG_AUTHOR));
    let (r_short, r_long) = (follow(SHORT_READER), follow(LONG_READER));
    let files: [Files; 3] = [
        (
            1,
            vec![
                ("all_users.txt".into(), users),
                (format!("u{SHORT_READER}_following.txt"), f_short.as_bytes()),
                (format!("u{LONG_READER}_following.txt"), f_long.as_bytes()),
                (format!("u{SHORT_READER}_timeline.txt"), &short_posts),
                (format!("u{LONG_READER}_timeline.txt"), &long_posts),
            ],
        ),
        (
            2,
            vec![
                ("all_users.txt".into(), b"2\n5\n1\n4\n"),
                (format!("u{SHORT_AUTHOR}_followers.txt"), r_short.as_bytes()),
                (format!("u{LONG_AUTHOR}_followers.txt"), r_long.as_bytes()),
                (format!("u{SHORT_AUTHOR}_posts.txt"), &short_posts),
                (format!("u{LONG_AUTHOR}_posts.txt"), &long_posts),
            ],
        ),
        (3, vec![("all_users.txt".into(), users)]),
    ];
    for (c, list) in &files {
        for s in 1..=2 {
            let dir = server_dir(data, *c, s);
            std::fs::create_dir_all(&dir)?;
            for (name, bytes) in list {
                std::fs::File::create(dir.join(name))?.write_all(bytes)?;
            }
        }
    }
    // The synchronizers' cursors: everything above has been sent.
    let positions = [
        (
            1,
            format!(
                "users 2 2\nusers 3 2\nfollowing {SHORT_READER} 2 {follow_at}\nfollowing {LONG_READER} 2 {follow_at}\n"
            ),
        ),
        (
            2,
            format!(
                "users 1 2\nusers 3 2\nposts {SHORT_AUTHOR} 1 {} {follow_at}\nposts {LONG_AUTHOR} 1 {} {follow_at}\n",
                last(SHORT_POSTS),
                last(long)
            ),
        ),
    ];
    for (c, text) in positions {
        let dir = cluster_dir(data, c).join("synchronizer");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("positions.txt"), text)?;
    }
    Ok(())
}

/// Starts a system on a written history.
async fn start(
    ctx: &Ctx,
    name: &str,
    long: u64,
    heartbeat_ms: u64,
    sync_ms: u64,
) -> Result<System, BoxError> {
    let root = ctx.scratch.join(name);
    write_history(&root.join("data"), long)?;
    System::start(
        &root,
        Settings {
            clusters: 3,
            heartbeat_ms,
            sync_interval_ms: sync_ms,
            fsync: true,
            lab: None,
        },
    )
    .await
}

/// Opens `user`'s timeline and waits for its first 20 posts.
async fn open_once(user: &mut User) -> Result<Duration, BoxError> {
    user.login().await?;
    let start = Instant::now();
    let mut tl = user.timeline().await?;
    let mut n = 0;
    while n < 20 {
        if tl.next().await?.ack_id == 0 {
            n += 1;
        }
    }
    Ok(start.elapsed())
}

pub async fn timeline_open(ctx: &Ctx) -> Result<Outcome, BoxError> {
    let mut out = Outcome::new("timeline-open");
    let long = long_posts(ctx);
    let sys = start(ctx, "timeline-open", long, 1000, 30_000).await?;
    let coord = sys.coordinator();
    let mut short = User::new(&coord, SHORT_READER)?;
    let mut longer = User::new(&coord, LONG_READER)?;
    let reps = if ctx.quick { 5 } else { 200 };
    let (mut a, mut b) = (Samples::default(), Samples::default());
    // Alternating, so that both see the same machine.
    for _ in 0..reps {
        a.push(open_once(&mut short).await?);
        b.push(open_once(&mut longer).await?);
    }
    let (sa, sb) = (a.summary(), b.summary());
    out.summaries.push((format!("{SHORT_POSTS} posts"), sa));
    out.summaries.push((format!("{long} posts"), sb));
    out.rows.push(Row::new(
        format!("{SHORT_POSTS}-post user p50"),
        sa.p50,
        "ms",
    ));
    out.rows.push(
        Row::new(format!("{long}-post user p50"), sb.p50, "ms")
            .beside(format!("{SHORT_POSTS}-post user"), sa.p50)
            .target("<= 2x", sb.p50 <= 2.0 * sa.p50),
    );
    out.rows.push(
        Row::new(format!("{long}-post user p99"), sb.p99, "ms")
            .beside(format!("{SHORT_POSTS}-post user"), sa.p99),
    );
    out.notes.push(format!(
        "time from opening TIMELINE to the 20th post, {reps} times each, alternating"
    ));
    out.charts.push(Chart::Cdf {
        file: "timeline_open.png".into(),
        title: "timeline-open: time to the last 20 posts".into(),
        x_label: "latency (ms)".into(),
        series: vec![
            (format!("{SHORT_POSTS} posts of history"), a.0),
            (format!("{long} posts of history"), b.0),
        ],
    });
    Ok(out)
}

fn synchronizers_cpu(sys: &System) -> Result<Duration, BoxError> {
    let mut total = Duration::ZERO;
    for c in 1..=sys.settings.clusters {
        let pid = sys
            .pid(&format!("synchronizer_{c}"))
            .ok_or("no synchronizer")?;
        total += super::system::cpu_time(pid).ok_or("cannot read a synchronizer's CPU time")?;
    }
    Ok(total)
}

pub async fn quiet_cycle(ctx: &Ctx) -> Result<Outcome, BoxError> {
    let mut out = Outcome::new("quiet-cycle");
    let long = long_posts(ctx);
    // The defaults (30 s cycle, 10 s heartbeat): the window then holds one
    // full cycle and three heartbeats of each synchronizer.
    let (interval, heartbeat) = if ctx.quick {
        (1_000, 1_000)
    } else {
        (
            tinysns::config::DEFAULT_SYNC_INTERVAL_MS,
            tinysns::config::DEFAULT_HEARTBEAT_MS,
        )
    };
    // Two systems side by side, measured over the same window: the long
    // history and the short one.
    let big = start(ctx, "quiet-cycle-long", long, heartbeat, interval).await?;
    let small = start(ctx, "quiet-cycle-short", SHORT_POSTS, heartbeat, interval).await?;
    // Start-up work (reading the topology, a first cycle) is not quiet:
    // wait for a window in which neither system's synchronizers work.
    let settle_deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (b0, s0) = (synchronizers_cpu(&big)?, synchronizers_cpu(&small)?);
        tokio::time::sleep(Duration::from_millis(interval.min(2_000))).await;
        let (b1, s1) = (synchronizers_cpu(&big)?, synchronizers_cpu(&small)?);
        let quiet = Duration::from_millis(20);
        if (b1 - b0 < quiet && s1 - s0 < quiet) || Instant::now() > settle_deadline {
            break;
        }
    }
    let (b0, s0) = (synchronizers_cpu(&big)?, synchronizers_cpu(&small)?);
    // One whole cycle period: it holds exactly one full cycle, plus the
    // heartbeats of that time.
    tokio::time::sleep(Duration::from_millis(interval)).await;
    let (b1, s1) = (synchronizers_cpu(&big)?, synchronizers_cpu(&small)?);
    let (b, s) = ((b1 - b0).as_secs_f64() * 1e3, (s1 - s0).as_secs_f64() * 1e3);
    out.rows.push(
        Row::new(format!("CPU, 3 synchronizers, {long} posts"), b, "ms")
            .beside(format!("{SHORT_POSTS} posts"), s)
            .target("< 50 ms", b < 50.0),
    );
    out.notes.push(format!(
        "CPU time of all three synchronizers over one {} s cycle period with no traffic: one full cycle and the heartbeats ({} s)",
        interval / 1000,
        heartbeat / 1000
    ));
    out.charts.push(Chart::Bars {
        file: "quiet_cycle.png".into(),
        title: "quiet-cycle: synchronizer CPU per quiet cycle".into(),
        y_label: "CPU ms".into(),
        bars: vec![
            (format!("{SHORT_POSTS} posts"), s),
            (format!("{long} posts"), b),
        ],
    });
    Ok(out)
}

fn dir_bytes(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// Writes every dirty page of the machine to disk (`sync`).
fn flush_everything() {
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() }
}

pub async fn resync(ctx: &Ctx) -> Result<Outcome, BoxError> {
    let mut out = Outcome::new("resync");
    let long = long_posts(ctx);
    let mut sys = start(ctx, "resync", long, 1000, 30_000).await?;
    let name = System::server_name(1, 2);
    sys.kill(&name)?;
    sys.wait_for(
        "the coordinator to see the slave gone",
        Duration::from_secs(30),
        |t| t.is_some_and(|t| in_service_slave(t, 1).is_none()),
    )
    .await?;
    let dir = sys.server_dir(1, 2);
    let bytes = dir_bytes(&dir);
    // The history was written a moment ago and is still dirty in the page
    // cache: written back now, as a master's files long are when its slave
    // comes back, so that the slave's final flush waits for its own pages
    // and not for the kernel writing out the master's (on one machine's
    // disk, 80 of its 160 ms here).
    flush_everything();
    let copy = ctx.scratch.join("resync-cp");
    let started = Instant::now();
    let status = std::process::Command::new("cp")
        .arg("-r")
        .arg(&dir)
        .arg(&copy)
        .status()?;
    let cp = started.elapsed();
    if !status.success() {
        return Err(format!("cp -r failed: {status}").into());
    }
    // The same copy made durable, as a resync must be before the slave is
    // in service: the disk's floor for it, beside the target's baseline.
    flush_everything();
    let cp_durable = started.elapsed();
    std::fs::remove_dir_all(&copy)?;
    std::fs::remove_dir_all(&dir)?;
    let log = sys.log_path(&name);
    let log_start = std::fs::metadata(&log).map_or(0, |m| m.len());
    let master = sys
        .pid(&System::server_name(1, 1))
        .ok_or("no master process")?;
    let master_cpu = super::system::cpu_time(master);
    let started = Instant::now();
    sys.start_server(1, 2)?;
    loop {
        let text = std::fs::read(&log).unwrap_or_default();
        let new =
            String::from_utf8_lossy(&text[(log_start as usize).min(text.len())..]).to_string();
        if new.contains("in sync with master") {
            break;
        }
        if started.elapsed() > Duration::from_secs(300) {
            return Err(format!("the server did not resync; see {}", log.display()).into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let resync = started.elapsed();
    // Beside the wall time, which the other agents on this machine make
    // noisy: the CPU both servers spent on it (the slave's includes its
    // start-up).
    let slave_cpu = sys.pid(&name).and_then(super::system::cpu_time);
    let cpu = match (master_cpu, super::system::cpu_time(master), slave_cpu) {
        (Some(m0), Some(m1), Some(s)) => Some((m1.saturating_sub(m0), s)),
        _ => None,
    };
    sys.wait_ready(Duration::from_secs(30)).await?;
    let rebuilt = dir_bytes(&sys.server_dir(1, 2));
    let mb = bytes as f64 / 1e6;
    let (r, c) = (resync.as_secs_f64() * 1e3, cp.as_secs_f64() * 1e3);
    out.rows.push(
        Row::new(format!("restart to in service, {mb:.0} MB"), r, "ms")
            .beside("cp -r", c)
            .target("<= 3x cp -r", r <= 3.0 * c),
    );
    let cd = cp_durable.as_secs_f64() * 1e3;
    out.rows.push(
        Row::new(format!("restart to in service, {mb:.0} MB"), r, "ms")
            .beside("cp -r, then sync", cd),
    );
    if let Some((m, s)) = cpu {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        out.rows
            .push(Row::new("CPU, master and slave", ms(m + s), "ms"));
        out.notes.push(format!(
            "CPU: {:.0} ms in the master, {:.0} ms in the slave (from its start)",
            ms(m),
            ms(s)
        ));
    }
    out.rows
        .push(Row::new("rebuilt directory", rebuilt as f64 / 1e6, "MB"));
    out.notes.push(
        "the slave's directory deleted while it is down; timed from its start to \"in sync\" (snapshot written and flushed, then joined); cp -r of the same directory in the same run, without a flush, and the same cp -r followed by sync (the copy made durable, as the resync is); all after a sync (nothing dirty on the machine)".into(),
    );
    out.charts.push(Chart::Bars {
        file: "resync.png".into(),
        title: format!("resync of a {mb:.0} MB directory"),
        y_label: "ms".into(),
        bars: vec![
            ("cp -r".into(), c),
            ("cp -r + sync".into(), cd),
            ("resync".into(), r),
        ],
    });
    Ok(out)
}
