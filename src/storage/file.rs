//! Files under `flock`: appends and reads of whole records, torn-tail repair,
//! reading the last posts backwards from the end, the directory gate, content
//! hashes for resync, and flushing to disk.
//!
//! Readers take a shared lock and stop before an incomplete last record; the
//! appenders (in [`super::tail`]) take the exclusive lock and repair a torn
//! tail first, with [`repair_locked`].
//!
//! **Only regular files we made.** Every data file is opened through
//! [`open_read`] or [`open_append`]: without following a symbolic link
//! (`O_NOFOLLOW`), without waiting on a FIFO (`O_NONBLOCK`), and refused
//! unless it is a regular file. So a directory, a FIFO, a device or a link
//! (to `/dev/zero`, to a file elsewhere) where a data file should be is never
//! read or written: it is reported as [`Damaged`], naming the file, and the
//! caller decides whose problem it is ([`crate::storage::store`]).
//!
//! **Whole or absent.** An append that fails (disk full, I/O error) is taken
//! back to where the file ended before it ([`append_whole`]), so a failed
//! append never leaves part of a record, or some of several records, behind.

use super::record::{FileKind, Format, MAX_POST_RECORD, Post, Scanner, last_end};
use super::tail::{READ_CHUNK, report_malformed, scan_file};
use crate::timefmt::Nanos;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------------------
// Damaged files

/// A file where a data file should be that is not one we can use: not a
/// regular file (a directory, a link, a FIFO, a device), or one we may not
/// open. Carried inside an [`io::Error`] (see [`is_damaged`]).
#[derive(Debug)]
pub struct Damaged {
    pub path: PathBuf,
    pub why: String,
}

impl std::fmt::Display for Damaged {
    // The file's name, not its path: this message can reach a client.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        write!(f, "the data file {name} is damaged: {}", self.why)
    }
}

impl std::error::Error for Damaged {}

fn damaged(path: &Path, why: impl Into<String>) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        Damaged {
            path: path.to_path_buf(),
            why: why.into(),
        },
    )
}

/// Whether `e` says that a file is damaged (it will stay so until someone
/// repairs it), rather than that an operation failed (disk full, I/O error)
/// and may work when tried again.
pub fn is_damaged(e: &io::Error) -> bool {
    damaged_of(e).is_some()
}

/// The damaged file `e` is about, if it is about one.
pub fn damaged_of(e: &io::Error) -> Option<&Damaged> {
    e.get_ref()?.downcast_ref::<Damaged>()
}

/// What a file that is not a regular file is, for a person.
fn what_it_is(t: std::fs::FileType) -> &'static str {
    if t.is_dir() {
        "it is a directory"
    } else if t.is_symlink() {
        "it is a symbolic link"
    } else if t.is_fifo() {
        "it is a FIFO"
    } else if t.is_socket() {
        "it is a socket"
    } else if t.is_char_device() || t.is_block_device() {
        "it is a device"
    } else {
        "it is not a regular file"
    }
}

/// Turns an error from opening a data file into [`Damaged`] when it says
/// the file is the wrong kind of thing or not ours to open.
fn opening(path: &Path, e: io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(libc::ELOOP) | Some(libc::EMLINK) => damaged(path, "it is a symbolic link"),
        Some(libc::EISDIR) => damaged(path, "it is a directory"),
        Some(libc::ENXIO) | Some(libc::ENODEV) => damaged(path, "it is not a regular file"),
        Some(libc::EACCES) | Some(libc::EPERM) => damaged(path, format!("cannot open it: {e}")),
        _ => e,
    }
}

/// Opens a data file with `opts`, never following a link or waiting on a
/// FIFO, and checks that it is a regular file.
fn open_data(path: &Path, opts: &mut OpenOptions) -> io::Result<File> {
    // O_NONBLOCK only matters for what is not a regular file (a FIFO would
    // block the open until a writer came); on a regular file it changes
    // nothing.
    let f = opts
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| opening(path, e))?;
    let t = f.metadata()?.file_type();
    if !t.is_file() {
        return Err(damaged(path, what_it_is(t)));
    }
    Ok(f)
}

