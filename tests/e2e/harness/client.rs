//! The terminal client driven through pipes: [`Client`] reads its output
//! line by line, [`RawClient`] keeps it as raw bytes, prompts included, to
//! check a transcript byte for byte.

use super::process::{DEADLINE, Proc, poll};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const SUCCESS: &str = "Command completed successfully";
pub const PROMPT: &str = "Cmd> ";
/// The title block's last line.
pub const TITLE_END: &str = "=====================================";
/// SPEC §2's title block, line by line (the first is the empty line before
/// it), written out here rather than taken from the client, so that the
/// tests check the text itself. Course clients print the same block.
pub const TITLE: [&str; 8] = [
    "",
    "========= TINY SNS CLIENT =========",
    " Command Lists and Format:",
    " FOLLOW <username>",
    " UNFOLLOW <username>",
    " LIST",
    " TIMELINE",
    TITLE_END,
];

/// The client of `user`, its output to be read through a pipe. It runs in
/// the network namespace of the calling thread (a lab host the test
/// entered, or the test's own).
fn command(coord_host: &str, coord_port: u16, user: u64, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_client"));
    cmd.args(["-h", coord_host, "-k", &coord_port.to_string()])
        .args(["-u", &user.to_string()])
        .env_remove("SNS_TLS_CA")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    cmd
}

/// Types `line` and Enter.
fn type_line(stdin: &mut Option<ChildStdin>, line: &str) {
    let stdin = stdin.as_mut().expect("stdin open");
    stdin
        .write_all(format!("{line}\n").as_bytes())
        .and_then(|()| stdin.flush())
        .expect("write to client");
}

