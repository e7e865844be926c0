//! The server: serves the clients of one cluster as its master, or mirrors
//! the master as its slave.
//!
//! # Roles
//! A server registers with the coordinator through its heartbeats; the reply
//! tells it whether it is the cluster's master or its slave, the cluster's
//! epoch and who its peer is. Only the master serves clients; a slave answers
//! them `UNAVAILABLE`, so that a client with a stale address asks the
//! coordinator again. A slave first brings its directory up to date with the
//! master's and then follows every write ([`replication`]). Every rule about
//! roles, the lease, fencing and when a write may be acknowledged is in one
//! pure state machine, [`role::Replica`], unit-tested without processes.
//!
//! # Writes
//! Every client write (a new user, a follow, an unfollow, a post) becomes one
//! [`WriteOp`](crate::proto::tinysns::WriteOp) with a time chosen by the
//! master. Under the state lock the master checks the request and stages the
//! operation ([`Store::stage`]), so that the checks of the next request see
//! it; the mirror task then sends it to the slave, journals it and writes it
//! to the master's own files before the client gets its answer. The slave
//! applies the same operations with the same code, so both directories hold
//! the same records; applying is idempotent, so a re-sent batch stores
//! nothing twice. A retried write is recognised by its client id
//! ([`client_ids::ClientIds`]), remembered by master and slave alike, and
//! answered as the first one was.
//!
//! # When the disk fails
//! A write is whole or absent (SPEC §5). A batch that fails before our
//! files (the journal has no room, the slave or the lease fails) writes
//! nothing here and is taken back out of the journal. Once the journal and
//! the slave took a batch and the lease held, its clients are answered yes,
//! before our files are written (with `SNS_FSYNC=0` the journal holds
//! nothing, and they are answered after). A batch whose files then fail is *owed*:
//! the views show it whole at once (so a follow
//! is "already following" and listed together), and the mirror task
//! finishes it, each record once, with the next write or at the next
//! heartbeat, before anything else; the journal keeps it until then, so a
//! restart finishes it in its replay ([`replication::mirror`]). A start-up
//! replay that fails (a full disk) stops at the failing operation and the
//! server starts anyway; the rest is owed and finished once it is master.
//! A full disk never stops the daemon; writes the journal cannot take fail
//! with `INTERNAL` until there is room.
//!
//! A damaged file (not a regular file, a link, not ours to open) is its
//! user's problem: the server starts over it and names it in its log, and
//! only the requests that need it fail, with an error naming it
//! ([`crate::storage::store`]).
//!
//! # Timelines and sessions
//! [`timeline`] streams a user's timeline file and stores what they post on
//! the same stream; [`session`] holds the login rules (a session per user,
//! refreshed by its client, expiring after two heartbeats; only its own
//! token logs it out; a login without a token, a course client's, is bound
//! to its connection instead and ends with it, see [`conn`]). The master
//! tells its slave of every session ([`replication::sessions`]), so a
//! promoted slave refuses a second client of a user whose first still runs.
//!
//! # Bounded cost (SPEC §5)
//! Nothing a client sends makes a server hang, spin or grow without bound:
//!
//! | input | bound |
//! |---|---|
//! | timeline streams | `SNS_MAX_STREAMS` (1000) in all, `SNS_MAX_STREAMS_PER_USER` (4) per user; past either, `RESOURCE_EXHAUSTED` |
//! | a stream that is not read | a queue of 64 messages; no room for a failure window and it ends with `RESOURCE_EXHAUSTED` ([`timeline`]) |
//! | a client that reads nothing, not even pings | HTTP/2 keep-alive: a ping after a quarter heartbeat of silence, the connection cut when it has no answer within the rest of a failure window ([`conn::keepalive`]) |
//! | new users | `SNS_MAX_USERS` (1,000,000) per cluster, local and remote: "this cluster holds its maximum of N users" ([`crate::config::Limits`]) |
//! | damaged files | a record longer than any valid one is reported and skipped at the cost of one pass ([`crate::storage`]); a post is checked before it is shown |
//! | input in errors | at most 64 bytes quoted ([`crate::error::quote`]); user ids strictly ASCII digits, session tokens at most 128 bytes |
//!
//! Measured (a debug build, `tests/e2e/bounded.rs` and a reproduction of
//! the reported attack, 125 users × 4 streams that never read, 300 to 800
//! posts of 255 bytes fanned out to them): before, a client that never
//! reads its socket made the master grow by 30 MB per 100 posts, linearly
//! (249 MB after 800 posts, heading for hyper's 400 KB send buffer per
//! stream, 0.5 MB with the queue of 256); streams that read the socket
//! but not the stream (4 KB windows) took it to 80 MB, held as long as
//! they stayed open. After: 45 to 55 MB for the first (the keep-alive, as
//! it was then, cut the connection within three heartbeats; now two), 42 MB for the second (every
//! stream ended with `RESOURCE_EXHAUSTED` after a failure window), and
//! nothing more with more posts.
//!
//! # State and tasks
//! [`node::Node`] is the one owner of a server's state: one lock for what
//! changes together, and three with one job each (its doc has the table and
//! the rule for disk work). A server runs the gRPC services, a heartbeat
//! task, a mirror task, a resync task when it needs one and two tasks per
//! open timeline (at most `SNS_MAX_STREAMS`); all of them end when the shutdown token is cancelled, and
//! [`run`] returns once they have. A write in hand is finished or failed
//! (`UNAVAILABLE`, so its client retries elsewhere), never half done.
//!
//! # Files
//! [`client_api`] (the client API), [`conn`] (accepted connections, for
//! sessions bound to one), [`timeline`], [`heartbeat`], [`node`],
//! [`role`], [`session`] and [`client_ids`] (the pure cores), [`replication`] (op log,
//! mirror, snapshot, resync, the replica API).

