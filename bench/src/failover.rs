//! The `failover` scenario: repeated SIGKILLs of cluster 1's master while
//! its users post, with `SNS_HEARTBEAT_MS=100`.
//!
//! Each poster behaves as the terminal client does: it posts with a fresh
//! `post_id`, waits for the acknowledgement, and when the stream breaks asks
//! the coordinator for the master again and resends the same post with the
//! same id. The failover time is from the kill to the first acknowledgement
//! after it (the old master is dead, so it came from the new one). At the
//! end every acknowledged post must be in its author's posts file on both
//! servers of the cluster, once.

use super::Ctx;
use super::report::{Chart, Outcome, Row};
use super::stats::{Rate, Samples};
use super::system::{Settings, System, in_service_slave, master_of};
use super::user::User;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Posters in cluster 1 (users 1, 4, 7, ...).
const POSTERS: u64 = 8;

/// Acknowledged posts: when, by whom, what.
type Acks = Arc<Mutex<Vec<(Instant, u64, String)>>>;

async fn poster(coord: String, id: u64, acks: Acks, stop: tokio::sync::watch::Receiver<bool>) {
    let Ok(mut user) = User::new(&coord, id) else {
        return;
    };
    let mut tl = None;
    let mut n = 0u64;
    let mut pending: Option<(String, u64)> = None;
    while !*stop.borrow() {
        if tl.is_none() {
            // Like the client: ask the coordinator again, with a short pause.
            if user.login().await.is_ok() {
                tl = user.timeline().await.ok();
            }
            if tl.is_none() {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        }
        let (text, post_id) = pending.get_or_insert_with(|| {
            n += 1;
            (
                format!("failover post {n} by {id}"),
                rand::random::<u64>() | 1,
            )
        });
        let Some(t) = tl.as_mut() else { continue };
        let sent =
            tokio::time::timeout(Duration::from_secs(5), t.post_acked(text.clone(), *post_id))
                .await;
        match sent {
            Ok(Ok(())) => {
                if let Some((text, _)) = pending.take()
                    && let Ok(mut a) = acks.lock()
                {
                    a.push((Instant::now(), id, text));
                }
            }
            _ => tl = None,
        }
    }
}

/// The texts of the posts in a posts file, with how often each appears.
fn texts(path: &std::path::Path) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        if let Some(t) = line.strip_prefix("W ") {
            *out.entry(t.to_string()).or_insert(0) += 1;
        }
    }
    out
}

pub async fn failover(ctx: &Ctx) -> Result<Outcome, BoxError> {
    let mut out = Outcome::new("failover");
    let mut sys = System::start(
        &ctx.scratch.join("failover"),
        Settings {
            clusters: 3,
            heartbeat_ms: 100,
            sync_interval_ms: 30_000,
            fsync: true,
            lab: None,
        },
    )
    .await?;
    let coord = sys.coordinator();
    let kills = if ctx.quick { 1 } else { 5 };
    let steady = if ctx.quick {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(2)
    };
    let acks: Acks = Arc::default();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let posters: Vec<u64> = (0..POSTERS).map(|k| 1 + 3 * k).collect();
    let mut tasks = Vec::new();
    for &id in &posters {
        tasks.push(tokio::spawn(poster(
            coord.clone(),
            id,
            acks.clone(),
            stop_rx.clone(),
        )));
    }
    let begin = Instant::now();
    let acked_after = |t: Instant| -> Option<Instant> {
        let a = acks.lock().ok()?;
        a.iter().map(|(at, _, _)| *at).filter(|at| *at > t).min()
    };
    let mut times = Samples::default();
    let mut marks = Vec::new();
    for k in 1..=kills {
        tokio::time::sleep(steady).await;
        // One failure at a time: a slave out of service (a mirror call
        // missed on a loaded machine, then resyncing) must not be promoted,
        // so killing the master then would be a second failure.
        sys.wait_for(
            "cluster 1's slave in service before the kill",
            Duration::from_secs(60),
            |t| t.is_some_and(|t| in_service_slave(t, 1).is_some()),
        )
        .await?;
        let table = sys.table().await.ok_or("no routing table")?;
        let master = master_of(&table, 1)
            .ok_or("cluster 1 has no master")?
            .server_id;
        let name = System::server_name(1, master);
        sys.kill(&name)?;
        let killed = Instant::now();
        marks.push((
            killed.duration_since(begin).as_secs_f64(),
            format!("kill {k}"),
        ));
        let deadline = killed + Duration::from_secs(30);
        let first = loop {
            if let Some(at) = acked_after(killed) {
                break at;
            }
            if Instant::now() > deadline {
                return Err(format!("no post acknowledged within 30 s of kill {k}").into());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        times.push(first - killed);
        // Back as the slave, in service, before the next kill.
        sys.start_server(1, master)?;
        sys.wait_for(
            "the restarted server in service",
            Duration::from_secs(60),
            |t| t.is_some_and(|t| in_service_slave(t, 1).is_some_and(|e| e.server_id == master)),
        )
        .await?;
    }
    tokio::time::sleep(steady).await;
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    sys.wait_ready(Duration::from_secs(60)).await?;
    let acks = acks.lock().map_err(|_| "poisoned")?.clone();
    // Every acknowledged post, on both servers, once. The servers may still
    // be writing the last batch: poll a little.
    let check = || {
        let (mut missing, mut doubled) = (0usize, 0usize);
        for s in 1..=2 {
            let dir = sys.server_dir(1, s);
            let mut files = HashMap::new();
            for &p in &posters {
                files.insert(p, texts(&tinysns::storage::posts_file(&dir, p)));
            }
            for (_, author, text) in &acks {
                match files.get(author).and_then(|f| f.get(text)) {
                    None => missing += 1,
                    Some(1) => {}
                    Some(_) => doubled += 1,
                }
            }
        }
        (missing, doubled)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let (missing, doubled) = loop {
        let r = check();
        if r == (0, 0) || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let s = times.summary();
    out.summaries
        .push(("kill to first acknowledgement".into(), s));
    out.rows.push(Row::new("kills", kills as f64, ""));
    out.rows
        .push(Row::new("kill to next ack, p50", s.p50, "ms"));
    out.rows.push(
        Row::new("kill to next ack, max", s.max, "ms")
            .beside("failure window (2 heartbeats)", 200.0)
            .target("< 1000 ms", s.max < 1000.0),
    );
    out.rows
        .push(Row::new("acknowledged posts", acks.len() as f64, ""));
    out.rows.push(
        Row::new(
            "acknowledged posts missing (both servers)",
            missing as f64,
            "",
        )
        .target("0", missing == 0),
    );
    out.rows
        .push(Row::new("posts stored twice", doubled as f64, "").target("0", doubled == 0));
    out.notes.push(format!(
        "{POSTERS} posters in cluster 1, SNS_HEARTBEAT_MS=100; each kill is SIGKILL of the master, which is then restarted and back in service before the next"
    ));
    let mut rate = Rate::new(begin, Duration::from_millis(100));
    for (at, _, _) in &acks {
        rate.add(*at);
    }
    out.charts.push(Chart::Throughput {
        file: "failover_throughput.png".into(),
        title: "failover: acknowledged posts/s in cluster 1, masters SIGKILLed".into(),
        y_label: "posts/s".into(),
        points: rate.points(),
        marks,
    });
    out.charts.push(Chart::Cdf {
        file: "failover_time.png".into(),
        title: "failover: kill to first acknowledged post".into(),
        x_label: "ms".into(),
        series: vec![("kill to next ack".into(), times.0)],
    });
    Ok(out)
}
