//! The follower synchronizer: carries users, follows and posts between
//! clusters. It never talks to a server: it reads its cluster's files and
//! writes into them.
//!
//! | file | what | reads first |
//! |---|---|---|
//! | [`plan`] (pure) | what to push to whom; the rewind rule | [`plan::Rewinds::apply`] |
//! | [`cursors`] (pure) | where each peer stands in each file; `positions.txt` | [`cursors::Cursors`] |
//! | [`inbound`] (pure) | what a peer may push to us: the checks of every push | [`inbound::posts`] |
//! | `pusher` | the sending loop: dirty files, the watch, the coordinator, pushes | `Pusher::run` |
//! | `receiver` | the `Synchronizer` service: checking, then writing into the server directories | `Receiver::each_store` |
//!
//! # Sending
//! The synchronizer of cluster `c` reads the master's directory of `c` and
//! pushes to each other cluster's synchronizer what that cluster needs
//! ([`plan`]):
//!
//! * every user that lives in `c` (from `all_users.txt`), to every cluster;
//! * every follow or unfollow event of a user of `c` (from
//!   `u<id>_following.txt`) to the cluster of the user followed;
//! * every post of a user of `c` (from `u<id>_posts.txt`) to each cluster that
//!   has followers of the author at the post's time, with the list of those
//!   followers (the *targets*).
//!
//! For each source file and each peer it keeps a **cursor** ([`cursors`]):
//! how far that peer has acknowledged: a count of local users, or the time
//! of the last event or post handled. Cursors only move after the peer's
//! acknowledgement and are saved once a heartbeat to
//! `cluster_<c>/synchronizer/positions.txt` (written whole and renamed into
//! place), so a restart resumes where it stopped and re-sends at most what
//! was in flight, which the receiver recognises. In memory a cursor also
//! holds the byte offset it stands at, found again after a restart by
//! reading backwards from the end of the file to the saved time.
//!
//! Changes are pushed **as they happen**: a watch on the master's directory
//! ([`crate::storage::watch`]) marks the changed file dirty, and the pusher
//! reads it from its cursor. Events are only hints: the full cycle every
//! `SNS_SYNC_INTERVAL_MS` asks the coordinator for the master and the peers
//! again and marks every file dirty, which costs a `stat` per file when
//! nothing changed; a push that failed is retried every heartbeat, and a peer
//! that failed once is skipped for the rest of the round, so a hung peer costs
//! one timeout per round. A peer that refuses a push with `RESOURCE_EXHAUSTED`
//! (a cluster at `SNS_MAX_USERS` refusing new users) is not down: its other
//! pushes (follows, posts) go on. A record too long to be valid in a file we
//! send from is reported and the cursor moves past it
//! ([`crate::storage::read_at_most`]); nothing stops at it.
//!
//! **Which directory.** Only the directory of the master of the current
//! epoch is read: before a push round the pusher asks the coordinator
//! which server is master (one `GetServer`, only for a round with something
//! dirty, and at most once per quarter heartbeat: `Pusher::confirm_master`)
//! and switches to its directory if it changed; with no answer it
//! pushes nothing that round and tries again at the next heartbeat. So a
//! server that is no longer master (deposed, or a master restarted and made
//! a slave, which may replay into its files a batch nobody acknowledged:
//! issue 11's doubled post) is not read from once the coordinator knows.
//! A restarted server learns its role at registration, before it opens and
//! replays into its directory, so a round confirmed before the replay cannot
//! see it (the replay itself is fixed on the server's side). The cost is a
//! coordinator round trip per quarter heartbeat of pushing, and no pushes
//! while the coordinator is out of reach (no failover can happen then
//! either).
//!
//! **Stalled peers.** The channels to the coordinator and to the peers get
//! keep-alive, a connect timeout of a heartbeat and per-call deadlines
//! (`max(2 heartbeats, 500 ms)` for a push), and a push that misses its
//! deadline replaces the connection ([`crate::trust::link`]): before, a
//! connection cut by a link that drops packets was reused after the heal
//! and the push waited for TCP's retransmission back-off (5 to 6.5 s after
//! an 8 s cut, growing with the cut). Now the retry at the next heartbeat
//! goes out on a fresh connection: delivered within about two heartbeats of
//! the heal.
//!
//! An author whom nobody in a peer's cluster has ever followed costs nothing
//! for that peer: the cursor waits, and the first follow from there moves it
//! up to the follow's time instead of reading the history since.
//!
//! **Rewinds.** A remote user who starts following a local author may have
//! done so just before a post of the author that was already sent without
//! them (the follow took a while to arrive). So when a follow arrives, the
//! author's cursor for that cluster moves back to the follow's time and the
//! posts since are sent again; the receiver stores only what it lacks.
//! Follows of different users can arrive out of time order, so the events
//! taken into account are remembered one by one. The cursor saves the
//! latest of them and how many there were; after a start those up to the
//! saved time count as taken into account only if there are no more of them
//! than that count (otherwise one arrived, late, and was not handled before
//! the restart: the posts since the peer's earliest follow go again), so no
//! unhandled follow is ever taken as handled ([`plan::Rewinds`]).
//! Each batch of posts is planned with the followers file as the rewind
//! last saw it ([`plan::Rewinds::next_posts`]): a receiver skips a post of
//! an author older than the latest of theirs a timeline holds, so a later
//! post that reached a new follower before the rewind's re-send would cost
//! them every post in between (chaos seed 11).
//!
//! **Damage.** Nothing on disk stops the synchronizer. A line of
//! `positions.txt` that cannot be read (malformed, or bytes that are not
//! UTF-8) is skipped and reported, costing a re-send for its cursor; a
//! `positions.txt` that is not a regular file is moved aside. A source file
//! of the master's that cannot be read (damaged, or an I/O error) is
//! reported once, naming it, and retried every heartbeat, and the peer is
//! not counted as failing: every other file still goes out.
//!
//! # Receiving
//! A push is peer input and is checked as strictly as a client's request
//! ([`inbound`]), whole, before anything is written: the sender is another
//! cluster of the system; users, followers and authors are its users;
//! followees and targets are ours; texts are valid posts; times are within
//! bounds of our clock (not before 2000, at most
//! [`crate::timefmt::MAX_SKEW`], five minutes, ahead). These are exactly the
//! shapes the pusher of another cluster sends ([`plan`]), so a legitimate
//! push, a full cycle's re-send included, always passes; one bad item
//! refuses the batch with `INVALID_ARGUMENT` naming it, and nothing of the
//! batch is stored. A peer therefore has no say over another cluster's
//! users, and cannot date a post or a follow where it would hide later posts
//! or outlast every unfollow. (A sender whose clock runs more than five
//! minutes ahead of ours has its pushes refused until our clock catches up:
//! the pusher retries every heartbeat, so they are late, not lost.)
//!
//! What passes is applied to every server directory of the cluster through
//! [`crate::storage::store::Store`], under `flock` and idempotently, and
//! acknowledged only once it is on disk (flushed, with `SNS_FSYNC=1`). A
//! push of users that would take a directory past `SNS_MAX_USERS` is refused
//! whole, before anything is written. A
//! directory being resynced is closed to us: the push is refused as
//! unavailable and the peer retries it. The servers see what was written
//! through their own directory watches.
//!
//! A push that fails (disk full, an I/O error) is not acknowledged: each
//! append it made is whole, the sender's cursor does not move, and the
//! same push comes again until it is stored everywhere, each record once.
//! A damaged file of one user (their timeline, their followers) is skipped
//! and reported, so the push is stored for everyone else.
//!
//! # Shutdown
//! Three tasks run: the gRPC service, the heartbeats, and the pusher. When
//! the token given to [`run`] is cancelled (SIGTERM, Ctrl-C) the service
//! finishes the requests in hand, the heartbeats stop, and the pusher
//! abandons the push in flight (its cursor does not move, so it goes again
//! after a restart) and saves its cursors; [`run`] returns once all three
//! have ended. Nothing is half-written: appends are whole records, and
//! `positions.txt` is replaced by a rename.

