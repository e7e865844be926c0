//! TIMELINE streams: what a user sees, and the posts they type.
//!
//! A stream first gets the last 20 posts of the user's timeline file, read
//! backwards from its end (the cost does not depend on the history), then
//! follows the file from the offset it has read up to. It wakes up on a
//! signal for the server's own writes and on a directory-watch event for
//! what the synchronizer appends ([`Node::subscribe`]); both are only hints
//! to read from the saved offset, so a merged or lost event delays nothing
//! that the next one does not bring. The stream ends when the client goes
//! away, with `UNAVAILABLE` when this server stops being the master, loses
//! its lease while the coordinator does not answer (a master cut off from the
//! coordinator: see `still_serving`), or shuts down.
//!
//! Posts the client sends on the same stream are stored through
//! [`Node::write`] and acknowledged one by one once mirrored and written; a
//! post resent with the same `post_id` is stored once. A post without a
//! `post_id` (a course client's) gets no acknowledgement: such a client
//! would print it as a post.
//!
//! # Course clients (SPEC §6)
//! A course client's first message is `Set Stream` stamped with the current
//! time: its `timestamp` is ignored, and a resuming client (this project's)
//! names the newest post it has shown in `resume_after`, a field of its own.
//! Its posts end with the `\n` that `fgets` keeps: one trailing `\n` or
//! `\r\n` is removed before the post is checked ([`line_of`]); any other
//! control character is refused as before.
//!
//! # Bounds
//! Nothing a client does with a stream makes the server hold more than a
//! bounded amount:
//!
//! * **Caps.** A server holds at most `SNS_MAX_STREAMS` streams and a user
//!   at most `SNS_MAX_STREAMS_PER_USER` ([`StreamCount`]); past either a new
//!   stream is refused with `RESOURCE_EXHAUSTED`. A stream counts for its
//!   user until it ends, and in the total until its connection lets it go
//!   (tonic drops its response stream), because until then the HTTP/2 layer
//!   still holds what was sent on it.
//! * **A client that does not read.** What a stream sends waits in a queue
//!   of [`QUEUE`] messages (each at most a post: a few hundred bytes); when
//!   there has been no room in it for a failure window (two heartbeats), the
//!   client is not reading: the stream ends with `RESOURCE_EXHAUSTED`,
//!   which goes out ahead of what is queued if the client ever reads again.
//!   Below the queue, hyper buffers at most its send buffer (400 KB) per
//!   stream, and only for a client whose flow-control window allows it; the
//!   server's HTTP/2 keep-alive cuts a connection that answers no ping.
//! * **A stream that never names its user** is ended after a failure window.
//! * **Damaged files.** The file is read through a [`Follower`] (bounded
//!   chunks, a record longer than any valid one skipped once) and every post
//!   is checked before it is sent; a bad one is reported with its file and
//!   offset and skipped, and the stream goes on with the next. A file cut
//!   shorter than what was read (the next appender cut a damaged tail) or
//!   replaced is read again: the stream starts over after its newest post.
//!   The backward scan runs on the blocking pool: a user who unfollowed
//!   everyone has the whole file scanned for posts to show.

use super::client_ids::ClientId;
use super::node::{Node, shutting_down};
use crate::error::Error;
use crate::model::{UserId, validate_post};
use crate::proto::csce438::Message;
use crate::proto::tinysns::{PostOp, WriteOp, write_op};
use crate::storage::{self, FollowLog, Follower, Post, timeline_file};
use crate::timefmt;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};

/// Most posts sent to a client that resumes its timeline.
const RESUME_MAX: usize = 10_000;
/// How much older than the newest post a resuming client has shown a post may
/// be and still not have reached it (it came from another cluster late).
const RESUME_SLACK_NS: i64 = 60_000_000_000;
/// Messages waiting for a client to take them, per stream.
pub(crate) const QUEUE: usize = 64;
/// Bytes of the timeline file read per step while following it.
const READ_BUDGET: u64 = 256 << 10;

pub(crate) type TimelineStream = Pin<Box<dyn Stream<Item = Result<Message, Status>> + Send>>;

// ---------------------------------------------------------------------------
// Caps

/// Open timeline streams, per user and in all, against their caps. Pure: a
/// count that says yes or no.
#[derive(Debug)]
pub(crate) struct StreamCount {
    per_user: HashMap<UserId, usize>,
    total: usize,
    max_per_user: usize,
    max_total: usize,
}

