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
//!
//! # Speed (issue 12)
//! `perf record -e cpu-clock -g` on both servers during `bench resync`
//! (93 MB, one big file) found the time in the transfer, not in reading
//! (about 20 ms) or the final flush (4 to 30 ms, with writeback started
//! while receiving): the master waited for the slave 77 to 139 ms of its
//! 105 to 161 ms. About a quarter of the servers' CPU was page faults:
//! every megabyte piece was new memory on both sides (the master's read
//! buffer, tonic's encode buffer, h2's frame buffer, tonic's decode
//! buffer), zeroed and faulted in by the kernel. So:
//!
//! * the master reads pieces into a few buffers taken in turn, each used
//!   again once its last piece is sent ([`send_snapshot`]);
//! * once a snapshot moves data, the allocator keeps freed megabytes for
//!   the next pieces ([`keep_freed_memory`]), so tonic's and h2's buffers
//!   reuse pages too;
//! * the slave writes every piece in one disk job fed by a short queue,
//!   so the next pieces are received and decoded while one is written
//!   ([`super::resync`]; it was one job per piece, each awaited before
//!   the next was read).
//!
//! Measured with `bench resync`, 17 runs of each build alternating in one
//! session (2 shared cores, with other agents building and benchmarking
//! beside it: load averages of 4 to 20, `cp -r` anywhere from 27 ms to
//! 3 s): the ratio to `cp -r` in the same run went from a median of 5.1x
//! to 3.4x; the CPU both servers spent (the bench's new row) from 169 to
//! 151 ms (master 69 to 57, slave with its start-up 100 to 93). On the
//! quietest runs: 117 to 129 ms before (`cp -r` 27 to 36 ms), 115 ms
//! after (`cp -r` 34 ms, 3.4x): the 3x target is still missed. What
//! remains per byte is six copies (file to buffer, buffer to tonic, tonic
//! to socket on the master; socket to h2, h2 to tonic, tonic to the file
//! on the slave), two processes' worth of them on two cores; the page
//! cache writes are the largest (45 to 60 ms for 93 MB, in one
//! thread: ext4 serialises writes to one file). `cp -r` makes one copy
//! inside the kernel. Halving the copies needs another transport for the
//! bytes (sendfile on the master, splice on the slave) beside gRPC.
//!
//! # Damaged files
//! A damaged file ([`storage::Damaged`]: not a regular file, a link, not
//! ours to open) never stops a snapshot of everything else, and is never
//! read or copied as if it were data:
//!
//! * On the master, it is not sent; it is still listed, so the slave keeps
//!   its own copy of that file (the only good one, perhaps) untouched.
//! * On the slave, it is left out of the description, so the master sends
//!   its copy whole; the damaged entry is moved aside
//!   (`<name>.damaged`, for a person to look at) when the copy takes its
//!   place, or when the master has no such file. A link is never followed,
//!   so a snapshot writes only inside the directory.

use crate::error::Error;
use crate::proto::tinysns::{FileState, SnapshotChunk};
use crate::storage::{self, FileKind};
use prost::bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tonic::Status;

/// Size of the pieces of a snapshot: the frame size of the replica channel
/// (256 KB and 4 MB pieces were both slower).
const CHUNK: usize = 1 << 20;

/// Every data file of a directory with its length and content hash. A file
/// that cannot be read is left out (and reported): the master then sends
/// its copy whole.
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
        let described = storage::data_metadata(&path).and_then(|m| match m {
            Some(m) => storage::content_hash(&path, m.len()).map(|h| Some((m.len(), h))),
            None => Ok(None),
        });
        match described {
            Ok(Some((len, hash))) => out.push(FileState { name, len, hash }),
            Ok(None) => {}
            Err(e) => log::warn!("{}: {e}; the master's copy will replace it", path.display()),
        }
    }
    Ok(out)
}

/// The data files of a master's directory with their lengths, where a
/// snapshot is cut. Links and other entries that are not regular files are
/// listed with length 0: [`send_snapshot`] sends none of them.
pub(crate) fn cut(dir: &Path) -> std::io::Result<Vec<(String, u64)>> {
    let mut cut = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let path = e?.path();
        if let Some(name) = data_file_name(&path) {
            let len = match std::fs::symlink_metadata(&path) {
                Ok(m) if m.file_type().is_file() => m.len(),
                Ok(_) => 0,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            cut.push((name, len));
        }
    }
    Ok(cut)
}

