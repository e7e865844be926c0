//! Graceful shutdown: SIGTERM ends every daemon with status 0 while clients
//! are connected and posting (an open timeline does not hold a server up),
//! leaves every data file at a record boundary, keeps what was shown on
//! both servers and leaves the coordinator's state file as it was. How long
//! it takes is printed (`-- --nocapture`), not checked.

use crate::harness::*;
use std::path::Path;
use std::time::Instant;

/// Whether every data file of `dir` ends where a record ends.
fn whole_records(dir: &Path) -> Result<(), String> {
    for e in std::fs::read_dir(dir).map_err(|e| e.to_string())?.flatten() {
        let path = e.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let text = read(&path);
        let whole = if name.ends_with("_posts.txt") || name.ends_with("_timeline.txt") {
            text.is_empty() || text.ends_with("\n\n")
        } else if name.ends_with(".txt") {
            text.is_empty() || text.ends_with('\n')
        } else {
            true
        };
        if !whole {
            return Err(format!("{} ends inside a record", path.display()));
        }
    }
    Ok(())
}

#[test]
fn sigterm_ends_every_daemon_cleanly_with_clients_connected() {
    let mut sys = System::full(3);
    let mut poster = Client::logged_in(sys.coord_port, 1);
    let mut reader = Client::logged_in(sys.coord_port, 4);
    assert_eq!(reader.command("FOLLOW 1"), SUCCESS);
    reader.enter_timeline();
    poster.enter_timeline();
    let before = texts("before", 0..5);
    poster.send_all(&before);
    let shown: Vec<String> = before.iter().map(|_| reader.next_post().1).collect();
    assert_eq!(shown, before);
    let epochs = sys.data_dir().join("coordinator").join("epochs.txt");
    let epochs_before = read(&epochs);
    assert!(
        !epochs_before.is_empty(),
        "the coordinator saved its epochs"
    );
    // Posts still being typed while the daemons stop.
    poster.send_all(&texts("during", 0..20));
    let mut names: Vec<String> = sys.procs.keys().cloned().collect();
    // Servers first (with clients on them), the coordinator last.
    names.sort_by_key(|n| (n == "coordinator", n.clone()));
    for name in names {
        let proc = sys.procs.get_mut(&name).expect("a started process");
        let sent = Instant::now();
        // SAFETY: kill(2) with a pid we started and have not reaped.
        let rc = unsafe { libc::kill(proc.pid() as i32, libc::SIGTERM) };
        assert_eq!(rc, 0, "SIGTERM to {name}");
        let status = proc.exit_status(&name);
        println!("{name} exited after SIGTERM in {:?}", sent.elapsed());
        assert!(status.success(), "{name} ended with {status}");
    }
    for dir in sys.server_dirs() {
        whole_records(&dir).unwrap_or_else(|e| panic!("{e}"));
    }
    // What was shown before the stop is on both servers, once; the
    // coordinator's state is as it was.
    for s in 1..=2 {
        let stored = post_texts(&sys.server_dir(1, s).join("u1_posts.txt"));
        for p in &before {
            let n = stored.iter().filter(|t| *t == p).count();
            assert_eq!(n, 1, "{p:?} on server {s} of cluster 1: {stored:?}");
        }
    }
    assert_eq!(read(&epochs), epochs_before);
}
