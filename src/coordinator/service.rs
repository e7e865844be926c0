//! The coordinator's I/O around the [`Table`]: the gRPC service (a lock
//! around the table, and the state written to disk before any reply that
//! depends on it), and the failure checker that runs [`Table::check`] on a
//! timer. Requests are read here: the wire's 0 becomes `None`, and every
//! error leaves as a [`crate::error::Error`], turned into a `Status` at the
//! tonic boundary.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::Table;
use crate::error::Error;
use crate::model::{RunId, ServerId, UserId};
use crate::proto::tinysns::coordinator_server::Coordinator;
use crate::proto::tinysns::{
    Empty, HeartbeatReply, HeartbeatRequest, ServerInfo, ServerList, UserRequest,
};

/// Writes the pending state off the async threads. Called with the table
/// locked, so no other reply can depend on a change before it is on disk.
pub(super) async fn persist(table: &mut Table) -> Result<(), Error> {
    let Some(snapshot) = table.unsaved() else {
        return Ok(());
    };
    tokio::task::spawn_blocking(move || snapshot.write())
        .await?
        .map_err(|e| Error::Storage(format!("cannot persist the cluster state: {e}")))?;
    table.mark_saved();
    Ok(())
}

/// The gRPC service: a lock around the [`Table`].
pub(super) struct Service {
    table: Arc<Mutex<Table>>,
    /// The number of clusters, which never changes.
    clusters: u32,
    /// Lent to every heartbeat update, so that `run` can wait for the last
    /// one; weak, so that the service itself does not keep `run` waiting.
    updates: mpsc::WeakSender<()>,
}

impl Service {
    /// `updates`: `run` waits until every clone of its sender is gone.
    pub(super) fn new(table: Table, updates: &mpsc::Sender<()>) -> Service {
        Service {
            clusters: table.clusters(),
            table: Arc::new(Mutex::new(table)),
            updates: updates.downgrade(),
        }
    }

    /// The table, for the failure checker.
    pub(super) fn table(&self) -> Arc<Mutex<Table>> {
        self.table.clone()
    }

    async fn beat(&self, request: Request<HeartbeatRequest>) -> Result<HeartbeatReply, Error> {
        let remote = request.remote_addr();
        let req = request.into_inner();
        let Some(mut info) = req.info else {
            return Err(Error::Invalid("heartbeat without info".into()));
        };
        // A process that does not know its own name is reachable at the
        // address it is calling from.
        if info.hostname.trim().is_empty()
            && let Some(addr) = remote
        {
            info.hostname = addr.ip().to_string();
        }
        let in_service_slave = ServerId::from_wire(req.in_service_slave);
        let in_service_process = RunId::from_wire(req.in_service_process);
        let Some(running) = self.updates.upgrade() else {
            return Err(Error::Unavailable(
                "the coordinator is shutting down".into(),
            ));
        };
        // In a task of its own: a caller that gives up (its deadline) drops
        // this future, and must not cut the update and its write to disk in
        // half while the lock is released to the next writer.
        let table = self.table.clone();
        let work = tokio::spawn(async move {
            let _running = running;
            let mut table = table.lock().await;
            let reply = table.heartbeat_of(
                &info,
                req.epoch,
                in_service_slave,
                in_service_process,
                req.empty_directory,
                Instant::now(),
            )?;
            if let Err(e) = persist(&mut table).await {
                log::error!("{e}");
                return Err(Error::Unavailable(e.message().to_string()));
            }
            Ok(reply)
        });
        work.await
            .map_err(|e| Error::Internal(format!("heartbeat task failed: {e}")))?
    }

    /// The cluster of the request's user.
    fn cluster_of(&self, req: &UserRequest) -> Result<u32, Error> {
        let user = UserId::new(req.user_id)
            .ok_or_else(|| Error::Invalid("user_id must be a positive integer".into()))?;
        Ok(user.cluster(self.clusters).0)
    }

    async fn server_for(&self, req: &UserRequest) -> Result<ServerInfo, Error> {
        let cluster = self.cluster_of(req)?;
        let master = self.table.lock().await.master_of(cluster);
        master.ok_or_else(|| {
            log::debug!("GetServer({}): no master in cluster {cluster}", req.user_id);
            Error::Unavailable(format!("no server available for cluster {cluster}"))
        })
    }

    async fn synchronizer_for(&self, req: &UserRequest) -> Result<ServerInfo, Error> {
        let cluster = self.cluster_of(req)?;
        let synchronizer = self.table.lock().await.synchronizer_of(cluster);
        synchronizer.ok_or_else(|| {
            Error::Unavailable(format!("no synchronizer available for cluster {cluster}"))
        })
    }

