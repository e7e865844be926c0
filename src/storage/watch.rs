//! Watching a directory for appends (`notify`).
//!
//! A server watches its own directory to see what the synchronizer appends
//! to timelines; a synchronizer watches its master's directory to see new
//! users, follows and posts. Both only need to know *which files grew or
//! appeared*: they read them from a saved offset anyway, so an event is a
//! hint and never carries data.
//!
//! The watch asks the operating system for exactly those events: a file
//! made or renamed into place (as a resync does), a file removed or renamed
//! away, the directory itself going away, and appends, in one of two ways
//! ([`Appends`]):
//!
//! * **every write** (`Appends::Each`), for a synchronizer: a server appends
//!   through files it keeps open ([`crate::storage::tail::APPEND_HANDLES`]),
//!   so a write is all there is to see;
//! * **a file closed after writing** (`Appends::Closed`), for a server: the
//!   synchronizer opens, appends and closes, as `echo >>` does, so its
//!   appends are seen when it closes, and the server's own appends, through
//!   files it keeps open, queue nothing for it. Asked for every write, a
//!   server was told of each of its own appends, and its watch thread cost
//!   it a tenth of its CPU per post (`bench post`, `perf`).
//!
//! Opens and reads are never asked for: every reader opens and closes its
//! file, and those events were two in three of all events and the largest
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
//!
//! **Ending a watch.** Dropping a [`DirWatch`] asks notify's thread to stop,
//! but that thread only reads its messages once it has read every event the
//! kernel holds, calling back for each. While the directory is busy (the
//! queue overflowing, writers appending faster than the callback returns)
//! that is never: the thread, and the callback with all it holds (a
//! server's node, a synchronizer's channel), lived on for as long as the
//! writes went on, one more for each watch made again. So the watch is
//! stopped on our side first: from the drop on, the handler calls nothing
//! and lets go of the callback (at once, or as soon as the call in hand
//! returns), and notify's thread, with nothing left to do per event,
//! drains the queue and ends.

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind, RenameMode};
use notify::{Config, EventKindMask, RecommendedWatcher, RecursiveMode, Watcher};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// What the callback is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// These files (in the watched directory) grew, appeared or went away.
    Files(Vec<PathBuf>),
    /// Events were lost, or the directory itself went away: look at
    /// everything.
    Rescan,
}

/// What a watch is told of (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appends {
    /// Every write: what a synchronizer needs to see a server's appends,
    /// made through files the server keeps open.
    Each,
    /// Only a file closed after writing: what a server needs to see the
    /// synchronizer's appends (it opens, appends and closes), without an
    /// event for each of the server's own appends.
    Closed,
}

/// The events asked for. `CREATE` covers files renamed into place, but
/// notify reports those as renames, hence `MODIFY_NAME`, which also brings
/// the directory's own move. Opens, reads and metadata changes are left out
/// (see the module doc).
const NAMES: EventKindMask = EventKindMask::CREATE
    .union(EventKindMask::REMOVE)
    .union(EventKindMask::MODIFY_NAME);

impl Appends {
    fn mask(self) -> EventKindMask {
        match self {
            Appends::Each => NAMES.union(EventKindMask::MODIFY_DATA),
            Appends::Closed => NAMES.union(EventKindMask::ACCESS_CLOSE),
        }
    }
}

type Callback = Box<dyn FnMut(Change) + Send>;

/// What the owner and notify's thread share to end a watch (see the module
/// doc).
struct Stop {
    stopped: AtomicBool,
    /// `None` once let go of.
    callback: Mutex<Option<Callback>>,
}

/// A running watch; dropping it stops its thread.
pub struct DirWatch {
    dir: PathBuf,
    /// Set when the watch ended by itself (the directory went away, or
    /// reading failed): the owner should watch again.
    ended: Arc<AtomicBool>,
    stop: Arc<Stop>,
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
        // Never waits for a call in hand (the callback might wait for
        // whoever drops us): the handler lets go of it after that call.
        self.stop.stopped.store(true, Ordering::SeqCst);
        if let Ok(mut callback) = self.stop.callback.try_lock() {
            callback.take();
        }
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
    appends: Appends,
    on_change: impl FnMut(Change) + Send + 'static,
) -> io::Result<DirWatch> {
    let ended = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(Stop {
        stopped: AtomicBool::new(false),
        callback: Mutex::new(Some(Box::new(on_change))),
    });
    let handler = Handler {
        dir: dir.to_path_buf(),
        ended: ended.clone(),
        stop: stop.clone(),
    };
    let config = Config::default().with_event_kinds(appends.mask());
    let mut watcher = RecommendedWatcher::new(handler, config).map_err(to_io)?;
    watcher
        .watch(dir, RecursiveMode::NonRecursive)
        .map_err(to_io)?;
    Ok(DirWatch {
        dir: dir.to_path_buf(),
        ended,
        stop,
        watcher: Some(watcher),
    })
}

/// What notify calls with each event, on its thread.
struct Handler {
    dir: PathBuf,
    ended: Arc<AtomicBool>,
    stop: Arc<Stop>,
}

impl Handler {
    /// Whether the owner dropped the watch; then the callback is let go of.
    fn stopped(&self) -> bool {
        if !self.stop.stopped.load(Ordering::SeqCst) {
            return false;
        }
        self.stop
            .callback
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        true
    }
}

