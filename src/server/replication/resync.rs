//! Resync: a slave brings its directory to its master's state and joins.
//!
//! 1. It closes its directory to other writers (the synchronizer) with the
//!    directory gate ([`storage::close_dir`]); their pushes fail and are
//!    retried after.
//! 2. `Snapshot`: it describes its files and installs what the master sends
//!    ([`super::snapshot`]), consistent with one sequence number.
//! 3. `Join`: it applies the operations after that number, and the master
//!    takes it into service in the same step. If the master's log no longer
//!    reaches back that far, it takes another (now small) snapshot.
//!
//! The disk work runs on the blocking pool, so heartbeats go on during a
//! long resync. The snapshot's pieces are written by one job fed through a
//! queue of `PIECES_QUEUED`, so receiving overlaps writing (issue 12; the
//! figures are in [`super::snapshot`]'s "Speed"). A resync stops where it stands at shutdown, once the disk
//! job in hand has ended (the directory stays closed until then): what it
//! wrote is whole pieces of files that are not in service yet (a torn last
//! record is cut at the next start), and the next start resyncs again.

use super::replica_client;
use super::snapshot::{Installer, manifest};
use crate::error::Error;
use crate::proto::tinysns::replica_client::ReplicaClient;
use crate::proto::tinysns::{JoinRequest, SnapshotChunk, SnapshotRequest};
use crate::server::client_ids::{ClientId, ClientIds};
use crate::server::node::{Node, shutting_down};
use crate::server::role::{Following, Incarnation, Seq};
use crate::storage;
use crate::trust::PeerChannel;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How many snapshots a resync takes before it gives up for this round.
const ATTEMPTS: usize = 5;

/// Pieces received and not yet written (a piece is up to a megabyte).
const PIECES_QUEUED: usize = 4;

impl Node {
    /// As a slave: brings the directory to the master's state, then joins.
    pub(crate) async fn resync(self: Arc<Self>, master: String) {
        let _gate = self.resync_gate.lock().await;
        let result = tokio::select! {
            _ = self.shutdown.cancelled() => Err(shutting_down()),
            r = self.resync_from(&master) => r,
        };
        match result {
            Ok(following) => {
                log::info!("in sync with master {master}");
                crate::ops::metrics::metrics().resyncs.inc();
                self.state().replica.resync_done(Some(following));
            }
            Err(e) => {
                log::warn!("resync from {master} failed: {e}; will retry");
                self.state().replica.resync_done(None);
            }
        }
        self.wake_all();
    }

    async fn resync_from(self: &Arc<Self>, master: &str) -> Result<Following, Error> {
        let started = Instant::now();
        // Shared with each disk job of the resync: a job that outlives this
        // future (shutdown drops it) keeps the directory closed until it ends.
        let gate = Arc::new(self.blocking(|n| Ok(storage::close_dir(&n.dir)?)).await?);
        // Timed by our heartbeat: a master that drops packets (a cut that
        // has not healed) fails this resync within a heartbeat's connect
        // timeout, and the next heartbeat's verdict starts another, so a
        // heal is followed within about two heartbeats, not after a long
        // timeout against a dead address.
        let mut client = replica_client(master, self.failure_window, &self.opts.trust)?;
        for _ in 0..ATTEMPTS {
            let installed = self.install_snapshot(&mut client, &gate).await?;
            let Some((following, ops)) = self.join_master(&mut client, master, &installed).await?
            else {
                log::info!("master {master} moved on during the snapshot; taking another");
                continue;
            };
            log::info!(
                "resynced from {master}: {} bytes and {ops} operations in {:?} \
                 (received after {:?}, then flushed in {:?})",
                installed.bytes,
                started.elapsed(),
                installed.received - started,
                installed.flushed - installed.received,
            );
            drop(gate);
            return Ok(following);
        }
        Err(Error::Unavailable(
            "the master kept moving on; giving up for now".into(),
        ))
    }

