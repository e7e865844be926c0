//! The throughput and latency scenarios: `echo` (the baseline), `post` and
//! `delivery`.

use super::Ctx;
use super::echo::EchoProcess;
use super::report::{Chart, Outcome, Row};
use super::stats::Samples;
use super::system::{Settings, System};
use super::user::{Timeline, User};
use std::future::Future;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tinysns::proto::csce438::Message;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Bytes of text in every post (and echo): a typical one-line post.
const PAYLOAD: usize = 64;

fn text(user: u64, n: u64) -> String {
    let mut t = format!("post {n} by {user} ");
    while t.len() < PAYLOAD {
        t.push('x');
    }
    t
}

/// Runs `op` in a loop on every worker at once (each waits for its answer
/// before the next call), and measures the calls that start after `warmup`
/// and end within the next `measure`. Returns calls per second and their
/// latencies.
async fn closed_loop<W, F, Fut>(
    workers: Vec<W>,
    warmup: Duration,
    measure: Duration,
    op: F,
) -> Result<(f64, Samples), BoxError>
where
    W: Send + 'static,
    F: Fn(W, u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = (W, Result<(), BoxError>)> + Send,
{
    let start = Instant::now() + warmup;
    let end = start + measure;
    let mut tasks = Vec::new();
    for mut w in workers {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut samples = Samples::default();
            let mut n = 0u64;
            loop {
                let t = Instant::now();
                if t >= end {
                    return Ok::<_, BoxError>(samples);
                }
                n += 1;
                let (back, result) = op(w, n).await;
                w = back;
                result?;
                if t >= start && Instant::now() <= end {
                    samples.push(t.elapsed());
                }
            }
        }));
    }
    let mut all = Samples::default();
    for t in tasks {
        all.extend(t.await??);
    }
    let rate = all.0.len() as f64 / measure.as_secs_f64();
    Ok((rate, all))
}

/// The echo at concurrency `c`: one connection per caller.
/// The median time of appending a short record to a file and flushing it
/// (`fdatasync`), on the disk the systems use, in ms.
fn fdatasync_p50(scratch: &std::path::Path) -> Result<f64, BoxError> {
    use std::io::Write;
    std::fs::create_dir_all(scratch)?;
    let path = scratch.join("fdatasync-probe");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?;
    let mut samples = Samples::default();
    for _ in 0..300 {
        let started = Instant::now();
        f.write_all(b"P 1 1700000000000000000 1 a post of a typical length\n")?;
        f.sync_data()?;
        samples.push(started.elapsed());
    }
    drop(f);
    std::fs::remove_file(&path)?;
    Ok(samples.summary().p50)
}

async fn echo_at(echo: &EchoProcess, c: usize, ctx: &Ctx) -> Result<(f64, Samples), BoxError> {
    let mut clients = Vec::new();
    for _ in 0..c {
        clients.push(echo.client()?);
    }
    closed_loop(
        clients,
        ctx.warmup(),
        ctx.measure(),
        |mut client, n| async move {
            let msg = Message {
                username: "1".into(),
                msg: text(1, n),
                post_id: n,
                ..Default::default()
            };
            let r = client.echo(msg).await.map(drop).map_err(BoxError::from);
            (client, r)
        },
    )
    .await
}

pub async fn echo(ctx: &Ctx) -> Result<Outcome, BoxError> {
    let mut out = Outcome::new("echo");
    let echo = EchoProcess::start()?;
    let mut series = Vec::new();
    let mut bars = Vec::new();
    for c in ctx.levels.clone() {
        let (rate, samples) = echo_at(&echo, c, ctx).await?;
        out.rows
            .push(Row::new(format!("C={c} calls/s"), rate, "/s"));
        out.latency(&format!("C={c} latency"), samples.summary());
        series.push((format!("C={c}"), samples.thinned(5_000)));
        bars.push((format!("C={c}"), rate));
    }
    rate_charts(
        &mut out,
        "echo",
        "echo: unary gRPC round trip on loopback",
        "echo: calls per second",
        series,
        bars,
    );
    Ok(out)
}

