//! One server process's state, who owns it, and the write path.
//!
//! # Who owns what
//! Everything that changes lives in [`State`] behind one lock, because a
//! write's checks, its staging, its sequence number and its place in the
//! mirror queue must be one step (the next request's checks must see it),
//! and the role decides whether any of it may happen at all. Three more
//! locks have one job each and are never held while taking another, except
//! in the one order written below:
//!
//! | field | guards | why apart |
//! |---|---|---|
//! | `state` | store (views, staged records), role and replication state, sessions, client ids, mirror queue | the invariants above |
//! | `journal` | the journal file | its `fdatasync` overlaps the mirroring RPC; taken *before* `state` (checkpoints) |
//! | `timelines` | the wakers of open timelines | woken from the watch thread and after commits, without waiting for a write |
//! | `resync_gate` (async) | a resync in progress | held across awaits for a whole resync; mirrored batches wait for it so that its operations come first |
//!
//! # Disk work
//! One rule, by cost. A request's own bounded file work runs inline on the
//! task that serves it: the appends of its records and the incremental
//! reads of the views under `state` (a few KB at page-cache speed, like the
//! syscalls they are), and a slave's one journal flush per mirrored batch
//! (handing that flush to another thread cost more CPU per post than it
//! holds the worker up: `bench post`, fsync on, 196 against 232 µs of
//! server CPU per post in the same run). Work that grows with the data or
//! with time (the master's journal flush, which overlaps the mirroring RPC;
//! checkpoints; snapshots; resync; opening the directory) runs on tokio's
//! blocking pool through [`Node::blocking`].

use super::Options;
use super::client_ids::{ClientId, ClientIds, Known};
use super::role::{Incarnation, Replica, Seq};
use super::session::Sessions;
use crate::error::Error;
use crate::model::{RunId, UserId};
use crate::proto::tinysns::WriteOp;
use crate::storage::FileKind;
use crate::storage::journal::Journal;
use crate::storage::store::Store;
use crate::timefmt::MonotonicClock;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A staged write waiting for the mirror.
pub(crate) struct Pending {
    pub seq: Seq,
    pub op: WriteOp,
    /// The files its staged records go to ([`Store::stage`]).
    pub files: Vec<FileKind>,
    /// The client waiting for it; `None` for an owed write (see
    /// [`State::owed`]), whose client has had its answer.
    pub done: Option<oneshot::Sender<Result<(), Error>>>,
}

/// What changes, behind [`Node::state`].
pub(crate) struct State {
    pub store: Store,
    pub replica: Replica,
    pub sessions: Sessions,
    pub ids: ClientIds,
    /// Retries waiting for the outcome of their first copy, in flight.
    pub retries: HashMap<ClientId, Vec<oneshot::Sender<Result<(), Error>>>>,
    /// Staged writes in staging order, taken by the mirror task in batches.
    pub queue: Vec<Pending>,
    /// Owed writes that are not staged: promised (journaled, and mirrored)
    /// but perhaps not all in the files, because writing them failed or a
    /// start-up replay could not finish them; and staging them again failed
    /// too, or this server is not master yet. They are staged before any
    /// other write ([`Node::restage_owed`]); until then writes are refused.
    /// Owed writes that are staged wait in `queue` without a client.
    pub owed: Vec<WriteOp>,
    /// How many owed writes are staged: in `queue`, or in the batch the
    /// mirror task has in hand.
    pub owed_staged: usize,
}

impl State {
    /// Whether some promised write is not in the files yet: the journal must
    /// keep it, and the mirror task retries it.
    pub fn owing(&self) -> bool {
        !self.owed.is_empty() || self.owed_staged > 0
    }
}

/// A server's directory opened for this run, with what registration told.
pub(crate) struct Opened {
    pub dir: PathBuf,
    pub clusters: u32,
    pub run: RunId,
    pub store: Store,
    pub journal: Journal,
    /// Journaled operations the start-up replay could not finish.
    pub owed: Vec<WriteOp>,
}