impl StreamCount {
    pub fn new(max_total: usize, max_per_user: usize) -> StreamCount {
        StreamCount {
            per_user: HashMap::new(),
            total: 0,
            max_per_user,
            max_total,
        }
    }

    /// Counts a new stream of `user`, unless it would pass a cap.
    pub fn open(&mut self, user: UserId) -> Result<(), Error> {
        let mine = self.per_user.get(&user).copied().unwrap_or(0);
        if mine >= self.max_per_user {
            return Err(Error::Exhausted(format!(
                "user {user} has {mine} timeline streams open, the most a user may have"
            )));
        }
        if self.total >= self.max_total {
            return Err(Error::Exhausted(format!(
                "this server has {} timeline streams open, its maximum",
                self.total
            )));
        }
        *self.per_user.entry(user).or_default() += 1;
        self.total += 1;
        Ok(())
    }

    /// A stream of `user` ended: it no longer counts for its user.
    pub fn ended(&mut self, user: UserId) {
        if let Some(n) = self.per_user.get_mut(&user) {
            *n -= 1;
            if *n == 0 {
                self.per_user.remove(&user);
            }
        }
    }

    /// Its connection let a stream go: it no longer counts at all.
    pub fn released(&mut self) {
        self.total = self.total.saturating_sub(1);
    }
}

/// The server's [`StreamCount`], shared by its streams.
#[derive(Clone)]
pub(crate) struct Slots(Arc<Mutex<StreamCount>>);

/// A stream's place in its user's count, given back when it ends.
struct UserSlot(Slots, UserId);
/// A stream's place in the total, given back when tonic drops it.
struct TotalSlot(Slots);

impl Slots {
    pub fn new(limits: &crate::config::Limits) -> Slots {
        let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        Slots(Arc::new(Mutex::new(StreamCount::new(
            size(limits.max_streams),
            size(limits.max_streams_per_user),
        ))))
    }

    fn count(&self) -> MutexGuard<'_, StreamCount> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take(&self, user: UserId) -> Result<(UserSlot, TotalSlot), Error> {
        self.count().open(user)?;
        crate::ops::metrics::metrics().open_streams.inc();
        Ok((UserSlot(self.clone(), user), TotalSlot(self.clone())))
    }
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        self.0.count().ended(self.1);
    }
}

impl Drop for TotalSlot {
    fn drop(&mut self) {
        self.0.count().released();
        crate::ops::metrics::metrics().open_streams.dec();
    }
}

// ---------------------------------------------------------------------------
// The way out: a bounded queue, and an end that overtakes it when the
// client does not read

/// What the stream's two tasks send through.
#[derive(Clone)]
struct Outbound {
    tx: mpsc::Sender<Result<Message, Status>>,
    /// The status the stream ends with, ahead of whatever is queued.
    end: Arc<Mutex<Option<oneshot::Sender<Status>>>>,
    /// Cancelled when the stream has ended: both tasks stop.
    ended: CancellationToken,
    /// The server's shutdown: the stream ends with `UNAVAILABLE`.
    shutdown: CancellationToken,
    /// How long a message may wait for room before the client counts as not
    /// reading.
    patience: Duration,
    user: UserId,
}

/// The stream ended; stop.
struct Gone;

impl Outbound {
    /// Queues `m` for the client; a client that leaves no room for it
    /// within the patience is not reading, and the stream ends.
    async fn send(&self, m: Message) -> Result<(), Gone> {
        tokio::select! {
            r = tokio::time::timeout(self.patience, self.tx.send(Ok(m))) => match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(Gone),
                Err(_) => {
                    self.end(Error::Exhausted(format!(
                        "the timeline stream of user {} was not read for {} ms; it is closed",
                        self.user,
                        self.patience.as_millis()
                    )));
                    Err(Gone)
                }
            },
            _ = self.ended.cancelled() => Err(Gone),
            _ = self.shutdown.cancelled() => {
                self.end(shutting_down());
                Err(Gone)
            }
        }
    }

    /// Ends the stream with `e`. A client that does not read gets it before
    /// anything still queued (there is no room behind it); any other end
    /// (a step-down, a bad post, shutdown) comes after what is queued, so
    /// that no post already taken for the screen is thrown away.
    fn end(&self, e: Error) {
        let not_reading = matches!(e, Error::Exhausted(_));
        match &e {
            Error::Exhausted(m) => log::info!("{m}"),
            other => log::debug!("a timeline stream ends: {other}"),
        }
        let end = self.end.lock().unwrap_or_else(|p| p.into_inner()).take();
        let status: Status = e.into();
        let behind = if not_reading {
            Err(status)
        } else {
            self.tx.try_send(Err(status)).map_err(|e| match e {
                mpsc::error::TrySendError::Full(s) | mpsc::error::TrySendError::Closed(s) => s
                    .err()
                    .unwrap_or_else(|| Status::unknown("the stream ended")),
            })
        };
        if let (Some(end), Err(status)) = (end, behind) {
            let _ = end.send(status);
        }
        self.ended.cancel();
    }

    /// Resolves when the stream has ended or the client has gone away.
    async fn over(&self) {
        tokio::select! {
            _ = self.ended.cancelled() => {}
            _ = self.tx.closed() => {}
        }
    }
}