/// The two charts of a rate scenario: `<name>_latency.png` (latency
/// distributions) and `<name>_rate.png` (rates as bars).
fn rate_charts(
    out: &mut Outcome,
    name: &str,
    latency_title: &str,
    rate_title: &str,
    series: Vec<(String, Vec<f64>)>,
    bars: Vec<(String, f64)>,
) {
    out.charts.push(Chart::Cdf {
        file: format!("{name}_latency.png"),
        title: latency_title.into(),
        x_label: "latency (ms)".into(),
        series,
    });
    out.charts.push(Chart::Bars {
        file: format!("{name}_rate.png"),
        title: rate_title.into(),
        y_label: "per second".into(),
        bars,
    });
}

/// Logs in every user (creating it).
async fn login_all(coord: &str, ids: impl IntoIterator<Item = u64>) -> Result<Vec<User>, BoxError> {
    let mut users = Vec::new();
    for id in ids {
        let mut u = User::new(coord, id)?;
        u.login().await?;
        users.push(u);
    }
    Ok(users)
}

/// A system for the load scenarios, or the one attached to.
pub async fn system_for(ctx: &Ctx, name: &str, fsync: bool) -> Result<Option<System>, BoxError> {
    if ctx.attach.is_some() {
        return Ok(None);
    }
    let sys = System::start(
        &ctx.scratch.join(name),
        Settings {
            clusters: 3,
            heartbeat_ms: 1000,
            sync_interval_ms: 30_000,
            fsync,
            lab: None,
        },
    )
    .await?;
    Ok(Some(sys))
}

/// The Redis pair of `post`'s baseline row, or why there is none.
async fn redis_pair(ctx: &Ctx) -> Result<super::redis::Pair, String> {
    if !super::redis::installed() {
        return Err(super::redis::NOT_INSTALLED.into());
    }
    super::redis::Pair::start(&ctx.scratch.join("redis"))
        .await
        .map_err(|e| format!("redis: not measured ({e})"))
}

/// LPUSH and `WAIT 1 0` at concurrency `c`, one connection per worker.
async fn redis_at(
    pair: &super::redis::Pair,
    c: usize,
    ctx: &Ctx,
) -> Result<(f64, Samples), BoxError> {
    let mut conns = Vec::new();
    for i in 0..c {
        conns.push((i as u64, super::redis::Resp::connect(pair.port).await?));
    }
    closed_loop(
        conns,
        ctx.warmup(),
        ctx.measure(),
        |(i, mut conn): (u64, super::redis::Resp), n| async move {
            let key = format!("u{i}_timeline");
            let r = conn
                .push_and_wait(key.as_bytes(), text(i, n).as_bytes())
                .await;
            ((i, conn), r)
        },
    )
    .await
}

