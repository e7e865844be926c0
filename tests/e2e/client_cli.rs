//! The terminal client against the real binaries, held to SPEC §2 to the
//! letter: the title block and the prompt byte for byte, every row of the
//! reply table, every malformed command (which touches no file), LIST across
//! three clusters, end of input in both modes, duplicate logins (after a clean
//! exit and after SIGKILL), no server or no coordinator at all, and the
//! 255-byte limit on posts.

use crate::harness::*;
use tinysns::proto::tinysns::Role;

const ALREADY_EXISTS: &str = "Input username already exists, command failed";
const INVALID_USERNAME: &str = "Command failed with invalid username";
const NOT_A_FOLLOWER: &str = "Command failed with not a follower";
const INVALID_COMMAND: &str = "Invalid Command";
const NO_ARGUMENTS: &str = "Invalid Input -- No Arguments Given";
const INVALID_TWO_WORD: &str = "Command failed with invalid command";
const CONNECTION_FAILED: &str = "connection failed: -1";

fn title_text() -> String {
    TITLE.iter().map(|l| format!("{l}\n")).collect()
}

/// Every file of every server's directory (`cluster_<c>/server_<s>/`, the
/// users' data) with its contents. The synchronizers' own bookkeeping
/// (`cluster_<c>/synchronizer/`) and the logs are left out: they move on by
/// themselves.
fn server_files(sys: &System) -> Snapshot {
    let out = snapshot(sys.data_dir(), &sys.server_dirs());
    assert!(!out.is_empty(), "no server files at all");
    out
}

/// Waits until both servers of every cluster know every one of `users`.
fn wait_for_users(sys: &System, users: &[u64]) {
    wait_until(&format!("users {users:?} known in every cluster"), || {
        (1..=sys.clusters).all(|c| (1..=2).all(|s| users.iter().all(|u| sys.has_user(c, s, *u))))
    });
}

/// Runs LIST (spelled `spelling`) until the reply is exactly `want`; every
/// reply on the way must have the right shape.
fn list_until(client: &mut RawClient, spelling: &str, want: [&str; 3]) {
    wait_for(&format!("LIST to say {want:?}"), || {
        let last = client.command(spelling);
        assert_eq!(last.len(), 3, "{last:?}");
        assert_eq!(last[0], SUCCESS);
        assert!(last[1].starts_with("All users: "), "{last:?}");
        assert!(
            last[2] == "Followers:" || last[2].starts_with("Followers: "),
            "{last:?}"
        );
        same_list(&last, want)
    });
}

/// The same with the line-based harness client.
fn list_lines_until(client: &mut Client, want: [&str; 3]) {
    wait_for(&format!("LIST to say {want:?}"), || {
        same_list(&client.list(), want)
    });
}

fn same_list(got: &[String], want: [&str; 3]) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("the last said {got:?}"))
    }
}

