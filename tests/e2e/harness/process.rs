//! Waiting, ports and child processes: what every other part of the harness
//! stands on.

use super::files::read;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// Generous deadline for anything to happen on a busy 2-core machine.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Polls `cond` with a growing pause until it holds or `DEADLINE` passes;
/// returns whether it held.
pub fn poll(mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() >= DEADLINE {
            return false;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Polls `cond` until it holds; panics naming `what` at the deadline.
pub fn wait_until(what: &str, cond: impl FnMut() -> bool) {
    assert!(poll(cond), "timed out waiting for {what}");
}

/// Polls `check` until it gives `Ok`; at the deadline, panics with the last
/// `Err`, which says what is still missing.
pub fn wait_for<T>(what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let mut last = Err(String::from("never checked"));
    poll(|| {
        last = check();
        last.is_ok()
    });
    last.unwrap_or_else(|e| panic!("timed out waiting for {what}: {e}"))
}

/// A port nobody listens on, below the kernel's range for outgoing
/// connections (32768 and up), so that no client socket takes it between now
/// and the process binding it; never the same twice in one test binary.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = 20_000 + (std::process::id() % 1_000) * 12;
    loop {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = (base + n) % 12_000 + 20_000;
        let port = u16::try_from(port).expect("port in range");
        if std::net::TcpListener::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
    }
}

/// The runtime a test runs its gRPC clients on. Multi-threaded: a test
/// blocks its own thread (polling, reading files) and its connections must
/// still answer the server's HTTP/2 keep-alive pings meanwhile, or the
/// server takes them for dead peers after a failure window (SPEC §6).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A started process, killed (SIGKILL) and reaped when dropped, so that a
/// failing test leaves nothing running.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    pub fn spawn(mut cmd: Command, what: &str) -> Proc {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        Proc { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        self.child.kill().expect("kill");
        self.child.wait().expect("reap");
    }

    /// Waits for the process to exit by itself; `None` if it has not by the
    /// deadline.
    pub fn wait_exit(&mut self) -> Option<ExitStatus> {
        let mut status = None;
        poll(|| {
            status = self.child.try_wait().expect("wait for a child");
            status.is_some()
        });
        status
    }

    /// [`Proc::wait_exit`], panicking naming `what` if it does not exit.
    pub fn exit_status(&mut self, what: &str) -> ExitStatus {
        self.wait_exit()
            .unwrap_or_else(|| panic!("timed out waiting for {what} to exit"))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `sig` (as `kill` takes it: `-STOP`, `-CONT`) to process `pid`.
pub fn signal_pid(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(st.success(), "kill {sig} {pid} failed");
}

/// Whether every thread of a process is stopped (state `T` in
/// `/proc/<pid>/task/*/stat`): `kill -STOP` returns before that.
pub fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    let mut any = false;
    for t in tasks.flatten() {
        let stat = read(&t.path().join("stat"));
        // "pid (comm) S ...": the state follows the last ')'.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        if !matches!(state, Some('T') | Some('t')) {
            return false;
        }
        any = true;
    }
    any
}