/// The state of one server process.
pub(crate) struct Node {
    pub opts: Options,
    /// How others reach us, `host:port`.
    pub addr: String,
    pub dir: PathBuf,
    pub clusters: u32,
    /// Two heartbeats: how long the coordinator waits before declaring a
    /// process failed.
    pub failure_window: Duration,
    /// This run's random start number (`ServerInfo.process`).
    pub run: RunId,
    pub clock: MonotonicClock,
    state: Mutex<State>,
    journal: Mutex<Journal>,
    timelines: Mutex<HashMap<UserId, watch::Sender<u64>>>,
    pub resync_gate: tokio::sync::Mutex<()>,
    /// Wakes the mirror task: a write was queued.
    pub kick: Notify,
    /// Wakes the sessions task: the slave must hear of a login or logout
    /// now ([`super::replication::sessions`]).
    pub session_kick: Notify,
    /// Asks the heartbeat task for a heartbeat now; answers whether the
    /// coordinator took it (and we are still master).
    report: mpsc::Sender<oneshot::Sender<bool>>,
    /// Cancelled when the server shuts down; every task watches it.
    pub shutdown: CancellationToken,
    /// Every task the server spawns, so that shutdown can wait for them.
    pub tasks: TaskTracker,
    /// Whether we can do our job now (SPEC §7): set on every heartbeat's
    /// outcome ([`Node::publish_status`]).
    pub health: crate::ops::Health,
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it (our
/// critical sections leave the data consistent at every step).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a write or a stream gets once the server is shutting down: try the
/// next master.
pub(crate) fn shutting_down() -> Error {
    Error::Unavailable("the server is shutting down".into())
}

/// A fresh incarnation for a new reign or a reset log.
pub(crate) fn fresh_incarnation() -> Incarnation {
    Incarnation(rand::random())
}

impl Node {
    pub fn new(
        opts: Options,
        opened: Opened,
        report: mpsc::Sender<oneshot::Sender<bool>>,
        shutdown: CancellationToken,
    ) -> Node {
        let Opened {
            dir,
            clusters,
            run,
            store,
            journal,
            owed,
        } = opened;
        let failure_window = 2 * opts.heartbeat;
        Node {
            addr: format!("{}:{}", opts.host, opts.port),
            dir,
            clusters,
            failure_window,
            run,
            clock: MonotonicClock::default(),
            state: Mutex::new(State {
                store,
                replica: Replica::new(failure_window),
                // A session lives two heartbeats without a refresh.
                sessions: Sessions::new(failure_window),
                ids: ClientIds::default(),
                retries: HashMap::new(),
                queue: Vec::new(),
                owed,
                owed_staged: 0,
            }),
            journal: Mutex::new(journal),
            timelines: Mutex::new(HashMap::new()),
            resync_gate: tokio::sync::Mutex::new(()),
            kick: Notify::new(),
            session_kick: Notify::new(),
            report,
            shutdown,
            tasks: TaskTracker::new(),
            health: crate::ops::Health::new(false),
            opts,
        }
    }

    /// The state, for in-memory work and bounded file work; never held
    /// across an await.
    pub fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// The journal; taken before [`Node::state`] when both are needed.
    pub fn journal(&self) -> MutexGuard<'_, Journal> {
        lock(&self.journal)
    }

    /// Runs disk work that waits for the disk or grows with the data on the
    /// blocking pool.
    pub async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        work: impl FnOnce(&Node) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let node = self.clone();
        // Tracked, so that shutdown waits for disk work in hand.
        self.tasks.spawn_blocking(move || work(&node)).await?
    }

    pub fn is_master(&self) -> bool {
        self.state().replica.is_master()
    }

    pub fn require_master(&self) -> Result<(), Error> {
        if self.is_master() {
            Ok(())
        } else {
            Err(self.not_master())
        }
    }

    pub fn not_master(&self) -> Error {
        Error::Unavailable(format!(
            "server {} is not the master of cluster {}",
            self.opts.server_id, self.opts.cluster
        ))
    }

    pub fn check_cluster(&self, cluster: u32) -> Result<(), Error> {
        if cluster == self.opts.cluster {
            Ok(())
        } else {
            Err(Error::Invalid(format!(
                "this server is in cluster {}, not {cluster}",
                self.opts.cluster
            )))
        }
    }

    /// Whether this master may let a write out now (the lease rule is the
    /// role core's; this names the server when it is not the master).
    fn lease_now(&self) -> Result<(), Error> {
        let st = self.state();
        if !st.replica.is_master() {
            return Err(self.not_master());
        }
        st.replica.check_lease(Instant::now())
    }

    /// [`Node::lease_now`], renewing the lease with a heartbeat first if it
    /// ran out (a busy machine delays heartbeats): the coordinator's answer
    /// shows whether anyone took over meanwhile.
    ///
    /// When the last heartbeat went unanswered, the write is refused at once
    /// ([`Renewal::Refuse`](super::role::Renewal)): the coordinator is out of
    /// reach, and the client had better ask it (or learn it is unreachable)
    /// now than after a heartbeat's deadline on every write.
    pub async fn ensure_lease(&self) -> Result<(), Error> {
        use super::role::Renewal;
        let renewal = {
            let st = self.state();
            if !st.replica.is_master() {
                return Err(self.not_master());
            }
            st.replica.renewal(Instant::now())?
        };
        match renewal {
            Renewal::Held => return Ok(()),
            Renewal::Refuse => {
                return Err(Error::Unavailable(format!(
                    "server {} of cluster {} cannot reach the coordinator; its lease has run out",
                    self.opts.server_id, self.opts.cluster
                )));
            }
            Renewal::Ask => {}
        }
        let epoch = self.state().replica.epoch;
        if self.report_now().await && self.state().replica.epoch == epoch {
            self.lease_now()
        } else {
            Err(Error::Unavailable(
                "this server is no longer the master".into(),
            ))
        }
    }