/// Moves a damaged entry out of the way, to `<name>.damaged` (or
/// `<name>.damaged.<n>`), keeping it for a person to look at; returns where.
/// Such names are not data files, so nothing reads them again.
pub fn set_aside(path: &Path) -> io::Result<PathBuf> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    for n in 1u32.. {
        let to = match n {
            1 => path.with_file_name(format!("{name}.damaged")),
            n => path.with_file_name(format!("{name}.damaged.{n}")),
        };
        match std::fs::symlink_metadata(&to) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::rename(path, &to)?;
                return Ok(to);
            }
            Err(e) => return Err(e),
            Ok(_) if n < 1000 => continue,
            Ok(_) => break,
        }
    }
    Err(io::Error::other(
        "too many damaged copies already set aside",
    ))
}

/// Opens a data file for reading; `None` if it does not exist.
pub fn open_read(path: &Path) -> io::Result<Option<File>> {
    match open_data(path, OpenOptions::new().read(true)) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// A data file's metadata without following a link; `None` if it does not
/// exist, [`Damaged`] if it is not a regular file.
pub fn data_metadata(path: &Path) -> io::Result<Option<std::fs::Metadata>> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_file() => Ok(Some(m)),
        Ok(m) => Err(damaged(path, what_it_is(m.file_type()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Appends `bytes` (whole records) to `f`, which ends at `at`, in one write.
/// If the write fails, the file is cut back to `at`: nothing of it stays.
pub(super) fn append_whole(f: &mut File, at: u64, bytes: &[u8], path: &Path) -> io::Result<()> {
    #[cfg(test)]
    let written = faults::append(path, f, bytes).unwrap_or_else(|| f.write_all(bytes));
    #[cfg(not(test))]
    let written = f.write_all(bytes);
    if let Err(e) = written {
        // Cutting back frees space, so it works on a full disk. Should it
        // fail too, the next appender finds a torn tail and cuts it.
        if let Err(cut) = f.set_len(at) {
            log::error!(
                "{}: cannot take back a failed append: {cut}",
                path.display()
            );
        }
        return Err(e);
    }
    Ok(())
}

/// Faults injected into appends, for the unit tests of this crate: the next
/// appends to a file fail, after writing part of what they were given.
#[cfg(test)]
pub(crate) mod faults {
    use std::fs::File;
    use std::io::{self, Write};
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    /// `(file, appends that still succeed first, bytes written before the
    /// failure, failures left)`.
    type Fault = (PathBuf, usize, usize, usize);
    static FAULTS: Mutex<Vec<Fault>> = Mutex::new(Vec::new());

    fn faults() -> std::sync::MutexGuard<'static, Vec<Fault>> {
        FAULTS.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// After `ok` more appends to `path` succeed, the next `times` fail
    /// with "no space left on device", each having written `partial`
    /// bytes first.
    pub fn fail_appends(path: &Path, ok: usize, partial: usize, times: usize) {
        faults().push((path.to_path_buf(), ok, partial, times));
    }

    /// The outcome of an append to `path`, if a fault decides it.
    pub(crate) fn append(path: &Path, f: &mut File, bytes: &[u8]) -> Option<io::Result<()>> {
        let mut all = faults();
        let i = all.iter().position(|x| x.0 == path)?;
        let fault = &mut all[i];
        if fault.1 > 0 {
            fault.1 -= 1;
            return None;
        }
        let partial = fault.2.min(bytes.len());
        fault.3 -= 1;
        if fault.3 == 0 {
            all.remove(i);
        }
        drop(all);
        if let Err(e) = f.write_all(&bytes[..partial]) {
            return Some(Err(e));
        }
        Some(Err(io::Error::from_raw_os_error(libc::ENOSPC)))
    }
}

// ---------------------------------------------------------------------------
// Flushing to disk

/// Flushes a directory's entries (new, renamed and removed files) to disk.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Flushes everything written to the filesystem that holds `dir`.
fn sync_fs(dir: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let d = match File::open(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        d => d?,
    };
    // SAFETY: `syncfs` only reads the descriptor, which `d` keeps open for
    // the call.
    if unsafe { libc::syncfs(d.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Replaces `path` with `bytes`, atomically and durably: written whole to
/// `<path>.tmp`, flushed (`fsync`), renamed over `path`, and the directory
/// flushed, so that a crash or a power loss leaves the old file or the new
/// one, never a part of either (a rename is only as durable as its
/// directory, and without the flush of the file first, a power loss after
/// the rename can leave the name pointing at an empty file). The temporary
/// file is made anew, never written through whatever is in its place (a
/// link). On failure `path` is as it was.
pub fn replace_whole(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace_whole_with(path, |w| w.write_all(bytes))
}

/// [`replace_whole`], the new contents written by `write` through a buffer.
pub fn replace_whole_with(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    let mut w = io::BufWriter::with_capacity(64 << 10, f);
    let written = write(&mut w).and_then(|()| w.flush());
    let f = match written.and_then(|()| w.into_inner().map_err(|e| e.into_error())) {
        Ok(f) => f,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    sync_dir(
        path.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new(".")),
    )
}

/// Every data file of a directory (not the journal or the gate). Entries
/// named like data files that are not regular files are left out: they are
/// not ours ([`repair_dir`] reports them).
pub fn data_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let path = e.path();
        let data = FileKind::parse(&path).is_some() || super::ids::is_ids_file(&path);
        if data && e.file_type().is_ok_and(|t| t.is_file()) {
            out.push(path);
        }
    }
    Ok(out)
}

/// Past this many files, [`sync_files`] flushes their filesystem at once.
///
/// A checkpoint flushes every file written since the last one, and with
/// 100,000 users that was tens of thousands of files, one `fdatasync` each:
/// seconds, while the journal's lock held every write back, and on a slave
/// longer than the master waits for a mirrored batch, so the slave fell out
/// of service and was resynced again and again (`bench scale`). One
/// `syncfs` writes the same dirty pages in one call, in the kernel's order.
pub const SYNCFS_PAST: usize = 64;

/// Flushes the data of each file to disk (`fdatasync`; past
/// [`SYNCFS_PAST`] files, `syncfs` of the filesystem of each of their
/// directories). A file that is gone (its directory was reset) has nothing
/// left to flush, and a damaged one holds nothing we wrote.
pub fn sync_files(paths: &[PathBuf]) -> io::Result<()> {
    if paths.len() > SYNCFS_PAST {
        let mut dirs: Vec<&Path> = paths.iter().filter_map(|p| p.parent()).collect();
        dirs.sort();
        dirs.dedup();
        return dirs.into_iter().try_for_each(sync_fs);
    }
    for p in paths {
        match open_read(p) {
            Ok(Some(f)) => f.sync_data()?,
            Ok(None) => {}
            Err(e) if is_damaged(&e) => log::debug!("not flushing {}: {e}", p.display()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Locked reads, appends and repair

/// Opened for reading too: an appender reads what others appended before it
/// decides what to write.
pub fn open_append(path: &Path) -> io::Result<File> {
    open_data(
        path,
        OpenOptions::new().read(true).append(true).create(true),
    )
}

/// Opens `path` for reading with a shared lock held; `None` if it does not exist.
pub(super) fn open_shared(path: &Path) -> io::Result<Option<File>> {
    let Some(f) = open_read(path)? else {
        return Ok(None);
    };
    f.lock_shared()?;
    Ok(Some(f))
}

/// Offset just past the last complete record of a file of length `len`,
/// scanning backwards from the end.
fn last_boundary(f: &mut File, len: u64, format: Format) -> io::Result<u64> {
    let term = format.terminator();
    let mut end = len;
    let mut carry: Vec<u8> = Vec::new();
    while end > 0 {
        let start = end.saturating_sub(READ_CHUNK as u64);
        let mut buf = vec![0u8; (end - start) as usize];
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(&mut buf)?;
        buf.extend_from_slice(&carry);
        // Search from the end of this window (which includes the carried
        // prefix of the previous window) for the last terminator.
        if let Some(pos) = last_end(&buf, term).map(|p| start + p as u64)
            && pos <= len
        {
            return Ok(pos);
        }
        carry = buf[..term.len().saturating_sub(1).min(buf.len())].to_vec();
        end = start;
    }
    Ok(0)
}

/// The end of the last whole record of `path` within `[from, to)` (`from`
/// if there is none), found by reading backwards from `to`.
pub fn records_end(path: &Path, from: u64, to: u64) -> io::Result<u64> {
    if to <= from {
        return Ok(from);
    }
    let Some(mut f) = open_read(path)? else {
        return Ok(from);
    };
    Ok(last_boundary(&mut f, to, Format::of(path))?.max(from))
}

/// Cuts a torn last record off `path`; returns how many bytes were cut.
pub fn repair(path: &Path) -> io::Result<u64> {
    let format = Format::of(path);
    let mut f = match open_data(path, OpenOptions::new().read(true).write(true)) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    f.lock()?;
    let cut = repair_locked(&mut f, format)?;
    f.unlock()?;
    Ok(cut)
}

/// Cuts a torn tail off a file whose exclusive lock the caller holds; returns
/// how many bytes were cut.
pub(super) fn repair_locked(f: &mut File, format: Format) -> io::Result<u64> {
    let len = f.metadata()?.len();
    if len == 0 || ends_with(f, len, format.terminator())? {
        return Ok(0);
    }
    let keep = last_boundary(f, len, format)?;
    f.set_len(keep)?;
    Ok(len - keep)
}

fn ends_with(f: &mut File, len: u64, term: &[u8]) -> io::Result<bool> {
    let n = term.len() as u64;
    if len < n {
        return Ok(false);
    }
    let mut buf = vec![0u8; term.len()];
    f.seek(SeekFrom::Start(len - n))?;
    f.read_exact(&mut buf)?;
    Ok(buf == term)
}

/// What [`repair_dir`] found.
#[derive(Debug, Default)]
pub struct Checked {
    /// Files that had a torn last record, now cut off.
    pub torn: Vec<PathBuf>,
    /// Entries named like data files that cannot be used, and why.
    pub damaged: Vec<(PathBuf, io::Error)>,
}

/// Repairs every data file in `dir` (start-up). A file that cannot be
/// repaired (not a regular file, not ours to open, an I/O error) is reported
/// and left as it is: it is the problem of the user it belongs to, and only
/// the requests that need it fail.
pub fn repair_dir(dir: &Path) -> io::Result<Checked> {
    let mut checked = Checked::default();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        // Data files only: the journal has a format and a repair of its own.
        if FileKind::parse(&path).is_none() {
            continue;
        }
        match repair(&path) {
            Ok(0) => {}
            Ok(_) => checked.torn.push(path),
            Err(e) => checked.damaged.push((path, e)),
        }
    }
    Ok(checked)
}

/// Reads the complete records from `offset` to the end under a shared lock.
/// Returns the bytes and the offset just past the last complete record.
pub fn read_from(path: &Path, offset: u64) -> io::Result<(Vec<u8>, u64)> {
    read_at_most(path, offset, u64::MAX)
}

/// Like [`read_from`], but reads at most about `limit` bytes (always at least
/// one whole record if there is one).
///
/// The bytes are the file's own, from `offset` on, so that callers can count
/// offsets in them; so they stop before a record too long to be valid. When
/// that record is the first, it is skipped instead: the bytes are empty and
/// the offset is past it, or still `offset` while it has no terminator (it
/// may be a torn tail that the next appender cuts). Reads a chunk at a time
/// and keeps at most one valid record's worth of a long one.
pub fn read_at_most(path: &Path, offset: u64, limit: u64) -> io::Result<(Vec<u8>, u64)> {
    let Some(mut f) = open_shared(path)? else {
        return Ok((Vec::new(), 0));
    };
    let len = f.metadata()?.len();
    if len <= offset {
        return Ok((Vec::new(), len.min(offset)));
    }
    let format = Format::of(path);
    let term = format.terminator();
    let mut scan = Scanner::new(format, offset);
    let mut out = Vec::new();
    // Just past what the bytes hold (or past a long first record).
    let mut end = offset;
    let mut done = false;
    while !done && scan.position() < len {
        let before = scan.position();
        scan_file(&mut f, &mut scan, len, READ_CHUNK as u64, path, |at, r| {
            if done {
                return;
            }
            if at != end {
                // A record too long to be valid came before this one.
                if out.is_empty() {
                    end = at;
                }
                done = true;
                return;
            }
            out.extend_from_slice(r);
            out.extend_from_slice(term);
            end = at + (r.len() + term.len()) as u64;
            done = out.len() as u64 >= limit;
        })?;
        if scan.position() == before {
            break;
        }
    }
    if !done && out.is_empty() && !scan.skipping() {
        // Only records too long to be valid, which ended: past them.
        end = end.max(scan.boundary());
    }
    Ok((out, end))
}

/// The last records of a file, oldest first, reading backwards from its end so
/// that the cost does not depend on the file's length. Records for which
/// `keep` returns false are skipped and not counted. `stop` ends the scan at
/// the first record (from the end) for which it returns true, without
/// counting it.
pub fn last_posts(
    path: &Path,
    n: usize,
    mut keep: impl FnMut(&Post) -> bool,
    mut stop: impl FnMut(&Post) -> bool,
) -> io::Result<LastPosts> {
    let Some(mut f) = open_shared(path)? else {
        return Ok(LastPosts::default());
    };
    let len = f.metadata()?.len();
    // The last record's end is within a valid record's length of the end
    // of the file (what follows it is a torn tail, shorter than that); if no
    // record ends there, the tail is a record too long to be valid.
    let from = len.saturating_sub(MAX_POST_RECORD as u64 + 2);
    let mut last = Vec::with_capacity((len - from) as usize);
    f.seek(SeekFrom::Start(from))?;
    (&mut f).take(len - from).read_to_end(&mut last)?;
    let end = match last.windows(2).rposition(|w| w == b"\n\n") {
        Some(p) => from + p as u64 + 2,
        None if from == 0 => 0,
        None => {
            // Skipped, not a stop: the posts before it are still read (a
            // synchronizer's cursor placed after them would never send
            // them). One backward pass over the bad bytes finds their start.
            let end = last_boundary(&mut f, from, Format::of(path))?;
            log::warn!(
                "{}: the record at byte {end} at the end is longer than any valid one \
                 ({MAX_POST_RECORD} bytes); skipped",
                path.display()
            );
            end
        }
    };
    let mut out = Vec::new();
    let mut hi = end; // records in [.., hi) not yet parsed
    let mut window: Vec<u8> = Vec::new(); // bytes [lo, hi)
    let mut lo = hi;
    'scan: while out.len() < n && hi > 0 {
        // Grow the window backwards until it holds at least one whole record
        // before `hi` (or reaches the start of the file).
        let new_lo = lo.saturating_sub(8192);
        let mut buf = vec![0u8; (lo - new_lo) as usize];
        f.seek(SeekFrom::Start(new_lo))?;
        f.read_exact(&mut buf)?;
        buf.extend_from_slice(&window);
        window = buf;
        lo = new_lo;
        loop {
            // The record ending at `hi` starts after the previous terminator.
            let rel_hi = (hi - lo) as usize;
            if rel_hi < 2 {
                break;
            }
            let body_end = rel_hi - 2; // strip "\n\n"
            let start = window[..body_end]
                .windows(2)
                .rposition(|w| w == b"\n\n")
                .map(|p| p + 2);
            let start = match start {
                Some(s) => s,
                None if lo == 0 => 0,
                // The window holds a valid record's length and its leading
                // terminator, and no record starts in it: the record ending
                // at `hi` is too long. Skipped like one inside the window
                // (whose place must not decide what is read): one backward
                // pass finds the terminator before it, and the scan goes on
                // from there with an empty window.
                None if rel_hi >= MAX_POST_RECORD + 2 => {
                    let start = last_boundary(&mut f, hi - 2, Format::of(path))?;
                    log::warn!(
                        "{}: the record at byte {start} is longer than any valid one \
                         ({MAX_POST_RECORD} bytes); skipped",
                        path.display()
                    );
                    hi = start;
                    window.clear();
                    lo = hi;
                    if hi == 0 {
                        break 'scan;
                    }
                    continue 'scan;
                }
                None => break, // need more bytes
            };
            match Post::parse(&window[start..body_end]) {
                Ok(p) => {
                    if stop(&p) {
                        break 'scan;
                    }
                    if keep(&p) {
                        out.push(p);
                    }
                }
                Err(_) if hi - (lo + start as u64) > MAX_POST_RECORD as u64 => log::warn!(
                    "{}: the record at byte {} is longer than any valid one ({MAX_POST_RECORD} \
                     bytes); skipped",
                    path.display(),
                    lo + start as u64
                ),
                Err(why) => report_malformed(path, lo + start as u64, &why),
            }
            hi = lo + start as u64;
            window.truncate(start);
            if out.len() >= n || hi == 0 {
                break 'scan;
            }
        }
    }
    out.reverse();
    Ok(LastPosts {
        posts: out,
        start: hi,
        end,
    })
}

/// What [`last_posts`] found.
#[derive(Debug, Default)]
pub struct LastPosts {
    /// The posts kept, oldest first.
    pub posts: Vec<Post>,
    /// Offset of the earliest record scanned (kept or not); the record that
    /// stopped the scan ends here.
    pub start: u64,
    /// Offset just past the last complete record.
    pub end: u64,
}

/// The offset of the first post in `path` whose time is after `after`,
/// scanning back from the end (cheap when `after` is recent).
pub fn offset_after(path: &Path, after: Nanos) -> io::Result<u64> {
    Ok(last_posts(path, usize::MAX, |_| false, |p| p.time <= after)?.start)
}

// ---------------------------------------------------------------------------
// The directory gate, content hashes

/// Name of the lock file that gates writers of a server directory.
pub const GATE_FILE: &str = "writers.lock";

/// Takes the directory's gate shared, without waiting: writers other than the
/// server itself (the synchronizer) hold it while they write. `None` when the
/// server holds it exclusively (it is being rebuilt by a resync) or the
/// directory is gone.
pub fn try_enter_dir(dir: &Path) -> io::Result<Option<File>> {
    let f = match OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(dir.join(GATE_FILE))
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    match f.try_lock_shared() {
        Ok(()) => Ok(Some(f)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

/// Takes the directory's gate exclusively, waiting for writers inside to
/// finish. Held by a server while it rebuilds its directory; released when
/// the returned file is dropped.
pub fn close_dir(dir: &Path) -> io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(dir.join(GATE_FILE))?;
    f.lock()?;
    Ok(f)
}

/// A hash of the first `len` bytes of a file (resync compares a slave's copy
/// with a prefix of the master's). Not cryptographic: it detects divergence
/// caused by crashes, not malice.
pub fn content_hash(path: &Path, len: u64) -> io::Result<u64> {
    use std::hash::Hasher;
    let mut h = std::hash::DefaultHasher::new();
    let mut f = open_read(path)?.ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
    let mut left = len;
    let mut buf = vec![0u8; 1 << 16];
    while left > 0 {
        let want = buf.len().min(left as usize);
        let n = f.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shorter than expected",
            ));
        }
        h.write(&buf[..n]);
        left -= n as u64;
    }
    Ok(h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::record::{post, split_records};
    use crate::storage::{AuthorClock, Tail, UserSet};
    use std::io::Write;

    const T0: i64 = 1_795_457_407_123_456_789;

    fn post_of(author: u64, time: i64, text: &str) -> Post {
        Post {
            author,
            time,
            text: text.into(),
        }
    }

    /// Posts by `author` from `t0` on whose records take exactly `bytes`.
    fn filler(author: u64, t0: i64, mut bytes: usize) -> String {
        let mut out = String::new();
        let mut i = 0;
        while bytes > 0 {
            let over = 40 + author.to_string().len();
            let t = if bytes - over <= 255 {
                bytes - over
            } else {
                (bytes - over - over - 1).min(200)
            };
            let rec = post_of(author, t0 + i, &"f".repeat(t)).encode();
            bytes -= rec.len();
            out += &rec;
            i += 1;
        }
        out
    }

    /// A valid post of the longest kind (a 20-digit author, 255 bytes of
    /// text) ending exactly where a backward window begins is read, not
    /// taken for a record too long.
    #[test]
    fn a_longest_post_at_a_window_edge_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u1_timeline.txt");
        let old = post_of(3, T0, "old");
        let big = post_of(u64::MAX, T0 + 1000, &"w".repeat(255));
        assert_eq!(big.encode().len(), MAX_POST_RECORD);
        let body = old.encode() + &big.encode() + &filler(2, T0 + 2000, 8192 - 316);
        std::fs::write(&path, body).unwrap();
        let last = last_posts(&path, 20, |p| p.author != 2, |_| false).unwrap();
        let lens: Vec<usize> = last.posts.iter().map(|p| p.text.len()).collect();
        assert_eq!(lens, [3, 255]);
        assert_eq!(
            offset_after(&path, T0 + 500).unwrap(),
            old.encode().len() as u64
        );
    }

    /// A record too long is skipped wherever it lies, inside a backward
    /// window or across its edge: the posts before it are still read, and
    /// a synchronizer's cursor never jumps over them.
    #[test]
    fn a_record_too_long_is_skipped_wherever_it_lies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u2_posts.txt");
        let p = |i: i64, t: &str| post_of(2, T0 + i, t);
        let head = format!(
            "{}{}{}",
            p(0, "sent").encode(),
            p(1, "one").encode(),
            p(2, "two").encode()
        );
        for (junk, tail) in [
            (400, p(3, "three").encode()),
            (990, filler(2, T0 + 100, 8192 - 500)),
        ] {
            let junk = format!("T x\nU 2\nW {}\n\n", "j".repeat(junk));
            std::fs::write(&path, format!("{head}{junk}{tail}")).unwrap();
            assert_eq!(
                offset_after(&path, T0).unwrap(),
                p(0, "sent").encode().len() as u64
            );
            let last = last_posts(&path, 20, |p| p.time < T0 + 3, |_| false).unwrap();
            assert_eq!(last.posts.len(), 3, "sent, one and two are among the last");
        }
        // A long unterminated tail is skipped too.
        std::fs::write(&path, format!("{head}{}", "z".repeat(5000))).unwrap();
        assert_eq!(
            offset_after(&path, T0).unwrap(),
            p(0, "sent").encode().len() as u64
        );
    }

    /// Truncates a file of three posts at every byte: a repair keeps exactly
    /// the whole records before the cut, and appending afterwards yields a
    /// well-formed file.
    #[test]
    fn torn_record_cut_at_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u1_timeline.txt");
        let posts: Vec<Post> = (1..=3)
            .map(|i| post(i, i as i64 * 1000, "text é"))
            .collect();
        let full: String = posts.iter().map(Post::encode).collect();
        let bounds: Vec<usize> = posts
            .iter()
            .scan(0, |acc, p| {
                *acc += p.encode().len();
                Some(*acc)
            })
            .collect();
        for cut in 0..=full.len() {
            std::fs::write(&path, &full.as_bytes()[..cut]).unwrap();
            repair(&path).unwrap();
            let kept = bounds.iter().filter(|b| **b <= cut).count();
            let data = std::fs::read(&path).unwrap();
            assert_eq!(
                data.len(),
                if kept == 0 { 0 } else { bounds[kept - 1] },
                "cut {cut}"
            );
            let mut tail: Tail<AuthorClock> = Tail::new(path.clone());
            tail.append_with(|_| Some(post(9, 9, "after").encode()))
                .unwrap();
            let last = last_posts(&path, 10, |_| true, |_| false).unwrap().posts;
            assert_eq!(last.len(), kept + 1, "cut {cut}");
            assert_eq!(last[..kept], posts[..kept]);
        }
    }

    #[test]
    fn many_files_are_flushed_with_their_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<PathBuf> = (0..=SYNCFS_PAST as u64)
            .map(|u| dir.path().join(format!("u{u}_posts.txt")))
            .collect();
        for p in &paths[1..] {
            std::fs::write(p, "x\n").unwrap();
        }
        // One of them gone, and a directory gone: nothing left to flush.
        sync_files(&paths).unwrap();
        sync_files(&vec![
            PathBuf::from("/nonexistent-dir/u1_posts.txt");
            SYNCFS_PAST + 1
        ])
        .unwrap();
        sync_files(&paths[..2]).unwrap();
    }

    #[test]
    fn lines_repair_and_users() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("all_users.txt");
        std::fs::write(&path, "1\n2\n3").unwrap();
        assert_eq!(repair(&path).unwrap(), 1);
        let mut t: Tail<UserSet> = Tail::new(path.clone());
        t.refresh().unwrap();
        assert_eq!(t.state.0.iter().copied().collect::<Vec<_>>(), vec![1, 2]);
    }

    #[test]
    fn last_posts_reads_from_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u1_timeline.txt");
        let mut t: Tail<AuthorClock> = Tail::new(path.clone());
        for i in 1..=1000 {
            let p = post(1 + i % 3, i as i64, &format!("post number {i}"));
            t.append_with(|_| Some(p.encode())).unwrap();
        }
        // a torn tail is ignored by readers
        OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"T 2026")
            .unwrap();
        let last = last_posts(&path, 20, |_| true, |_| false).unwrap().posts;
        assert_eq!(last.len(), 20);
        assert_eq!(last[0].time, 981);
        assert_eq!(last[19].time, 1000);
        let only2 = last_posts(&path, 5, |p| p.author == 2, |_| false)
            .unwrap()
            .posts;
        assert!(only2.iter().all(|p| p.author == 2));
        assert_eq!(only2.len(), 5);
        repair(&path).unwrap();
        let off = offset_after(&path, 990).unwrap();
        let (rest, _) = read_from(&path, off).unwrap();
        let (recs, _) = split_records(&rest, Format::Records);
        assert_eq!(recs.len(), 10);
        assert_eq!(
            offset_after(&path, 5000).unwrap(),
            std::fs::metadata(&path).unwrap().len()
        );
    }

    /// A FIFO at `path` (a reader that opened it would wait for a writer).
    pub(crate) fn mkfifo(path: &Path) {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path; mkfifo only reads it.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    }

    #[test]
    fn a_failed_append_is_taken_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u1_timeline.txt");
        let mut t: Tail<AuthorClock> = Tail::new(path.clone());
        t.append_with(|_| Some(post(2, 10, "kept").encode()))
            .unwrap();
        let before = std::fs::read(&path).unwrap();
        // The disk takes 7 bytes of the next append, then is full.
        faults::fail_appends(&path, 0, 7, 1);
        let e = t
            .append_with(|_| Some(post(2, 20, "lost").encode()))
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(std::fs::read(&path).unwrap(), before, "nothing of it stays");
        assert_eq!(
            t.state.latest(2),
            10,
            "the view claims only what is written"
        );
        // Staged records whose flush fails stay staged, and none is written.
        t.stage(|_| Some(post(2, 30, "a").encode())).unwrap();
        t.stage(|_| Some(post(2, 40, "b").encode())).unwrap();
        faults::fail_appends(&path, 0, 50, 1);
        assert!(t.flush_front(2).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), before);
        t.flush_front(2).unwrap();
        let texts: Vec<String> = last_posts(&path, 10, |_| true, |_| false)
            .unwrap()
            .posts
            .into_iter()
            .map(|p| p.text)
            .collect();
        assert_eq!(texts, ["kept", "a", "b"]);
    }

    #[test]
    fn what_is_not_a_regular_file_is_damaged_and_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("elsewhere.txt");
        let valid = post(5, 5, "not ours").encode();
        std::fs::write(&target, &valid).unwrap();
        std::fs::create_dir(d.join("u1_timeline.txt")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", d.join("u2_timeline.txt")).unwrap();
        std::os::unix::fs::symlink(&target, d.join("u3_posts.txt")).unwrap();
        mkfifo(&d.join("u4_posts.txt"));
        std::fs::write(d.join("u5_posts.txt"), &valid).unwrap();
        let kinds = [
            ("u1_timeline.txt", "a directory"),
            ("u2_timeline.txt", "a symbolic link"),
            ("u3_posts.txt", "a symbolic link"),
            ("u4_posts.txt", "a FIFO"),
        ];
        for (name, what) in kinds {
            let path = d.join(name);
            for e in [
                open_read(&path).map(drop).unwrap_err(),
                open_append(&path).map(drop).unwrap_err(),
                last_posts(&path, 20, |_| true, |_| false)
                    .map(drop)
                    .unwrap_err(),
                read_from(&path, 0).map(drop).unwrap_err(),
                Tail::<AuthorClock>::new(path.clone())
                    .refresh()
                    .unwrap_err(),
                Tail::<AuthorClock>::new(path.clone())
                    .append_with(|_| Some(post(1, 1, "x").encode()))
                    .map(drop)
                    .unwrap_err(),
            ] {
                assert!(is_damaged(&e), "{name}: {e}");
                let text = e.to_string();
                assert!(text.contains(name) && text.contains(what), "{text}");
            }
        }
        assert_eq!(std::fs::read(&target).unwrap(), valid.as_bytes());
        let checked = repair_dir(d).unwrap();
        let mut names: Vec<String> = checked
            .damaged
            .iter()
            .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, kinds.map(|k| k.0));
        assert_eq!(data_files(d).unwrap(), vec![d.join("u5_posts.txt")]);
        let all: Vec<PathBuf> = kinds.iter().map(|k| d.join(k.0)).collect();
        sync_files(&all).unwrap();
    }

    #[test]
    fn a_damaged_entry_is_set_aside_under_a_name_that_is_no_data_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u1_timeline.txt");
        std::fs::create_dir(&path).unwrap();
        let to = set_aside(&path).unwrap();
        assert!(FileKind::parse(&to).is_none());
        std::fs::create_dir(&path).unwrap();
        let again = set_aside(&path).unwrap();
        assert_ne!(to, again);
        assert!(!path.exists() && to.is_dir() && again.is_dir());
    }

    #[test]
    fn a_file_replaced_whole_is_the_new_one_and_never_written_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("positions.txt");
        replace_whole(&path, b"one\n").unwrap();
        replace_whole(&path, b"two\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two\n");
        assert!(
            !path.with_extension("tmp").exists(),
            "no temporary file left"
        );
        // A link where the temporary file goes is replaced, not followed.
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, "keep").unwrap();
        std::os::unix::fs::symlink(&elsewhere, path.with_extension("tmp")).unwrap();
        replace_whole(&path, b"three\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"three\n");
        assert_eq!(std::fs::read(&elsewhere).unwrap(), b"keep");
        // A failure leaves the old file.
        std::fs::remove_file(&elsewhere).unwrap();
        std::fs::create_dir(path.with_extension("tmp")).unwrap();
        assert!(replace_whole(&path, b"four\n").is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"three\n");
    }
}
