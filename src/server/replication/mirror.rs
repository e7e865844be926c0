//! The mirror task: every staged write goes to the slave, to the journal and
//! to our files, in that order of safety, or is abandoned.
//!
//! One task takes what has queued up as one batch, journals it (one
//! `fdatasync`) while the slave stores it, then, if the lease still holds,
//! decides it, answers the writers and writes the staged records to our
//! files. Writes that
//! arrive meanwhile form the next batch: concurrent writers share round
//! trips and flushes (group commit). A batch that fails before our files
//! (the slave, the journal, the lease) is never written: it is taken back
//! out of the journal and everything staged is dropped.
//!
//! # A batch whose files fail: owed, then finished
//! Once a batch is journaled and the slave has it, it is promised: a
//! failover or a restart would bring it back. So when writing it to our
//! files fails (disk full, an I/O error), it is not undone but *owed*, and
//! finished in order, each record once:
//!
//! * Its writers have had their answer, a yes: the write is kept (the
//!   journal, the slave) and will be finished. Their client ids stay known,
//!   so a retry is answered as done and not stored twice.
//! * It stays in the journal (no checkpoint empties the journal while
//!   anything is owed), so a restart finishes it in its replay.
//! * Its records stay staged, and it goes back to the front of the queue
//!   with what is left to write ([`Unflushed::left`]), its sequence numbers
//!   and its place in the operation log unchanged (the slave has it). So the
//!   views show the write whole, the same as the journal and the slave: a
//!   follow is "already following" and listed as a follower together, never
//!   one without the other.
//! * It goes out again with the next batch, or on its own every heartbeat,
//!   until the disk takes it; it is not journaled again, so a full disk
//!   costs one failed append a heartbeat. Writes queued behind it wait
//!   behind it.
//! * If a batch with owed writes in it fails before our files (the lease,
//!   the slave), everything staged is dropped as for any failed batch, and
//!   the owed writes are staged again at once, ahead of anything else
//!   ([`Store::restage`]: exactly the records the files lack); the log
//!   starts a new incarnation, so the slave resyncs and gets them through
//!   its join. If they cannot even be staged again (not master, a read
//!   error), they wait in `State::owed`, and every write is refused until
//!   they are staged.
//!
//! [`Store::restage`]: crate::storage::store::Store::restage
//! [`Unflushed::left`]: crate::storage::store::Unflushed::left

use super::replica_client;
use crate::error::Error;
use crate::model::ServerId;
use crate::proto::tinysns::replica_client::ReplicaClient;
use crate::proto::tinysns::{ApplyRequest, WriteOp, write_op};
use crate::server::client_ids::ClientId;
use crate::server::node::{Node, Pending, State, fresh_incarnation, shutting_down};
use crate::server::role::SlaveLink;
use crate::storage::{self, FileKind};
use crate::trust::PeerChannel;
use std::sync::Arc;
use tokio::sync::oneshot;

/// The mirror task's connection to the slave, made again when the slave
/// changes.
#[derive(Default)]
struct SlaveChannel(Option<(String, ReplicaClient<PeerChannel>)>);

impl SlaveChannel {
    fn to(&mut self, addr: &str, node: &Node) -> Result<ReplicaClient<PeerChannel>, Error> {
        match &self.0 {
            Some((a, c)) if a == addr => Ok(c.clone()),
            _ => {
                let c = replica_client(addr, node.failure_window, &node.opts.trust)?;
                self.0 = Some((addr.to_string(), c.clone()));
                Ok(c)
            }
        }
    }
}