pub mod cursors;
pub mod inbound;
pub mod plan;
mod pusher;
mod receiver;

use crate::config::cluster_dir;
use crate::error::{Error, Result};
use crate::model::ClusterId;
use crate::proto::tinysns::coordinator_client::CoordinatorClient;
use crate::proto::tinysns::synchronizer_server::SynchronizerServer;
use crate::proto::tinysns::{HeartbeatRequest, Kind, ServerInfo};
use crate::trust::PeerChannel;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How a synchronizer is started.
#[derive(Debug, Clone)]
pub struct Options {
    /// Synchronizer id = the cluster it serves.
    pub id: u32,
    /// The coordinator, `host:port`.
    pub coordinator: String,
    /// The host name others reach this synchronizer at.
    pub host: String,
    pub port: u16,
    pub heartbeat: Duration,
    pub sync_interval: Duration,
    /// Flush what a push wrote to disk before acknowledging it.
    pub fsync: bool,
    pub data_dir: PathBuf,
    pub trust: crate::trust::Trust,
    /// `max_users`: a push of users past it is refused.
    pub limits: crate::config::Limits,
    /// The HTTP port (`/metrics`, `/healthz`), if any.
    pub http_port: Option<u16>,
}

/// Runs a synchronizer on `listener` until `shutdown` is cancelled, and
/// returns once every task it started has ended.
pub async fn run(
    listener: tokio::net::TcpListener,
    mut opts: Options,
    shutdown: CancellationToken,
) -> Result<()> {
    use crate::coordinator::membership;
    let rpc_timeout = (2 * opts.heartbeat).max(Duration::from_millis(500));
    let mut coordinator = membership::client(&opts.coordinator, opts.heartbeat, &opts.trust)?;
    let mut info = membership::info(Kind::Synchronizer, opts.id, opts.id, &opts.host, opts.port);
    info.http_port = opts.http_port.map_or(0, u32::from);
    let health = crate::ops::Health::new(false);
    let registered = tokio::select! {
        r = membership::register(&mut coordinator, &info, opts.heartbeat, false) => r,
        _ = shutdown.cancelled() => return Ok(()),
    };
    let clusters = registered?.clusters;
    // The watch reports the paths it was given; make ours absolute so that
    // they compare equal to the master's directory (SNS_DATA_DIR is relative
    // by default).
    std::fs::create_dir_all(cluster_dir(&opts.data_dir, opts.id).join("synchronizer"))?;
    opts.data_dir = std::fs::canonicalize(&opts.data_dir)?;
    let partition = plan::Partition {
        me: ClusterId(opts.id),
        clusters,
    };
    let (tx, rx) = mpsc::unbounded_channel();
    // A child, so that the tasks also stop when the service fails alone.
    let stop = shutdown.child_token();

    let cycles = Arc::new(AtomicU64::new(0));
    let heartbeats = tokio::spawn(heartbeats(
        coordinator.clone(),
        info,
        opts.heartbeat,
        cycles.clone(),
        stop.clone(),
    ));
    let settings = pusher::Settings {
        partition,
        data_dir: opts.data_dir.clone(),
        heartbeat: opts.heartbeat,
        sync_interval: opts.sync_interval,
        rpc_timeout,
        positions: cluster_dir(&opts.data_dir, opts.id)
            .join("synchronizer")
            .join("positions.txt"),
        trust: opts.trust.clone(),
        health: health.clone(),
    };
    let pusher = match pusher::Pusher::new(settings, coordinator, tx.clone(), cycles, stop.clone())
    {
        Ok(p) => tokio::spawn(p.run(rx)),
        Err(e) => {
            stop.cancel();
            heartbeats.await?;
            return Err(e);
        }
    };
    let receiver = receiver::Receiver::new(
        partition,
        opts.data_dir.clone(),
        opts.fsync,
        opts.limits,
        tx,
    );
    log::info!(
        "synchronizer {} serving at {}:{} ({} clusters)",
        opts.id,
        opts.host,
        opts.port,
        clusters
    );
    let standard = crate::ops::Standard::new(health.clone(), &["tinysns.Synchronizer"]).await;
    let http = match crate::ops::start_http(opts.http_port, health, None, stop.clone()).await {
        Ok(h) => h,
        Err(e) => {
            stop.cancel();
            let _ = (heartbeats.await, pusher.await);
            return Err(e);
        }
    };
    let router = opts
        .trust
        .server()?
        .add_service(SynchronizerServer::new(receiver));
    let router = standard.add_to(router)?;
    let health_task = tokio::spawn(standard.run(stop.clone()));
    let server = router.serve_with_incoming_shutdown(
        crate::config::incoming(listener),
        stop.clone().cancelled_owned(),
    );
    let served = crate::config::serve_until(server, &stop).await;
    stop.cancel();
    let ended = (heartbeats.await, pusher.await);
    let _ = health_task.await;
    if let Some(http) = http {
        let _ = http.await;
    }
    log::info!("synchronizer {} stopped", opts.id);
    served?;
    ended.0?;
    ended.1?;
    Ok(())
}

/// Heartbeats keep us in the coordinator's table, and tell it how many full
/// cycles the pusher has done, until `stop`.
async fn heartbeats(
    mut coordinator: CoordinatorClient<PeerChannel>,
    info: ServerInfo,
    period: Duration,
    cycles: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    let metrics = crate::ops::metrics::metrics();
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let req = HeartbeatRequest {
            info: Some(ServerInfo {
                full_cycles: cycles.load(Ordering::Relaxed),
                behind: u64::try_from(metrics.sync_behind.get()).unwrap_or(0),
                lag_ms: (metrics.sync_lag.get() * 1000.0) as u64,
                ..info.clone()
            }),
            ..Default::default()
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            r = coordinator.heartbeat(req) => {
                match r {
                    Ok(_) => crate::ops::metrics::note_heartbeat_answered(),
                    Err(e) => log::warn!("heartbeat failed: {}", Error::from(e)),
                }
            }
        }
    }
}