/// The response stream tonic polls. It holds the stream's place in the total
/// cap for as long as tonic holds it.
struct Outbox {
    rx: mpsc::Receiver<Result<Message, Status>>,
    end: Option<oneshot::Receiver<Status>>,
    done: bool,
    _slot: TotalSlot,
}

impl Stream for Outbox {
    type Item = Result<Message, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(end) = &mut this.end {
            match Pin::new(end).poll(cx) {
                Poll::Ready(Ok(status)) => {
                    this.done = true;
                    this.rx.close();
                    return Poll::Ready(Some(Err(status)));
                }
                // Both tasks are gone without an end: the queue says the rest.
                Poll::Ready(Err(_)) => this.end = None,
                Poll::Pending => {}
            }
        }
        let next = this.rx.poll_recv(cx);
        if let Poll::Ready(None) = next {
            this.done = true;
        }
        next
    }
}

// ---------------------------------------------------------------------------
// Opening

/// Opens `user`'s timeline: the first message names the user.
pub(crate) async fn open(
    node: Arc<Node>,
    slots: &Slots,
    mut inbound: Streaming<Message>,
    conn: Option<super::conn::ConnInfo>,
) -> Result<TimelineStream, Error> {
    let first = tokio::time::timeout(node.failure_window, inbound.message())
        .await
        .map_err(|_| {
            Error::Invalid(format!(
                "a timeline stream names its user in its first message, within {} ms",
                node.failure_window.as_millis()
            ))
        })?
        .map_err(Error::from)?
        .ok_or_else(|| Error::Invalid("the stream ended before naming its user".into()))?;
    // Where first: a stream on a server that cannot serve it goes elsewhere,
    // whatever its session says here.
    still_serving(&node)?;
    let user = node.caller(&first.username, &first.session, conn.as_ref())?;
    let (user_slot, total_slot) = slots.take(user)?;
    let (tx, rx) = mpsc::channel(QUEUE);
    let (end_tx, end_rx) = oneshot::channel();
    let out = Outbound {
        tx,
        end: Arc::new(Mutex::new(Some(end_tx))),
        ended: CancellationToken::new(),
        shutdown: node.shutdown.clone(),
        patience: node.failure_window,
        user,
    };
    // Subscribe before reading the file, so no append is missed.
    let changes = node.subscribe(user);
    // Not `timestamp`: course clients stamp their first message with the
    // current time, which would hide every older post.
    let since = first.resume_after.as_ref().map(timefmt::from_timestamp);
    node.tasks.spawn(deliver(
        node.clone(),
        user,
        since,
        changes,
        out.clone(),
        user_slot,
    ));
    node.tasks.spawn(receive(node.clone(), user, inbound, out));
    Ok(Box::pin(Outbox {
        rx,
        end: Some(end_rx),
        done: false,
        _slot: total_slot,
    }))
}

/// A post's text without the one line end a course client's `fgets` keeps
/// (`\n`, or `\r\n` from a terminal or file that sends it); anything else,
/// a second line end included, is left for [`validate_post`] to refuse.
pub(crate) fn line_of(text: &str) -> &str {
    text.strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(text)
}

fn post_message(p: &Post) -> Message {
    Message {
        username: p.author.to_string(),
        msg: p.text.clone(),
        timestamp: Some(timefmt::to_timestamp(p.time)),
        ..Default::default()
    }
}

/// Whether `p` belongs on the screen of someone with this follow history: its
/// author is followed now, and it was posted after the follow began.
fn shown(following: &FollowLog, p: &Post) -> bool {
    following
        .since(p.author)
        .is_some_and(|since| p.time > since)
}

