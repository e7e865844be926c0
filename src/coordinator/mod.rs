//! The coordinator: routing table, heartbeats, failure detection, promotion.
//!
//! The one promise that shapes everything here (SPEC §4): no acknowledged
//! write is ever lost. The coordinator cannot see data; it only decides who is
//! master. So it must never make a server master that may lack a write some
//! master acknowledged, and it must remember across its own restarts what it
//! needs to keep that promise.
//!
//! # Routing table
//!
//! Every server and synchronizer registers by heartbeating; there is no
//! separate registration call, so a restarted coordinator rebuilds its whole
//! table from the next round of heartbeats. An entry is keyed by
//! `(kind, cluster_id, server_id)` (a synchronizer's cluster id is its id) and
//! holds the address the process announced, its role, whether it is alive and
//! the [`Instant`] of its last heartbeat. Entries are never removed: a dead
//! entry stays visible in `GetTable` and comes back to life with its next
//! heartbeat.
//!
//! # In-service slaves
//!
//! A slave is *in service* when it holds every write its master acknowledged.
//! Only the master knows that (it mirrors every write and sees whether the
//! slave stored it), so every master heartbeat carries `in_service_slave`: the
//! id of its in-service slave, or 0. The report is believed only from the
//! cluster's current master (MASTER in the table after this heartbeat, at the
//! cluster's current epoch); a deposed master or a slave could only make us
//! promote the wrong server. The coordinator keeps one in-service id per
//! cluster, so setting it for one slave clears it for every other.
//!
//! The report is safe because of its timing: a master sends a heartbeat with
//! the slave dropped *synchronously before* it acknowledges any write without
//! that slave, and the coordinator records (and persists) the drop before it
//! replies. Hence whenever the coordinator counts a slave as in service, that
//! slave really holds every acknowledged write; its view can only lag on the
//! safe side (a slave re-admitted but not yet reported).
//!
//! A slave that registers as a fresh process (it claims role NONE) is not in
//! service, whatever was recorded: it may have lost its directory. It becomes
//! in service again when its master says so (after its resync).
//!
//! # Roles
//!
//! Invariant: per cluster at most one server entry has the role MASTER (alive
//! or not), and it is the master recorded with the epoch (below); every other
//! server entry is a SLAVE. On a heartbeat from a server:
//!
//! - if it is the recorded master (alive or not), it is master, except that a
//!   fresh process (NONE) hands over to an alive in-service slave (see
//!   *Restarted master*);
//! - else if another server of the cluster is the alive master, it is a slave;
//! - else if the cluster never had a master, it becomes master (so the first
//!   server of a cluster to register is its master);
//! - else (the recorded master is down) it becomes master only if it is the
//!   in-service slave, and otherwise waits as a slave.
//!
//! A slave that is not in service is never made master, however long its
//! master stays away: it may lack acknowledged writes. The cluster is then
//! unavailable until its master comes back, which is the honest answer
//! (SPEC §4: data on disk survives).
//!
//! # Epochs and the state file
//!
//! Each cluster has an epoch, a fencing token that servers use to tell a
//! current master from a deposed one. It starts at 0 ("never had a master") and
//! is raised by one each time the identity of the master changes: the first
//! master ever, or a promotion. A master that merely comes back (no one took
//! over meanwhile) keeps the epoch. Epochs only ever grow.
//!
//! Per cluster the coordinator persists the epoch, the master of that epoch
//! and the in-service slave: `<state_dir>/epochs.txt` holds
//! `<cluster> <epoch> <master_id> <in_service_id>` lines (0 = none).
//!
//! - The file is written (temp file + fsync + rename + fsync of the directory)
//!   *before* any reply that depends on a change: a reply announcing an epoch,
//!   and above all the reply to a master's heartbeat that dropped its slave,
//!   after which that master acknowledges writes alone. So a restarted
//!   coordinator never hands out an epoch twice and never promotes a slave
//!   that was dropped.
//! - The old `<cluster> <epoch>` form is still read: its master and in-service
//!   slave are unknown, and such a cluster follows the pre-in-service rules
//!   (the first server claiming MASTER at the epoch is believed; otherwise, after
//!   the start-up window, some server takes over) until it has a master again.
//! - A malformed file stops the coordinator at start-up rather than silently
//!   resetting the epochs to 0, which would break fencing.
//! - Epochs are ours to issue: a server holds only epochs we told it, so a
//!   heartbeat carrying a higher one than ours is refused (`INVALID_ARGUMENT`)
//!   and changes nothing, never adopted. Adopting it would let any peer push
//!   the epoch to `2^64-1`, where fencing can no longer grow. The only
//!   legitimate way to get there is a state file that was lost or rolled
//!   back; that is an operator's repair (see *Peer input*).
//!
//! # Peer input
//!
//! A heartbeat is peer input and says only what a real process says; the
//! rest is refused with `INVALID_ARGUMENT` before anything is recorded (no
//! entry, no in-service flag, no epoch, no write of the state file):
//!
//! - Fields in range: the cluster in `1..=N`, a server id in
//!   `1..=1000` (`MAX_SERVER_ID`), a port in `1..=65535`, a hostname of at
//!   most 253 bytes without spaces or control characters, a known kind and
//!   role. A synchronizer's id is its cluster's, and it claims no role, epoch
//!   or in-service slave.
//! - An epoch no higher than the one we issued for the cluster.
//! - Runs (`ServerInfo.process`). A server process picks its run when it
//!   starts, registers with role NONE, and once answered claims the role it
//!   was given, always with that run. So, for a server we have heard from:
//!   a heartbeat without the run, from one that sent it before; a role
//!   claimed by a run other than the live entry's (a new run registers
//!   first); NONE from the same run after it claimed a role (a restart is a
//!   new run). These are what a forged heartbeat in a live server's name
//!   would look like, and they could otherwise force a failover (NONE from
//!   the master) or clear the in-service flag.
//! - A master's in-service report naming a server we have never heard of is
//!   ignored (not refused: a restarted coordinator may hear the master before
//!   its slave); one without the slave's run, which a master always knows
//!   (the slave joins with it), too. What was recorded stands.
//!
//! What stays possible for a process that holds the cluster key is what a
//! real server may do: register a new run in a slot (as a restart does,
//! which hands a master's cluster over to its in-service slave) or, with the
//! master's live run, report its slave in or out of service. The key keeps
//! strangers from doing even that.
//!
//! **A lost or rolled-back `epochs.txt`.** Servers then hold epochs above
//! ours and their heartbeats are refused, which stops writes (no lease): the
//! honest answer, since who was master and who is in service is lost too.
//! The repair is to restore the file (a backup; or a line `<cluster> <epoch>
//! <master> 0` with the epoch the refusals name). Restarting the servers
//! works too (a fresh process starts at epoch 0), but then the first to
//! register is master: start the one that was master.
//!
//! # Failure detection and promotion
//!
//! A background task runs every heartbeat/4 (5 ms to 100 ms). An alive entry
//! whose last heartbeat is older than the failure window (2 × heartbeat, SPEC
//! §1: two missed heartbeats) is marked dead. Then every cluster without an
//! alive master whose in-service slave is alive gets that slave promoted: it
//! becomes MASTER, the epoch is raised (and persisted) and the old master entry
//! becomes a SLAVE, which is what it will be told when it heartbeats again. A
//! cluster whose in-service slave is missing gets no master, and one warning
//! per outage. The check is one pass over the entries plus a few lookups per
//! cluster.
//!
//! # Restarted master
//!
//! A heartbeat claiming NONE from the recorded master means a new process: its
//! previous incarnation died, maybe with its directory deleted, possibly too
//! fast for the failure window to notice. If an in-service slave is alive, it
//! has every acknowledged write, so it is promoted at once (epoch + 1) and the
//! restarted server becomes its slave (and resyncs). So it is, within the
//! first failure window after a restart of the coordinator, when the
//! recorded in-service slave has not heartbeated yet: not heard from is not
//! down, and the restarted master waits as slave for it (found by `bench
//! chaos`: a master killed with its directory deleted and the coordinator
//! killed right after; kept master, the emptied server had its slave resync
//! from nothing). A restarted master that says it came back with an empty
//! directory (`empty_directory`: it was reset) hands over to any alive
//! slave, in service or not: what that slave may lack (writes the master
//! acknowledged alone) went with the directory anyway, and it has all the
//! rest. Otherwise the restarted server stays master at the same epoch:
//! whatever it has is the best copy there is.
//!
//! # Restart of the coordinator
//!
//! After a restart the table is empty but the state file tells, per cluster,
//! the epoch, its master and its in-service slave.
//!
//! - The recorded master becomes master again as soon as it heartbeats (its
//!   claim does not matter; a NONE claim follows *Restarted master*), without
//!   raising the epoch, unless another server already is the alive master. So
//!   a healthy master keeps its role and no second master is ever created.
//! - Any other server is a slave. The recorded in-service slave keeps its flag
//!   only if it claims SLAVE at the current epoch (the same process, still the
//!   slave of that master); a NONE claim means it restarted and must be
//!   re-admitted by its master.
//! - During the first failure window after start-up nobody is promoted: the
//!   master is most likely alive and about to heartbeat, and promoting would
//!   depose it for nothing. After the window, if the master has not appeared
//!   and the in-service slave is alive, the slave is promoted (epoch + 1); if
//!   there is no in-service slave, the cluster waits for its master, with a
//!   warning.
//!
//! # Shutdown
//!
//! [`run`] ends when its token is cancelled: tonic stops taking calls and
//! finishes those under way, the failure checker finishes the pass it is in,
//! and heartbeat updates whose callers stopped waiting run to their end (they
//! hold the lock and may be writing the state file). `run` waits for all of
//! them, then writes the state once more in case a write had failed. The file
//! is only ever replaced whole (temp file, then rename), so no shutdown or
//! crash leaves it half-written.
//!
//! # Where the code is
//!
//! | file | what |
//! |---|---|
//! | `table.rs` | [`Table`]: the rules above as a pure state machine; its methods take `now`, so its unit tests need no network and no clock |
//! | `state_file.rs` | `epochs.txt`: [`ClusterState`], loading, and [`StateSnapshot`], written atomically |
//! | `service.rs` | the gRPC adapter (a lock around the table; the state persisted before replying) and the failure checker |
//! | `course.rs` | `csce438.CoordService`: the course's `GetServer` (same table, same rule, the course's wire form), for course clients |
//! | `dashboard.rs`, `dashboard.html` | the HTTP port's pages: the live dashboard (`/`), `/api/table`, and the table's gauges in `/metrics` |
//! | `membership.rs` | the other side: how servers and synchronizers reach the coordinator and register |
//! | `mod.rs` | [`Options`] and [`run`], which wires them together |

