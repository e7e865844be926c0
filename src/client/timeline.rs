//! Timeline mode: one stream at a time carries posts both ways; when it
//! breaks, the client fails over while it keeps reading input, and opens a
//! new stream that resumes where the screen left off.
//!
//! [`Timeline`] is the state that outlives streams, and decides without I/O:
//! which posts were shown (by `(author, time)`, SPEC §3, so that none is
//! shown twice), which posts wait for their acknowledgement (resent on every
//! new stream with their `post_id`, so that none is lost or doubled), and
//! when end of input lets the client go.

use std::collections::HashSet;
use std::io::Write;
use std::time::Duration;

use log::{debug, info, warn};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::screen::Ui;
use super::session::{Backoff, Session, random_id, rpc_deadline, within};
use crate::model;
use crate::proto::csce438::Message;
use crate::timefmt;

/// A timeline stream that lived this long was healthy; a failure after that
/// does not count towards the reopen backoff.
const HEALTHY_STREAM: Duration = Duration::from_secs(1);

/// `<author> (<ctime>) >> <text>`
pub fn format_post(author: &str, time: timefmt::Nanos, text: &str) -> String {
    format!("{author} ({}) >> {text}", timefmt::to_ctime(time))
}

/// What to do after a line of input in timeline mode.
#[derive(Debug)]
enum Step {
    Continue,
    Send(Message),
    Exit,
}

/// Posts shown and posts not yet acknowledged; survives reconnections.
struct Timeline {
    username: String,
    shown: HashSet<(String, timefmt::Nanos)>,
    /// Sent (or waiting to be sent) and not yet acknowledged, oldest first.
    unacked: Vec<Message>,
    eof: bool,
    /// After end of input: when to stop waiting for acknowledgements.
    give_up_at: Option<Instant>,
    eof_wait: Duration,
}

impl Timeline {
    fn new(username: String, eof_wait: Duration) -> Self {
        Timeline {
            username,
            shown: HashSet::new(),
            unacked: Vec::new(),
            eof: false,
            give_up_at: None,
            eof_wait,
        }
    }

    fn on_input<W: Write>(&mut self, line: Option<String>, ui: &Ui<W>) -> Step {
        let Some(line) = line else {
            self.eof = true;
            if self.unacked.is_empty() {
                return Step::Exit;
            }
            info!(
                "end of input; waiting for {} unacknowledged post(s)",
                self.unacked.len()
            );
            self.give_up_at = Some(Instant::now() + self.eof_wait);
            return Step::Continue;
        };
        let text = line.trim_end_matches('\r');
        if text.is_empty() {
            return Step::Continue;
        }
        if let Err(reason) = model::validate_post(text) {
            ui.line(&format!("Post not sent: {reason}"));
            return Step::Continue;
        }
        let post = Message {
            username: self.username.clone(),
            msg: text.to_owned(),
            timestamp: Some(timefmt::to_timestamp(timefmt::now())),
            post_id: random_id(),
            ack_id: 0,
            session: String::new(),
            resume_after: None,
        };
        self.unacked.push(post.clone());
        Step::Send(post)
    }

    /// Handles a message from the server; true when the client is done.
    fn on_message<W: Write>(&mut self, m: Message, ui: &Ui<W>) -> bool {
        if m.ack_id != 0 {
            self.unacked.retain(|p| p.post_id != m.ack_id);
            return self.eof && self.unacked.is_empty();
        }
        match &m.timestamp {
            Some(ts) => {
                let t = timefmt::from_timestamp(ts);
                if self.shown.insert((m.username.clone(), t)) {
                    ui.line(&format_post(&m.username, t, &m.msg));
                }
            }
            // Without a time there is nothing to recognise it by later.
            None => ui.line(&format_post(&m.username, 0, &m.msg)),
        }
        false
    }

    /// On a reconnection, the newest post already shown: the server sends
    /// every post since, not only the last 20, so none is skipped.
    fn resume_after(&self) -> Option<timefmt::Nanos> {
        self.shown.iter().map(|(_, t)| *t).max()
    }

