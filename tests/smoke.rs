mod common;
use common::*;

#[test]
fn smoke_two_clusters() {
    let sys = System::full(3);
    let mut a = Client::logged_in(sys.coord_port, 1);
    let mut b = Client::logged_in(sys.coord_port, 2);
    let mut c = Client::logged_in(sys.coord_port, 4);
    assert_eq!(c.command("FOLLOW 1"), "Command completed successfully");
    wait_until("user 2 known in cluster 1", || {
        read(&sys.server_dir(1, 1).join("all_users.txt")).contains("2\n")
    });
    assert_eq!(b.command("FOLLOW 1"), "Command completed successfully");
    c.enter_timeline();
    b.enter_timeline();
    a.enter_timeline();
    a.send("hello from 1");
    let line = c.next_line().unwrap();
    assert!(line.ends_with(">> hello from 1"), "{line}");
    let line = b.next_line().unwrap();
    assert!(line.ends_with(">> hello from 1"), "{line}");
}