pub async fn post(ctx: &Ctx) -> Result<Outcome, BoxError> {
    let mut out = Outcome::new("post");
    let echo = EchoProcess::start()?;
    let redis = redis_pair(ctx).await;
    if let Err(why) = &redis {
        out.notes.push(why.clone());
    }
    let mut series = Vec::new();
    let mut bars = Vec::new();
    let settings: &[bool] = if ctx.attach.is_some() {
        &[true]
    } else {
        &[true, false]
    };
    for &fsync in settings {
        let sys = system_for(ctx, if fsync { "post" } else { "post-nofsync" }, fsync).await?;
        let coord = ctx.coordinator(sys.as_ref());
        let label = if ctx.attach.is_some() {
            "attached"
        } else if fsync {
            "fsync on"
        } else {
            "fsync off"
        };
        // Each poster has a follower in its own cluster, so that a post is
        // also written to a timeline, as most posts are.
        let base = ctx.user_base();
        let max = ctx.levels.iter().copied().max().unwrap_or(1) as u64;
        let posters: Vec<u64> = (1..=max).map(|i| base + i).collect();
        let mut poster_users = login_all(&coord, posters.iter().copied()).await?;
        // Each follows right after its login: logged in all first, the
        // first ones' sessions (a lease of two heartbeats, 2 s) ran out
        // before their follows when four quick runs shared two cores.
        for p in &posters {
            let mut u = User::new(&coord, p + 3 * max)?;
            u.login().await?;
            u.follow(*p).await?;
        }
        for c in ctx.levels.clone() {
            let (echo_rate, echo_samples) = echo_at(&echo, c, ctx).await?;
            let mut timelines = Vec::new();
            for u in poster_users.iter_mut().take(c) {
                u.login().await?;
                timelines.push((u.id, u.timeline().await?));
            }
            let cpu_before = sys.as_ref().map(|s| (s.cpu(), super::system::own_cpu()));
            let (rate, samples) = closed_loop(
                timelines,
                ctx.warmup(),
                ctx.measure(),
                |(id, mut tl): (u64, Timeline), n| async move {
                    let r = tl.post_acked(text(id, n), rand::random::<u64>() | 1).await;
                    ((id, tl), r)
                },
            )
            .await?;
            if let (Some(sys), Some((before, own))) = (sys.as_ref(), cpu_before) {
                let posts = samples.0.len().max(1) as f64;
                out.notes.push(format!(
                    "C={c} {label}: CPU per post: {}",
                    cpu_per_post(sys, &before, own, posts)
                ));
            }
            let mut row = Row::new(format!("C={c} posts/s ({label})"), rate, "/s")
                .beside(format!("echo C={c}"), echo_rate);
            if c == 64 && fsync {
                row = row.target(">= 0.5x echo", rate >= 0.5 * echo_rate);
            }
            out.rows.push(row);
            let s = samples.summary();
            out.summaries.push((format!("C={c} {label}"), s));
            let mut p50 = Row::new(format!("C={c} p50 ({label})"), s.p50, "ms");
            if c == 1 && fsync {
                // The floor of a durable, mirrored post: one round trip and
                // one flush, with 0.2 ms for the hop to the slave and the rest.
                let sync = fdatasync_p50(&ctx.scratch)?;
                let floor = echo_samples.summary().p50 + sync + 0.2;
                out.notes.push(format!(
                    "C=1: echo p50 {:.2} ms + fdatasync p50 {sync:.2} ms (this disk, this run) + 0.2 ms = {floor:.2} ms",
                    echo_samples.summary().p50
                ));
                p50 = p50
                    .beside("echo p50 + fdatasync p50 + 0.2 ms", floor)
                    .target("<= echo + fdatasync + 0.2 ms", s.p50 <= floor);
            }
            out.rows.push(p50);
            out.rows
                .push(Row::new(format!("C={c} p99 ({label})"), s.p99, "ms"));
            out.rows
                .push(Row::new(format!("C={c} p99.9 ({label})"), s.p999, "ms"));
            if let (true, Ok(pair)) = (fsync, &redis) {
                let (r_rate, r_samples) = redis_at(pair, c, ctx).await?;
                let r = r_samples.summary();
                out.rows.push(
                    Row::new(format!("C={c} redis LPUSH+WAIT/s"), r_rate, "/s")
                        .beside(format!("post C={c} ({label})"), rate),
                );
                out.rows.push(
                    Row::new(format!("C={c} redis p50"), r.p50, "ms")
                        .beside(format!("post C={c} ({label})"), s.p50),
                );
                out.summaries.push((format!("C={c} redis"), r));
                series.push((format!("C={c} redis"), r_samples.thinned(5_000)));
                bars.push((format!("redis C={c}"), r_rate));
            }
            series.push((format!("C={c} {label}"), samples.thinned(5_000)));
            bars.push((format!("echo C={c}"), echo_rate));
            bars.push((format!("post C={c} {label}"), rate));
        }
    }
    rate_charts(
        &mut out,
        "post",
        "post: acknowledgement latency (mirrored)",
        "post: acknowledged posts/s beside echo calls/s",
        series,
        bars,
    );
    out.notes.push(
        "each poster has one follower in its cluster; echo is measured right before each post level"
            .into(),
    );
    if redis.is_ok() {
        out.notes.push(
            "redis: redis-server master and replica (--appendonly yes --appendfsync always --save \"\"), LPUSH then WAIT 1 0 per write (sent together), one connection per worker, right after the fsync-on post level"
                .into(),
        );
    }
    Ok(out)
}

