//! The mirror task: every staged write goes to the slave, to the journal and
//! to our files, in that order of safety, or is abandoned.
//!
//! One task takes what has queued up as one batch, journals it (one
//! `fdatasync`) while the slave stores it, then writes the staged records to
//! our files if the lease still holds, and answers the writers. Writes that
//! arrive meanwhile form the next batch: concurrent writers share round
//! trips and flushes (group commit). A batch that fails is never written:
//! it is taken back out of the journal and everything staged is dropped.

use super::replica_client;
use crate::error::Error;
use crate::model::ServerId;
use crate::proto::tinysns::replica_client::ReplicaClient;
use crate::proto::tinysns::{ApplyRequest, WriteOp};
use crate::server::node::{Node, Pending, fresh_incarnation, shutting_down};
use crate::server::role::SlaveLink;
use crate::storage::{self, FileKind};
use crate::trust::PeerChannel;
use std::sync::Arc;

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
    /// failed with `UNAVAILABLE`, so its clients retry elsewhere.
    pub(crate) async fn mirror_loop(self: Arc<Self>) {
        let mut channel = SlaveChannel::default();
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = self.kick.notified() => {}
            }
            loop {
                let batch = std::mem::take(&mut self.state().queue);
                log::trace!("mirroring a batch of {}", batch.len());
                if batch.is_empty() {
                    break;
                }
                self.mirror_batch(batch, &mut channel).await;
                if self.journal().wants_checkpoint()
                    && let Err(e) = self.blocking(|n| n.checkpoint()).await
                {
                    log::error!("checkpoint failed: {e}");
                }
                if self.shutdown.is_cancelled() {
                    break;
                }
            }
        }
        let rest = std::mem::take(&mut self.state().queue);
        for p in rest {
            let _ = p.done.send(Err(shutting_down()));
        }
    }

    async fn mirror_batch(self: &Arc<Self>, batch: Vec<Pending>, channel: &mut SlaveChannel) {
        // The journal is flushed while the slave stores the batch: the two
        // flushes overlap instead of adding up.
        let ops: Vec<WriteOp> = batch.iter().map(|p| p.op.clone()).collect();
        let mark = self.journal().len();
        let journaled = self.blocking(move |n| Ok(n.journal().append(&ops)?));
        let (replicated, journaled) = tokio::join!(self.replicate(&batch, channel), journaled);
        let result = match (replicated, journaled) {
            (Ok(()), Ok(())) => self.commit(&batch).await,
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
        match result {
            Ok(()) => {
                for p in batch {
                    let _ = p.done.send(Ok(()));
                }
            }
            Err(e) => {
                // Not written, not acknowledged: not to be replayed.
                if let Err(e) = self.journal().truncate_to(mark) {
                    log::error!("cannot take an abandoned batch out of the journal: {e}");
                }
                self.abandon(batch, e)
            }
        }
    }

    /// Flushes every data file written since the last checkpoint, then
    /// empties the journal, whose operations are now on disk in the files.
    pub(crate) fn checkpoint(&self) -> Result<(), Error> {
        let mut journal = self.journal();
        let dirty = self.state().store.take_dirty();
        if journal.enabled()
            && let Err(e) = storage::sync_files(&dirty).and_then(|_| storage::sync_dir(&self.dir))
        {
            // Still to be flushed by the next checkpoint.
            self.state().store.mark_dirty(&dirty);
            return Err(e.into());
        }
        Ok(journal.clear()?)
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
        // hung slave costs a client a slow answer, not a failed one.
        let outcome = tokio::time::timeout(self.failure_window / 2, client.apply(req)).await;
        match outcome.map(|r| r.map_err(Error::from)) {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(Error::Precondition(why))) => {
                self.step_down(&format!("slave {} refused our epoch: {why}", link.addr));
                Err(Error::Unavailable(
                    "this server is no longer the master".into(),
                ))
            }
            Ok(Err(e)) => self.go_on_without(&link, e.message()).await,
            Err(_) => self.go_on_without(&link, "no answer").await,
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

    /// Writes a replicated batch to our own files, if our lease still holds.
    async fn commit(&self, batch: &[Pending]) -> Result<(), Error> {
        self.ensure_lease().await?;
        let files: Vec<FileKind> = batch.iter().flat_map(|p| p.files.iter().copied()).collect();
        let changed = {
            let mut st = self.state();
            let changed = st.store.flush(&files)?;
            if let Some(last) = batch.last() {
                st.replica.committed(last.seq);
            }
            changed
        };
        self.wake(&changed);
        Ok(())
    }

    /// Fails a batch and everything queued after it: nothing of it was
    /// written here, and the staged records are dropped. Any slave must
    /// resync, since the operation log held operations that will not be.
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
            for p in batch.iter().chain(&rest) {
                st.ids.forget(&p.op);
            }
            rest
        };
        for p in batch.into_iter().chain(rest) {
            let _ = p.done.send(Err(e.clone()));
        }
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
            (accepted, ops, changed)
        };
        // The flush runs on this worker, like the appends before it:
        // handing it to another thread costs more than the flush holds the
        // worker up (`bench post`).
        self.journal().append(&ops)?;
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