// ---------------------------------------------------------------------------
// Delivering

/// Sends the last 20 posts of `user`'s timeline, then every new one, until
/// the stream ends; then gives its place in the user's count back.
async fn deliver(
    node: Arc<Node>,
    user: UserId,
    since: Option<timefmt::Nanos>,
    changes: watch::Receiver<u64>,
    out: Outbound,
    slot: UserSlot,
) {
    if let Err(e) = follow_file(&node, user, since, changes, &out).await {
        out.end(e);
    }
    drop(slot);
    log::debug!("timeline of user {user} closed");
}

/// The newest post time sent so far, for starting over.
type Newest = Option<timefmt::Nanos>;

async fn follow_file(
    node: &Arc<Node>,
    user: UserId,
    since: Newest,
    mut changes: watch::Receiver<u64>,
    out: &Outbound,
) -> Result<(), Error> {
    let path = timeline_file(&node.dir, user.get());
    let mut newest = since;
    let Some(mut follower) = send_backlog(node, user, &path, &mut newest, out).await? else {
        return Ok(());
    };
    loop {
        tokio::select! {
            _ = out.over() => return Ok(()),
            _ = node.shutdown.cancelled() => return Err(shutting_down()),
            r = changes.changed() => if r.is_err() { return Ok(()) },
        }
        still_serving(node)?;
        loop {
            let Some(got) = follower.read(READ_BUDGET)? else {
                log::warn!(
                    "{}: cut shorter than what was read, or replaced; the stream of user {user} \
                     starts over after its newest post",
                    path.display()
                );
                match send_backlog(node, user, &path, &mut newest, out).await? {
                    Some(f) => follower = f,
                    None => return Ok(()),
                }
                break;
            };
            let f = following(node, user)?;
            for (at, record) in &got.records {
                match Post::parse(record) {
                    Ok(p) if shown(&f, &p) => {
                        newest = newest.max(Some(p.time));
                        if out.send(post_message(&p)).await.is_err() {
                            return Ok(());
                        }
                    }
                    Ok(_) => {}
                    Err(why) => log::warn!(
                        "{}: skipping the record at byte {at}: {why}",
                        follower.path().display()
                    ),
                }
            }
            if !got.more {
                break;
            }
            // A long run of records (or of damage): let others run.
            tokio::task::yield_now().await;
        }
    }
}

/// Whether a stream may go on here: this server is the master, and not one
/// whose lease ran out while the coordinator does not answer it. Such a
/// master may have been replaced already (the coordinator promotes the
/// slave a failure window after it last heard from us), and its readers
/// would see nothing of what the new master stores: their streams end with
/// `UNAVAILABLE`, so their clients ask the coordinator where to go. The
/// heartbeat task wakes every stream when that happens
/// ([`Node::heartbeat_loop`]); HTTP/2 keep-alive cannot tell, as the clients
/// still reach us.
fn still_serving(node: &Node) -> Result<(), Error> {
    node.require_master()?;
    if node.state().replica.fenced(std::time::Instant::now()) {
        return Err(Error::Unavailable(format!(
            "server {} of cluster {} cannot reach the coordinator: its lease has run out",
            node.opts.server_id, node.opts.cluster
        )));
    }
    Ok(())
}

fn following(node: &Node, user: UserId) -> Result<FollowLog, Error> {
    Ok(node.state().store.following(user)?.clone())
}

/// Sends the last 20 posts (or, after `newest`, everything since, as to a
/// resuming client) and returns a follower from where they end; `None` if
/// the stream ended meanwhile.
async fn send_backlog(
    node: &Arc<Node>,
    user: UserId,
    path: &Path,
    newest: &mut Newest,
    out: &Outbound,
) -> Result<Option<Follower>, Error> {
    let f = following(node, user)?;
    let (file, after) = (PathBuf::from(path), *newest);
    // No early stop: remote posts arrive late, so the file is not in time
    // order across authors. The scan ends after 20 shown posts (far only for
    // a user who unfollowed everyone they read).
    let last = node
        .blocking(move |_| {
            Ok(match after {
                None => storage::last_posts(&file, 20, |p| shown(&f, p), |_| false),
                // A resuming client: everything after what it has shown.
                // Remote posts arrive late, so look a little further back;
                // the client drops what it has shown already.
                Some(t) => storage::last_posts(
                    &file,
                    RESUME_MAX,
                    |p| shown(&f, p),
                    |p| p.time <= t.saturating_sub(RESUME_SLACK_NS),
                ),
            }?)
        })
        .await?;
    let mut posts = last.posts;
    posts.sort_by_key(|p| p.time);
    for p in &posts {
        *newest = (*newest).max(Some(p.time));
        if out.send(post_message(p)).await.is_err() {
            return Ok(None);
        }
    }
    Ok(Some(Follower::new(path.to_path_buf(), last.end)))
}