#[test]
fn title_prompt_replies_malformed_commands_and_list() {
    let sys = System::full(3);
    let port = sys.coord_port;
    let mut two = Client::logged_in(port, 2); // cluster 2
    let mut three = Client::logged_in(port, 3); // cluster 3

    // The title block, line by line, through the harness.
    let mut four = Client::start(port, 4, &[]); // cluster 1
    for l in TITLE {
        four.expect_next(l);
    }

    // Byte for byte: the title block then the prompt, without a newline.
    let mut one = RawClient::start(port, 1); // cluster 1
    one.expect_exactly(&format!("{}{PROMPT}", title_text()));

    wait_for_users(&sys, &[1, 2, 3, 4]);
    let before = server_files(&sys);

    // Malformed commands, and every failing row of the reply table: none of
    // them writes anything.
    let no_change: &[(&str, &str)] = &[
        ("FOO", INVALID_COMMAND),
        ("FOLLOW", INVALID_COMMAND),
        ("UNFOLLOW", INVALID_COMMAND),
        ("follow", INVALID_COMMAND),
        ("FOLLOW ", NO_ARGUMENTS),
        ("UNFOLLOW ", NO_ARGUMENTS),
        ("unfollow ", NO_ARGUMENTS),
        ("FOO 1", INVALID_TWO_WORD),
        ("LIST 1", INVALID_TWO_WORD),
        ("TIMELINE 1", INVALID_TWO_WORD),
        ("FOLLOW 1", ALREADY_EXISTS),
        ("FOLLOW 999", INVALID_USERNAME),
        ("FOLLOW abc", INVALID_USERNAME),
        ("FOLLOW 0", INVALID_USERNAME),
        ("FOLLOW -1", INVALID_USERNAME),
        ("UNFOLLOW 999", INVALID_USERNAME),
        ("UNFOLLOW abc", INVALID_USERNAME),
        ("UNFOLLOW 0", INVALID_USERNAME),
        ("UNFOLLOW -1", INVALID_USERNAME),
        ("UNFOLLOW 1", INVALID_USERNAME),
        ("UNFOLLOW 2", NOT_A_FOLLOWER),
        ("unfollow 3", NOT_A_FOLLOWER),
    ];
    for (line, want) in no_change {
        one.check(line, &[want]);
    }
    // Nobody follows 1 yet: nothing after the colon, not even a space.
    one.check("LIST", &[SUCCESS, "All users: 1, 2, 3, 4", "Followers:"]);
    assert_same_files(&before, &server_files(&sys), "commands that must not write");

    // The successful rows, in any case of the command word.
    one.check("FOLLOW 2", &[SUCCESS]);
    one.check("FOLLOW 2", &[ALREADY_EXISTS]);
    one.check("follow 3", &[SUCCESS]);
    one.check("Follow 4", &[SUCCESS]);
    one.check("UNFOLLOW 3", &[SUCCESS]);
    one.check("UNFOLLOW 3", &[NOT_A_FOLLOWER]);
    one.check("unFollow 4", &[SUCCESS]);
    one.check("FOLLOW 3", &[SUCCESS]);
    // Followers of 2 and 3 live in other clusters: the synchronizers carry
    // the follows there.
    list_lines_until(&mut two, [SUCCESS, "All users: 1, 2, 3, 4", "Followers: 1"]);
    list_lines_until(
        &mut three,
        [SUCCESS, "All users: 1, 2, 3, 4", "Followers: 1"],
    );

    // Followers of 1 from three clusters, listed in ascending order whatever
    // the order they followed in.
    assert_eq!(three.command("FOLLOW 1"), SUCCESS);
    assert_eq!(four.command("FOLLOW 1"), SUCCESS);
    assert_eq!(two.command("FOLLOW 1"), SUCCESS);
    list_until(
        &mut one,
        "List",
        [SUCCESS, "All users: 1, 2, 3, 4", "Followers: 2, 3, 4"],
    );
    assert_eq!(two.command("UNFOLLOW 1"), SUCCESS);
    list_until(
        &mut one,
        "list",
        [SUCCESS, "All users: 1, 2, 3, 4", "Followers: 3, 4"],
    );

    // Ascending as numbers: 10 (cluster 1, like 1) comes after 4. It is
    // known in its own cluster as soon as its title block is shown.
    let _ten = Client::logged_in(port, 10);
    one.check(
        "LIST",
        &[SUCCESS, "All users: 1, 2, 3, 4, 10", "Followers: 3, 4"],
    );
    list_lines_until(
        &mut two,
        [SUCCESS, "All users: 1, 2, 3, 4, 10", "Followers: 1"],
    );

    // End of input in command mode: status 0, nothing more printed.
    let (status, rest) = one.end_of_input();
    assert_eq!(status, Some(0), "transcript {:?}", one.all());
    assert_eq!(rest, "", "transcript {:?}", one.all());
    four.close_input();
    assert_eq!(four.wait_exit(), Some(0));
    // Only the last prompt (which the harness reads as an empty line).
    let rest = four.rest();
    assert!(rest.iter().all(|l| l.is_empty()), "{rest:?}");
}

/// Starts a client for `user` and returns it once it has printed its first
/// line: `Ok` if that is the title block's, `Err` with the line and the exit
/// status otherwise.
fn try_login(port: u16, user: u64) -> Result<Client, (Option<String>, Option<i32>)> {
    let mut c = Client::start(port, user, &[]);
    match c.next_line() {
        Some(l) if l.is_empty() => {
            for l in &TITLE[1..] {
                c.expect_next(l);
            }
            Ok(c)
        }
        other => Err((other, c.wait_exit())),
    }
}