pub mod client_api;
pub mod client_ids;
pub mod conn;
pub mod heartbeat;
pub mod node;
pub mod replication;
pub mod role;
pub mod session;
pub mod timeline;

use crate::coordinator::membership;
use crate::error::Error;
use crate::model::RunId;
use crate::proto::csce438::sns_service_server::SnsServiceServer;
use crate::proto::tinysns::coordinator_client::CoordinatorClient;
use crate::proto::tinysns::replica_server::ReplicaServer;
use crate::proto::tinysns::{Kind, ServerInfo, WriteOp};
use crate::storage::journal::{Journal, Replay};
use crate::storage::store::Store;
use crate::storage::{self};
use crate::trust::PeerChannel;
use node::Node;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// How a server is started.
#[derive(Debug, Clone)]
pub struct Options {
    pub cluster: u32,
    pub server_id: u32,
    /// The coordinator, `host:port`.
    pub coordinator: String,
    /// The host name others reach this server at.
    pub host: String,
    pub port: u16,
    pub heartbeat: Duration,
    /// Acknowledge a write only once it is flushed to disk ([`crate::storage::journal`]).
    pub fsync: bool,
    pub data_dir: PathBuf,
    pub trust: crate::trust::Trust,
    /// Most users, most timeline streams ([`timeline`]).
    pub limits: crate::config::Limits,
    /// The HTTP port (`/metrics`, `/healthz`), if any.
    pub http_port: Option<u16>,
}

/// A directory opened at start-up.
pub(crate) struct OpenedDir {
    pub(crate) store: Store,
    pub(crate) journal: Journal,
    /// Every journaled operation (their client ids are remembered).
    pub(crate) replay: Vec<WriteOp>,
    /// The undecided operations a start as master owes (also in `owed`):
    /// their ids are in flight until they are finished.
    pub(crate) in_flight: Vec<WriteOp>,
    /// The client ids of the ids file ([`storage::ids`]), oldest first.
    pub(crate) known_ids: Vec<storage::ids::IdLine>,
    /// Those the replay could not finish (the disk is full, an I/O error):
    /// still in the journal, finished once this server is master and the
    /// disk takes them.
    pub(crate) owed: Vec<WriteOp>,
}

