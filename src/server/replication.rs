//! Master–slave replication: synchronous mirroring, fencing and resync.
//!
//! # Mirroring
//! The master turns every client write into a [`WriteOp`] and, under the
//! store lock, *stages* it (decides its records without writing them), gives
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
//! that gets such a refusal steps down. A master also holds a *lease*: the
//! time it sent its last heartbeat that the coordinator answered, plus the
//! failure window. The coordinator declares a master failed no earlier than
//! the failure window after it *received* that heartbeat, so a master that
//! lets nothing out after its lease has ended (no flush, no acknowledgement)
//! can never acknowledge a write next to a new master, even when it was
//! paused (SIGSTOP) and resumed. A batch that fails is never flushed: the
//! master drops everything staged, re-reads its files, and fails the waiting
//! writes with `UNAVAILABLE`, so the clients retry on whichever server is
//! master now.
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
//!    sequence number: every operation up to it is in the files.
//! 3. `Join`: the master sends the operations after that number from its
//!    operation log and, in the same step, takes the slave into service and
//!    tells the coordinator. If the log no longer reaches back that far, the
//!    slave takes another (now small) snapshot.

use crate::proto::tinysns::replica_client::ReplicaClient;
use crate::proto::tinysns::replica_server::Replica;
use crate::proto::tinysns::{
    ApplyReply, ApplyRequest, FileState, JoinReply, JoinRequest, Role, SnapshotChunk,
    SnapshotRequest, WriteOp, write_op,
};
use crate::server::{Node, Pending, lock, storage_error};
use crate::storage::{self, FileKind};
use std::collections::{HashMap, VecDeque};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How many recent operations a master keeps for slaves that are joining.
const LOG_CAPACITY: usize = 100_000;
/// Size of the pieces of a snapshot: the frame size below (256 KB and 4 MB
/// pieces were both slower).
const CHUNK: usize = 1 << 20;

/// The master's recent operations, numbered from 1 in each incarnation.
#[derive(Debug, Default)]
pub struct OpLog {
    ops: VecDeque<WriteOp>,
    /// Number of the last operation (0 = none yet).
    last: u64,
}

impl OpLog {
    pub fn push(&mut self, op: WriteOp) -> u64 {
        if self.ops.len() == LOG_CAPACITY {
            self.ops.pop_front();
        }
        self.ops.push_back(op);
        self.last += 1;
        self.last
    }

    pub fn last(&self) -> u64 {
        self.last
    }

    /// The operations after `seq`, if the log still has all of them.
    pub fn since(&self, seq: u64) -> Option<Vec<WriteOp>> {
        let first_kept = self.last + 1 - self.ops.len() as u64;
        if seq + 1 < first_kept || seq > self.last {
            return None;
        }
        let skip = (seq + 1 - first_kept) as usize;
        Some(self.ops.iter().skip(skip).cloned().collect())
    }
}

/// The slave in service, as the master sees it.
#[derive(Clone)]
pub struct SlaveLink {
    pub server_id: u32,
    /// The slave's run that joined (`ServerInfo.process`).
    pub process: u64,
    pub addr: String,
    pub client: ReplicaClient<Channel>,
}

/// As a slave: the master we follow and where we are in its operations.
#[derive(Debug, Clone)]
pub struct Following {
    pub master: String,
    pub incarnation: u64,
    pub next_seq: u64,
}

pub fn replica_client(
    addr: &str,
    timeout: std::time::Duration,
) -> Result<ReplicaClient<Channel>, BoxError> {
    let ch = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(timeout)
        .timeout(timeout)
        // A snapshot is tens of megabytes: HTTP/2's default 16 KB frames and
        // 64 KB windows would cut it into thousands of frames and make the
        // master wait for a window update every 64 KB (bench resync: 205 ms
        // for 93 MB with the defaults, 120 ms with these).
        .max_frame_size(1 << 20)
        .initial_stream_window_size(16 << 20)
        .initial_connection_window_size(16 << 20)
        .connect_lazy();
    Ok(ReplicaClient::new(ch)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20))
}

