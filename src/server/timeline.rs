//! TIMELINE streams: what a user sees, and the posts they type.
//!
//! A stream first gets the last 20 posts of the user's timeline file, read
//! backwards from its end (the cost does not depend on the history), then
//! follows the file from the offset it has read up to. It wakes up on a
//! signal for the server's own writes and on a directory-watch event for
//! what the synchronizer appends ([`Node::subscribe`]); both are only hints
//! to read from the saved offset, so a merged or lost event delays nothing
//! that the next one does not bring. The stream ends when the client goes
//! away, with `UNAVAILABLE` when this server stops being the master or shuts
//! down.
//!
//! Posts the client sends on the same stream are stored through
//! [`Node::write`] and acknowledged one by one once mirrored and written; a
//! post resent with the same `post_id` is stored once.

use super::node::{Node, shutting_down};
use super::session::ClientId;
use crate::error::Error;
use crate::model::{UserId, validate_post};
use crate::proto::csce438::Message;
use crate::proto::tinysns::{PostOp, WriteOp, write_op};
use crate::storage::{self, FollowLog, Post, timeline_file};
use crate::timefmt;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

/// Most posts sent to a client that resumes its timeline.
const RESUME_MAX: usize = 10_000;
/// How much older than the newest post a resuming client has shown a post may
/// be and still not have reached it (it came from another cluster late).
const RESUME_SLACK_NS: i64 = 60_000_000_000;

type Outbound = mpsc::Sender<Result<Message, Status>>;
pub(crate) type TimelineStream = Pin<Box<dyn Stream<Item = Result<Message, Status>> + Send>>;

/// Opens `user`'s timeline: the first message names the user.
pub(crate) async fn open(
    node: Arc<Node>,
    mut inbound: Streaming<Message>,
) -> Result<TimelineStream, Error> {
    let first = inbound
        .message()
        .await
        .map_err(Error::from)?
        .ok_or_else(|| Error::Invalid("the stream ended before naming its user".into()))?;
    let user = node.caller(&first.username, &first.session)?;
    let (tx, rx) = mpsc::channel(256);
    // Subscribe before reading the file, so no append is missed.
    let changes = node.subscribe(user);
    let since = first.timestamp.as_ref().map(timefmt::from_timestamp);
    node.tasks
        .spawn(deliver(node.clone(), user, since, changes, tx.clone()));
    node.tasks.spawn(receive(node.clone(), user, inbound, tx));
    Ok(Box::pin(ReceiverStream::new(rx)))
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

/// Sends the last 20 posts of `user`'s timeline, then every new one, until
/// the client goes away.
async fn deliver(
    node: Arc<Node>,
    user: UserId,
    since: Option<timefmt::Nanos>,
    changes: watch::Receiver<u64>,
    tx: Outbound,
) {
    if let Err(e) = follow_file(&node, user, since, changes, &tx).await {
        let _ = tx.send(Err(e.into())).await;
    }
    log::debug!("timeline of user {user} closed");
}

async fn follow_file(
    node: &Node,
    user: UserId,
    since: Option<timefmt::Nanos>,
    mut changes: watch::Receiver<u64>,
    tx: &Outbound,
) -> Result<(), Error> {
    let path = timeline_file(&node.dir, user.get());
    let following =
        || -> Result<FollowLog, Error> { Ok(node.state().store.following(user)?.clone()) };
    let f = following()?;
    // No early stop: remote posts arrive late, so the file is not in time
    // order across authors. The scan ends after 20 shown posts (far only for
    // a user who unfollowed everyone they read).
    let last = match since {
        None => storage::last_posts(&path, 20, |p| shown(&f, p), |_| false),
        // A resuming client: everything after what it has shown. Remote posts
        // arrive late, so look a little further back; the client drops what
        // it has shown already.
        Some(t) => storage::last_posts(
            &path,
            RESUME_MAX,
            |p| shown(&f, p),
            |p| p.time <= t.saturating_sub(RESUME_SLACK_NS),
        ),
    }?;
    let mut posts = last.posts;
    posts.sort_by_key(|p| p.time);
    let mut offset = last.end;
    for p in &posts {
        if tx.send(Ok(post_message(p))).await.is_err() {
            return Ok(());
        }
    }
    loop {
        tokio::select! {
            _ = tx.closed() => return Ok(()),
            _ = node.shutdown.cancelled() => {
                return Err(shutting_down());
            }
            r = changes.changed() => if r.is_err() { return Ok(()) },
        }
        node.require_master()?;
        let (bytes, end) = storage::read_from(&path, offset)?;
        offset = end;
        if bytes.is_empty() {
            continue;
        }
        let f = following()?;
        let (records, _) = storage::split_records(&bytes, storage::Format::Records);
        for p in records.into_iter().filter_map(Post::decode) {
            if shown(&f, &p) && tx.send(Ok(post_message(&p))).await.is_err() {
                return Ok(());
            }
        }
    }
}

/// Stores the posts a client sends on its timeline stream and acknowledges
/// each once stored (and mirrored).
async fn receive(node: Arc<Node>, user: UserId, mut inbound: Streaming<Message>, tx: Outbound) {
    loop {
        let next = tokio::select! {
            _ = node.shutdown.cancelled() => return,
            m = inbound.message() => m,
        };
        let msg = match next {
            Ok(Some(m)) => m,
            Ok(None) => return,
            Err(e) => {
                // A message that does not decode (e.g. a post that is not
                // UTF-8) is bad input: say so. A broken connection has no one
                // left to tell, and the send fails harmlessly.
                log::debug!("timeline stream of user {user} broke: {}", e.message());
                let e = Error::Invalid(format!("bad message: {}", e.message()));
                let _ = tx.send(Err(e.into())).await;
                return;
            }
        };
        match store_post(&node, user, msg).await {
            Ok(None) => {}
            Ok(Some(ack)) => {
                if tx.send(Ok(ack)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e.into())).await;
                return;
            }
        }
    }
}

/// Stores one post from the stream; returns its acknowledgement, if the
/// client asked for one (a `post_id`).
async fn store_post(node: &Node, user: UserId, msg: Message) -> Result<Option<Message>, Error> {
    validate_post(&msg.msg).map_err(Error::Invalid)?;
    node.require_master()?;
    let post_id = msg.post_id;
    let retry = (post_id != 0).then_some(ClientId::Post {
        author: user,
        id: post_id,
    });
    let text = msg.msg;
    node.write(|st, clock| {
        // Checked under the state lock, where ids are recorded: a resent
        // post is stored once.
        if retry.is_some_and(|id| st.ids.contains(id)) {
            return Ok(None);
        }
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