    /// When to stop waiting; far away until end of input.
    fn give_up_at(&self) -> Instant {
        self.give_up_at
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400))
    }

    fn waiting(&self) -> bool {
        self.give_up_at.is_some()
    }

    fn give_up(&self) {
        warn!("exiting with {} unacknowledged post(s)", self.unacked.len());
    }
}

/// How a timeline stream ended.
enum StreamEnd {
    /// The client is done: exit 0.
    Done,
    /// The stream broke; `healthy` if it worked for a while before.
    Broken { healthy: bool },
}

impl Session {
    /// Timeline mode, until the end of input (and acknowledgements).
    pub(super) async fn timeline<W: Write>(
        &mut self,
        ui: &Ui<W>,
        input: &mut mpsc::Receiver<String>,
        eof_wait: Duration,
    ) -> i32 {
        let mut tl = Timeline::new(self.id.username.clone(), eof_wait);
        // Grows while streams keep breaking at once, so that a server that
        // keeps refusing the stream is not hammered.
        let mut reopen = Backoff::new();
        loop {
            let pause = match self.stream_once(ui, input, &mut tl).await {
                StreamEnd::Done => return 0,
                StreamEnd::Broken { healthy: true } => {
                    reopen = Backoff::new();
                    Duration::ZERO
                }
                StreamEnd::Broken { healthy: false } => reopen.next_delay(),
            };
            if !self.failover_reading(ui, input, &mut tl, pause).await {
                return 0;
            }
        }
    }

    /// Opens a stream on the current server, resends what is unacknowledged,
    /// and relays posts both ways until the stream breaks or the client is
    /// done.
    async fn stream_once<W: Write>(
        &mut self,
        ui: &Ui<W>,
        input: &mut mpsc::Receiver<String>,
        tl: &mut Timeline,
    ) -> StreamEnd {
        let opened = Instant::now();
        let (tx, rx) = mpsc::unbounded_channel();
        let hello = Message {
            username: self.id.username.clone(),
            session: self.id.session.clone(),
            resume_after: tl.resume_after().map(timefmt::to_timestamp),
            ..Message::default()
        };
        // The receiver is alive until the end of this function.
        let _ = tx.send(hello);
        for post in &tl.unacked {
            let _ = tx.send(post.clone());
        }
        let mut sns = self.conn.sns.clone();
        let limit = rpc_deadline(self.conn.lease);
        let mut inbound = match within(limit, sns.timeline(UnboundedReceiverStream::new(rx))).await
        {
            Ok(s) => s,
            Err(e) => {
                info!("timeline stream at {} not opened: {e:?}", self.conn.addr());
                return StreamEnd::Broken { healthy: false };
            }
        };
        debug!("timeline stream open at {}", self.conn.addr());
        let mut got_message = false;
        loop {
            tokio::select! {
                m = inbound.message() => match m {
                    Ok(Some(m)) => {
                        got_message = true;
                        if tl.on_message(m, ui) {
                            return StreamEnd::Done;
                        }
                    }
                    other => {
                        match other {
                            Err(s) => info!("timeline stream broke: {:?}: {}", s.code(), s.message()),
                            _ => info!("timeline stream ended by the server"),
                        }
                        return StreamEnd::Broken {
                            healthy: got_message || opened.elapsed() >= HEALTHY_STREAM,
                        };
                    }
                },
                line = input.recv(), if !tl.eof => match tl.on_input(line, ui) {
                    Step::Continue => {}
                    Step::Exit => return StreamEnd::Done,
                    // If the stream is gone, the post stays queued and is
                    // resent on the next one.
                    Step::Send(post) => { let _ = tx.send(post); }
                },
                () = sleep_until(tl.give_up_at()), if tl.waiting() => {
                    tl.give_up();
                    return StreamEnd::Done;
                }
            }
        }
    }

