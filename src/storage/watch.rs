//! Watching a directory for appends (inotify).
//!
//! A server watches its own directory to see what the synchronizer appends
//! to timelines; a synchronizer watches its master's directory to see new
//! users, follows and posts. Both only need to know *which files grew or
//! appeared*: they read them from a saved offset anyway, so an event is a
//! hint and never carries data.
//!
//! The watch asks the kernel for exactly those events: a write (`MODIFY`), a
//! file made or renamed into place (`CREATE`, `MOVED_TO`, as a resync does),
//! a file removed, and the directory itself going away. It does not ask for
//! opens and closes, which `notify`'s watcher always asks for: every append
//! opens and closes its file, and so does every reader, so those events were
//! two in three of all events and the largest cost of a post on a loaded
//! machine (`bench post` measured it). One thread per watch reads the events
//! and hands over each read's batch at once, so a burst costs one wake-up.
//!
//! When the kernel's queue overflows it drops events and says so; the
//! callback then gets [`Change::Rescan`] and must look at everything.

use inotify::{EventMask, Inotify, WatchMask};
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

/// A running watch; dropping it stops the thread.
pub struct DirWatch {
    dir: PathBuf,
    stop: Arc<AtomicBool>,
    /// Set by the thread when it ends (the directory went away, or reading
    /// failed): the owner should watch again.
    ended: Arc<AtomicBool>,
    watches: inotify::Watches,
    wd: inotify::WatchDescriptor,
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
        self.stop.store(true, Ordering::SeqCst);
        // Removing the watch queues an IGNORED event, which wakes the thread
        // so that it sees `stop` and ends. If the directory is gone the
        // watch is gone too and the thread has ended already.
        let _ = self.watches.remove(self.wd.clone());
    }
}

/// Watches `dir` (not its subdirectories) and calls `on_change` from a
/// thread of its own with each batch of changes.
pub fn watch_dir(
    dir: &Path,
    mut on_change: impl FnMut(Change) + Send + 'static,
) -> io::Result<DirWatch> {
    let mut inotify = Inotify::init()?;
    let mask = WatchMask::MODIFY
        | WatchMask::CREATE
        | WatchMask::MOVED_TO
        | WatchMask::MOVED_FROM
        | WatchMask::DELETE
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
        | WatchMask::ONLYDIR;
    let wd = inotify.watches().add(dir, mask)?;
    let watches = inotify.watches();
    let stop = Arc::new(AtomicBool::new(false));
    let root = dir.to_path_buf();
    let stopped = stop.clone();
    let ended = Arc::new(AtomicBool::new(false));
    let done = ended.clone();
    std::thread::Builder::new()
        .name("dir-watch".into())
        .spawn(move || {
            let _done = SetOnDrop(done);
            let mut buffer = vec![0u8; 64 * 1024];
            loop {
                let events = match inotify.read_events_blocking(&mut buffer) {
                    Ok(events) => events,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        log::warn!("watch of {} failed: {e}", root.display());
                        on_change(Change::Rescan);
                        return;
                    }
                };
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                let mut files: Vec<PathBuf> = Vec::new();
                let mut rescan = false;
                let mut gone = false;
                for ev in events {
                    if ev.mask.contains(EventMask::Q_OVERFLOW) {
                        rescan = true;
                    }
                    if ev.mask.intersects(
                        EventMask::DELETE_SELF | EventMask::MOVE_SELF | EventMask::IGNORED,
                    ) {
                        gone = true;
                    }
                    if let Some(name) = ev.name {
                        let path = root.join(name);
                        if !files.contains(&path) {
                            files.push(path);
                        }
                    }
                }
                if !files.is_empty() {
                    on_change(Change::Files(files));
                }
                if rescan || gone {
                    on_change(Change::Rescan);
                }
                if gone {
                    // The directory went away: this watch has ended.
                    return;
                }
            }
        })?;
    Ok(DirWatch {
        dir: dir.to_path_buf(),
        stop,
        ended,
        watches,
        wd,
    })
}

/// Sets its flag when dropped: whichever way the thread ends.
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
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
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !w.ended() {
            assert!(
                std::time::Instant::now() < deadline,
                "the watch did not end"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