/// A terminal client whose output is read line by line, the prompts taken
/// off.
pub struct Client {
    pub proc: Proc,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Client {
    pub fn start(coord_port: u16, user: u64, env: &[(&str, &str)]) -> Client {
        Client::start_at("127.0.0.1", coord_port, user, env)
    }

    /// [`Client::start`] with the coordinator at `coord_host`.
    pub fn start_at(coord_host: &str, coord_port: u16, user: u64, env: &[(&str, &str)]) -> Client {
        let cmd = command(coord_host, coord_port, user, env);
        let mut proc = Proc::spawn(cmd, "the client");
        let stdout = proc.child.stdout.take().expect("stdout");
        let stdin = proc.child.stdin.take();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            loop {
                line.clear();
                match r.read_line(&mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        // The prompt has no newline: it prefixes the next line.
                        let mut l = line.trim_end_matches('\n');
                        while let Some(rest) = l.strip_prefix(PROMPT) {
                            l = rest;
                        }
                        if tx.send(l.to_string()).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Client {
            proc,
            stdin,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Starts, waits for the title block's last line.
    pub fn logged_in(coord_port: u16, user: u64) -> Client {
        let mut c = Client::start(coord_port, user, &[]);
        c.expect(TITLE_END);
        c
    }

    pub fn send(&mut self, line: &str) {
        type_line(&mut self.stdin, line);
    }

    pub fn send_all(&mut self, lines: &[String]) {
        for l in lines {
            self.send(l);
        }
    }

    /// Closes stdin (Ctrl-D).
    pub fn close_input(&mut self) {
        self.stdin = None;
    }

    /// The next line of output, within the deadline.
    pub fn next_line(&mut self) -> Option<String> {
        let l = self.lines.recv_timeout(DEADLINE).ok()?;
        self.seen.push(l.clone());
        Some(l)
    }

    /// Reads lines until one equals `want`; panics (showing what was seen) if
    /// the deadline passes or output ends.
    pub fn expect(&mut self, want: &str) {
        let start = Instant::now();
        loop {
            let left = DEADLINE.saturating_sub(start.elapsed());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l == want {
                        return;
                    }
                }
                Err(_) => panic!("never saw {want:?}; saw {:#?}", self.seen),
            }
        }
    }

    /// The next line must be exactly `want`.
    pub fn expect_next(&mut self, want: &str) {
        match self.next_line() {
            Some(l) => assert_eq!(l, want, "after {:#?}", self.seen),
            None => panic!("no line; wanted {want:?}; saw {:#?}", self.seen),
        }
    }

    /// Reads lines until one starts with `prefix`; returns it.
    pub fn expect_prefix(&mut self, prefix: &str) -> String {
        loop {
            match self.next_line() {
                Some(l) if l.starts_with(prefix) => return l,
                Some(_) => {}
                None => panic!("never saw {prefix:?}; saw {:#?}", self.seen),
            }
        }
    }

    /// Runs a command and returns the first reply line.
    pub fn command(&mut self, cmd: &str) -> String {
        self.send(cmd);
        self.next_line()
            .unwrap_or_else(|| panic!("no reply to {cmd:?}; saw {:#?}", self.seen))
    }

    /// Runs LIST and returns its three reply lines.
    pub fn list(&mut self) -> [String; 3] {
        let first = self.command("LIST");
        let mut next = || {
            self.next_line()
                .unwrap_or_else(|| panic!("LIST cut short; saw {:#?}", self.seen))
        };
        [first, next(), next()]
    }

    /// Runs LIST; the reply must be these users and followers.
    pub fn expect_list(&mut self, users: &str, followers: &str) {
        assert_eq!(self.command("LIST"), SUCCESS, "{:#?}", self.seen);
        self.expect_next(users);
        self.expect_next(followers);
    }

    pub fn enter_timeline(&mut self) {
        self.send("TIMELINE");
        self.expect_next(SUCCESS);
        self.expect_next("Now you are in the timeline");
    }

    /// The next line, which must show a post: `(head, text)` around ` >> `
    /// (the head is `<author> (<time>)`).
    pub fn next_post(&mut self) -> (String, String) {
        let line = self
            .next_line()
            .unwrap_or_else(|| panic!("no post on screen; saw {:#?}", self.seen));
        let (head, text) = line.split_once(" >> ").expect("post format");
        (head.to_string(), text.to_string())
    }

    /// Waits for the process to exit; returns its status code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        self.proc.wait_exit().and_then(|s| s.code())
    }

    /// Everything left on stdout after exit.
    pub fn rest(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(5)) {
            out.push(l);
        }
        out
    }
}

/// A client whose stdout is kept as raw bytes, prompts included, so that the
/// exact transcript can be checked.
pub struct RawClient {
    proc: Proc,
    stdin: Option<ChildStdin>,
    out: Arc<Mutex<Vec<u8>>>,
    reader: Option<JoinHandle<()>>,
    /// How much of `out` the test has already checked.
    cursor: usize,
}

impl RawClient {
    pub fn start(coord_port: u16, user: u64) -> RawClient {
        let cmd = command("127.0.0.1", coord_port, user, &[]);
        let mut proc = Proc::spawn(cmd, "the client");
        let mut stdout = proc.child.stdout.take().expect("stdout");
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = out.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match stdout.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => sink.lock().expect("output").extend_from_slice(&buf[..n]),
                }
            }
        });
        RawClient {
            stdin: proc.child.stdin.take(),
            proc,
            out,
            reader: Some(reader),
            cursor: 0,
        }
    }

    pub fn all(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().expect("output")).into_owned()
    }

    /// The output not checked yet.
    fn fresh(&self) -> String {
        let out = self.out.lock().expect("output");
        String::from_utf8_lossy(&out[self.cursor.min(out.len())..]).into_owned()
    }

    fn exited(&mut self) -> bool {
        matches!(self.proc.child.try_wait(), Ok(Some(_)))
    }

    /// Waits until the unchecked output is at least as long as `want` (or the
    /// client has exited), then requires it to be exactly `want`.
    pub fn expect_exactly(&mut self, want: &str) {
        let ok = poll(|| self.fresh().len() >= want.len() || self.exited());
        let got = self.fresh();
        assert!(
            ok,
            "timed out waiting for {want:?}; transcript {:?}",
            self.all()
        );
        assert_eq!(got, want, "transcript {:?}", self.all());
        self.cursor += got.len();
    }

    /// Runs a command-mode line and returns the reply lines: everything
    /// printed before the next prompt, which must end a line.
    pub fn command(&mut self, line: &str) -> Vec<String> {
        type_line(&mut self.stdin, line);
        let end = format!("\n{PROMPT}");
        let ok = poll(|| self.fresh().ends_with(&end) || self.exited());
        let got = self.fresh();
        assert!(
            ok && got.ends_with(&end),
            "no reply and prompt after {line:?}; transcript {:?}",
            self.all()
        );
        self.cursor += got.len();
        got[..got.len() - PROMPT.len()]
            .lines()
            .map(String::from)
            .collect()
    }

    /// Runs `line` and requires exactly these reply lines.
    pub fn check(&mut self, line: &str, want: &[&str]) {
        let got = self.command(line);
        assert_eq!(got, want, "reply to {line:?}; transcript {:?}", self.all());
    }

    /// Closes stdin and waits for the exit status; then returns whatever was
    /// printed after the last checked output.
    pub fn end_of_input(&mut self) -> (Option<i32>, String) {
        self.stdin = None;
        let status = self.proc.wait_exit().and_then(|s| s.code());
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        (status, self.fresh())
    }
}

/// Lines to type: `prefix` followed by each number of `numbers`.
pub fn texts(prefix: &str, numbers: impl IntoIterator<Item = u32>) -> Vec<String> {
    numbers
        .into_iter()
        .map(|i| format!("{prefix}{i}"))
        .collect()
}