// ---------------------------------------------------------------------------
// Receiving

/// Stores the posts a client sends on its timeline stream and acknowledges
/// each once stored (and mirrored).
async fn receive(node: Arc<Node>, user: UserId, mut inbound: Streaming<Message>, out: Outbound) {
    loop {
        let next = tokio::select! {
            _ = node.shutdown.cancelled() => return,
            _ = out.ended.cancelled() => return,
            m = inbound.message() => m,
        };
        let msg = match next {
            Ok(Some(m)) => m,
            Ok(None) => return,
            Err(e) => {
                // A message that does not decode (e.g. a post that is not
                // UTF-8) is bad input: say so. A broken connection has no one
                // left to tell, and the status goes nowhere.
                log::debug!("timeline stream of user {user} broke: {}", e.message());
                out.end(Error::Invalid(format!("bad message: {}", e.message())));
                return;
            }
        };
        match store_post(&node, user, msg).await {
            Ok(None) => {}
            Ok(Some(ack)) => {
                if out.send(ack).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                out.end(e);
                return;
            }
        }
    }
}

/// Stores one post from the stream; returns its acknowledgement, if the
/// client asked for one (a `post_id`).
async fn store_post(node: &Node, user: UserId, msg: Message) -> Result<Option<Message>, Error> {
    let text = line_of(&msg.msg);
    validate_post(text).map_err(Error::Invalid)?;
    node.require_master()?;
    let post_id = msg.post_id;
    let retry = (post_id != 0).then_some(ClientId::Post {
        author: user,
        id: post_id,
    });
    let text = text.to_string();
    // A resent post is stored once ([`Node::write`]).
    node.write(retry, |st, clock| {
        let time_ns = clock
            .next_after(st.store.latest_post(user)?)
            .map_err(|why| Error::Storage(format!("user {user}'s posts: {why}")))?;
        Ok(Some(WriteOp {
            op: Some(write_op::Op::Post(PostOp {
                author: user.get(),
                time_ns,
                text,
                post_id,
            })),
        }))
    })
    .await?;
    Ok(retry.map(|_| Message {
        username: user.to_string(),
        ack_id: post_id,
        ..Default::default()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(id: u64) -> UserId {
        UserId::new(id).unwrap()
    }

    #[test]
    fn one_line_end_is_removed_before_a_post_is_checked() {
        assert_eq!(line_of("hello\n"), "hello");
        assert_eq!(line_of("hello\r\n"), "hello");
        assert_eq!(line_of("hello"), "hello");
        assert_eq!(line_of("a\n\n"), "a\n", "only one");
        assert_eq!(line_of("\n"), "");
        let checked = |t: &str| validate_post(line_of(t));
        assert!(checked("hello\n").is_ok());
        assert!(checked("hello\r\n").is_ok());
        assert!(checked("a\tb\n").is_err(), "other control characters");
        assert!(checked("a\n\n").is_err());
        assert!(checked("a\rb").is_err());
        assert!(checked("\n").is_err(), "empty once trimmed");
        // The length is that of the text without its line end.
        let longest = "x".repeat(crate::model::MAX_POST_BYTES);
        assert!(checked(&format!("{longest}\n")).is_ok());
        assert!(checked(&format!("{longest}x\n")).is_err());
    }

    #[test]
    fn streams_are_capped_per_user_and_in_all() {
        let mut c = StreamCount::new(3, 2);
        c.open(u(1)).unwrap();
        c.open(u(1)).unwrap();
        let e = c.open(u(1)).unwrap_err();
        assert!(
            matches!(&e, Error::Exhausted(m) if m.contains("user 1")),
            "{e:?}"
        );
        c.open(u(2)).unwrap();
        let e = c.open(u(3)).unwrap_err();
        assert!(
            matches!(&e, Error::Exhausted(m) if m.contains("maximum")),
            "{e:?}"
        );
        // An ended stream gives its user's place back at once, its place in
        // the total only once released.
        c.ended(u(1));
        assert!(c.open(u(3)).is_err(), "still held by the connection");
        c.released();
        c.open(u(1)).unwrap();
        assert!(c.open(u(1)).is_err());
    }

    #[tokio::test]
    async fn slots_are_given_back_when_dropped() {
        let slots = Slots::new(&crate::config::Limits {
            max_streams: 1,
            max_streams_per_user: 1,
            ..Default::default()
        });
        let (user, total) = slots.take(u(1)).unwrap();
        assert!(slots.take(u(2)).is_err());
        drop(user);
        assert!(slots.take(u(1)).is_err(), "the total is still held");
        drop(total);
        let _again = slots.take(u(1)).unwrap();
    }

    fn outbound(patience: Duration) -> (Outbound, Outbox, Slots) {
        let slots = Slots::new(&crate::config::Limits::default());
        let (_, total) = slots.take(u(1)).unwrap();
        let (tx, rx) = mpsc::channel(2);
        let (end_tx, end_rx) = oneshot::channel();
        let out = Outbound {
            tx,
            end: Arc::new(Mutex::new(Some(end_tx))),
            ended: CancellationToken::new(),
            shutdown: CancellationToken::new(),
            patience,
            user: u(1),
        };
        let outbox = Outbox {
            rx,
            end: Some(end_rx),
            done: false,
            _slot: total,
        };
        (out, outbox, slots)
    }

    fn text(m: &Message) -> &str {
        &m.msg
    }

    #[tokio::test]
    async fn a_client_that_does_not_read_is_ended_with_resource_exhausted() {
        use tokio_stream::StreamExt;
        let (out, mut outbox, _slots) = outbound(Duration::from_millis(100));
        let m = |t: &str| Message {
            msg: t.into(),
            ..Default::default()
        };
        assert!(out.send(m("a")).await.is_ok());
        assert!(out.send(m("b")).await.is_ok());
        // The queue is full and nobody reads: after the patience, the end.
        assert!(out.send(m("c")).await.is_err());
        assert!(out.ended.is_cancelled());
        assert!(out.send(m("d")).await.is_err(), "ended for good");
        // If the client reads again, the status comes first, then nothing.
        let first = outbox.next().await.unwrap().unwrap_err();
        assert_eq!(first.code(), tonic::Code::ResourceExhausted);
        assert!(first.message().contains("not read"), "{}", first.message());
        assert!(outbox.next().await.is_none());
    }

    #[tokio::test]
    async fn a_slow_reader_is_not_ended() {
        use tokio_stream::StreamExt;
        // Patience far beyond the reader's pauses, even on a busy machine.
        let (out, mut outbox, _slots) = outbound(Duration::from_secs(30));
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(Ok(m)) = outbox.next().await {
                got.push(text(&m).to_string());
                if got.len() == 10 {
                    break;
                }
                // Slower than the sender, faster than the patience.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            got
        });
        for i in 0..10 {
            let sent = out
                .send(Message {
                    msg: i.to_string(),
                    ..Default::default()
                })
                .await;
            assert!(sent.is_ok(), "message {i}");
        }
        let got = reader.await.unwrap();
        assert_eq!(got, (0..10).map(|i| i.to_string()).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_not_reading_end_overtakes_the_queue_and_the_outbox_gives_its_slot_back() {
        use tokio_stream::StreamExt;
        let queued = || Message {
            msg: "queued".into(),
            ..Default::default()
        };
        // A step-down comes after what is queued: no post is thrown away.
        let (out, mut outbox, _slots) = outbound(Duration::from_secs(60));
        assert!(out.send(queued()).await.is_ok());
        out.end(Error::Unavailable("stepping down".into()));
        assert_eq!(outbox.next().await.unwrap().unwrap().msg, "queued");
        let s = outbox.next().await.unwrap().unwrap_err();
        assert_eq!(s.code(), tonic::Code::Unavailable);
        // A client that does not read gets the end first.
        let (out, mut outbox, slots) = outbound(Duration::from_secs(60));
        assert!(out.send(queued()).await.is_ok());
        out.end(Error::Exhausted("not read".into()));
        let s = outbox.next().await.unwrap().unwrap_err();
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        assert!(outbox.next().await.is_none());
        assert_eq!(slots.count().total, 1);
        drop(outbox);
        assert_eq!(slots.count().total, 0);
    }
}
