//! The interactive terminal client (SPEC §2), written so that it can be driven
//! without a terminal: [`run`] takes the input lines from a channel and writes
//! the user interface to any [`Write`], and returns the exit status.
//!
//! # Design
//!
//! **Identity.** A client process picks one random *session* token when it
//! starts and sends it with every call. The server uses it to tell "this user's
//! live client logging in again" (allowed: a refresh, or a reconnection after
//! failover) from "a second client for the same user" (refused: an OK reply
//! whose `msg` is `you have already joined`, the course's convention). The
//! outcomes of Login, FOLLOW and UNFOLLOW are read from `Reply.msg` through
//! the one table in [`crate::course`]; a non-OK status is never an outcome
//! (`Command failed with unknown reason`). A background task keeps the session alive by repeating
//! `Login` every quarter of the lease the server announced, so a client that is
//! killed (even with SIGKILL) stops refreshing and its session lapses by itself;
//! a client that ends stops the task, then logs out.
//!
//! **Start-up.** The coordinator names the master of the user's cluster; the
//! client logs in there. Anything that looks transient (no master yet, refused
//! connection, timeouts) is retried with a short exponential backoff until the
//! connect timeout runs out; a refusal from a server that did answer is final.
//! Either way the user sees only `connection failed: -1`.
//!
//! **Failover.** Every call has a deadline (the lease, at least 500 ms) so that
//! a hung server is noticed, and the timeline stream, which cannot have one,
//! relies on HTTP/2 keep-alive pings to notice a dead connection: every
//! channel, the coordinator's included, is timed by the server's heartbeat
//! (half the lease; [`crate::trust::Timing::of`]): a ping after a quarter
//! heartbeat of silence, the connection closed when it has no answer within
//! the rest of the lease, so a client cut from its master by a link that
//! drops packets notices within two heartbeats even on a silent stream; a
//! connection attempt gives up after a heartbeat, so one started during a
//! cut does not outlast the heal by more; a call that misses its deadline
//! replaces the connection ([`crate::trust::link`]). A server that lost its
//! lease while cut from the coordinator ends its streams with
//! `UNAVAILABLE`, and refuses writes at once, so its clients move to the new
//! master as soon as the coordinator names it. A failed call's status becomes a [`crate::error::Error`] in one
//! place (in `session`), and the client decides from the variant: when it
//! says "nobody answered" ([`Error::is_unavailable`](crate::error::Error::is_unavailable))
//! rather than "the server said no", the client asks the coordinator again,
//! backing off between attempts, and logs in with the same session on whatever
//! server it names: silently if it is the same server (it may have come back),
//! with `Reconnecting to <host>:<port>...` if it is a new master.
//!
//! **Idempotent retries.** After a failover the command in flight is retried
//! once with the same `request_id`, so a FOLLOW that reached the old master
//! just before it died is not applied twice. Posts carry a client-chosen
//! `post_id`; each stays in an unacknowledged queue until the server's
//! acknowledgement arrives, and the whole queue is resent on every new stream.
//! The server stores a post with a known `post_id` once, so a resend can never
//! double a post.
//!
//! **No post shown twice.** A new stream starts with the last 20 posts again.
//! The client remembers the `(author, time)` of every post it has printed (that
//! pair identifies a post, SPEC §3) and skips posts it has already shown.
//!
//! **Large replies.** LIST must work at the user cap (SPEC §5): the client
//! takes replies up to 88 MB (`session::MAX_REPLY_BYTES`: a cluster's
//! `all_users.txt` holds at most 1,000,000 users, but the caller's followers
//! may come from every cluster, so four caps' worth of 20-digit ids); tonic's
//! default of 4 MiB held about 400,000 users, and past it every LIST failed
//! with "unknown reason".
//!
//! **Input during an outage.** In timeline mode the client keeps reading input
//! while it reconnects, so posts typed during the outage get their own time and
//! join the queue; they are sent as soon as the new stream is open. On end of
//! input it waits a bounded time for outstanding acknowledgements, then exits.
//!
//! # Layout
//!
//! | file | what it is |
//! |---|---|
//! | `command` | what a command line means, SPEC §2's reply lines, LIST's lines; pure |
//! | `screen` | the title block, the prompt, every line written and flushed |
//! | `session` | finding the master, login, the session refresher, failover with backoff, running a command with its one retry |
//! | `timeline` | timeline mode: the stream, resuming, posts typed during an outage, acknowledgements |
//!
//! Read [`run`] first: it is the whole client on one screen.

mod command;
mod screen;
mod session;
#[cfg(test)]
mod tests;
mod timeline;

use std::io::Write;
use std::time::Duration;

use tokio::sync::mpsc;

pub use command::{
    ALREADY_EXISTS, CONNECTION_FAILED, Command, IN_TIMELINE, INVALID_COMMAND,
    INVALID_TWO_WORD_COMMAND, INVALID_USERNAME, NO_ARGUMENTS, NOT_A_FOLLOWER, SUCCESS,
    UNKNOWN_REASON, list_lines, parse_command, reply_line,
};
pub use screen::{PROMPT, TITLE};
pub use timeline::format_post;

use screen::Ui;
use session::Session;

/// Default for [`Options::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_millis(3000);
/// Default for [`Options::eof_wait`].
pub const DEFAULT_EOF_WAIT: Duration = Duration::from_secs(10);

/// What the client needs to know to start.
#[derive(Debug, Clone)]
pub struct Options {
    pub coord_host: String,
    pub coord_port: u16,
    pub user: u64,
    /// How long the first login may take before the client gives up with
    /// `connection failed: -1`.
    pub connect_timeout: Duration,
    /// How long, after end of input in timeline mode, to wait for posts that
    /// the server has not acknowledged yet.
    pub eof_wait: Duration,
    /// Whether Ctrl-C (SIGINT) ends the client cleanly, logging out first.
    pub handle_interrupt: bool,
    /// TLS: verify the coordinator and servers against this CA (`--tls-ca`).
    pub tls: Option<tonic::transport::ClientTlsConfig>,
}

impl Options {
    pub fn new(coord_host: impl Into<String>, coord_port: u16, user: u64) -> Self {
        Options {
            coord_host: coord_host.into(),
            coord_port,
            user,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            eof_wait: DEFAULT_EOF_WAIT,
            handle_interrupt: false,
            tls: None,
        }
    }
}

/// Runs the client: logs in, prints the title block, then reads commands from
/// `input` (one line each, without the newline; a closed channel is end of
/// input) and writes the user interface to `out`. Returns the exit status.
pub async fn run<W: Write + Send>(opts: Options, mut input: mpsc::Receiver<String>, out: W) -> i32 {
    let ui = Ui::new(out);
    let Some(mut session) = Session::open(&opts).await else {
        ui.line(CONNECTION_FAILED);
        return 1;
    };
    ui.title();
    let commands = async {
        loop {
            ui.prompt();
            let Some(line) = input.recv().await else {
                return 0;
            };
            match parse_command(&line) {
                Command::Empty => {}
                Command::Invalid(text) => ui.line(text),
                Command::Timeline => {
                    ui.line(SUCCESS);
                    ui.line(IN_TIMELINE);
                    return session.timeline(&ui, &mut input, opts.eof_wait).await;
                }
                cmd => session.command(&ui, &cmd).await,
            }
        }
    };
    let interrupted = async {
        if opts.handle_interrupt {
            let _ = tokio::signal::ctrl_c().await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    let code = tokio::select! {
        code = commands => code,
        _ = interrupted => 130,
    };
    session.close().await;
    code
}