/// Where the CPU went while posting, per post, grouped by role (roles by
/// the table: masters and slaves may have swapped).
fn cpu_per_post(
    sys: &System,
    before: &std::collections::HashMap<String, Duration>,
    own_before: Option<Duration>,
    posts: f64,
) -> String {
    let after = sys.cpu();
    let mut groups: std::collections::BTreeMap<&str, f64> = Default::default();
    for (name, t) in &after {
        let used = t.saturating_sub(before.get(name).copied().unwrap_or_default());
        let group = if name.starts_with("server") {
            "servers"
        } else if name.starts_with("synchronizer") {
            "synchronizers"
        } else {
            "coordinator"
        };
        *groups.entry(group).or_default() += used.as_secs_f64();
    }
    if let (Some(b), Some(a)) = (own_before, super::system::own_cpu()) {
        groups.insert("bench", a.saturating_sub(b).as_secs_f64());
    }
    groups
        .iter()
        .map(|(g, s)| format!("{g} {:.0} us", s / posts * 1e6))
        .collect::<Vec<_>>()
        .join(", ")
}

fn unix_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

pub async fn delivery(ctx: &Ctx) -> Result<Outcome, BoxError> {
    let mut out = Outcome::new("delivery");
    let sys = system_for(ctx, "delivery", true).await?;
    let coord = ctx.coordinator(sys.as_ref());
    let base = ctx.user_base();
    let (n_posters, rate, seconds) = if ctx.quick {
        (6u64, 100.0, 1.0)
    } else {
        (30u64, 1000.0, 10.0)
    };
    // Poster p (cluster k) has a follower in cluster k (p + 3n) and one in
    // the next (p + 6n + 1).
    let posters: Vec<u64> = (1..=n_posters).map(|i| base + i).collect();
    let mut followers = Vec::new();
    for &p in &posters {
        followers.push((p + 3 * n_posters, p, true));
        followers.push((p + 6 * n_posters + 1, p, false));
    }
    let mut poster_users = login_all(&coord, posters.iter().copied()).await?;
    let mut streams = Vec::new();
    for (f, p, local) in &followers {
        let mut u = User::new(&coord, *f)?;
        u.login().await?;
        u.follow_remote(*p).await?;
        streams.push((u.timeline().await?, *local));
    }
    let mut poster_tls = Vec::new();
    for u in &mut poster_users {
        u.login().await?; // the session may have run out meanwhile
        poster_tls.push(u.timeline().await?);
    }
    // Until every follower has seen a post of its author, the follows are
    // still on their way (across clusters, through the synchronizers).
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<(bool, String, i128)>();
    for (mut tl, local) in streams {
        let seen = seen_tx.clone();
        let mut done = done_rx.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    m = tl.next() => match m {
                        Ok(m) if m.ack_id == 0 => {
                            let _ = seen.send((local, m.msg, unix_ns()));
                        }
                        Ok(_) => {}
                        Err(_) => return,
                    },
                    _ = done.changed() => return,
                }
            }
        });
    }
    drop(seen_tx);
    let warm_deadline = Instant::now() + Duration::from_secs(90);
    let mut warm: std::collections::HashSet<(bool, String)> = Default::default();
    let mut round = 0u64;
    while warm.len() < followers.len() {
        round += 1;
        for (i, tl) in poster_tls.iter().enumerate() {
            tl.post(
                format!("warm {round} {}", posters[i]),
                rand::random::<u64>() | 1,
            )
            .await?;
        }
        let until = Instant::now() + Duration::from_millis(500);
        while let Ok(Some((local, msg, _))) =
            tokio::time::timeout_at(until.into(), seen_rx.recv()).await
        {
            if let Some(author) = msg.strip_prefix("warm ").and_then(|r| r.split(' ').nth(1)) {
                warm.insert((local, author.to_string()));
            }
        }
        if Instant::now() > warm_deadline {
            let missing: Vec<String> = followers
                .iter()
                .filter(|(_, p, local)| !warm.contains(&(*local, p.to_string())))
                .map(|(f, p, local)| {
                    let how = if *local { "in its cluster" } else { "across" };
                    format!("{f} following {p} ({how})")
                })
                .collect();
            return Err(format!(
                "only {} of {} followers got a first post within 90 s; none reached {}",
                warm.len(),
                followers.len(),
                missing.join(", ")
            )
            .into());
        }
    }
    // Open loop: posts leave on schedule, whatever the answers do.
    let total = (rate * seconds) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let mut drainers = Vec::new();
    let mut senders = Vec::new();
    for tl in poster_tls {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        senders.push(tx);
        drainers.push(tokio::spawn(async move {
            let mut tl = tl;
            let mut rx = rx;
            loop {
                tokio::select! {
                    t = rx.recv() => match t {
                        Some(t) => { if tl.post(t, rand::random::<u64>() | 1).await.is_err() { return; } }
                        None => return,
                    },
                    m = tl.next() => if m.is_err() { return },
                }
            }
        }));
    }
    for n in 0..total {
        tokio::time::sleep_until((start + interval * n as u32).into()).await;
        let i = (n % n_posters) as usize;
        let _ = senders[i].send(format!("d {} {}", unix_ns(), posters[i]));
    }
    let mut local = Samples::default();
    let mut remote = Samples::default();
    let expected = total * 2;
    let mut got = 0u64;
    let deadline = Instant::now() + Duration::from_secs(10);
    while got < expected {
        match tokio::time::timeout_at(deadline.into(), seen_rx.recv()).await {
            Ok(Some((is_local, msg, at))) => {
                let Some(sent) = msg
                    .strip_prefix("d ")
                    .and_then(|r| r.split(' ').next())
                    .and_then(|t| t.parse::<i128>().ok())
                else {
                    continue;
                };
                got += 1;
                let ms = (at - sent) as f64 / 1e6;
                if is_local {
                    local.0.push(ms);
                } else {
                    remote.0.push(ms);
                }
            }
            _ => break,
        }
    }
    let _ = done_tx.send(true);
    drop(senders);
    for d in drainers {
        d.abort();
    }
    let (l, r) = (local.summary(), remote.summary());
    out.rows.push(Row::new("posts sent", total as f64, ""));
    out.rows.push(Row::new("rate offered", rate, "/s"));
    for (what, s, limit) in [("in-cluster", l, 20.0), ("cross-cluster", r, 100.0)] {
        out.summaries.push((what.to_string(), s));
        out.rows.push(Row::new(format!("{what} p50"), s.p50, "ms"));
        out.rows.push(
            Row::new(format!("{what} p99"), s.p99, "ms")
                .target(format!("< {limit} ms"), s.p99 < limit),
        );
        out.rows.push(Row::new(format!("{what} max"), s.max, "ms"));
    }
    out.rows.push(
        Row::new("deliveries missing after 10 s", (expected - got) as f64, "")
            .target("0", got == expected),
    );
    out.notes.push(format!(
        "{n_posters} posters, each followed in its own cluster and in the next; {rate} posts/s for {seconds} s; {} (the event path carries delivery)",
        if ctx.attach.is_some() {
            "the attached system's synchronizer cycle"
        } else {
            "synchronizer cycle 30 s"
        }
    ));
    out.charts.push(Chart::Cdf {
        file: "delivery_latency.png".into(),
        title: format!("delivery: post-to-screen latency at {rate} posts/s"),
        x_label: "latency (ms)".into(),
        series: vec![
            ("in-cluster".into(), local.thinned(5_000)),
            ("cross-cluster".into(), remote.thinned(5_000)),
        ],
    });
    drop(sys);
    Ok(out)
}