impl Node {
    /// The mirror task: sends batches to the slave, then commits them.
    pub(crate) async fn mirror_loop(self: Arc<Self>) {
        loop {
            self.mirror.kick.notified().await;
            loop {
                let batch = std::mem::take(&mut *lock(&self.mirror.queue));
                log::trace!("mirroring a batch of {}", batch.len());
                if batch.is_empty() {
                    break;
                }
                // The journal is flushed while the slave stores the batch:
                // the two flushes overlap instead of adding up.
                let ops: Vec<WriteOp> = batch.iter().map(|p| p.op.clone()).collect();
                let node = self.clone();
                let mark = lock(&self.journal).len();
                let journaled =
                    tokio::task::spawn_blocking(move || lock(&node.journal).append(&ops));
                let (replicated, journaled) = tokio::join!(self.replicate(&batch), journaled);
                let result = match (replicated, journaled) {
                    (Ok(()), Ok(Ok(()))) => self.commit(&batch).await,
                    (Err(status), _) => Err(status),
                    (_, Ok(Err(e))) => Err(storage_error(e)),
                    (_, Err(e)) => Err(Status::internal(format!("journal task failed: {e}"))),
                };
                match result {
                    Ok(()) => {
                        for p in batch {
                            let _ = p.done.send(Ok(()));
                        }
                    }
                    Err(status) => {
                        // Not written, not acknowledged: not to be replayed.
                        if let Err(e) = lock(&self.journal).truncate_to(mark) {
                            log::error!("cannot take an abandoned batch out of the journal: {e}");
                        }
                        self.abandon(batch, status)
                    }
                }
                if lock(&self.journal).wants_checkpoint() {
                    let node = self.clone();
                    match tokio::task::spawn_blocking(move || node.checkpoint()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => log::error!("checkpoint failed: {e}"),
                        Err(e) => log::error!("checkpoint task failed: {e}"),
                    }
                }
            }
        }
    }

    /// Flushes every data file written since the last checkpoint, then
    /// empties the journal, whose operations are now on disk in the files.
    pub(crate) fn checkpoint(&self) -> std::io::Result<()> {
        let mut journal = lock(&self.journal);
        let dirty = lock(&self.store).take_dirty();
        if journal.enabled()
            && let Err(e) = storage::sync_files(&dirty).and_then(|_| storage::sync_dir(&self.dir))
        {
            // Still to be flushed by the next checkpoint.
            lock(&self.store).mark_dirty(&dirty);
            return Err(e);
        }
        journal.clear()
    }

    /// As a slave: journals operations just applied (see [`crate::storage::journal`]).
    /// The flush runs on this worker thread, like the appends before it:
    /// handing it to another thread costs more than the flush holds the
    /// worker up (`bench post`).
    fn journal(&self, ops: &[WriteOp]) -> Result<(), Status> {
        lock(&self.journal).append(ops).map_err(storage_error)
    }

