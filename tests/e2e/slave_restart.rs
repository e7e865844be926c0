//! The slave's failures: killed while the master takes writes, the master
//! goes on alone; restarted with its directory, the slave fetches only what it
//! lacks and is in service again with the same records as the master.

use crate::harness::*;

/// Bytes the slave's resyncs fetched, from its log: no state records how
/// much a resync carried.
fn resync_bytes(sys: &System, name: &str) -> Vec<u64> {
    sys.log(name)
        .lines()
        .filter(|l| l.contains("resynced from"))
        .filter_map(|l| {
            let rest = l.split(": ").nth(1)?;
            rest.split(" bytes").next()?.parse().ok()
        })
        .collect()
}

#[test]
fn slave_killed_while_posting_then_resynced_with_its_directory() {
    let mut sys = System::one_cluster(300);
    let mut poster = Client::logged_in(sys.coord_port, 1);
    let mut reader = Client::logged_in(sys.coord_port, 4);
    assert_eq!(reader.command("FOLLOW 1"), SUCCESS);
    reader.enter_timeline();
    poster.enter_timeline();
    let (dir1, dir2) = (sys.server_dir(1, 1), sys.server_dir(1, 2));
    let posts_file = |s: u32| if s == 1 { &dir1 } else { &dir2 }.join("u1_posts.txt");

    let texts = texts("post ", 0..60);
    poster.send_all(&texts[..20]);
    wait_until("20 posts on the slave", || {
        posts_in(&posts_file(2)).len() == 20
    });
    sys.kill(&System::server_name(1, 2));
    // The master goes on alone, after telling the coordinator.
    poster.send_all(&texts[20..40]);
    wait_until("40 posts on the master", || {
        posts_in(&posts_file(1)).len() == 40
    });
    assert!(sys.entry(1, 2).is_some_and(|e| !e.in_service));
    assert_eq!(
        posts_in(&posts_file(2)).len(),
        20,
        "the dead slave got writes"
    );

    sys.start_server(1, 2);
    sys.wait_slave_in_service(1, 2);
    poster.send_all(&texts[40..]);
    wait_until("60 posts on both servers", || {
        posts_in(&posts_file(1)).len() == 60 && posts_in(&posts_file(2)).len() == 60
    });
    wait_until("the same records on both servers", || {
        records(&sys.server_dir(1, 1)) == records(&sys.server_dir(1, 2))
    });
    assert_no_duplicates(&sys.server_dir(1, 2));

    // Every post on the reader's screen once, in order.
    let mut seen = Vec::new();
    while seen.len() < texts.len() {
        seen.push(reader.next_post().1);
    }
    assert_eq!(seen, texts);

    // The resync after the restart fetched only what the slave lacked: the
    // 20 posts it missed and their timeline copies, not the whole history.
    let whole: u64 = std::fs::read_dir(sys.server_dir(1, 1))
        .expect("master dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".txt"))
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum();
    let fetched = resync_bytes(&sys, &System::server_name(1, 2));
    let last = *fetched.last().expect("a resync in the log");
    println!("resync fetched {last} of {whole} bytes");
    assert!(
        last < whole,
        "fetched {last} bytes of {whole}: the whole directory"
    );
}