impl Node {
    /// The mirror task: sends batches to the slave, then commits them, until
    /// shutdown. A batch in hand is finished; what is queued after it is
    /// failed with `UNAVAILABLE`, so its clients retry elsewhere (owed writes
    /// stay in the journal, for the next start).
    pub(crate) async fn mirror_loop(self: Arc<Self>) {
        let mut channel = SlaveChannel::default();
        loop {
            // Owed writes are tried again every heartbeat, and with every
            // new write; not at once, which on a full disk would spin.
            let owing = self.state().owing();
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = self.kick.notified() => {}
                _ = tokio::time::sleep(self.opts.heartbeat), if owing => {}
            }
            if let Err(e) = self.restage_owed(&mut self.state()) {
                log::debug!("owed writes not staged yet: {e}");
            }
            loop {
                let batch = std::mem::take(&mut self.state().queue);
                log::trace!("mirroring a batch of {}", batch.len());
                if batch.is_empty() {
                    break;
                }
                let through = self.mirror_batch(batch, &mut channel).await;
                if self.journal().wants_checkpoint()
                    && let Err(e) = self.blocking(|n| n.checkpoint()).await
                {
                    log::error!("checkpoint failed: {e}");
                }
                if self.shutdown.is_cancelled() || !through {
                    break;
                }
            }
        }
        let (rest, retries) = {
            let mut st = self.state();
            (
                std::mem::take(&mut st.queue),
                std::mem::take(&mut st.retries),
            )
        };
        let waiting = retries.into_values().flatten();
        for done in rest.into_iter().filter_map(|p| p.done).chain(waiting) {
            let _ = done.send(Err(shutting_down()));
        }
    }

    /// Mirrors, journals and writes one batch; says whether it went through.
    async fn mirror_batch(
        self: &Arc<Self>,
        mut batch: Vec<Pending>,
        channel: &mut SlaveChannel,
    ) -> bool {
        // The journal is flushed while the slave stores the batch: the two
        // flushes overlap instead of adding up. Owed writes are in it already.
        let ops: Vec<WriteOp> = batch
            .iter()
            .filter(|p| p.done.is_some())
            .map(|p| p.op.clone())
            .collect();
        let mark = self.journal().mark();
        let journaled = self.blocking(move |n| Ok(n.journal().append(&ops)?));
        let metrics = crate::ops::metrics::metrics();
        let started = std::time::Instant::now();
        let (replicated, journaled) = tokio::join!(self.replicate(&batch, channel), journaled);
        metrics
            .mirror_duration
            .observe(started.elapsed().as_secs_f64());
        let decided = match (replicated, journaled) {
            (Ok(()), Ok(())) => self.decide().await,
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
        if let Err(e) = decided {
            // Not written, not acknowledged: not to be replayed. (Owed
            // writes in it were journaled before `mark` too.)
            if let Err(e) = self.journal().take_back(mark) {
                log::error!(
                    "cannot take an abandoned batch out of the journal ({e}); \
                     it is cut off before anything else is appended"
                );
            }
            self.abandon(batch, e);
            return false;
        }
        // Promised: the journal and the slave have it and the lease held, so
        // a restart or a failover brings it back whatever happens to our
        // files now. The writers are answered before our files are written:
        // waiting for them would add their appends to every answer, and
        // what a reader asks meanwhile is answered from the views, which
        // hold the staged records. Without durability (`SNS_FSYNC=0`) the
        // journal holds nothing, and the files are what a restart of this
        // process finds: they are written first.
        let fresh: Vec<bool> = batch.iter().map(|p| p.done.is_some()).collect();
        self.settle(&batch, &Ok(()), true);
        metrics.mirror_batches.inc();
        metrics.mirror_ops.inc_by(batch.len() as u64);
        let acknowledged = batch.iter().filter(|p| p.done.is_some());
        let posts = acknowledged
            .clone()
            .filter(|p| matches!(p.op.op, Some(write_op::Op::Post(_))))
            .count();
        metrics
            .writes_acknowledged
            .inc_by(acknowledged.count() as u64);
        metrics.posts_written.inc_by(posts as u64);
        let mut answers: Vec<_> = batch.iter_mut().filter_map(|p| p.done.take()).collect();
        let durable = self.journal().enabled();
        if durable {
            answer(&mut answers);
        }
        let through = match self.write_files(&batch) {
            Ok(()) => {
                let owed = fresh.iter().filter(|f| !**f).count();
                if owed > 0 {
                    let mut st = self.state();
                    st.owed_staged = st.owed_staged.saturating_sub(owed);
                    drop(st);
                    log::info!("finished {owed} owed write(s)");
                }
                true
            }
            Err((e, left)) => {
                // Without durability, owing journals them, unflushed.
                self.owe(batch, &fresh, e, left);
                false
            }
        };
        answer(&mut answers);
        through
    }

    /// Flushes every data file written since the last checkpoint, then
    /// empties the journal, whose operations are now on disk in the files;
    /// unless some are owed (not all in the files): then the journal keeps
    /// everything until they are.
    pub(crate) fn checkpoint(&self) -> Result<(), Error> {
        let mut journal = self.journal();
        let (dirty, owing) = {
            let mut st = self.state();
            (st.store.take_dirty(), st.owing())
        };
        if journal.enabled()
            && let Err(e) = storage::sync_files(&dirty).and_then(|_| storage::sync_dir(&self.dir))
        {
            // Still to be flushed by the next checkpoint.
            self.state().store.mark_dirty(&dirty);
            return Err(e.into());
        }
        if owing {
            return Ok(());
        }
        Ok(journal.clear()?)
    }

    /// Stages the owed writes that wait unstaged ([`State::owed`]), in
    /// order and ahead of anything else, and queues them without a client.
    /// Only a master stages; what cannot be staged stays owed.
    pub(crate) fn restage_owed(&self, st: &mut State) -> Result<(), Error> {
        if st.owed.is_empty() {
            return Ok(());
        }
        if !st.replica.is_master() {
            return Err(self.not_master());
        }
        while let Some(op) = st.owed.first() {
            let files = st.store.restage(op).map_err(|e| {
                Error::Storage(format!(
                    "an earlier write is not finished yet, and writes wait for it: {e}"
                ))
            })?;
            let seq = st.replica.stage(op.clone())?;
            let op = st.owed.remove(0);
            st.owed_staged += 1;
            st.queue.push(Pending {
                seq,
                op,
                files,
                done: None,
            });
        }
        log::info!("owed writes staged again, to be finished");
        Ok(())
    }

    /// Hands a batch to the slave in service, if any.
    async fn replicate(&self, batch: &[Pending], channel: &mut SlaveChannel) -> Result<(), Error> {
        let (link, incarnation, epoch) = {
            let st = self.state();
            let Some(m) = st.replica.master() else {
                return Err(self.not_master());
            };
            (m.slave.clone(), m.incarnation, st.replica.epoch)
        };
        let Some(link) = link else {
            return Ok(()); // alone: the coordinator knows we have no slave in service
        };
        let req = ApplyRequest {
            cluster_id: self.opts.cluster,
            epoch,
            ops: batch.iter().map(|p| p.op.clone()).collect(),
            first_seq: batch[0].seq,
            incarnation: incarnation.0,
        };
        let mut client = channel.to(&link.addr, self)?;
        // Half the failure window: well within the clients' deadlines, so a
        // hung slave costs a client a slow answer, not a failed one. As the
        // call's deadline, a miss also replaces a stalled connection, so the
        // next batch does not wait on a half-open one (crate::trust::link).
        let deadline = self.failure_window / 2;
        let outcome = client
            .apply(crate::trust::link::with_deadline(req, deadline))
            .await;
        match outcome.map_err(Error::from) {
            Ok(_) => Ok(()),
            Err(Error::Precondition(why)) => {
                self.step_down(&format!("slave {} refused our epoch: {why}", link.addr));
                Err(Error::Unavailable(
                    "this server is no longer the master".into(),
                ))
            }
            Err(e) => self.go_on_without(&link, e.message()).await,
        }
    }

    /// The slave did not store a batch: it is out of service. Nothing may be
    /// acknowledged without it until the coordinator knows it must not
    /// promote it.
    async fn go_on_without(&self, link: &SlaveLink, why: &str) -> Result<(), Error> {
        log::warn!(
            "slave {} is out of service ({why}); going on alone",
            link.addr
        );
        self.state().replica.drop_slave(link.server);
        if self.report_now().await {
            Ok(())
        } else {
            Err(Error::Unavailable(
                "cannot reach the coordinator to go on without the slave".into(),
            ))
        }
    }

    /// Decides a replicated batch, if our lease still holds: only decided
    /// operations are replayed by a server that comes back as slave
    /// ([`crate::storage::journal`]).
    async fn decide(&self) -> Result<(), Error> {
        self.ensure_lease().await?;
        Ok(self.journal().decide()?)
    }

    /// Writes a decided batch to our own files; on failure, says why and
    /// which files are left to write.
    fn write_files(&self, batch: &[Pending]) -> Result<(), (Error, Vec<FileKind>)> {
        let files: Vec<FileKind> = batch.iter().flat_map(|p| p.files.iter().copied()).collect();
        let changed = {
            let mut st = self.state();
            let changed = st
                .store
                .flush(&files)
                .map_err(|u| (Error::from(u.error), u.left))?;
            self.persist_ids(&mut st, batch.iter().map(|p| &p.op));
            if let Some(last) = batch.last() {
                st.replica.committed(last.seq);
            }
            changed
        };
        self.wake(&changed);
        Ok(())
    }

    /// A batch whose files failed, after the journal and the slave took it
    /// and its writers were answered: owed (see the module doc). It goes
    /// back to the front of the queue, still staged, with the files `left`
    /// to write. `fresh` says which of its writes had a client (the others
    /// were owed already).
    fn owe(&self, batch: Vec<Pending>, fresh: &[bool], e: Error, left: Vec<FileKind>) {
        log::error!(
            "writing {} operation(s) to the files failed: {}; they stay in the \
             journal and are finished once the disk takes them",
            batch.len(),
            e.message()
        );
        let fresh_ops: Vec<WriteOp> = batch
            .iter()
            .zip(fresh)
            .filter(|(_, f)| **f)
            .map(|(p, _)| p.op.clone())
            .collect();
        // With durability off the journal only holds what is owed.
        if let Err(e) = self.journal().owe(&fresh_ops) {
            log::error!("cannot journal the owed operations: {e}");
        }
        let mut owed: Vec<Pending> = batch
            .into_iter()
            .map(|mut p| {
                p.files = Vec::new();
                p
            })
            .collect();
        if let Some(first) = owed.first_mut() {
            first.files = left;
        }
        let mut st = self.state();
        st.owed_staged += fresh_ops.len();
        // Ahead of what was staged after it, as its records are.
        owed.append(&mut st.queue);
        st.queue = owed;
    }

    /// Fails a batch and everything queued after it: nothing of it was
    /// written here, and the staged records are dropped. Owed writes in it
    /// or queued after it are kept and staged again at once, ahead of
    /// anything else. Any slave must resync, since the operation log held
    /// operations that will not be.
    fn abandon(&self, batch: Vec<Pending>, e: Error) {
        log::warn!(
            "abandoning {} staged write(s): {}",
            batch.len(),
            e.message()
        );
        let rest = {
            let mut st = self.state();
            st.store.reset();
            st.replica.abandon(fresh_incarnation());
            let rest = std::mem::take(&mut st.queue);
            let owed_now = |p: &&Pending| p.done.is_none();
            let mut owed: Vec<WriteOp> = batch
                .iter()
                .chain(&rest)
                .filter(owed_now)
                .map(|p| p.op.clone())
                .collect();
            st.owed_staged = st.owed_staged.saturating_sub(owed.len());
            owed.append(&mut st.owed);
            // Forgotten: the ids of writes that will not be. An owed write
            // will be, and a retry of it must be recognised.
            let fresh: Vec<&Pending> = batch
                .iter()
                .chain(&rest)
                .filter(|p| p.done.is_some())
                .collect();
            settle_ids(&mut st, fresh, &Err(e.clone()), false);
            st.owed = owed;
            if let Err(e) = self.restage_owed(&mut st) {
                log::warn!("owed writes not staged again yet: {e}");
            }
            rest
        };
        for done in batch.into_iter().chain(rest).filter_map(|p| p.done) {
            let _ = done.send(Err(e.clone()));
        }
    }

    /// Settles the client ids of a batch's writes, and answers the retries
    /// that waited for them with the same outcome.
    /// Owed writes in it are settled too: most are done already, but those
    /// a restart found in flight ([`crate::server::OpenedDir::in_flight`])
    /// are settled by the batch that finishes them.
    fn settle(&self, batch: &[Pending], outcome: &Result<(), Error>, stored: bool) {
        settle_ids(&mut self.state(), batch.iter().collect(), outcome, stored);
    }

    /// Checks operations a master sent us (an `Apply`, a join reply) as
    /// strictly as the client requests they came from
    /// ([`crate::model::check_mirrored_op`]); the first bad one refuses them
    /// all, before anything is written.
    pub(crate) fn check_mirrored(&self, ops: &[WriteOp]) -> Result<(), Error> {
        let cluster = crate::model::ClusterId(self.opts.cluster);
        let now = crate::timefmt::now();
        for (i, op) in ops.iter().enumerate() {
            crate::model::check_mirrored_op(op, cluster, self.clusters, now)
                .map_err(|why| Error::Invalid(format!("operation #{i}: {why}")))?;
        }
        Ok(())
    }

    /// As a slave: takes a batch of mirrored operations from the master.
    /// Every check comes before anything is stored; the epoch of the batch
    /// is compared with ours, never adopted (see [`crate::server::role`]).
    pub(crate) async fn apply_batch(self: &Arc<Self>, req: ApplyRequest) -> Result<(), Error> {
        // Wait for a resync in progress: its operations come first.
        let _gate = self.resync_gate.lock().await;
        self.check_cluster(req.cluster_id)?;
        self.check_mirrored(&req.ops)?;
        let incarnation = crate::server::role::Incarnation(req.incarnation);
        let accept = |n: &Node| {
            n.state()
                .replica
                .accept_batch(req.epoch, incarnation, req.first_seq, &req.ops)
        };
        if let Err(Error::Unavailable(why)) = accept(self) {
            // The batch's epoch is ahead of ours: a master just confirmed at
            // a new epoch, or a batch whose epoch nobody issued. Only the
            // coordinator can tell; ask it now, then look again.
            log::info!("a mirrored batch: {why}; asking the coordinator");
            self.report_now().await;
        }
        let (accepted, ops, changed) = {
            let mut st = self.state();
            let accepted =
                st.replica
                    .accept_batch(req.epoch, incarnation, req.first_seq, &req.ops)?;
            let ops: Vec<WriteOp> = req.ops.get(accepted.skip..).unwrap_or(&[]).to_vec();
            let mut changed = Vec::new();
            for op in &ops {
                changed.extend(st.store.apply(op)?);
            }
            self.persist_ids(&mut st, &ops);
            (accepted, ops, changed)
        };
        // The flush runs on this worker, like the appends before it:
        // handing it to another thread costs more than the flush holds the
        // worker up (`bench post`).
        self.journal().append_decided(&ops)?;
        if self.journal().wants_checkpoint()
            && let Err(e) = self.blocking(|n| n.checkpoint()).await
        {
            log::error!("checkpoint failed: {e}");
        }
        {
            let mut st = self.state();
            for op in &ops {
                st.ids.record(op);
            }
            st.replica.applied(req.first_seq, accepted, &req.ops);
        }
        self.wake(&changed);
        Ok(())
    }

    /// Takes `server` out of service if it is the slave in service; says
    /// whether it was.
    pub(crate) fn drop_slave(&self, server: ServerId) -> bool {
        self.state().replica.drop_slave(server)
    }
}