    /// Hands a batch to the slave in service, if any.
    async fn replicate(&self, batch: &[Pending]) -> Result<(), Status> {
        let (link, incarnation) = {
            let repl = lock(&self.repl);
            (repl.slave.clone(), repl.incarnation)
        };
        let Some(link) = link else {
            return Ok(()); // alone: the coordinator knows we have no slave in service
        };
        let req = ApplyRequest {
            cluster_id: self.opts.cluster,
            epoch: self.epoch.load(Ordering::SeqCst),
            ops: batch.iter().map(|p| p.op.clone()).collect(),
            first_seq: batch[0].seq,
            incarnation,
        };
        let mut client = link.client.clone();
        // Half the failure window: well within the clients' deadlines, so a
        // hung slave costs a client a slow answer, not a failed one.
        match tokio::time::timeout(self.failure_window / 2, client.apply(req)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(s)) if s.code() == tonic::Code::FailedPrecondition => {
                self.step_down(&format!(
                    "slave {} refused our epoch: {}",
                    link.addr,
                    s.message()
                ));
                Err(Status::unavailable("this server is no longer the master"))
            }
            outcome => {
                let why = match outcome {
                    Ok(Err(s)) => s.message().to_string(),
                    _ => "no answer".to_string(),
                };
                log::warn!(
                    "slave {} is out of service ({why}); going on alone",
                    link.addr
                );
                {
                    let mut repl = lock(&self.repl);
                    if repl
                        .slave
                        .as_ref()
                        .is_some_and(|l| l.server_id == link.server_id)
                    {
                        repl.slave = None;
                    }
                }
                // Nothing may be acknowledged without the slave until the
                // coordinator knows it must not promote it.
                if self.report_now().await {
                    Ok(())
                } else {
                    Err(Status::unavailable(
                        "cannot reach the coordinator to go on without the slave",
                    ))
                }
            }
        }
    }

    /// Writes a replicated batch to our own files, if our lease still holds.
    async fn commit(&self, batch: &[Pending]) -> Result<(), Status> {
        self.ensure_lease().await?;
        let files: Vec<FileKind> = batch.iter().flat_map(|p| p.files.iter().copied()).collect();
        let changed = {
            let mut store = lock(&self.store);
            let changed = store.flush(&files).map_err(storage_error)?;
            if let Some(last) = batch.last() {
                lock(&self.repl).committed = last.seq;
            }
            changed
        };
        self.wake(&changed);
        Ok(())
    }

    /// Fails a batch and everything queued after it: nothing of it was
    /// written here, and the staged records are dropped. Any slave must
    /// resync, since the operation log held operations that will not be.
    fn abandon(&self, batch: Vec<Pending>, status: Status) {
        log::warn!(
            "abandoning {} staged write(s): {}",
            batch.len(),
            status.message()
        );
        let rest = {
            let mut store = lock(&self.store);
            store.reset();
            let rest = std::mem::take(&mut *lock(&self.mirror.queue));
            let mut repl = lock(&self.repl);
            repl.log = OpLog::default();
            repl.committed = 0;
            repl.incarnation = rand::random();
            repl.slave = None;
            // The coordinator may still count the slave in service: nothing
            // goes out before a heartbeat has told it otherwise.
            repl.lease_until = None;
            rest
        };
        for p in batch.into_iter().chain(rest) {
            self.forget_ids(&p.op);
            let _ = p.done.send(Err(status.clone()));
        }
    }

    /// As a slave: brings the directory to the master's state, then joins.
    pub(crate) async fn resync(self: Arc<Self>, master: String) {
        let _guard = self.resync_lock.lock().await;
        let result = self.resync_from(&master).await;
        lock(&self.repl).resyncing = false;
        match result {
            Ok(()) => log::info!("in sync with master {master}"),
            Err(e) => log::warn!("resync from {master} failed: {e}; will retry"),
        }
    }

    async fn resync_from(&self, master: &str) -> Result<(), BoxError> {
        let started = std::time::Instant::now();
        let dir = self.dir.clone();
        let gate = tokio::task::spawn_blocking(move || storage::close_dir(&dir)).await??;
        let mut client = replica_client(
            master,
            10 * self.failure_window.max(std::time::Duration::from_secs(1)),
        )?;
        for _ in 0..5 {
            let dir = self.dir.clone();
            let files = tokio::task::spawn_blocking(move || manifest(&dir)).await??;
            let req = SnapshotRequest {
                cluster_id: self.opts.cluster,
                epoch: self.epoch.load(Ordering::SeqCst),
                files,
                server_id: self.opts.server_id,
            };
            let mut stream = client.snapshot(req).await?.into_inner();
            let mut installer = Installer::new(self.dir.clone(), self.opts.fsync);
            let done = loop {
                match stream.message().await? {
                    Some(c) if c.done => break c,
                    // Disk work off the async workers, so that heartbeats go
                    // on during a long resync.
                    Some(c) => tokio::task::block_in_place(|| installer.write(&c))?,
                    None => return Err("the snapshot ended early".into()),
                }
            };
            let bytes = installer.bytes;
            let received = started.elapsed();
            tokio::task::block_in_place(|| installer.finish(&done.files))?;
            let flushed = started.elapsed() - received;
            lock(&self.store).reset();
            // The journal held operations on the files as they were; they
            // are the master's files now, flushed.
            tokio::task::block_in_place(|| self.checkpoint())?;
            let join = JoinRequest {
                cluster_id: self.opts.cluster,
                server_id: self.opts.server_id,
                address: self.addr.clone(),
                from_seq: done.seq,
                incarnation: done.incarnation,
                process: self.process,
            };
            let reply = client.join(join).await?.into_inner();
            if reply.too_far_behind {
                log::info!("master {master} moved on during the snapshot; taking another");
                continue;
            }
            let changed = {
                let mut store = lock(&self.store);
                let mut changed = Vec::new();
                for op in &reply.ops {
                    changed.extend(store.apply(op)?);
                }
                changed
            };
            self.journal(&reply.ops)?;
            for op in &reply.ops {
                self.record_ids(op);
            }
            lock(&self.repl).following = Some(Following {
                master: master.to_string(),
                incarnation: done.incarnation,
                next_seq: reply.first_seq + reply.ops.len() as u64,
            });
            self.wake(&changed);
            self.wake_all();
            log::info!(
                "resynced from {master}: {bytes} bytes and {} operations in {:?} \
                 (received after {received:?}, then flushed in {flushed:?})",
                reply.ops.len(),
                started.elapsed()
            );
            drop(gate);
            return Ok(());
        }
        Err("the master kept moving on; giving up for now".into())
    }
}

