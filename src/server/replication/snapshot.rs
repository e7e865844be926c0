//! Snapshots: the files a master sends a slave that is catching up, and how
//! the slave installs them.
//!
//! The slave describes its files (length and content hash); the master
//! answers, per file, the missing suffix when the slave's copy is a prefix
//! of its own, or the whole file when it is not (a copy that diverged, e.g.
//! on a deposed master), up to the lengths it cut with the snapshot's
//! sequence number. The slave appends suffixes in place, builds replaced
//! files beside the old ones and renames them into place at the end, then
//! removes files the master does not have and flushes it all.

use crate::error::Error;
use crate::proto::tinysns::{FileState, SnapshotChunk};
use crate::storage::{self, FileKind};
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use tokio::sync::mpsc;
use tonic::Status;

/// Size of the pieces of a snapshot: the frame size of the replica channel
/// (256 KB and 4 MB pieces were both slower).
const CHUNK: usize = 1 << 20;

/// Every data file of a directory with its length and content hash.
pub(crate) fn manifest(dir: &Path) -> std::io::Result<Vec<FileState>> {
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
pub(crate) fn data_file_name(path: &Path) -> Option<String> {
    FileKind::parse(path)?;
    path.file_name()?.to_str().map(String::from)
}

/// Writes a snapshot into a directory: appends to files that are prefixes,
/// builds diverged files beside them and renames them into place at the end.
pub(crate) struct Installer {
    dir: PathBuf,
    /// Flush to disk (SNS_FSYNC): the slave is in service only once its
    /// copy is on disk.
    fsync: bool,
    /// Open files by name.
    open: HashMap<String, Target>,
    pub bytes: u64,
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
    pub fn new(dir: PathBuf, fsync: bool) -> Self {
        Installer {
            dir,
            fsync,
            open: HashMap::new(),
            bytes: 0,
        }
    }

    pub fn write(&mut self, c: &SnapshotChunk) -> Result<(), Error> {
        let path = self.dir.join(&c.name);
        if data_file_name(&path).as_deref() != Some(c.name.as_str()) {
            return Err(Error::Invalid(format!(
                "bad file name in snapshot: {:?}",
                c.name
            )));
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
            return Err(Error::Internal("file not open".into()));
        };
        if t.len != c.offset {
            return Err(Error::Invalid(format!(
                "{}: snapshot piece at {} but the file has {} bytes",
                c.name, c.offset, t.len
            )));
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
    pub fn finish(self, files: &[FileState]) -> Result<(), Error> {
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
pub(crate) fn send_snapshot(
    dir: &Path,
    cut: Vec<(String, u64)>,
    slave: &[FileState],
    seq: u64,
    incarnation: u64,
    tx: &mpsc::Sender<Result<SnapshotChunk, Status>>,
) -> Result<(), Error> {
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
                    return Err(Error::Storage(format!("{name} shrank during a snapshot")));
                }
                tx.blocking_send(Ok(SnapshotChunk {
                    name: name.clone(),
                    offset,
                    data: data.into(),
                    replace,
                    ..Default::default()
                }))
                .map_err(|_| gone())?;
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
    }))
    .map_err(|_| gone())?;
    Ok(())
}

/// The slave stopped reading the snapshot.
fn gone() -> Error {
    Error::Unavailable("the slave went away during a snapshot".into())
}
