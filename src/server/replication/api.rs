//! The `Replica` gRPC service: `Apply` and `Sessions` on a slave, `Snapshot`
//! and `Join` on a master. Each handler checks, asks the role core, and does the I/O.

use super::replica_client;
use super::snapshot::{self, send_snapshot};
use crate::error::Error;
use crate::model::{RunId, ServerId};
use crate::proto::tinysns::replica_server::Replica;
use crate::proto::tinysns::{
    ApplyReply, ApplyRequest, JoinReply, JoinRequest, SessionsReply, SessionsRequest,
    SnapshotChunk, SnapshotRequest,
};
use crate::server::node::Node;
use crate::server::role::{Incarnation, SlaveLink};
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

pub(crate) struct ReplicaApi(pub Arc<Node>);

/// Longest `host:port` a joining slave may give (a DNS name and a port).
const MAX_ADDRESS: usize = 253 + 6;

impl Node {
    /// The other server of the cluster named in a replica request: a server
    /// id, and not ours.
    fn check_peer_server(&self, id: u32) -> Result<ServerId, Error> {
        match ServerId::from_wire(id) {
            Some(s) if s.0 != self.opts.server_id => Ok(s),
            _ => Err(Error::Invalid(format!(
                "server {id} cannot be this server's slave"
            ))),
        }
    }
}

#[tonic::async_trait]
impl Replica for ReplicaApi {
    async fn apply(&self, req: Request<ApplyRequest>) -> Result<Response<ApplyReply>, Status> {
        // In a task of its own: a master that dies mid-call drops this
        // future, and a batch once applied to the files must still be
        // journaled and its client ids recorded, or a retry of one of its
        // posts on the promoted slave would be stored twice.
        let node = self.0.clone();
        let applied = self
            .0
            .tasks
            .spawn(async move { node.apply_batch(req.into_inner()).await });
        applied.await.map_err(Error::from)??;
        Ok(Response::new(ApplyReply {}))
    }

    type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotChunk, Status>> + Send>>;

    async fn snapshot(
        &self,
        req: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        Ok(Response::new(self.start_snapshot(req.into_inner()).await?))
    }

    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<JoinReply>, Status> {
        Ok(Response::new(self.take_in(req.into_inner()).await?))
    }

    async fn sessions(
        &self,
        req: Request<SessionsRequest>,
    ) -> Result<Response<SessionsReply>, Status> {
        self.0.take_sessions(req.into_inner())?;
        Ok(Response::new(SessionsReply {}))
    }
}

impl ReplicaApi {
    async fn start_snapshot(
        &self,
        req: SnapshotRequest,
    ) -> Result<<Self as Replica>::SnapshotStream, Error> {
        let node = &self.0;
        node.check_cluster(req.cluster_id)?;
        node.require_master()?;
        // Checked before the slave is dropped from service below.
        let asker = node.check_peer_server(req.server_id)?;
        if req.epoch > node.state().replica.epoch {
            // The slave has heard of an epoch we have not: we may have been
            // deposed. Only the coordinator can tell; ask it now.
            node.report_now().await;
            node.require_master()?;
            let ours = node.state().replica.epoch;
            if req.epoch > ours {
                return Err(Error::Unavailable(format!(
                    "the snapshot request's epoch {} is ahead of ours ({ours})",
                    req.epoch
                )));
            }
        }
        // A slave that asks for a snapshot has lost track (it restarted, or
        // missed writes): it is out of service until it joins again, and the
        // coordinator must hear so before it could promote it.
        let dropped = node.drop_slave(asker);
        if dropped && !node.report_now().await {
            return Err(Error::Unavailable("cannot reach the coordinator".into()));
        }
        // Under the state lock no operation is half done: the files hold
        // exactly the operations up to the cut. The listing grows with the
        // directory, so it runs on the blocking pool, still under the lock:
        // the cut must be consistent with `seq`.
        let (cut, seq, incarnation) = node
            .blocking(|n| {
                let st = n.state();
                let (seq, incarnation) = st.replica.snapshot_cut()?;
                let cut = snapshot::cut(&n.dir)?;
                Ok((cut, seq, incarnation))
            })
            .await?;
        let (tx, rx) = mpsc::channel(4);
        let dir = node.dir.clone();
        // Reading the files grows with the data: the blocking pool.
        node.tasks.spawn_blocking(move || {
            if let Err(e) = send_snapshot(&dir, cut, &req.files, seq, incarnation.0, &tx) {
                log::warn!("snapshot for a slave failed: {e}");
                let e = Error::Internal(format!("snapshot failed: {e}"));
                let _ = tx.blocking_send(Err(e.into()));
            }
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    async fn take_in(&self, req: JoinRequest) -> Result<JoinReply, Error> {
        let node = &self.0;
        node.check_cluster(req.cluster_id)?;
        if !node.is_master() {
            return Err(Error::Precondition("this server is not the master".into()));
        }
        // Everything is checked before the slave is taken in: a slave we
        // cannot tell from ourselves or from an earlier run would be mirrored
        // to (and reported in service) wrongly.
        let server = node.check_peer_server(req.server_id)?;
        let run = RunId::from_wire(req.process)
            .ok_or_else(|| Error::Invalid("a joining server names its run (process)".into()))?;
        if req.address.len() > MAX_ADDRESS || req.address == node.addr {
            return Err(Error::Invalid(format!(
                "cannot take in a slave at {}",
                crate::error::quote(&req.address)
            )));
        }
        // The address must be one we can dial before the slave is in service.
        replica_client(&req.address, node.failure_window, &node.opts.trust).map_err(|_| {
            Error::Invalid(format!("bad address {}", crate::error::quote(&req.address)))
        })?;
        let link = SlaveLink {
            server,
            run: Some(run),
            addr: req.address.clone(),
        };
        // Under the state lock no write is staged while the slave is taken
        // in: every operation after `from_seq` is either in this reply or
        // will be mirrored to it.
        let ops = node
            .state()
            .replica
            .join(link, req.from_seq, Incarnation(req.incarnation))?;
        let Some(ops) = ops else {
            return Ok(JoinReply {
                too_far_behind: true,
                ..Default::default()
            });
        };
        log::info!(
            "slave {} (server {}) is in service",
            req.address,
            req.server_id
        );
        let n = node.clone();
        node.tasks.spawn(async move {
            n.report_now().await;
        });
        Ok(JoinReply {
            ops,
            first_seq: req.from_seq + 1,
            too_far_behind: false,
        })
    }
}
