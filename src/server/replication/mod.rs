//! Master–slave replication: synchronous mirroring, fencing and resync.
//!
//! # Mirroring
//! The master turns every client write into a [`WriteOp`] and, under the
//! state lock, *stages* it (decides its records without writing them), gives
//! it the next sequence number and queues it. The mirror task sends what has
//! queued up as one `Apply` batch to the slave, if a slave is in service; once
//! the slave has stored the batch, the master writes (flushes) the staged
//! records to its own files, wakes the timelines and answers the clients. So
//! every record a reader can see on the master, on screen or through a
//! synchronizer, is also on the slave, and a failover never takes back
//! anything that was shown or acknowledged. Writes that arrive while a batch
//! is in flight form the next batch: concurrent writers share round trips.
//!
//! When the slave does not answer, the master drops it from service, tells the
//! coordinator so (and waits for its reply), and goes on alone; the
//! coordinator never promotes a slave that is out of service.
//!
//! # Fencing
//! Every batch carries the cluster's epoch, which the coordinator raises at
//! each promotion. A server refuses a batch from a lower epoch, and the master
//! that gets such a refusal steps down. A server learns epochs only from the
//! coordinator: a batch from a higher epoch than ours changes nothing; the
//! slave asks the coordinator at once (a heartbeat now) and takes the batch
//! if the answer brought that epoch (a master just promoted, whose batch beat
//! our heartbeat), or answers `UNAVAILABLE` (an epoch nobody issued). A master
//! also holds a *lease*: the
//! time it sent its last heartbeat that the coordinator answered, plus the
//! failure window. The coordinator declares a master failed no earlier than
//! the failure window after it *received* that heartbeat, so a master that
//! lets nothing out after its lease has ended (no flush, no acknowledgement)
//! can never acknowledge a write next to a new master, even when it was
//! paused (SIGSTOP) and resumed. A batch that fails is never flushed: the
//! master drops everything staged, re-reads its files, and fails the waiting
//! writes with `UNAVAILABLE`, so the clients retry on whichever server is
//! master now. A batch whose own files fail once the journal and the slave
//! have it is not dropped but owed, and finished ([`mirror`]'s module doc).
//!
//! # What a slave takes
//! Everything a master sends is peer input, checked before anything is
//! stored: the operations of an `Apply` or a join reply as strictly as the
//! client requests they came from ([`crate::model::check_mirrored_op`]:
//! users of this cluster where the operation is theirs, valid texts, times
//! within bounds of our clock); the batch's place in the master's numbering
//! by the role core. A batch after a gap is refused as out of sync (`ABORTED`:
//! the master drops the slave, which resyncs), never skipped over; a batch
//! that starts before where the slave stands is taken up where it stands only
//! if the operations it repeats are the ones applied under those numbers (a
//! digest of the last 65,536 is kept), since a different operation there means
//! a batch that is not our master's. On the master's side, `Join` and
//! `Snapshot` check the server they name (a server id, not ours; a join also
//! its run and an address that is not ours) before the slave is taken into
//! or out of service, and a snapshot request from a higher epoch than ours
//! asks the coordinator first: we may have been deposed.
//!
//! # Resync
//! A server that is (or becomes) a slave brings its directory to the master's
//! state before it is in service:
//!
//! 1. It closes its directory to other writers (the synchronizer) with the
//!    directory gate ([`storage::close_dir`]); their pushes fail and are
//!    retried after.
//! 2. `Snapshot`: it sends each file's length and a hash of its content; the
//!    master answers, per file, the missing suffix when the slave's copy is a
//!    prefix of its own, or the whole file when it is not (a copy that diverged,
//!    e.g. on a deposed master). Files the master does not have are removed. A
//!    deleted directory is rebuilt whole. The snapshot is consistent with a
//!    sequence number: every operation up to it is in the files (an owed
//!    operation after it may be there in part; the join brings it whole). A
//!    damaged file stops nothing and is never copied ([`snapshot`]).
//! 3. `Join`: the master sends the operations after that number from its
//!    operation log and, in the same step, takes the slave into service and
//!    tells the coordinator. If the log no longer reaches back that far, the
//!    slave takes another (now small) snapshot.

//!
//! # Cut links
//! A link between master and slave that drops packets closes nothing. The
//! replica channels ([`replica_client`]) are timed by the heartbeat like
//! every channel ([`crate::trust::link`]): keep-alive, also while idle,
//! closes a connection that stopped answering within a failure window, so
//! the mirror's channel to a slave that was cut is not reused after the heal
//! (tonic connects afresh once it is closed); a connection attempt gives up
//! after a heartbeat. A resync against a master it cannot reach fails within
//! that and is started again by the next heartbeat's verdict, so a slave
//! catches up within about two heartbeats of the heal (it was 3 s: the
//! resync's connect timeout was ten failure windows, and a connection
//! attempt started during the cut waited for the SYN's retransmission). A
//! snapshot still may take ten failure windows to start (the master lists
//! its directory first); a connection that stalls meanwhile is the
//! keep-alive's.
//!
//! # Where each part lives
//! The rules (who may send, take or cut what) are in the role core,
//! [`super::role`]; this folder does the I/O they ask for:
//! [`oplog`] (the master's recent operations), [`mirror`] (the mirror task:
//! batch, journal, replicate, commit or abandon; checkpoints), [`snapshot`]
//! (the files a snapshot sends and installs), [`resync`] (a slave catching
//! up), [`sessions`] (the master's sessions told to its slave, beside the
//! write path, see [`super::session`]) and [`api`] (the `Replica` gRPC
//! service).

pub mod api;
pub mod mirror;
pub mod oplog;
pub mod resync;
pub mod sessions;
pub mod snapshot;

pub use oplog::OpLog;

use crate::error::Error;
use crate::proto::tinysns::replica_client::ReplicaClient;
use crate::trust::{PeerChannel, Timing, Trust};

/// A client for the `Replica` service of the server at `addr`, for a server
/// whose failure window is `failure_window`: timed by its heartbeat (half
/// the window; [`Timing::of`]), so a connection to a slave or master that
/// stopped answering is closed by keep-alive within a failure window even
/// when idle, a connection attempt gives up after a heartbeat, and a call
/// gives up after the window unless it names its own deadline.
pub fn replica_client(
    addr: &str,
    failure_window: std::time::Duration,
    trust: &Trust,
) -> Result<ReplicaClient<PeerChannel>, Error> {
    let ch = trust.link_with(addr, Timing::of(failure_window / 2), |e| {
        // A snapshot is tens of megabytes: HTTP/2's default 16 KB frames and
        // 64 KB windows would cut it into thousands of frames and make the
        // master wait for a window update every 64 KB (bench resync: 205 ms
        // for 93 MB with the defaults, 120 ms with these).
        e.max_frame_size(1 << 20)
            .initial_stream_window_size(16 << 20)
            .initial_connection_window_size(16 << 20)
    })?;
    Ok(ReplicaClient::new(ch)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20))
}
