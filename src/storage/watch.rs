//! Watching a directory for appends (`notify`).
//!
//! A server watches its own directory to see what the synchronizer appends
//! to timelines; a synchronizer watches its master's directory to see new
//! users, follows and posts. Both only need to know *which files grew or
//! appeared*: they read them from a saved offset anyway, so an event is a
//! hint and never carries data.
//!
//! The watch asks the operating system for exactly those events
//! (`EVENTS`): a write, a file made or renamed into place (as a resync
//! does), a file removed or renamed away, and the directory itself going
//! away. It does not ask for opens and closes, which `notify` asks for by
//! default: every append opens and closes its file, and so does every
//! reader, so those events were two in three of all events and the largest
//! cost of a post on a loaded machine (`bench post` measured it). On Linux
//! `notify` turns the mask into the inotify watch mask, so the kernel never
//! queues what we do not want; elsewhere it filters what its backend
//! reports.
//!
//! `notify` runs one thread per watch and calls back once per event, from
//! that thread; the callers coalesce (the synchronizer drains its queue
//! before it reads, a server's timeline reads from its offset to the end).
//!
//! A watch reads no file, only names, so a damaged entry in the directory
//! (a directory, a link, a FIFO where a data file should be) costs it
//! nothing: whoever reads the file on its hint finds it damaged
//! ([`crate::storage::Damaged`]).
//!
//! When the kernel's queue overflows it drops events and says so; the
//! callback then gets [`Change::Rescan`] and must look at everything. It gets
//! one too when the directory itself goes away, and the watch then ends
//! ([`DirWatch::ended`]): the owner makes a new one when the directory is
//! back.

use notify::event::{EventKind, ModifyKind, RenameMode};
use notify::{Config, EventKindMask, RecommendedWatcher, RecursiveMode, Watcher};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// What the callback is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// These files (in the watched directory) grew, appeared or went away.
    Files(Vec<PathBuf>),
    /// Events were lost, or the directory itself went away: look at
    /// everything.
    Rescan,
}

/// The events asked for. `CREATE` covers files renamed into place, but
/// notify reports those as renames, hence `MODIFY_NAME`, which also brings
/// the directory's own move. Opens, closes and metadata changes are left out
/// (see the module doc).
const EVENTS: EventKindMask = EventKindMask::CREATE
    .union(EventKindMask::REMOVE)
    .union(EventKindMask::MODIFY_DATA)
    .union(EventKindMask::MODIFY_NAME);

/// A running watch; dropping it stops its thread.
pub struct DirWatch {
    dir: PathBuf,
    /// Set when the watch ended by itself (the directory went away, or
    /// reading failed): the owner should watch again.
    ended: Arc<AtomicBool>,
    /// Always `Some` until dropped (taken in `Drop`).
    watcher: Option<RecommendedWatcher>,
}

impl DirWatch {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the watch has ended by itself.
    pub fn ended(&self) -> bool {
        self.ended.load(Ordering::SeqCst)
    }
}

impl Drop for DirWatch {
    fn drop(&mut self) {
        // notify's watcher panics when dropped if its thread died (a failed
        // poll): a watch that is gone anyway must not take the daemon down.
        if let Some(w) = self.watcher.take() {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(w)));
        }
    }
}

/// Watches `dir` (not its subdirectories) and calls `on_change` from a
/// thread of its own with each change.
pub fn watch_dir(
    dir: &Path,
    on_change: impl FnMut(Change) + Send + 'static,
) -> io::Result<DirWatch> {
    let ended = Arc::new(AtomicBool::new(false));
    let handler = Handler {
        dir: dir.to_path_buf(),
        ended: ended.clone(),
        on_change,
    };
    let config = Config::default().with_event_kinds(EVENTS);
    let mut watcher = RecommendedWatcher::new(handler, config).map_err(to_io)?;
    watcher
        .watch(dir, RecursiveMode::NonRecursive)
        .map_err(to_io)?;
    Ok(DirWatch {
        dir: dir.to_path_buf(),
        ended,
        watcher: Some(watcher),
    })
}

/// What notify calls with each event, on its thread.
struct Handler<F> {
    dir: PathBuf,
    ended: Arc<AtomicBool>,
    on_change: F,
}