    /// Step 2: asks for what our files lack and installs it, flushed.
    async fn install_snapshot(
        self: &Arc<Self>,
        client: &mut ReplicaClient<PeerChannel>,
        gate: &Arc<std::fs::File>,
    ) -> Result<Installed, Error> {
        let files = self.blocking(|n| Ok(manifest(&n.dir)?)).await?;
        let req = SnapshotRequest {
            cluster_id: self.opts.cluster,
            epoch: self.state().replica.epoch,
            files,
            server_id: self.opts.server_id,
        };
        // The master lists its directory before it answers: more time than
        // a call, as before; a connection that stops answering meanwhile is
        // the keep-alive's to close, within a failure window.
        let limit = 10 * self.failure_window.max(Duration::from_secs(1));
        let asked = Instant::now();
        let mut stream = client
            .snapshot(crate::trust::with_deadline(req, limit))
            .await
            .map_err(Error::from)?
            .into_inner();
        // One disk job writes every piece, fed through a short queue: the
        // next pieces are received and decoded while this one is written
        // (a job per piece waited for each write before reading on).
        let (pieces, mut queue) = mpsc::channel::<SnapshotChunk>(PIECES_QUEUED);
        let mut installer = Installer::new(self.dir.clone(), self.opts.fsync);
        let writer_gate = gate.clone();
        let writer = self.tasks.spawn_blocking(move || {
            let _gate = writer_gate;
            while let Some(c) = queue.blocking_recv() {
                installer.write(&c)?;
            }
            Ok::<_, Error>(installer)
        });
        let mut first = None;
        let received = loop {
            let message = match stream.message().await {
                Ok(m) => m,
                Err(e) => break Err(Error::from(e)),
            };
            first.get_or_insert_with(Instant::now);
            match message {
                Some(c) if c.done => break Ok(c),
                Some(c) => {
                    super::snapshot::keep_freed_memory();
                    if pieces.send(c).await.is_err() {
                        // The writer stopped on an error: its result says which.
                        break Err(Error::Internal("the snapshot writer stopped".into()));
                    }
                }
                None => break Err(Error::Unavailable("the snapshot ended early".into())),
            }
        };
        drop(pieces);
        let written = writer.await.map_err(Error::from)?;
        // A writer's error says more than the "stopped" it left the stream.
        let installer = written?;
        let mut done = received?;
        log::debug!(
            "snapshot: first piece {:?} after asking, all {} bytes {:?} after; \
             writing {:?}, starting writeback {:?}",
            first.map(|t| t - asked),
            installer.bytes,
            asked.elapsed(),
            installer.writing,
            installer.writeback,
        );
        let bytes = installer.bytes;
        let received = Instant::now();
        let files = std::mem::take(&mut done.files);
        let gate = gate.clone();
        self.blocking(move |n| {
            let _gate = gate;
            installer.finish(&files)?;
            {
                let mut st = n.state();
                st.store.reset();
                // The files are the master's now: what we owed as a master
                // is the master's to have (it was mirrored) or never was.
                st.queue.retain(|p| p.done.is_some());
                st.owed_staged = 0;
                if !st.owed.is_empty() {
                    log::warn!(
                        "dropping {} owed write(s): the directory is the master's now",
                        st.owed.len()
                    );
                    st.owed.clear();
                }
                // The master's client ids came with its files: a retry of
                // a write we only know from the snapshot is recognised too.
                // Ours go: some may be of writes the master abandoned,
                // which its files do not hold (a retry must store them).
                // Retries waiting here for writes of ours that will not be
                // finished are told so.
                st.ids = ClientIds::default();
                for (_, waiting) in std::mem::take(&mut st.retries) {
                    for w in waiting {
                        let _ = w.send(Err(Error::Unavailable(
                            "this server is a slave now; ask the coordinator for the master".into(),
                        )));
                    }
                }
                let known = crate::storage::ids::load(&n.dir).unwrap_or_else(|e| {
                    log::error!("{e}; the master's client ids are not known here");
                    Vec::new()
                });
                for id in known.into_iter().filter_map(ClientId::from_line) {
                    st.ids.insert(id);
                }
            }
            // The journal held operations on the files as they were; they
            // are the master's files now, flushed.
            n.checkpoint()
        })
        .await?;
        Ok(Installed {
            seq: done.seq,
            incarnation: Incarnation(done.incarnation),
            bytes,
            received,
            flushed: Instant::now(),
        })
    }

    /// Step 3: joins at the snapshot's cut and applies the operations
    /// since; `None` if the master's log no longer reaches back that far.
    async fn join_master(
        self: &Arc<Self>,
        client: &mut ReplicaClient<PeerChannel>,
        master: &str,
        installed: &Installed,
    ) -> Result<Option<(Following, usize)>, Error> {
        let join = JoinRequest {
            cluster_id: self.opts.cluster,
            server_id: self.opts.server_id,
            address: self.addr.clone(),
            from_seq: installed.seq,
            incarnation: installed.incarnation.0,
            process: self.run.0,
        };
        let reply = client.join(join).await.map_err(Error::from)?.into_inner();
        if reply.too_far_behind {
            return Ok(None);
        }
        // The master's operations are peer input: all checked before any is
        // applied, and numbered from just after the snapshot's cut.
        if reply.first_seq != installed.seq.saturating_add(1) {
            return Err(Error::Invalid(format!(
                "the join reply starts at operation {}, not {} after the snapshot",
                reply.first_seq,
                installed.seq.saturating_add(1)
            )));
        }
        self.check_mirrored(&reply.ops)?;
        let changed = {
            let mut st = self.state();
            let mut changed = Vec::new();
            for op in &reply.ops {
                changed.extend(st.store.apply(op)?);
                st.ids.record(op);
            }
            self.persist_ids(&mut st, &reply.ops);
            changed
        };
        let n = reply.ops.len();
        let following = Following::joined(
            master.to_string(),
            installed.incarnation,
            reply.first_seq,
            &reply.ops,
        );
        let ops = reply.ops;
        self.blocking(move |node| Ok(node.journal().append_decided(&ops)?))
            .await?;
        self.wake(&changed);
        Ok(Some((following, n)))
    }
}

/// A snapshot installed and flushed.
struct Installed {
    seq: Seq,
    incarnation: Incarnation,
    bytes: u64,
    received: Instant,
    flushed: Instant,
}