/// Makes `path` a new, empty file of ours, whatever was there (a link is
/// removed, not followed; a directory is moved aside).
fn create_fresh(path: &Path) -> std::io::Result<std::fs::File> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            storage::set_aside(path)?;
        }
        Ok(_) => std::fs::remove_file(path)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Moves a damaged entry where a data file goes out of the way (see the
/// module doc); a regular file, or nothing, stays.
fn clear_damaged(path: &Path) -> std::io::Result<()> {
    match storage::data_metadata(path) {
        Ok(_) => Ok(()),
        Err(e) if storage::is_damaged(&e) => {
            let to = storage::set_aside(path)?;
            log::warn!("{}: {e}; moved to {}", path.display(), to.display());
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// The name of a data file (`all_users.txt`, `u<id>_<kind>.txt`), or `None`
/// for anything else.
pub(crate) fn data_file_name(path: &Path) -> Option<String> {
    if !storage::ids::is_ids_file(path) {
        FileKind::parse(path)?;
    }
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
    /// Time spent writing pieces and asking for writeback (log::debug).
    pub writing: Duration,
    pub writeback: Duration,
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
            writing: Duration::ZERO,
            writeback: Duration::ZERO,
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
                let file = create_fresh(&tmp)?;
                Target {
                    file,
                    len: 0,
                    unflushed: 0,
                    tmp: Some(tmp),
                }
            } else {
                // Never through a link: only a regular file of ours grows.
                let file = storage::open_append(&path)?;
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
        let t0 = Instant::now();
        t.file.write_all(&c.data)?;
        let t1 = Instant::now();
        self.writing += t1 - t0;
        t.len += c.data.len() as u64;
        t.unflushed += c.data.len() as u64;
        self.bytes += c.data.len() as u64;
        if self.fsync && t.unflushed >= WRITEBACK {
            start_writeback(&t.file);
            t.unflushed = 0;
            self.writeback += t1.elapsed();
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
                let to = self.dir.join(&name);
                // A directory there would refuse the rename.
                clear_damaged(&to)?;
                std::fs::rename(&tmp, to)?;
            }
        }
        for e in std::fs::read_dir(&self.dir)? {
            let path = e?.path();
            if let Some(name) = data_file_name(&path)
                && !files.iter().any(|f| f.name == name)
            {
                clear_damaged(&path)?;
                match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                    _ => {}
                }
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
    let started = Instant::now();
    let mut waited = Duration::ZERO;
    let mut bufs: Vec<BytesMut> = (0..BUFFERS).map(|_| BytesMut::new()).collect();
    let mut next = 0;
    let mut files = Vec::new();
    for (name, len) in cut {
        let path = dir.join(&name);
        // Checked before anything of it is sent: a damaged file is listed
        // (the slave keeps its own copy) but not sent. A failure later, in
        // the middle of a file, fails the whole snapshot.
        let mut f = match storage::open_read(&path) {
            Ok(Some(f)) => f,
            Ok(None) => continue,
            Err(e) if storage::is_damaged(&e) => {
                log::error!(
                    "{}: {e}; not sent in a snapshot (the slave keeps its copy)",
                    path.display()
                );
                files.push(FileState {
                    name,
                    len: 0,
                    hash: 0,
                });
                continue;
            }
            Err(e) => return Err(e.into()),
        };
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
            keep_freed_memory();
            f.seek(SeekFrom::Start(from))?;
            let mut offset = from;
            loop {
                let n = (end - offset).min(CHUNK as u64) as usize;
                let data = read_piece(&mut f, &mut bufs[next % BUFFERS], n, &name)?;
                next += 1;
                let t = Instant::now();
                tx.blocking_send(Ok(SnapshotChunk {
                    name: name.clone(),
                    offset,
                    data,
                    replace,
                    ..Default::default()
                }))
                .map_err(|_| gone())?;
                waited += t.elapsed();
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
    log::debug!(
        "snapshot sent in {:?}, of which {waited:?} waiting for the slave",
        started.elapsed()
    );
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

/// Makes this process's allocator keep the megabytes a snapshot frees for
/// the next pieces, once a snapshot moves data. The pieces pass through
/// buffers of tonic and h2 that this module cannot reuse (the encoder's,
/// the frame reader's, the decoder's: one or two megabytes each, per
/// piece); glibc by default maps buffers that large afresh and hands them
/// back when freed, so every piece was new pages for the kernel to zero
/// and fault in: 22 to 27 ms of CPU on each side for 93 MB (`perf`, bench
/// resync), as much as reading the file. Up to 4 MB now come from the
/// heap, and up to 32 MB freed at its top stay there.
pub(crate) fn keep_freed_memory() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only sets allocator parameters; any value is
        // accepted or refused (returns 0) without other effect.
        unsafe {
            if libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20) == 0
                || libc::mallopt(libc::M_TRIM_THRESHOLD, 32 << 20) == 0
            {
                log::debug!("the allocator refused the snapshot's settings");
            }
        }
    });
}

/// Read buffers, taken in turn: more than the pieces that can be in flight
/// (the queue to the sender and the one being encoded), so that a buffer's
/// last piece is sent and dropped by the time it comes round again.
const BUFFERS: usize = 8;

/// Reads the next `n` bytes of `f` as one piece. The piece is cut from
/// `buf`, whose memory is used again once the piece cut from it before is
/// sent and dropped: a fresh megabyte per piece cost as much in page
/// faults (the kernel zeroing new pages) as reading it.
fn read_piece(
    f: &mut std::fs::File,
    buf: &mut BytesMut,
    n: usize,
    name: &str,
) -> Result<Bytes, Error> {
    buf.clear();
    buf.resize(n, 0);
    f.read_exact(&mut buf[..]).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Error::Storage(format!("{name} shrank during a snapshot"))
        } else {
            e.into()
        }
    })?;
    Ok(buf.split().freeze())
}