    /// Fails over while still reading input (posts typed now are queued).
    /// False when the client is done instead.
    async fn failover_reading<W: Write>(
        &mut self,
        ui: &Ui<W>,
        input: &mut mpsc::Receiver<String>,
        tl: &mut Timeline,
        pause: Duration,
    ) -> bool {
        let failover = self.failover(ui, pause);
        tokio::pin!(failover);
        loop {
            tokio::select! {
                () = &mut failover => return true,
                line = input.recv(), if !tl.eof => match tl.on_input(line, ui) {
                    Step::Exit => return false,
                    Step::Continue | Step::Send(_) => {}
                },
                () = sleep_until(tl.give_up_at()), if tl.waiting() => {
                    tl.give_up();
                    return false;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::tests::post;

    fn ack(post_id: u64) -> Message {
        Message {
            ack_id: post_id,
            ..Message::default()
        }
    }

    fn screen(ui: Ui<Vec<u8>>) -> Vec<String> {
        String::from_utf8_lossy(&ui.into_inner())
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn post_formatting() {
        let t = 1_795_457_407_123_456_789;
        assert_eq!(
            format_post("2", t, "hello"),
            format!("2 ({}) >> hello", timefmt::to_ctime(t))
        );
    }

    #[test]
    fn a_post_is_shown_once_and_resumed_after() {
        let ui = Ui::new(Vec::new());
        let mut tl = Timeline::new("1".into(), Duration::ZERO);
        assert_eq!(tl.resume_after(), None);
        for m in [post("2", 10, "a"), post("3", 20, "b"), post("2", 10, "a")] {
            assert!(!tl.on_message(m, &ui));
        }
        // Same time, another author: another post.
        assert!(!tl.on_message(post("4", 10, "c"), &ui));
        assert_eq!(tl.resume_after(), Some(20));
        assert_eq!(
            screen(ui),
            [
                format_post("2", 10, "a"),
                format_post("3", 20, "b"),
                format_post("4", 10, "c")
            ]
        );
    }

    #[test]
    fn typed_lines_become_queued_posts() {
        let ui = Ui::new(Vec::new());
        let mut tl = Timeline::new("1".into(), Duration::ZERO);
        assert!(matches!(
            tl.on_input(Some("\r".into()), &ui),
            Step::Continue
        ));
        assert!(matches!(
            tl.on_input(Some("bad\u{7}".into()), &ui),
            Step::Continue
        ));
        let Step::Send(sent) = tl.on_input(Some("hello\r".into()), &ui) else {
            panic!("a valid line is posted");
        };
        assert_eq!((sent.username.as_str(), sent.msg.as_str()), ("1", "hello"));
        assert_ne!(sent.post_id, 0);
        assert_eq!(tl.unacked, std::slice::from_ref(&sent));
        assert!(!tl.on_message(ack(sent.post_id ^ 1), &ui));
        assert_eq!(tl.unacked.len(), 1);
        assert!(!tl.on_message(ack(sent.post_id), &ui));
        assert!(tl.unacked.is_empty());
        let lines = screen(ui);
        assert_eq!(lines.len(), 1);
        assert!(lines[0].starts_with("Post not sent: "));
    }

    #[test]
    fn end_of_input_waits_for_acknowledgements() {
        let ui = Ui::new(Vec::new());
        let mut tl = Timeline::new("1".into(), Duration::from_secs(5));
        assert!(!tl.waiting());
        let Step::Send(sent) = tl.on_input(Some("x".into()), &ui) else {
            panic!("a valid line is posted");
        };
        assert!(matches!(tl.on_input(None, &ui), Step::Continue));
        assert!(tl.waiting());
        assert!(tl.on_message(ack(sent.post_id), &ui));

        let mut idle = Timeline::new("1".into(), Duration::from_secs(5));
        assert!(matches!(idle.on_input(None, &ui), Step::Exit));
        assert!(!idle.waiting());
    }
}