/// Every data file of a directory with its length and content hash.
fn manifest(dir: &Path) -> std::io::Result<Vec<FileState>> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for e in rd {
        let path = e?.path();
        let Some(name) = data_file_name(&path) else {
            continue;
        };
        let len = std::fs::metadata(&path)?.len();
        out.push(FileState {
            name,
            len,
            hash: storage::content_hash(&path, len)?,
        });
    }
    Ok(out)
}

/// The name of a data file (`all_users.txt`, `u<id>_<kind>.txt`), or `None`
/// for anything else.
fn data_file_name(path: &Path) -> Option<String> {
    FileKind::parse(path)?;
    path.file_name()?.to_str().map(String::from)
}

/// Writes a snapshot into a directory: appends to files that are prefixes,
/// builds diverged files beside them and renames them into place at the end.
struct Installer {
    dir: PathBuf,
    /// Flush to disk (SNS_FSYNC): the slave is in service only once its
    /// copy is on disk.
    fsync: bool,
    /// Open files by name.
    open: HashMap<String, Target>,
    bytes: u64,
}

/// A file being written by a snapshot.
struct Target {
    file: std::fs::File,
    /// Where the next piece goes.
    len: u64,
    /// Written since the disk was last asked to start writing back.
    unflushed: u64,
    /// The temporary file of a file being replaced.
    tmp: Option<PathBuf>,
}

/// How much a snapshot writes before it asks the disk to start writing it
/// back, so that the final flush does not begin from nothing.
const WRITEBACK: u64 = 8 << 20;

impl Installer {
    fn new(dir: PathBuf, fsync: bool) -> Self {
        Installer {
            dir,
            fsync,
            open: HashMap::new(),
            bytes: 0,
        }
    }