/// The slave stopped reading the snapshot.
fn gone() -> Error {
    Error::Unavailable("the slave went away during a snapshot".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(author: u64, time: i64, text: &str) -> Vec<u8> {
        storage::Post {
            author,
            time,
            text: text.into(),
        }
        .encode()
        .into_bytes()
    }

    /// Runs a whole snapshot from `master` into `slave`, as a resync does.
    fn resync(master: &Path, slave: &Path) {
        let described = manifest(slave).unwrap();
        let (tx, mut rx) = mpsc::channel(1024);
        send_snapshot(master, cut(master).unwrap(), &described, 7, 1, &tx).unwrap();
        drop(tx);
        let mut installer = Installer::new(slave.to_path_buf(), true);
        while let Some(chunk) = rx.blocking_recv() {
            let chunk = chunk.unwrap();
            if chunk.done {
                installer.finish(&chunk.files).unwrap();
                return;
            }
            installer.write(&chunk).unwrap();
        }
        panic!("the snapshot ended early");
    }

    #[test]
    fn damaged_files_neither_stop_a_snapshot_nor_travel_in_it() {
        let m = tempfile::tempdir().unwrap();
        let s = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let (m, s) = (m.path(), s.path());
        let mine = post(1, 10, "the master's");
        std::fs::write(m.join("u1_posts.txt"), &mine).unwrap();
        std::fs::write(m.join("all_users.txt"), "1\n4\n").unwrap();
        // Damaged on the master: a directory, a link to an endless file.
        std::fs::create_dir(m.join("u4_timeline.txt")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", m.join("u7_posts.txt")).unwrap();
        // The slave's own copy of the file the master cannot read.
        let kept = post(1, 5, "the slave's copy");
        std::fs::write(s.join("u4_timeline.txt"), &kept).unwrap();
        // Damaged on the slave: a link to a file elsewhere, a directory the
        // master has no file for.
        let target = outside.path().join("not-ours.txt");
        std::fs::write(&target, "leave me\n").unwrap();
        std::os::unix::fs::symlink(&target, s.join("u1_posts.txt")).unwrap();
        std::fs::create_dir(s.join("u10_posts.txt")).unwrap();

        let described = manifest(s).unwrap();
        assert_eq!(
            described
                .iter()
                .map(|f| f.name.as_str())
                .collect::<Vec<_>>(),
            ["u4_timeline.txt"]
        );
        resync(m, s);
        assert_eq!(std::fs::read(s.join("u1_posts.txt")).unwrap(), mine);
        assert!(
            std::fs::symlink_metadata(s.join("u1_posts.txt"))
                .unwrap()
                .is_file()
        );
        assert_eq!(std::fs::read(s.join("all_users.txt")).unwrap(), b"1\n4\n");
        assert_eq!(
            std::fs::read(&target).unwrap(),
            b"leave me\n",
            "not followed"
        );
        assert_eq!(std::fs::read(s.join("u4_timeline.txt")).unwrap(), kept);
        assert!(!s.join("u7_posts.txt").exists(), "nothing of /dev/zero");
        assert!(!s.join("u10_posts.txt").exists());
        assert!(s.join("u10_posts.txt.damaged").is_dir(), "set aside");
        assert!(std::fs::symlink_metadata(s.join("u1_posts.txt.damaged")).is_ok());
        // Nothing is left to send the next time.
        resync(m, s);
        assert_eq!(std::fs::read(s.join("u1_posts.txt")).unwrap(), mine);
    }
}