#[test]
fn sessions_end_of_input_and_post_length() {
    let sys = System::full(3);
    let port = sys.coord_port;

    // User 5 (cluster 2) is logged in; a second client for 5 is refused.
    let mut a = try_login(port, 5).expect("first login of 5");
    let mut dup = Client::start(port, 5, &[]);
    dup.expect_next(CONNECTION_FAILED);
    assert_eq!(dup.wait_exit(), Some(1));
    assert!(dup.rest().is_empty(), "{:?}", dup.seen);
    // The refusal did not disturb the live client.
    a.expect_list("All users: 5", "Followers:");

    // Timeline mode: a post is at most 255 bytes (not characters).
    a.enter_timeline();
    let long_ascii = "x".repeat(256);
    let long_utf8 = "é".repeat(128); // 128 characters, 256 bytes
    let max_ascii = "y".repeat(255);
    let max_utf8 = format!("{}z", "é".repeat(127)); // 255 bytes
    for long in [&long_ascii, &long_utf8] {
        assert_eq!(long.len(), 256);
        a.send(long);
        let reply = a.next_line().expect("a refusal");
        assert!(
            !reply.trim().is_empty() && !reply.contains(" >> ") && reply.contains("255"),
            "unclear refusal of a 256-byte post: {reply:?}"
        );
    }
    assert_eq!((max_ascii.len(), max_utf8.len()), (255, 255));
    a.send(&max_ascii);
    a.send(&max_utf8);
    // End of input right after a post: it is stored before the client exits.
    a.send("the last word");
    a.close_input();
    assert_eq!(a.wait_exit(), Some(0), "{:?}", a.seen);
    let want = vec![max_ascii.clone(), max_utf8.clone(), "the last word".into()];
    let master = sys.server_dir(2, 1).join("u5_posts.txt");
    assert_eq!(post_texts(&master), want, "master's posts of 5");
    let slave = sys.server_dir(2, 2).join("u5_posts.txt");
    wait_until("the slave to hold the posts of 5", || {
        post_texts(&slave).len() >= want.len()
    });
    assert_eq!(post_texts(&slave), want, "slave's posts of 5");
    assert!(a.rest().is_empty(), "{:?}", a.seen);

    // After a clean exit, 5 can log in again at once.
    let mut b = try_login(port, 5)
        .unwrap_or_else(|e| panic!("login right after a clean exit (logout) refused: {e:?}"));
    assert_eq!(b.command("LIST"), SUCCESS);
    // After SIGKILL the session lapses by itself: retry until a login works.
    b.proc.kill();
    let mut refusals = Vec::new();
    let mut c = None;
    let ok = poll(|| match try_login(port, 5) {
        Ok(client) => {
            c = Some(client);
            true
        }
        Err(e) => {
            refusals.push(e);
            false
        }
    });
    assert!(ok, "5 never logged in again after SIGKILL");
    for r in &refusals {
        assert_eq!(
            r,
            &(Some(CONNECTION_FAILED.to_string()), Some(1)),
            "{refusals:?}"
        );
    }
    let mut c = c.expect("a client");
    c.expect_list("All users: 5", "Followers:");

    // End of input in timeline mode with nothing pending: status 0.
    c.enter_timeline();
    c.close_input();
    assert_eq!(c.wait_exit(), Some(0), "{:?}", c.seen);
    assert_eq!(post_texts(&master), want, "nothing more was posted");
}

/// A client that cannot be served prints only `connection failed: -1` and
/// exits 1.
fn assert_connection_failed(port: u16, user: u64) {
    let mut c = Client::start(port, user, &[("SNS_CONNECT_TIMEOUT_MS", "500")]);
    c.expect_next(CONNECTION_FAILED);
    assert_eq!(c.wait_exit(), Some(1));
    assert!(c.rest().is_empty(), "{:?}", c.seen);
}

#[test]
fn no_server_or_no_coordinator() {
    // A coordinator with no server registered.
    let mut sys = System::new(3, 200, 30_000);
    assert_connection_failed(sys.coord_port, 1);
    assert_connection_failed(sys.coord_port, 2);
    // A master that registered, then died.
    sys.start_server(1, 1);
    sys.wait_for_role(1, 1, Role::Master);
    sys.kill(&System::server_name(1, 1));
    assert_connection_failed(sys.coord_port, 1);
    // Nobody listening at all.
    let nobody = free_port();
    assert_connection_failed(nobody, 1);
}