    fn write(&mut self, c: &SnapshotChunk) -> Result<(), BoxError> {
        let path = self.dir.join(&c.name);
        if data_file_name(&path).as_deref() != Some(c.name.as_str()) {
            return Err(format!("bad file name in snapshot: {:?}", c.name).into());
        }
        if !self.open.contains_key(&c.name) {
            let target = if c.replace {
                let tmp = self.dir.join(format!("{}.resync", c.name));
                let file = std::fs::File::create(&tmp)?;
                Target {
                    file,
                    len: 0,
                    unflushed: 0,
                    tmp: Some(tmp),
                }
            } else {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)?;
                let len = file.metadata()?.len();
                Target {
                    file,
                    len,
                    unflushed: 0,
                    tmp: None,
                }
            };
            self.open.insert(c.name.clone(), target);
        }
        let Some(t) = self.open.get_mut(&c.name) else {
            return Err("internal: file not open".into());
        };
        if t.len != c.offset {
            return Err(format!(
                "{}: snapshot piece at {} but the file has {} bytes",
                c.name, c.offset, t.len
            )
            .into());
        }
        t.file.write_all(&c.data)?;
        t.len += c.data.len() as u64;
        t.unflushed += c.data.len() as u64;
        self.bytes += c.data.len() as u64;
        if self.fsync && t.unflushed >= WRITEBACK {
            start_writeback(&t.file);
            t.unflushed = 0;
        }
        Ok(())
    }

    /// Flushes, renames replaced files into place and removes files the
    /// master does not have.
    fn finish(self, files: &[FileState]) -> Result<(), BoxError> {
        if self.fsync {
            // Every file's writeback first, then the waits: they overlap.
            for t in self.open.values() {
                start_writeback(&t.file);
            }
        }
        for (name, t) in self.open {
            if self.fsync {
                t.file.sync_data()?;
            }
            drop(t.file);
            if let Some(tmp) = t.tmp {
                std::fs::rename(&tmp, self.dir.join(&name))?;
            }
        }
        for e in std::fs::read_dir(&self.dir)? {
            let path = e?.path();
            if let Some(name) = data_file_name(&path)
                && !files.iter().any(|f| f.name == name)
            {
                std::fs::remove_file(&path)?;
            }
        }
        if self.fsync {
            // The renames and removals too.
            storage::sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

/// Asks the kernel to start writing a file's dirty pages to disk, without
/// waiting (`sync_file_range(SYNC_FILE_RANGE_WRITE)`); a later `fdatasync`
/// then has less left to wait for. Only a hint: errors are ignored.
fn start_writeback(f: &std::fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is open for the duration of the call, and the
    // call only reads its arguments.
    unsafe {
        libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// The master's side of a snapshot: what the slave lacks, file by file, up to
/// the lengths taken together with `seq`.
fn send_snapshot(
    dir: &Path,
    cut: Vec<(String, u64)>,
    slave: &[FileState],
    seq: u64,
    incarnation: u64,
    tx: &mpsc::Sender<Result<SnapshotChunk, Status>>,
) -> Result<(), BoxError> {
    let mut files = Vec::new();
    for (name, len) in cut {
        let path = dir.join(&name);
        let mine = slave.iter().find(|f| f.name == name);
        let from = match mine {
            Some(f) if f.len <= len && storage::content_hash(&path, f.len)? == f.hash => f.len,
            _ => 0,
        };
        let replace = from == 0;
        // Up to the last whole record before the cut (found from the end,
        // without reading the rest), then sent in pieces as it is read.
        let end = storage::records_end(&path, from, len)?;
        if replace || end > from {
            let mut f = std::fs::File::open(&path)?;
            f.seek(SeekFrom::Start(from))?;
            let mut offset = from;
            loop {
                let n = (end - offset).min(CHUNK as u64) as usize;
                let mut data = Vec::with_capacity(n);
                (&mut f).take(n as u64).read_to_end(&mut data)?;
                if data.len() != n {
                    return Err(format!("{name} shrank during a snapshot").into());
                }
                tx.blocking_send(Ok(SnapshotChunk {
                    name: name.clone(),
                    offset,
                    data: data.into(),
                    replace,
                    ..Default::default()
                }))?;
                offset += n as u64;
                if offset >= end {
                    break;
                }
            }
        }
        files.push(FileState {
            name,
            len: end,
            hash: 0,
        });
    }
    tx.blocking_send(Ok(SnapshotChunk {
        done: true,
        seq,
        incarnation,
        files,
        ..Default::default()
    }))?;
    Ok(())
}

pub(crate) struct ReplicaApi(pub Arc<Node>);

#[tonic::async_trait]
impl Replica for ReplicaApi {
    async fn apply(&self, req: Request<ApplyRequest>) -> Result<Response<ApplyReply>, Status> {
        let node = &self.0;
        let req = req.into_inner();
        // Wait for a resync in progress: its operations come first.
        let _guard = node.resync_lock.lock().await;
        node.check_cluster(req.cluster_id)?;
        for op in &req.ops {
            crate::model::validate_op(op).map_err(Status::invalid_argument)?;
        }
        let epoch = node.epoch.load(Ordering::SeqCst);
        if req.epoch < epoch {
            return Err(Status::failed_precondition(format!(
                "stale epoch {} (ours is {epoch})",
                req.epoch
            )));
        }
        if node.role() == Role::Master {
            return Err(Status::failed_precondition("this server is the master"));
        }
        node.epoch.fetch_max(req.epoch, Ordering::SeqCst);
        let skip = {
            let repl = lock(&node.repl);
            match &repl.following {
                Some(f) if f.incarnation == req.incarnation && req.first_seq <= f.next_seq => {
                    (f.next_seq - req.first_seq) as usize
                }
                _ => {
                    return Err(Status::aborted(
                        "not in sync with this master: resync needed",
                    ));
                }
            }
        };
        let ops = req.ops.get(skip..).unwrap_or(&[]);
        let changed = {
            let mut store = lock(&node.store);
            let mut changed = Vec::new();
            for op in ops {
                changed.extend(store.apply(op).map_err(storage_error)?);
            }
            changed
        };
        node.journal(ops)?;
        if lock(&node.journal).wants_checkpoint()
            && let Err(e) = node.checkpoint()
        {
            log::error!("checkpoint failed: {e}");
        }
        for op in ops {
            node.record_ids(op);
        }
        if let Some(f) = lock(&node.repl).following.as_mut() {
            f.next_seq = f.next_seq.max(req.first_seq + req.ops.len() as u64);
        }
        node.wake(&changed);
        Ok(Response::new(ApplyReply {}))
    }

    type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotChunk, Status>> + Send>>;

    async fn snapshot(
        &self,
        req: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let node = self.0.clone();
        let req = req.into_inner();
        node.check_cluster(req.cluster_id)?;
        node.require_master()?;
        // A slave that asks for a snapshot has lost track (it restarted, or
        // missed writes): it is out of service until it joins again, and the
        // coordinator must hear so before it could promote it.
        let dropped = {
            let mut repl = lock(&node.repl);
            let ours = repl
                .slave
                .as_ref()
                .is_some_and(|l| l.server_id == req.server_id);
            if ours {
                repl.slave = None;
            }
            ours
        };
        if dropped && !node.report_now().await {
            return Err(Status::unavailable("cannot reach the coordinator"));
        }
        // Under the store lock no operation is half done: the files hold
        // exactly the operations up to `seq`.
        let (cut, seq, incarnation) = {
            let _store = lock(&node.store);
            let repl = lock(&node.repl);
            let mut cut = Vec::new();
            for e in std::fs::read_dir(&node.dir).map_err(storage_error)? {
                let path = e.map_err(storage_error)?.path();
                if let Some(name) = data_file_name(&path) {
                    let len = std::fs::metadata(&path).map_err(storage_error)?.len();
                    cut.push((name, len));
                }
            }
            // Operations staged but not yet written are not in the files:
            // the cut is the last one written, and Join replays the rest.
            (cut, repl.committed, repl.incarnation)
        };
        let (tx, rx) = mpsc::channel(4);
        let dir = node.dir.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = send_snapshot(&dir, cut, &req.files, seq, incarnation, &tx) {
                log::warn!("snapshot for a slave failed: {e}");
                let _ = tx.blocking_send(Err(Status::internal(format!("snapshot failed: {e}"))));
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<JoinReply>, Status> {
        let node = self.0.clone();
        let req = req.into_inner();
        node.check_cluster(req.cluster_id)?;
        node.require_master()
            .map_err(|_| Status::failed_precondition("this server is not the master"))?;
        let client = replica_client(&req.address, node.failure_window)
            .map_err(|e| Status::invalid_argument(format!("bad address {:?}: {e}", req.address)))?;
        let reply = {
            // The store lock keeps writes out while the slave is taken in:
            // every operation after `from_seq` is either in this reply or
            // will be mirrored to it.
            let _store = lock(&node.store);
            let mut repl = lock(&node.repl);
            let ops = (req.incarnation == repl.incarnation)
                .then(|| repl.log.since(req.from_seq))
                .flatten();
            match ops {
                None => JoinReply {
                    too_far_behind: true,
                    ..Default::default()
                },
                Some(ops) => {
                    repl.slave = Some(SlaveLink {
                        server_id: req.server_id,
                        process: req.process,
                        addr: req.address.clone(),
                        client,
                    });
                    JoinReply {
                        ops,
                        first_seq: req.from_seq + 1,
                        too_far_behind: false,
                    }
                }
            }
        };
        if !reply.too_far_behind {
            log::info!(
                "slave {} (server {}) is in service",
                req.address,
                req.server_id
            );
            let node = node.clone();
            tokio::spawn(async move {
                node.report_now().await;
            });
        }
        Ok(Response::new(reply))
    }
}

/// The user and client id of an operation that carries one.
pub(crate) fn op_id(op: &WriteOp) -> Option<(bool, u64, u64)> {
    match &op.op {
        Some(write_op::Op::Post(p)) if p.post_id != 0 => Some((true, p.author, p.post_id)),
        Some(write_op::Op::Follow(f)) if f.request_id != 0 => {
            Some((false, f.follower, f.request_id))
        }
        _ => None,
    }
}