impl notify::EventHandler for Handler {
    fn handle_event(&mut self, event: notify::Result<notify::Event>) {
        if self.stopped() || self.ended.load(Ordering::SeqCst) {
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
        let mut callback = self
            .stop
            .callback
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(on_change) = callback.as_mut() else {
            return;
        };
        let call = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| on_change(change)));
        drop(callback);
        // Dropped while it ran: let go of it now.
        self.stopped();
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
        EventKind::Create(_)
        | EventKind::Remove(_)
        | EventKind::Modify(_)
        | EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
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
    fn the_kernel_is_asked_for_no_opens_or_reads() {
        // What makes reads free: `classify` would drop them too, but only
        // the mask keeps them from being queued and delivered at all.
        let each = Appends::Each.mask();
        assert!(!each.intersects(EventKindMask::ALL_ACCESS));
        assert!(each.contains(EventKindMask::MODIFY_DATA | EventKindMask::CREATE));
        // A server is told of closes after writing, never of each write.
        let closed = Appends::Closed.mask();
        assert!(!closed.intersects(
            EventKindMask::MODIFY_DATA
                | EventKindMask::ACCESS_OPEN
                | EventKindMask::ACCESS_CLOSE_NOWRITE
        ));
        assert!(closed.contains(EventKindMask::ACCESS_CLOSE | EventKindMask::CREATE));
    }

    #[test]
    fn a_server_watch_sees_closes_after_writing_not_writes_through_a_kept_file() {
        let dir = tempfile::tempdir().unwrap();
        let kept = dir.path().join("u1_timeline.txt");
        let other = dir.path().join("u2_timeline.txt");
        std::fs::write(&kept, "").unwrap();
        std::fs::write(&other, "").unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&kept)
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let _w = watch_dir(dir.path(), Appends::Closed, move |c| {
            let _ = tx.send(c);
        })
        .unwrap();
        f.write_all(b"x\n").unwrap();
        // Another writer's append, closed: the first event is about it, so
        // the write through the kept file queued nothing.
        let mut g = std::fs::OpenOptions::new()
            .append(true)
            .open(&other)
            .unwrap();
        g.write_all(b"y\n").unwrap();
        drop(g);
        assert_eq!(next(&rx), Change::Files(vec![other.clone()]));
    }

    #[test]
    fn reports_appends_and_renames_but_not_reads() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("u1_timeline.txt");
        std::fs::write(&file, "").unwrap();
        let (tx, rx) = mpsc::channel();
        let w = watch_dir(dir.path(), Appends::Each, move |c| {
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
        let w = watch_dir(&sub, Appends::Each, move |c| {
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

    /// Sets its flag when dropped: the callback holding it was let go of.
    struct Held(Arc<AtomicBool>);

    impl Drop for Held {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    fn within(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
        let end = std::time::Instant::now() + Duration::from_secs(secs);
        while std::time::Instant::now() < end {
            if cond() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        cond()
    }

    #[test]
    fn a_watch_dropped_while_its_queue_overflows_ends_its_thread() {
        let dir = tempfile::tempdir().unwrap();
        let files = [
            dir.path().join("u1_posts.txt"),
            dir.path().join("u2_posts.txt"),
        ];
        let mut out: Vec<std::fs::File> = files
            .iter()
            .map(|f| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(f)
                    .unwrap()
            })
            .collect();
        // The callback: notes its thread, waits at its first call until the
        // queue has overflowed, then is slow (a millisecond a call), as a
        // loaded owner's is.
        let thread = Arc::new(std::sync::atomic::AtomicI64::new(0));
        let released = Arc::new(AtomicBool::new(false));
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let held = Held(released.clone());
        let t = thread.clone();
        let w = watch_dir(dir.path(), Appends::Each, move |_| {
            let _ = &held;
            // SAFETY: gettid has no preconditions and cannot fail.
            let me = i64::from(unsafe { libc::gettid() });
            if t.swap(me, Ordering::SeqCst) == 0 {
                let _ = go_rx.recv();
            }
            std::thread::sleep(Duration::from_millis(1));
        })
        .unwrap();
        out[0].write_all(b"x").unwrap();
        assert!(
            within(10, || thread.load(Ordering::SeqCst) != 0),
            "no event"
        );
        let tid = thread.load(Ordering::SeqCst);
        // Overflow the kernel's queue while the callback waits.
        let max: usize = std::fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(16384);
        for i in 0..max + 1000 {
            out[i % 2].write_all(b"x").unwrap();
        }
        // Writers go on, more often than the callback can answer.
        let flooding = Arc::new(AtomicBool::new(true));
        let f = flooding.clone();
        let flood = std::thread::spawn(move || {
            let mut i = 0;
            while f.load(Ordering::SeqCst) {
                out[i % 2].write_all(b"x").unwrap();
                i += 1;
                std::thread::sleep(Duration::from_micros(100));
            }
        });
        // The watch ends while the queue is full and filling, its callback
        // in a call.
        drop(w);
        go_tx.send(()).unwrap();
        let task = format!("/proc/self/task/{tid}");
        let ended = within(20, || !std::path::Path::new(&task).exists());
        let let_go = released.load(Ordering::SeqCst);
        flooding.store(false, Ordering::SeqCst);
        flood.join().unwrap();
        assert!(let_go, "the callback was not let go of");
        assert!(ended, "the watch's thread lives on while writes go on");
    }
}