/// Opens the directory: repairs torn records, replays the journal and
/// flushes what the last run may have left in the page cache only. Neither
/// a damaged file (its user's problem, see [`Store`]) nor a full disk stops
/// the server from starting: a replay that fails stops there, and what is
/// left of it is owed. What the journal holds undecided (the batch a crash
/// caught in flight, see [`crate::storage::journal`]) is never written here
/// at start-up: a server that starts as slave (`as_master` false, from the
/// coordinator's first answer) drops it, and one that starts as master owes
/// it, so it is mirrored and written like any write, under a lease, once
/// this server is master; should the slave be promoted meanwhile, it is
/// dropped with the rest of what this server owed when it resyncs.
fn open_dir(
    dir: &std::path::Path,
    opts: &Options,
    clusters: u32,
    as_master: bool,
) -> Result<OpenedDir, Error> {
    let mut store = Store::open(dir, opts.cluster, clusters)?;
    let known_ids = storage::ids::load(dir).unwrap_or_else(|e| {
        log::error!("{e}; starting without the client ids it held");
        Vec::new()
    });
    let (mut journal, Replay { decided, undecided }) = Journal::open(dir, opts.fsync)?;
    let replay = decided;
    let in_flight = if as_master {
        undecided
    } else {
        if !undecided.is_empty() {
            log::info!(
                "dropping {} journaled operation(s) that were in flight when the last run \
                 stopped: this server starts as slave, and its master has everything that \
                 was acknowledged",
                undecided.len()
            );
            journal.drop_undecided()?;
        }
        Vec::new()
    };
    let mut owed = Vec::new();
    for (i, op) in replay.iter().enumerate() {
        if let Err(e) = store.apply(op) {
            // In order: a later post of the same author, stored first, would
            // make this one look stored already.
            log::error!(
                "cannot replay the journal of {}: {e}; {} operation(s) stay in it \
                 and are finished once the disk takes them",
                dir.display(),
                replay.len() - i
            );
            owed = replay[i..].to_vec();
            break;
        }
    }
    if !in_flight.is_empty() {
        log::info!(
            "{} journaled operation(s) were in flight when the last run stopped: \
             they are mirrored and written once this server is master",
            in_flight.len()
        );
        owed.extend(in_flight.iter().cloned());
    }
    if !replay.is_empty() {
        log::info!(
            "replayed {} journaled operation(s)",
            replay.len() - (owed.len() - in_flight.len())
        );
        // Their ids outlive the journal, which is emptied below.
        let lines = crate::server::client_ids::ClientId::lines(&replay);
        if let Err(e) = storage::ids::append(dir, &lines) {
            log::error!("cannot keep the client ids of the replay: {e}");
        }
    }
    // What the last run wrote may not be on disk yet: replay found it in the
    // files (the page cache outlives a killed process) but not necessarily
    // on the disk. Flush every data file before the journal is emptied.
    store.take_dirty();
    let flushed = if !journal.is_empty() && opts.fsync && owed.is_empty() {
        storage::data_files(dir)
            .and_then(|files| storage::sync_files(&files))
            .and_then(|()| storage::sync_dir(dir))
    } else {
        Ok(())
    };
    // The journal is emptied only once nothing in it is needed any more.
    match flushed.and_then(|()| {
        if owed.is_empty() {
            journal.clear()
        } else {
            Ok(())
        }
    }) {
        Ok(()) => {}
        Err(e) => log::error!(
            "cannot flush the data files of {} ({e}); the journal is kept",
            dir.display()
        ),
    }
    Ok(OpenedDir {
        store,
        journal,
        replay,
        known_ids,
        owed,
        in_flight,
    })
}

/// Runs a server on `listener` until `shutdown` is cancelled, then waits for
/// every task it started.
pub async fn run(
    listener: tokio::net::TcpListener,
    opts: Options,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    // A child, so that the tasks also stop when the service fails alone.
    let stop = shutdown.child_token();
    let Some(Started {
        node,
        coordinator,
        info,
        asks,
    }) = start(opts, &stop).await?
    else {
        return Ok(());
    };
    let watcher = match watch_directory(&node) {
        Ok(w) => w,
        Err(e) => {
            // The first heartbeat may have started a resync: end it too.
            stop.cancel();
            node.tasks.close();
            node.tasks.wait().await;
            return Err(e);
        }
    };
    node.tasks
        .spawn(node.clone().heartbeat_loop(coordinator, info, asks));
    node.tasks.spawn(node.clone().mirror_loop());
    node.tasks.spawn(node.clone().share_sessions_loop());
    // Pings find a client that has gone, or reads nothing (not even a
    // ping), within a failure window, so its timeline streams and what
    // HTTP/2 buffered for them do not stay forever, and the session of a
    // course client bound to its connection ends ([`conn::keepalive`]).
    let (ping_every, ping_timeout) = conn::keepalive(node.opts.heartbeat);
    let standard = crate::ops::Standard::new(
        node.health.clone(),
        &["csce438.SNSService", "tinysns.Replica"],
    )
    .await;
    let http =
        match crate::ops::start_http(node.opts.http_port, node.health.clone(), None, stop.clone())
            .await
        {
            Ok(h) => h,
            Err(e) => {
                stop.cancel();
                node.tasks.close();
                node.tasks.wait().await;
                return Err(e);
            }
        };
    let router = node
        .opts
        .trust
        .server()?
        .http2_keepalive_interval(Some(ping_every))
        .http2_keepalive_timeout(Some(ping_timeout))
        .add_service(SnsServiceServer::new(client_api::ClientApi::new(
            node.clone(),
        )))
        .add_service(
            ReplicaServer::new(replication::api::ReplicaApi(node.clone()))
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20),
        );
    let router = standard.add_to(router)?;
    node.tasks.spawn(standard.run(stop.clone()));
    let server = router
        .serve_with_incoming_shutdown(conn::incoming(listener), stop.clone().cancelled_owned());
    let served = crate::config::serve_until(server, &stop).await;
    // However tonic ended, every task ends now.
    stop.cancel();
    node.tasks.close();
    node.tasks.wait().await;
    drop(watcher);
    if let Some(http) = http {
        let _ = http.await;
    }
    served?;
    log::info!(
        "server {} of cluster {} stopped",
        node.opts.server_id,
        node.opts.cluster
    );
    Ok(())
}