    /// Asks for a heartbeat now and waits for the coordinator's answer.
    pub async fn report_now(&self) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.report.send(tx).await.is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// A version counter for `user`'s timeline, bumped when the file may
    /// have grown.
    pub fn subscribe(&self, user: UserId) -> watch::Receiver<u64> {
        lock(&self.timelines)
            .entry(user)
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    pub fn wake(&self, users: &[u64]) {
        let timelines = lock(&self.timelines);
        for u in users.iter().filter_map(|u| UserId::new(*u)) {
            if let Some(w) = timelines.get(&u) {
                w.send_modify(|v| *v += 1);
            }
        }
    }

    pub fn wake_all(&self) {
        for w in lock(&self.timelines).values() {
            w.send_modify(|v| *v += 1);
        }
    }

    /// Checks a client write and, if it is to be done, stages it and queues
    /// it for the mirror; then waits until it is mirrored and written.
    /// `build` runs under the state lock, so the checks and writes of
    /// concurrent requests do not interleave; `None` means nothing to write
    /// (the request is refused, answered with an OK reply).
    ///
    /// `retry` is the client's id for the write: a write already done is
    /// answered as done, and one still in flight (its answer was lost, or
    /// has not come yet) is answered with its first copy's outcome, never
    /// before: acknowledged at once, the retry would be a promise the first
    /// copy might not keep.
    pub async fn write(
        &self,
        retry: Option<ClientId>,
        build: impl FnOnce(&mut State, &MonotonicClock) -> Result<Option<WriteOp>, Error>,
    ) -> Result<(), Error> {
        self.ensure_lease().await?;
        let done = {
            let mut guard = self.state();
            let st = &mut *guard;
            // The mirror task empties the queue under this lock once it has
            // seen the token: nothing staged after that would be answered.
            if self.shutdown.is_cancelled() {
                return Err(shutting_down());
            }
            if !st.replica.is_master() {
                return Err(self.not_master());
            }
            // What was promised before goes first: staged after this write,
            // a post of the same author would be taken as already stored.
            self.restage_owed(st)?;
            match retry.and_then(|id| Some((id, st.ids.lookup(id)?))) {
                Some((_, Known::Done)) => return Ok(()),
                Some((id, Known::InFlight)) => {
                    let (tx, rx) = oneshot::channel();
                    st.retries.entry(id).or_default().push(tx);
                    rx
                }
                None => {
                    let Some(op) = build(st, &self.clock)? else {
                        return Ok(());
                    };
                    // A failed stage takes back its own records, nothing else.
                    let files = st.store.stage(&op)?;
                    st.ids.stage(&op);
                    let seq = match st.replica.stage(op.clone()) {
                        Ok(seq) => seq,
                        Err(e) => {
                            st.ids.forget(&op);
                            return Err(e);
                        }
                    };
                    let (tx, rx) = oneshot::channel();
                    st.queue.push(Pending {
                        seq,
                        op,
                        files,
                        done: Some(tx),
                    });
                    self.kick.notify_one();
                    rx
                }
            }
        };
        done.await.unwrap_or_else(|_| Err(shutting_down()))
    }

    /// Appends the client ids that stored operations carry to the ids file
    /// ([`crate::storage::ids`]), flushed with the next checkpoint. A
    /// failure costs only the recognition of their retries by a server
    /// that restarts before the journal is emptied, and the journal still
    /// has them until then: it is reported, not returned.
    pub(crate) fn persist_ids<'a>(
        &self,
        st: &mut State,
        ops: impl IntoIterator<Item = &'a WriteOp>,
    ) {
        let lines = ClientId::lines(ops);
        if lines.is_empty() {
            return;
        }
        use crate::storage::ids;
        let path = ids::ids_file(&self.dir);
        match ids::append(&self.dir, &lines) {
            Ok(len) if len > ids::COMPACT_BYTES => {
                // Under the state lock, so no append falls between reading
                // the ids and the rename. Those of `ops` may not be settled
                // yet: they go in by name.
                let kept = st.ids.done().map(ClientId::line).chain(lines);
                if let Err(e) = ids::rewrite(&self.dir, kept) {
                    log::error!("cannot compact {}: {e}", path.display());
                }
            }
            Ok(_) => st.store.mark_dirty(&[path]),
            Err(e) => log::error!("cannot append to {}: {e}", path.display()),
        }
    }

    /// Stops acting as master: no write gets out any more, and the
    /// timelines end so their clients move on.
    pub fn step_down(&self, why: &str) {
        let was = self.state().replica.step_down();
        if was {
            log::warn!(
                "server {} of cluster {} steps down: {why}",
                self.opts.server_id,
                self.opts.cluster
            );
        }
        self.wake_all();
    }
}
