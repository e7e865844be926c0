//! The receiving side: the `Synchronizer` gRPC service. What a peer pushes
//! is checked whole first ([`super::inbound`]), then written into every
//! server directory of this cluster through [`Store`], under `flock` and
//! idempotently, and acknowledged only once it is on disk.

use super::inbound;
use super::plan::Partition;
use super::pusher::Event;
use crate::error::{Error, Result};
use crate::model::UserId;
use crate::proto::tinysns::synchronizer_server::Synchronizer;
use crate::proto::tinysns::{FollowBatch, PostBatch, PushReply, UserBatch};
use crate::storage;
use crate::storage::store::Store;
use crate::timefmt;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

pub(super) struct Receiver {
    partition: Partition,
    data_dir: PathBuf,
    /// Flush what a push wrote before acknowledging it.
    fsync: bool,
    /// `max_users` caps what `all_users.txt` may hold.
    limits: crate::config::Limits,
    /// One store per server directory of this cluster.
    stores: Mutex<HashMap<PathBuf, Store>>,
    /// To the pusher: a remote follow may need posts sent again.
    events: mpsc::UnboundedSender<Event>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Receiver {
    pub(super) fn new(
        partition: Partition,
        data_dir: PathBuf,
        fsync: bool,
        limits: crate::config::Limits,
        events: mpsc::UnboundedSender<Event>,
    ) -> Receiver {
        Receiver {
            partition,
            data_dir,
            fsync,
            limits,
            stores: Mutex::new(HashMap::new()),
            events,
        }
    }

    /// The server directories of the cluster that exist now.
    fn server_dirs(&self) -> Vec<PathBuf> {
        let root = crate::config::cluster_dir(&self.data_dir, self.partition.me.0);
        match std::fs::read_dir(&root) {
            Ok(rd) => rd
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    p.is_dir()
                        && p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with("server_"))
                })
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Applies `f` to every server directory of the cluster that exists now,
    /// and flushes what it wrote.
    fn each_store(&self, mut f: impl FnMut(&mut Store) -> std::io::Result<()>) -> Result<()> {
        let dirs = self.server_dirs();
        let mut stores = lock(&self.stores);
        stores.retain(|d, _| dirs.contains(d));
        for dir in dirs {
            // A server rebuilding its directory (resync) closes it to us: the
            // pusher retries the whole push later.
            let gate = match storage::try_enter_dir(&dir) {
                Ok(Some(g)) => g,
                Ok(None) if !dir.exists() => continue,
                Ok(None) => {
                    return Err(Error::Unavailable(format!(
                        "{} is being resynced",
                        dir.display()
                    )));
                }
                Err(e) => return Err(Error::Storage(format!("{}: {e}", dir.display()))),
            };
            if !stores.contains_key(&dir) {
                // Closing each file, so that the servers watching the
                // directory see what we append (crate::storage::watch).
                let s = Store::open(&dir, self.partition.me.0, self.partition.clusters)
                    .map_err(|e| Error::Storage(format!("{}: {e}", dir.display())))?
                    .closing_each_file();
                stores.insert(dir.clone(), s);
            }
            let result = stores.get_mut(&dir).map(|s| -> std::io::Result<()> {
                f(s)?;
                // The pusher moves its cursor past what we acknowledge, so it
                // must be on disk first.
                let dirty = s.take_dirty();
                if self.fsync
                    && let Err(e) = storage::sync_files(&dirty)
                {
                    // The pusher retries; these still need their flush then.
                    s.mark_dirty(&dirty);
                    return Err(e);
                }
                Ok(())
            });
            drop(gate);
            if let Some(Err(e)) = result {
                if dir.exists() {
                    // Logged where it becomes a status.
                    return Err(Error::Storage(format!(
                        "storage error in {}: {e}",
                        dir.display()
                    )));
                }
                // The directory went away (a server being reset): its server
                // rebuilds it from its peer.
                log::warn!("{} disappeared while writing: {e}", dir.display());
            }
        }
        Ok(())
    }

    // Each push is checked whole ([`inbound`]) before anything is written:
    // a bad item refuses the batch and nothing of it is stored.

    fn store_users(&self, batch: UserBatch) -> Result<()> {
        let users = inbound::users(self.partition, &batch)?;
        // The cap counts what each directory holds; a batch that would take
        // any of them past it is refused whole, before anything is written.
        let mut room = Ok(());
        self.each_store(|s| {
            let known = s.users()?;
            let new = users.iter().filter(|u| !known.contains(&u.get())).count();
            if room.is_ok() {
                room = self.limits.admit_users(known.len(), new);
            }
            Ok(())
        })?;
        room?;
        self.each_store(|s| {
            for u in &users {
                s.add_user(*u)?;
            }
            Ok(())
        })
    }

    fn store_follows(&self, batch: FollowBatch) -> Result<()> {
        let events = inbound::follows(self.partition, timefmt::now(), &batch)?;
        self.each_store(|s| {
            for e in &events {
                s.follow(e)?;
            }
            Ok(())
        })?;
        for author in events
            .iter()
            .filter(|e| e.follow)
            .filter_map(|e| UserId::new(e.followee))
        {
            let _ = self.events.send(Event::Rewind { author });
        }
        Ok(())
    }

    fn store_posts(&self, batch: PostBatch) -> Result<()> {
        let posts = inbound::posts(self.partition, timefmt::now(), batch)?;
        self.each_store(|s| {
            for (post, targets) in &posts {
                s.deliver(post, targets)?;
            }
            Ok(())
        })
    }
}

#[tonic::async_trait]
impl Synchronizer for Receiver {
    async fn push_users(&self, req: Request<UserBatch>) -> Result<Response<PushReply>, Status> {
        self.store_users(req.into_inner())?;
        Ok(Response::new(PushReply {}))
    }

    async fn push_follows(&self, req: Request<FollowBatch>) -> Result<Response<PushReply>, Status> {
        self.store_follows(req.into_inner())?;
        Ok(Response::new(PushReply {}))
    }

    async fn push_posts(&self, req: Request<PostBatch>) -> Result<Response<PushReply>, Status> {
        self.store_posts(req.into_inner())?;
        Ok(Response::new(PushReply {}))
    }
}