/// A registered server with its directory open, before it serves.
struct Started {
    node: Arc<Node>,
    coordinator: CoordinatorClient<PeerChannel>,
    /// How the server describes itself in its heartbeats.
    info: ServerInfo,
    /// Requests for a heartbeat now ([`Node::report_now`]).
    asks: mpsc::Receiver<oneshot::Sender<bool>>,
}

/// Registers with the coordinator (its reply says how many clusters there
/// are, which decides which users live here), opens the directory and acts
/// on the first reply; `None` if shut down before the coordinator answered.
async fn start(opts: Options, stop: &CancellationToken) -> Result<Option<Started>, Error> {
    let mut coordinator = membership::client(&opts.coordinator, opts.heartbeat, &opts.trust)?;
    let run = RunId::random();
    let mut info = membership::info(
        Kind::Server,
        opts.cluster,
        opts.server_id,
        &opts.host,
        opts.port,
    );
    // Tells this run from earlier ones: a master's report that it took in
    // an earlier run of us does not make us in service.
    info.process = run.0;
    info.http_port = opts.http_port.map_or(0, u32::from);
    let dir = crate::config::server_dir(&opts.data_dir, opts.cluster, opts.server_id);
    // A reset server (its directory deleted) must not stay master over a
    // slave that has the data (see `empty_directory` in coordinator.proto).
    let empty = !storage::users_file(&dir).exists();
    let sent = Instant::now();
    let first = tokio::select! {
        _ = stop.cancelled() => return Ok(None),
        r = membership::register(&mut coordinator, &info, opts.heartbeat, empty) => r?,
    };
    let (open_opts, open_path, clusters) = (opts.clone(), dir.clone(), first.clusters);
    let as_master = first.role == crate::proto::tinysns::Role::Master as i32;
    let OpenedDir {
        store,
        journal,
        replay,
        known_ids,
        owed,
        in_flight,
    } = tokio::task::spawn_blocking(move || open_dir(&open_path, &open_opts, clusters, as_master))
        .await??;
    let (ask, asks) = mpsc::channel(16);
    let opened = node::Opened {
        dir,
        clusters,
        run,
        store,
        journal,
        owed,
    };
    let node = Arc::new(Node::new(opts, opened, ask, stop.clone()));
    {
        let mut st = node.state();
        let known = known_ids
            .into_iter()
            .filter_map(client_ids::ClientId::from_line);
        for id in known {
            st.ids.insert(id);
        }
        for op in &replay {
            st.ids.record(op);
        }
        for op in &in_flight {
            st.ids.stage(op);
        }
    }
    node.on_heartbeat(first, sent, None);
    log::info!(
        "server {} of cluster {} serving at {} from {}",
        node.opts.server_id,
        node.opts.cluster,
        node.addr,
        node.dir.display()
    );
    Ok(Some(Started {
        node,
        coordinator,
        info,
        asks,
    }))
}

/// Watches the directory so that timelines see what the synchronizer
/// appends (told when it closes the file: our own appends, through files we
/// keep open, tell us nothing; [`storage::watch::Appends`]). The watch lives
/// as long as the returned value.
fn watch_directory(node: &Arc<Node>) -> Result<storage::watch::DirWatch, Error> {
    let node = node.clone();
    let dir = node.dir.clone();
    Ok(storage::watch::watch_dir(
        &dir,
        storage::watch::Appends::Closed,
        move |change| match change {
            storage::watch::Change::Files(paths) => {
                let users: Vec<u64> = paths
                    .iter()
                    .filter_map(|p| match storage::FileKind::parse(p) {
                        Some(storage::FileKind::Timeline(u)) => Some(u),
                        _ => None,
                    })
                    .collect();
                node.wake(&users);
            }
            storage::watch::Change::Rescan => node.wake_all(),
        },
    )?)
}