/// Tells the writers of a decided batch yes.
fn answer(answers: &mut Vec<oneshot::Sender<Result<(), Error>>>) {
    for done in answers.drain(..) {
        let _ = done.send(Ok(()));
    }
}

/// The writes of `batch` are `stored` (or promised), or will never be:
/// their ids are done, or forgotten so that a retry stores them; either way
/// the retries waiting for them get `outcome`.
fn settle_ids(st: &mut State, batch: Vec<&Pending>, outcome: &Result<(), Error>, stored: bool) {
    for p in batch {
        if stored {
            st.ids.settle(&p.op);
        } else {
            st.ids.forget(&p.op);
        }
        let waiting = ClientId::of(&p.op).and_then(|id| st.retries.remove(&id));
        for w in waiting.into_iter().flatten() {
            let _ = w.send(outcome.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::error::Error;
    use crate::model::UserId;
    use crate::proto::tinysns::{AddUser, FollowOp, WriteOp, write_op};
    use crate::server::client_ids::{ClientId, Known};
    use crate::server::node::{Node, Opened};
    use crate::server::role::{Incarnation, Verdict};
    use crate::server::{Options, open_dir};
    use crate::storage::faults;
    use crate::storage::{followers_file, following_file, posts_file};
    use std::path::Path;
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    use tokio::sync::mpsc;
    use tokio_util::sync::CancellationToken;

    fn add_user(user: u64) -> WriteOp {
        WriteOp {
            op: Some(write_op::Op::AddUser(AddUser { user })),
        }
    }

    fn follow(follower: u64, followee: u64, time_ns: i64, request_id: u64) -> WriteOp {
        WriteOp {
            op: Some(write_op::Op::Follow(FollowOp {
                follower,
                followee,
                time_ns,
                follow: true,
                request_id,
            })),
        }
    }

    fn lines(path: &Path) -> usize {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .count()
    }

    fn journal(node: &Node) -> String {
        std::fs::read_to_string(node.dir.join("journal.txt")).unwrap_or_default()
    }

    /// A master of cluster 1 (of 3) without a slave, opened on `data` as a
    /// start does, with its mirror task running. The coordinator is played
    /// by a task that renews the lease whenever asked.
    fn master(data: &Path, heartbeat: Duration) -> Arc<Node> {
        let opts = options(data, heartbeat);
        let dir = crate::config::server_dir(data, 1, 1);
        let opened = open_dir(&dir, &opts, 3, true).unwrap();
        let node = start(opts, dir, opened);
        tokio::spawn(node.clone().mirror_loop());
        node
    }

    fn options(data: &Path, heartbeat: Duration) -> Options {
        Options {
            cluster: 1,
            server_id: 1,
            coordinator: "127.0.0.1:1".into(),
            host: "127.0.0.1".into(),
            port: 1,
            heartbeat,
            fsync: true,
            http_port: None,
            data_dir: data.to_path_buf(),
            trust: crate::trust::Trust::new(crate::trust::ClusterKey::generate(), None),
            limits: crate::config::Limits::default(),
        }
    }

    fn start(
        opts: Options,
        dir: std::path::PathBuf,
        opened: crate::server::OpenedDir,
    ) -> Arc<Node> {
        let (ask, mut asks) = mpsc::channel::<tokio::sync::oneshot::Sender<bool>>(16);
        let node = Arc::new(Node::new(
            opts,
            Opened {
                dir,
                clusters: 3,
                run: crate::model::RunId(1),
                store: opened.store,
                journal: opened.journal,
                owed: opened.owed,
            },
            ask,
            CancellationToken::new(),
        ));
        let verdict = Verdict {
            master: true,
            epoch: 1,
            in_service: false,
            master_addr: None,
        };
        let renew = move |n: &Node| {
            n.state()
                .replica
                .on_verdict(&verdict, Instant::now(), None, Incarnation(1));
        };
        renew(&node);
        let n = node.clone();
        tokio::spawn(async move {
            while let Some(reply) = asks.recv().await {
                renew(&n);
                let _ = reply.send(true);
            }
        });
        node
    }

    async fn write(node: &Node, op: WriteOp) -> Result<(), Error> {
        node.write(ClientId::of(&op), move |_, _| Ok(Some(op)))
            .await
    }

    /// A master whose mirror task is not running yet: what is written
    /// stays in flight until the test moves it on.
    fn held_master(data: &Path) -> Arc<Node> {
        let opts = options(data, Duration::from_secs(60));
        let dir = crate::config::server_dir(data, 1, 1);
        let opened = open_dir(&dir, &opts, 3, true).unwrap();
        start(opts, dir, opened)
    }

    /// Writes `op` twice, the second time while the first is in flight,
    /// and returns both writers.
    async fn write_twice(
        node: &Arc<Node>,
        op: WriteOp,
    ) -> [tokio::task::JoinHandle<Result<(), Error>>; 2] {
        let id = ClientId::of(&op).unwrap();
        let spawn = |op: WriteOp| {
            let n = node.clone();
            tokio::spawn(async move { write(&n, op).await })
        };
        let first = spawn(op.clone());
        while node.state().queue.is_empty() {
            tokio::task::yield_now().await;
        }
        let retry = spawn(op);
        while !node.state().retries.contains_key(&id) {
            tokio::task::yield_now().await;
        }
        [first, retry]
    }

    fn post(author: u64, post_id: u64) -> WriteOp {
        WriteOp {
            op: Some(write_op::Op::Post(crate::proto::tinysns::PostOp {
                author,
                time_ns: 1_763_921_407_000_000_000,
                text: "hello".into(),
                post_id,
            })),
        }
    }

    #[tokio::test]
    async fn a_retry_of_a_write_in_flight_gets_its_outcome_not_an_early_yes() {
        let data = tempfile::tempdir().unwrap();
        let node = held_master(data.path());
        // Abandoned: both copies fail, and a later retry stores it.
        let [first, retry] = write_twice(&node, post(4, 9)).await;
        let batch = std::mem::take(&mut node.state().queue);
        node.abandon(batch, Error::Unavailable("the slave went away".into()));
        assert!(first.await.unwrap().is_err());
        assert!(retry.await.unwrap().is_err(), "nothing was stored");
        let id = ClientId::of(&post(4, 9)).unwrap();
        assert_eq!(node.state().ids.lookup(id), None);
        // Stored: both copies succeed, and the post is stored once.
        let [first, retry] = write_twice(&node, post(4, 9)).await;
        tokio::spawn(node.clone().mirror_loop());
        first.await.unwrap().unwrap();
        retry.await.unwrap().unwrap();
        assert_eq!(lines(&posts_file(&node.dir, 4)), 4, "one record");
        node.shutdown.cancel();
    }

    #[tokio::test]
    async fn a_follow_whose_second_file_fails_is_owed_and_finished_by_the_next_write() {
        let data = tempfile::tempdir().unwrap();
        let node = master(data.path(), Duration::from_secs(60));
        let d = node.dir.clone();
        write(&node, add_user(1)).await.unwrap();
        write(&node, add_user(4)).await.unwrap();
        // The disk is full once 4's side of the follow is written.
        faults::fail_appends(&followers_file(&d, 1), 0, 3, 1);
        // Answered yes: the journal has it (alone, the master has no slave
        // to wait for). The mirror task writes the files after the answer,
        // on this test's one thread, before the test goes on.
        write(&node, follow(4, 1, 100, 77)).await.unwrap();
        // Half in the files for now, whole in the views and the journal.
        assert_eq!(lines(&following_file(&d, 4)), 1);
        assert_eq!(lines(&followers_file(&d, 1)), 0);
        {
            let mut st = node.state();
            assert!(st.owing());
            let u = |n| UserId::new(n).unwrap();
            assert!(st.store.following(u(4)).unwrap().contains(1));
            assert!(st.store.followers(u(1)).unwrap().contains(4));
            // A retry with the same id is known: not stored twice.
            assert!(st.ids.contains(ClientId::Request { user: u(4), id: 77 }));
        }
        // No checkpoint empties the journal while the follow is owed.
        node.checkpoint().unwrap();
        assert!(journal(&node).contains("F 4 1 100 + 77"));
        // The next write finishes it first, each record once.
        write(&node, add_user(7)).await.unwrap();
        assert_eq!(lines(&following_file(&d, 4)), 1);
        assert_eq!(lines(&followers_file(&d, 1)), 1);
        assert!(!node.state().owing());
        node.checkpoint().unwrap();
        assert_eq!(journal(&node), "");
        node.shutdown.cancel();
    }

    #[tokio::test]
    async fn an_owed_write_outlives_a_batch_that_fails_before_the_files() {
        let data = tempfile::tempdir().unwrap();
        let node = master(data.path(), Duration::from_secs(60));
        let d = node.dir.clone();
        write(&node, add_user(1)).await.unwrap();
        write(&node, add_user(4)).await.unwrap();
        faults::fail_appends(&followers_file(&d, 1), 0, 0, 1);
        // The journal takes the follow and its mark, then not the next write.
        faults::fail_appends(&d.join("journal.txt"), 2, 0, 1);
        // Answered yes, kept: its files fail after the answer.
        write(&node, follow(4, 1, 100, 0)).await.unwrap();
        let e = write(&node, add_user(7)).await.unwrap_err();
        assert!(!e.message().contains("kept"), "{e:?}");
        {
            // Everything staged was dropped; the owed follow is staged
            // again, whole in the views, and 7 was never added.
            let mut st = node.state();
            assert!(st.owing());
            let u = |n| UserId::new(n).unwrap();
            assert!(st.store.followers(u(1)).unwrap().contains(4));
            assert!(!st.store.users().unwrap().contains(&7));
        }
        write(&node, add_user(10)).await.unwrap();
        assert!(!node.state().owing());
        assert_eq!(lines(&following_file(&d, 4)), 1);
        assert_eq!(lines(&followers_file(&d, 1)), 1);
        let users = std::fs::read_to_string(d.join("all_users.txt")).unwrap();
        assert_eq!(users, "1\n4\n10\n");
        node.shutdown.cancel();
    }

    #[tokio::test]
    async fn an_owed_write_is_retried_every_heartbeat_until_the_disk_takes_it() {
        let data = tempfile::tempdir().unwrap();
        let node = master(data.path(), Duration::from_millis(20));
        let d = node.dir.clone();
        write(&node, add_user(4)).await.unwrap();
        // The disk stays full for three more tries.
        faults::fail_appends(&followers_file(&d, 1), 0, 0, 4);
        write(&node, follow(4, 1, 100, 0)).await.unwrap();
        let start = Instant::now();
        while node.state().owing() {
            assert!(start.elapsed() < Duration::from_secs(30), "never finished");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(lines(&following_file(&d, 4)), 1);
        assert_eq!(lines(&followers_file(&d, 1)), 1);
        node.shutdown.cancel();
    }

    /// What a master killed right after journaling a batch leaves: one
    /// decided batch (user 4) and one in flight (4's post, id 9).
    fn journal_caught_in_flight(data: &Path) -> std::path::PathBuf {
        let dir = crate::config::server_dir(data, 1, 1);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("journal.txt"), "A 4\nC\nP 4 100 9 hello\n").unwrap();
        dir
    }

    #[test]
    fn a_server_that_comes_back_as_slave_never_replays_a_batch_in_flight() {
        let data = tempfile::tempdir().unwrap();
        let dir = journal_caught_in_flight(data.path());
        let opts = options(data.path(), Duration::from_secs(60));
        let opened = open_dir(&dir, &opts, 3, false).unwrap();
        assert_eq!(opened.replay.len(), 1, "the user only");
        assert!(!posts_file(&dir, 4).exists(), "the post is not visible");
        assert!(dir.join("all_users.txt").exists());
        drop(opened);
        // Nor later, whatever this server becomes.
        let opened = open_dir(&dir, &opts, 3, true).unwrap();
        assert!(opened.replay.is_empty());
        assert!(!posts_file(&dir, 4).exists());
    }

    #[tokio::test]
    async fn a_server_that_comes_back_as_master_owes_it_and_finishes_it_once() {
        let data = tempfile::tempdir().unwrap();
        let dir = journal_caught_in_flight(data.path());
        let opts = options(data.path(), Duration::from_secs(60));
        let opened = open_dir(&dir, &opts, 3, true).unwrap();
        // Not written at start-up: the lease and the slave decide it.
        assert_eq!(opened.replay.len(), 1, "the user only");
        assert_eq!(opened.owed.len(), 1);
        assert!(!posts_file(&dir, 4).exists());
        let node = start(opts, dir.clone(), opened);
        let id = ClientId::of(&post(4, 9)).unwrap();
        node.state().ids.stage(&post(4, 9));
        assert_eq!(node.state().ids.lookup(id), Some(Known::InFlight));
        // A retry waits for it, and it is stored once, as a write is.
        let n = node.clone();
        let retry = tokio::spawn(async move { write(&n, post(4, 9)).await });
        while !node.state().retries.contains_key(&id) {
            tokio::task::yield_now().await;
        }
        tokio::spawn(node.clone().mirror_loop());
        node.kick.notify_one();
        retry.await.unwrap().unwrap();
        assert_eq!(lines(&posts_file(&dir, 4)), 4, "one record");
        assert_eq!(node.state().ids.lookup(id), Some(Known::Done));
        assert!(journal(&node).ends_with("C\n"), "decided now");
        node.shutdown.cancel();
    }

    #[tokio::test]
    async fn a_replay_that_fails_stops_there_and_is_finished_when_master() {
        let data = tempfile::tempdir().unwrap();
        let dir = crate::config::server_dir(data.path(), 1, 1);
        std::fs::create_dir_all(&dir).unwrap();
        // A crash left a journal whose records never reached the files.
        std::fs::write(
            dir.join("journal.txt"),
            "A 4\nF 4 1 100 + 77\nF 4 7 200 + 78\nC\n",
        )
        .unwrap();
        faults::fail_appends(&followers_file(&dir, 1), 0, 2, 1);
        let node = master(data.path(), Duration::from_secs(60));
        // The replay stopped at the follow; what is left stays journaled.
        assert_eq!(node.state().owed.len(), 2);
        assert!(journal(&node).contains("F 4 7 200 + 78"));
        assert_eq!(lines(&following_file(&dir, 4)), 1);
        // Once master, the first write stages them first and finishes them.
        write(&node, add_user(10)).await.unwrap();
        assert!(!node.state().owing());
        assert_eq!(lines(&following_file(&dir, 4)), 2);
        assert_eq!(lines(&followers_file(&dir, 1)), 1);
        assert_eq!(lines(&followers_file(&dir, 7)), 1);
        node.shutdown.cancel();
    }
}