impl<F: FnMut(Change) + Send + 'static> notify::EventHandler for Handler<F> {
    fn handle_event(&mut self, event: notify::Result<notify::Event>) {
        if self.ended.load(Ordering::SeqCst) {
            return;
        }
        let change = match event {
            Ok(ev) => classify(&self.dir, ev),
            Err(e) => {
                log::warn!("watch of {} failed: {e}", self.dir.display());
                Some(Outcome::Ended)
            }
        };
        let change = match change {
            None => return,
            Some(Outcome::Ended) => {
                self.ended.store(true, Ordering::SeqCst);
                Change::Rescan
            }
            Some(Outcome::Tell(c)) => c,
        };
        // A panicking callback would kill notify's thread, and dropping the
        // watch would then panic too: end the watch instead.
        let call =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (self.on_change)(change)));
        if call.is_err() {
            log::error!(
                "the watch of {} ended: its callback panicked",
                self.dir.display()
            );
            self.ended.store(true, Ordering::SeqCst);
        }
    }
}

/// What one event means for the owner.
enum Outcome {
    Tell(Change),
    /// The directory went away (or the watch broke): rescan, then stop.
    Ended,
}

/// Turns one notify event into what the callback is told, if anything.
fn classify(dir: &Path, ev: notify::Event) -> Option<Outcome> {
    if ev.need_rescan() {
        return Some(Outcome::Tell(Change::Rescan));
    }
    let about_dir = ev.paths.iter().any(|p| p == dir);
    match ev.kind {
        // A rename within the directory is also reported as its two halves.
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => None,
        EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_)) if about_dir => {
            Some(Outcome::Ended)
        }
        EventKind::Create(_) | EventKind::Remove(_) | EventKind::Modify(_) => {
            let mut files: Vec<PathBuf> = Vec::new();
            for p in ev.paths {
                if p.parent() == Some(dir) && !files.contains(&p) {
                    files.push(p);
                }
            }
            (!files.is_empty()).then_some(Outcome::Tell(Change::Files(files)))
        }
        // Anything else (`Other` with no flag, `Any`): we cannot tell what
        // changed.
        EventKind::Other | EventKind::Any => Some(Outcome::Tell(Change::Rescan)),
        EventKind::Access(_) => None,
    }
}

fn to_io(e: notify::Error) -> io::Error {
    match e.kind {
        notify::ErrorKind::Io(e) => e,
        notify::ErrorKind::PathNotFound => {
            io::Error::new(io::ErrorKind::NotFound, "no such directory")
        }
        _ => io::Error::other(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::mpsc;
    use std::time::Duration;

    fn next(rx: &mpsc::Receiver<Change>) -> Change {
        rx.recv_timeout(Duration::from_secs(10)).expect("an event")
    }

    #[test]
    fn the_kernel_is_asked_for_no_opens_or_closes() {
        // What makes reads free: `classify` would drop them too, but only
        // the mask keeps them from being queued and delivered at all.
        assert!(!EVENTS.intersects(EventKindMask::ALL_ACCESS));
        assert!(EVENTS.contains(EventKindMask::MODIFY_DATA | EventKindMask::CREATE));
    }

    #[test]
    fn reports_appends_and_renames_but_not_reads() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("u1_timeline.txt");
        std::fs::write(&file, "").unwrap();
        let (tx, rx) = mpsc::channel();
        let w = watch_dir(dir.path(), move |c| {
            let _ = tx.send(c);
        })
        .unwrap();
        // A read (open and close) says nothing.
        let _ = std::fs::read(&file).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .unwrap();
        f.write_all(b"x\n").unwrap();
        assert_eq!(next(&rx), Change::Files(vec![file.clone()]));
        let tmp = dir.path().join("u2_posts.txt.resync");
        std::fs::write(&tmp, "y").unwrap();
        let placed = dir.path().join("u2_posts.txt");
        std::fs::rename(&tmp, &placed).unwrap();
        let mut seen = Vec::new();
        while !seen.contains(&placed) {
            match next(&rx) {
                Change::Files(f) => seen.extend(f),
                Change::Rescan => panic!("unexpected rescan"),
            }
        }
        drop(w);
    }

    #[test]
    fn a_removed_directory_asks_for_a_rescan() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("server_1");
        std::fs::create_dir(&sub).unwrap();
        let (tx, rx) = mpsc::channel();
        let w = watch_dir(&sub, move |c| {
            let _ = tx.send(c);
        })
        .unwrap();
        std::fs::remove_dir(&sub).unwrap();
        loop {
            if next(&rx) == Change::Rescan {
                break;
            }
        }
        // `ended` is set before the rescan is told.
        assert!(w.ended(), "the watch did not end");
    }
}