    async fn list(&self, servers: impl FnOnce(&Table) -> Vec<ServerInfo>) -> ServerList {
        let table = self.table.lock().await;
        ServerList {
            servers: servers(&table),
            clusters: table.clusters(),
            ..ServerList::default()
        }
    }
}

/// The whole table as `GetTable`, `/api/table` and the dashboard show it,
/// with the events' wall-clock times.
pub(super) async fn view(table: &Mutex<Table>) -> ServerList {
    let mut list = table.lock().await.view(Instant::now());
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    for e in &mut list.events {
        e.unix_ms = now_ms.saturating_sub(e.ago_ms);
    }
    list
}

/// The tonic boundary: where the coordinator's errors become statuses.
fn answer<T>(result: Result<T, Error>) -> Result<Response<T>, Status> {
    result.map(Response::new).map_err(Status::from)
}

#[tonic::async_trait]
impl Coordinator for Service {
    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatReply>, Status> {
        answer(self.beat(request).await)
    }

    async fn get_server(
        &self,
        request: Request<UserRequest>,
    ) -> Result<Response<ServerInfo>, Status> {
        answer(self.server_for(request.get_ref()).await)
    }

    async fn get_synchronizer(
        &self,
        request: Request<UserRequest>,
    ) -> Result<Response<ServerInfo>, Status> {
        answer(self.synchronizer_for(request.get_ref()).await)
    }

    async fn get_all_synchronizers(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<ServerList>, Status> {
        answer(Ok(self.list(Table::synchronizers).await))
    }

    async fn get_table(&self, _request: Request<Empty>) -> Result<Response<ServerList>, Status> {
        answer(Ok(view(&self.table).await))
    }
}

/// Decides whether the failure checker may judge at a tick. If the
/// coordinator itself stalled (a slow disk under the lock, an overloaded
/// machine), heartbeats piled up unanswered and everyone would look failed at
/// once: after such a stall it gives them a failure window to be heard first.
#[derive(Debug)]
pub(super) struct StallGuard {
    period: Duration,
    heartbeat: Duration,
    last_check: Instant,
    grace_until: Option<Instant>,
}

impl StallGuard {
    pub(super) fn new(period: Duration, heartbeat: Duration, now: Instant) -> StallGuard {
        StallGuard {
            period,
            heartbeat,
            last_check: now,
            grace_until: None,
        }
    }

    /// Called at every tick; false while the coordinator recovers from a
    /// stall.
    pub(super) fn may_judge(&mut self, now: Instant) -> bool {
        let gap = now.saturating_duration_since(self.last_check);
        if gap > self.period + self.heartbeat / 2 {
            log::warn!(
                "the coordinator stalled for {gap:?}; no failure verdicts for {:?}",
                2 * self.heartbeat
            );
            self.grace_until = Some(now + 2 * self.heartbeat);
        }
        self.last_check = now;
        self.grace_until.is_none_or(|g| now >= g)
    }
}

/// The failure checker: runs [`Table::check`] every heartbeat/4 (5 to 100
/// ms) and persists what a promotion changed, until `shutdown`. A failed
/// write is retried on the next tick; heartbeats will not reply until it
/// succeeds. A pass that has begun runs to its end, write included.
pub(super) async fn failure_checker(
    table: Arc<Mutex<Table>>,
    heartbeat: Duration,
    shutdown: CancellationToken,
) {
    // Often enough that the check adds little to the failure window (a
    // failover is promised within two heartbeats plus a second), and the
    // check is cheap: a pass over a small table.
    let period = (heartbeat / 4).clamp(Duration::from_millis(5), Duration::from_millis(100));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stalls = StallGuard::new(period, heartbeat, Instant::now());
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let mut t = table.lock().await;
        let now = Instant::now();
        if !stalls.may_judge(now) {
            continue;
        }
        t.check(now);
        if let Err(e) = persist(&mut t).await {
            log::error!("{e} (will retry)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stall_suspends_verdicts_for_a_failure_window() {
        let period = Duration::from_millis(25);
        let hb = Duration::from_millis(100);
        let t0 = Instant::now();
        let mut guard = StallGuard::new(period, hb, t0);
        // Regular ticks: verdicts as usual.
        assert!(guard.may_judge(t0 + period));
        assert!(guard.may_judge(t0 + period * 2));
        // A tick late by more than half a heartbeat: a stall.
        let late = t0 + period * 2 + period + hb / 2 + Duration::from_millis(1);
        assert!(!guard.may_judge(late));
        let mut now = late;
        while now + period < late + 2 * hb {
            now += period;
            assert!(!guard.may_judge(now), "{:?} after the stall", now - late);
        }
        // A failure window after the stall, verdicts again.
        assert!(guard.may_judge(late + 2 * hb));
    }
}