mod course;
mod dashboard;
pub mod membership;
mod service;
mod state_file;
mod table;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::proto::csce438::coord_service_server::CoordServiceServer;
use crate::proto::tinysns::coordinator_server::CoordinatorServer;

pub use state_file::{ClusterState, EPOCH_FILE, StateSnapshot};
pub use table::Table;

/// How the coordinator is configured.
#[derive(Debug, Clone)]
pub struct Options {
    /// Number of clusters (N); users live in `config::cluster_of(id, N)`.
    pub clusters: u32,
    /// Heartbeat period of servers and synchronizers; failure window is twice
    /// that.
    pub heartbeat: Duration,
    /// Where the state is persisted (`<data_dir>/coordinator`).
    pub state_dir: PathBuf,
    pub trust: crate::trust::Trust,
    /// The HTTP port: metrics, the dashboard, `/api/table`.
    pub http_port: Option<u16>,
}

/// Serves the coordinator on `listener` until `shutdown` is cancelled, and
/// returns once every task it started has ended (see *Shutdown*).
///
/// Fails at start-up if the state directory cannot be created or its epoch
/// state file is unreadable or malformed.
pub async fn run(
    listener: tokio::net::TcpListener,
    opts: Options,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    std::fs::create_dir_all(&opts.state_dir).map_err(|e| {
        Error::Storage(format!(
            "cannot create state directory {}: {e}",
            opts.state_dir.display()
        ))
    })?;
    let table = Table::load(
        opts.clusters,
        opts.heartbeat,
        &opts.state_dir,
        Instant::now(),
    )
    .map_err(|e| {
        log::warn!("{e}");
        Error::Storage(e.to_string())
    })?;
    log::info!(
        "coordinator on {}: {} clusters, heartbeat {} ms, state in {}, clusters {}",
        listener
            .local_addr()
            .map_or_else(|_| "?".to_string(), |a| a.to_string()),
        table.clusters(),
        opts.heartbeat.as_millis(),
        opts.state_dir.display(),
        table.describe_states()
    );
    // A child: if tonic stops on its own (an error), the checker stops with
    // it, and the caller's token is left alone.
    let shutdown = shutdown.child_token();
    // Every heartbeat update holds a clone of `updates`; `recv` answers
    // `None` once the last one is gone.
    let (updates, mut updates_done) = mpsc::channel::<()>(1);
    let service = service::Service::new(table, &updates);
    let table = service.table();
    // The coordinator can always do its job: answer with the table it has.
    let health = crate::ops::Health::new(true);
    let standard = crate::ops::Standard::new(
        health.clone(),
        &["tinysns.Coordinator", "csce438.CoordService"],
    )
    .await;
    let http = crate::ops::start_http(
        opts.http_port,
        health,
        Some(dashboard::pages(table.clone())),
        shutdown.clone(),
    )
    .await?;
    let checker = tokio::spawn(service::failure_checker(
        table.clone(),
        opts.heartbeat,
        shutdown.clone(),
    ));
    let router = opts
        .trust
        .server()?
        .add_service(CoordinatorServer::new(service))
        .add_service(CoordServiceServer::new(course::CourseService::new(
            table.clone(),
        )));
    let server = standard.add_to(router)?.serve_with_incoming_shutdown(
        crate::config::incoming(listener),
        shutdown.clone().cancelled_owned(),
    );
    let served = crate::config::serve_until(server, &shutdown).await;
    shutdown.cancel();
    drop(updates);
    let _ = updates_done.recv().await;
    if let Err(e) = checker.await {
        log::error!("the failure checker failed: {e}");
    }
    if let Some(http) = http
        && let Err(e) = http.await
    {
        log::error!("the HTTP server failed: {e}");
    }
    if let Err(e) = service::persist(&mut *table.lock().await).await {
        log::error!("{e}");
    }
    served.map_err(|e| Error::Unavailable(e.to_string()))?;
    log::info!("coordinator stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::tinysns::{Kind, Role};

    #[tokio::test]
    async fn run_ends_on_its_token_with_the_state_on_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let trust = crate::trust::Trust::new(crate::trust::ClusterKey::generate(), None);
        let heartbeat = Duration::from_millis(50);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("listen");
        let addr = listener.local_addr().expect("address").to_string();
        let opts = Options {
            clusters: 1,
            heartbeat,
            state_dir: dir.path().join("coordinator"),
            trust: trust.clone(),
            http_port: None,
        };
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(run(listener, opts, shutdown.clone()));
        // A client that stays connected does not hold the shutdown up.
        let mut coordinator = membership::client(&addr, heartbeat, &trust).expect("client");
        let info = membership::info(Kind::Server, 1, 1, "127.0.0.1", 4000);
        let reply = membership::register(&mut coordinator, &info, heartbeat, false)
            .await
            .expect("registered");
        assert_eq!((reply.role, reply.epoch), (Role::Master as i32, 1));
        shutdown.cancel();
        running.await.expect("run's task").expect("a clean stop");
        let file = std::fs::read_to_string(dir.path().join("coordinator").join(EPOCH_FILE));
        assert_eq!(file.expect("state file"), "1 1 1 0\n");
    }
}
