//! What to push to whom: pure functions of decoded records, follow
//! histories and times (no files, no clocks, no network).
//!
//! * [`Source`]: the files the pusher sends from, and which of them to look
//!   at again when a file of the directory changes.
//! * [`follows`]: a local user's follow events go to the cluster of the user
//!   followed.
//! * [`posts`]: each post goes to each peer cluster with followers of the
//!   author at the post's time, with those followers as its targets;
//!   [`followed_from`] says whether a peer can need any post at all.
//! * [`Rewinds`]: a new follow from a peer's user moves the author's posts
//!   cursor back to the follow's time, so that posts sent without the new
//!   follower go again.

use super::cursors::PostsCursor;
use crate::model::{ClusterId, UserId};
use crate::proto::tinysns::{FollowOp, PostOp, RemotePost};
use crate::storage::{FileKind, FollowEvent, FollowLog, Post};
use crate::timefmt::Nanos;
use std::collections::{HashMap, HashSet};

/// This synchronizer's cluster among all clusters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    pub me: ClusterId,
    pub clusters: u32,
}

impl Partition {
    /// The cluster a user lives in. Takes the storage's raw ids, which are
    /// never 0 once parsed.
    pub fn cluster_of(self, user: u64) -> ClusterId {
        ClusterId(crate::config::cluster_of(user, self.clusters))
    }

    pub fn is_local(self, user: u64) -> bool {
        self.cluster_of(user) == self.me
    }
}

/// A file of the master's directory that the pusher sends from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// `all_users.txt`: this cluster's users go to every peer.
    Users,
    /// A local user's follow events.
    Following(UserId),
    /// A local author's posts.
    Posts(UserId),
}

impl Source {
    /// The source that `kind` is, if it is one: the users file, and the
    /// follows and posts of local users.
    pub fn of_file(kind: FileKind, p: Partition) -> Option<Source> {
        match kind {
            FileKind::Users => Some(Source::Users),
            FileKind::Following(u) if p.is_local(u) => UserId::new(u).map(Source::Following),
            FileKind::Posts(u) if p.is_local(u) => UserId::new(u).map(Source::Posts),
            _ => None,
        }
    }

    /// What to look at again when `kind` changed: its own source, and for a
    /// local author's followers file the author's posts, since a new
    /// follower may need posts that were sent without them (see
    /// [`Rewinds`]).
    pub fn of_change(kind: FileKind, p: Partition) -> Option<Source> {
        match kind {
            FileKind::Followers(u) if p.is_local(u) => UserId::new(u).map(Source::Posts),
            _ => Source::of_file(kind, p),
        }
    }

    pub fn file(self) -> FileKind {
        match self {
            Source::Users => FileKind::Users,
            Source::Following(u) => FileKind::Following(u.get()),
            Source::Posts(u) => FileKind::Posts(u.get()),
        }
    }
}

/// One push to one peer, planned from a batch of records.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned<T> {
    /// What to send; empty when the peer needs none of the batch.
    pub items: Vec<T>,
    /// The time of the latest record of the batch, sent or not: where the
    /// cursor goes once the peer has acknowledged (or needed nothing).
    /// `None` when no record of the batch could be decoded.
    pub through: Option<Nanos>,
}

/// The follow events of local user `follower` that `peer` needs: those of
/// users who live there, so that the followee's `_followers` file (and
/// `LIST`) shows the remote follower.
pub fn follows(
    follower: UserId,
    peer: ClusterId,
    events: &[FollowEvent],
    p: Partition,
) -> Planned<FollowOp> {
    Planned {
        through: events.iter().map(|e| e.time).max(),
        items: events
            .iter()
            .filter(|e| p.cluster_of(e.user) == peer)
            .map(|e| FollowOp {
                follower: follower.get(),
                followee: e.user,
                time_ns: e.time,
                follow: e.follow,
                request_id: 0,
            })
            .collect(),
    }
}

/// Whether any user of `peer` has ever followed the author (`followers` is
/// the author's followers file). If not, no post of the author can be for
/// `peer`, and the pusher reads none.
pub fn followed_from(followers: &FollowLog, peer: ClusterId, p: Partition) -> bool {
    followers.users().any(|u| p.cluster_of(u) == peer)
}

/// The posts of `author` that `peer` needs, each with its targets: the
/// peer's users who followed the author at the post's time (a follow
/// covers the posts after it, not one made at the same instant).
pub fn posts(
    author: UserId,
    peer: ClusterId,
    batch: Vec<Post>,
    followers: &FollowLog,
    p: Partition,
) -> Planned<RemotePost> {
    let through = batch.iter().map(|post| post.time).max();
    let items = batch
        .into_iter()
        .filter_map(|post| {
            let mut targets: Vec<u64> = followers
                .users()
                .filter(|f| p.cluster_of(*f) == peer && followers.at(*f, post.time))
                .collect();
            if targets.is_empty() {
                return None;
            }
            targets.sort_unstable();
            Some(RemotePost {
                post: Some(PostOp {
                    author: author.get(),
                    time_ns: post.time,
                    text: post.text,
                    post_id: 0,
                }),
                targets,
            })
        })
        .collect();
    Planned { items, through }
}

/// How a posts cursor moved because of new follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rewind {
    /// Back to a new follow's time: the posts since go again, now with the
    /// new follower among their targets.
    Resend { since: Nanos },
    /// The first follower in the peer's cluster: earlier posts were for
    /// nobody there, so the cursor skips ahead to the follow instead of
    /// reading the history since.
    SkipTo { follow: Nanos },
}

/// The follow events of peers' users that have been taken into account,
/// per (author, peer).
///
/// A remote user's follow can reach the author's cluster after a post that
/// was sent without them. Follows of different users can also arrive out of
/// time order (one from cluster 2 at 10:00 can land after one from cluster 2
/// at 10:05), so "not later than the latest seen" would miss the late one:
/// each event is remembered.
///
/// After a start, the saved cursor says how far it got: the latest event
/// taken into account ([`PostsCursor::follows`]) and how many events were
/// ([`PostsCursor::seen`]). A time alone is not enough: an event older than
/// the latest one handled can be in the file unhandled (it arrived, late,
/// just before the restart), and would be taken as handled, its rewind lost
/// and the posts since sent to nobody there. So the events up to that time
/// count as handled only if there are no more of them than were taken into
/// account. If there are more, some arrived unhandled and nothing says
/// which: none counts as handled, and the posts since the peer's earliest
/// follow go again (which the receiver stores once). That costs a re-send,
/// only after a restart that came between a late follow's arrival and its
/// handling; never a lost post. A cursor saved by an older version (no
/// count) is taken as before.
#[derive(Debug, Default)]
pub struct Rewinds {
    handled: HashMap<(UserId, ClusterId), HashSet<(u64, Nanos)>>,
}

impl Rewinds {
    /// Takes the author's followers (`followers`, their whole history) into
    /// account for `peer`'s cursor: moves it as [`Rewind`] says, and moves
    /// [`PostsCursor::follows`] to the latest event of the peer's users.
    pub fn apply(
        &mut self,
        author: UserId,
        peer: ClusterId,
        followers: &FollowLog,
        p: Partition,
        cursor: &mut PostsCursor,
    ) -> Option<Rewind> {
        let from_peer = || {
            followers
                .events()
                .filter(move |(u, _, _)| p.cluster_of(*u) == peer)
        };
        let saved = cursor.follows;
        let seen = cursor.seen;
        let handled = self.handled.entry((author, peer)).or_insert_with(|| {
            let upto: HashSet<(u64, Nanos)> = from_peer()
                .filter(|(_, t, _)| saved.is_some_and(|f| *t <= f))
                .map(|(u, t, _)| (u, t))
                .collect();
            match seen {
                Some(n) if upto.len() as u64 > n => HashSet::new(),
                _ => upto,
            }
        });
        let mut earliest_new: Option<Nanos> = None;
        for (user, time, follow) in from_peer() {
            if !handled.insert((user, time)) {
                continue;
            }
            cursor.follows = cursor.follows.max(Some(time));
            if follow {
                earliest_new = Some(earliest_new.map_or(time, |t| t.min(time)));
            }
        }
        cursor.seen = Some(handled.len() as u64);
        let t = earliest_new?;
        if cursor.at.last.is_some_and(|last| t < last) {
            cursor.at.move_to(t);
            Some(Rewind::Resend { since: t })
        } else if saved.is_none() {
            // The cursor did not move while nobody there followed (the
            // pusher reads nothing then), so it stands before the follow.
            cursor.at.move_to(t);
            Some(Rewind::SkipTo { follow: t })
        } else {
            None
        }
    }

    /// The next push of `author`'s posts to `peer`: the followers are taken
    /// into account first ([`Rewinds::apply`]), then the posts after the
    /// cursor (what `read` finds from it: the posts and the offset just past
    /// them) are planned with those same followers. `None` when nobody
    /// there has ever followed the author (nothing is read) or nothing is
    /// new.
    ///
    /// One snapshot for both is the point: a follow that the plan sees and
    /// the rewind has not taken into account sends the new follower a post
    /// before the posts since their follow go again, and a receiver skips a
    /// post of an author older than the latest of theirs a timeline holds
    /// (`AuthorClock`), so those were lost (chaos seed 11: a follow that
    /// arrived while a batch was in flight, 62 posts).
    pub fn next_posts<E>(
        &mut self,
        author: UserId,
        peer: ClusterId,
        followers: &FollowLog,
        p: Partition,
        cursor: &mut PostsCursor,
        read: impl FnOnce(&mut super::cursors::TimeCursor) -> Result<Option<(Vec<Post>, u64)>, E>,
    ) -> Result<Option<(Planned<RemotePost>, u64)>, E> {
        self.apply(author, peer, followers, p, cursor);
        // The cursor waits while nobody there follows; the first follow
        // from there moves it up to the follow (the rewind above).
        if !followed_from(followers, peer, p) {
            return Ok(None);
        }
        let Some((batch, next)) = read(&mut cursor.at)? else {
            return Ok(None);
        };
        Ok(Some((posts(author, peer, batch, followers, p), next)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Fold;

    const P: Partition = Partition {
        me: ClusterId(1),
        clusters: 3,
    };

    fn user(id: u64) -> UserId {
        UserId::new(id).unwrap()
    }

    fn event(user: u64, time: Nanos, follow: bool) -> FollowEvent {
        FollowEvent { user, follow, time }
    }

    /// Adds events to a followers log as the file would hold them.
    fn record(log: &mut FollowLog, events: &[FollowEvent]) {
        for e in events {
            log.apply(e.encode().trim_end().as_bytes()).unwrap();
        }
    }

    fn post(time: Nanos) -> Post {
        Post {
            author: 1,
            time,
            text: format!("at {time}"),
        }
    }

    fn cursor(last: Option<Nanos>, follows: Option<Nanos>) -> PostsCursor {
        let mut c = PostsCursor::default();
        c.at.last = last;
        c.follows = follows;
        c
    }

    fn seen(mut c: PostsCursor, n: u64) -> PostsCursor {
        c.seen = Some(n);
        c
    }

    // Author 1 lives in cluster 1; users 2, 5, 8 in cluster 2; 3 and 6 in
    // cluster 3.

    #[test]
    fn a_follow_arriving_after_a_later_one_still_rewinds() {
        let mut rewinds = Rewinds::default();
        let mut log = FollowLog::default();
        let mut c = PostsCursor::default();
        // User 5's follow at 300 arrives first.
        record(&mut log, &[event(5, 300, true)]);
        assert_eq!(
            rewinds.apply(user(1), ClusterId(2), &log, P, &mut c),
            Some(Rewind::SkipTo { follow: 300 })
        );
        // A post at 350 is sent to user 5.
        c.at.advance(Some(350), 1000);
        // User 2's follow at 100 lands only now: later than 5's in arrival,
        // earlier in time. The posts since 100 must go again.
        record(&mut log, &[event(2, 100, true)]);
        assert_eq!(
            rewinds.apply(user(1), ClusterId(2), &log, P, &mut c),
            Some(Rewind::Resend { since: 100 })
        );
        assert_eq!(c.at.last, Some(100));
        assert_eq!(c.at.offset, None, "the offset is found again from the time");
        assert_eq!(c.follows, Some(300), "the latest follow taken into account");
        // Nothing new: nothing moves.
        c.at.advance(Some(350), 1000);
        assert_eq!(rewinds.apply(user(1), ClusterId(2), &log, P, &mut c), None);
        assert_eq!(c.at.last, Some(350));
    }

    #[test]
    fn the_first_follower_in_a_cluster_skips_history() {
        let mut rewinds = Rewinds::default();
        let mut log = FollowLog::default();
        // Followers elsewhere do not count for cluster 2.
        record(&mut log, &[event(3, 100, true), event(8, 500, true)]);
        let mut c = PostsCursor::default();
        assert_eq!(
            rewinds.apply(user(1), ClusterId(2), &log, P, &mut c),
            Some(Rewind::SkipTo { follow: 500 })
        );
        assert_eq!(c.at.last, Some(500));
        assert_eq!(c.follows, Some(500));
    }

    #[test]
    fn a_restart_counts_the_saved_cursor_as_handled() {
        let mut log = FollowLog::default();
        record(&mut log, &[event(2, 100, true), event(5, 300, true)]);
        // As positions.txt left it: posts up to 400 handled, follows up to
        // 300 taken into account.
        let mut c = seen(cursor(Some(400), Some(300)), 2);
        let mut rewinds = Rewinds::default();
        assert_eq!(rewinds.apply(user(1), ClusterId(2), &log, P, &mut c), None);
        assert_eq!(c, seen(cursor(Some(400), Some(300)), 2));
        // A follow after the saved mark is new.
        record(&mut log, &[event(8, 350, true)]);
        assert_eq!(
            rewinds.apply(user(1), ClusterId(2), &log, P, &mut c),
            Some(Rewind::Resend { since: 350 })
        );
        assert_eq!(c.follows, Some(350));
        assert_eq!(c.seen, Some(3));
    }

    #[test]
    fn a_late_follow_unhandled_at_a_restart_still_rewinds() {
        // User 5's follow at 300 was handled and a post at 400 sent without
        // user 2; user 2's follow at 100 arrived (late) just before the
        // restart, unhandled. The saved cursor: posts to 400, follows to
        // 300, one follow taken into account.
        let mut log = FollowLog::default();
        record(&mut log, &[event(5, 300, true)]);
        let mut before = Rewinds::default();
        let mut c = PostsCursor::default();
        before.apply(user(1), ClusterId(2), &log, P, &mut c);
        c.at.advance(Some(400), 1000);
        // As positions.txt keeps it: no offset.
        let mut saved = c;
        saved.at.offset = None;
        assert_eq!(saved, seen(cursor(Some(400), Some(300)), 1));
        record(&mut log, &[event(2, 100, true)]);
        // After the restart: user 2's follow is not taken as handled. Which
        // of the two is new cannot be told, so the posts since the earliest
        // go again.
        let mut c = saved;
        let mut rewinds = Rewinds::default();
        assert_eq!(
            rewinds.apply(user(1), ClusterId(2), &log, P, &mut c),
            Some(Rewind::Resend { since: 100 })
        );
        assert_eq!(c, seen(cursor(Some(100), Some(300)), 2));
        assert_eq!(rewinds.apply(user(1), ClusterId(2), &log, P, &mut c), None);
        // Saved after it, a second restart takes both as handled.
        let mut again = Rewinds::default();
        let mut c2 = c;
        c2.at.advance(Some(400), 1000);
        assert_eq!(again.apply(user(1), ClusterId(2), &log, P, &mut c2), None);
        // Other peers' users count for their own cursors only.
        record(&mut log, &[event(3, 50, true)]);
        assert_eq!(again.apply(user(1), ClusterId(2), &log, P, &mut c2), None);
    }

    #[test]
    fn a_cursor_from_an_older_version_takes_its_time_as_before() {
        let mut log = FollowLog::default();
        record(&mut log, &[event(2, 100, true), event(5, 300, true)]);
        let mut c = cursor(Some(400), Some(300));
        let mut rewinds = Rewinds::default();
        assert_eq!(rewinds.apply(user(1), ClusterId(2), &log, P, &mut c), None);
        assert_eq!(
            c,
            seen(cursor(Some(400), Some(300)), 2),
            "counted from now on"
        );
    }

    #[test]
    fn an_unfollow_moves_the_follows_mark_but_rewinds_nothing() {
        let mut log = FollowLog::default();
        record(&mut log, &[event(2, 100, true)]);
        let mut c = seen(cursor(Some(400), Some(100)), 1);
        let mut rewinds = Rewinds::default();
        record(&mut log, &[event(2, 200, false)]);
        assert_eq!(rewinds.apply(user(1), ClusterId(2), &log, P, &mut c), None);
        assert_eq!(c, seen(cursor(Some(400), Some(200)), 2));
    }

    /// What `read` gives [`Rewinds::next_posts`] from `file`: the posts
    /// after the cursor's time (as `offset_after` finds them), and their
    /// count as the offset.
    fn read_after(
        file: &[Post],
        at: &mut crate::synchronizer::cursors::TimeCursor,
    ) -> Result<Option<(Vec<Post>, u64)>, ()> {
        let new: Vec<Post> = file
            .iter()
            .filter(|p| at.last.is_none_or(|l| p.time > l))
            .cloned()
            .collect();
        Ok((!new.is_empty()).then_some((new, file.len() as u64)))
    }

    /// Delivers a push as the receiver's store does: a timeline takes a
    /// post of an author only if it is later than the latest of theirs it
    /// holds (`AuthorClock`).
    fn deliver(timelines: &mut HashMap<u64, Vec<Nanos>>, plan: &Planned<RemotePost>) {
        for rp in &plan.items {
            let Some(post) = &rp.post else { continue };
            for t in &rp.targets {
                let line = timelines.entry(*t).or_default();
                if line.last().is_none_or(|l| post.time_ns > *l) {
                    line.push(post.time_ns);
                }
            }
        }
    }

    #[test]
    fn a_follow_seen_between_batches_is_rewound_before_it_is_sent_to() {
        // Chaos seed 11: user 5's follow at 180 lands while the posts since
        // are in flight without them, and a later post follows. The next
        // batch must be the posts since the follow, with user 5, not the
        // later post alone (which would make the receiver skip the rest).
        let mut rewinds = Rewinds::default();
        let mut log = FollowLog::default();
        record(&mut log, &[event(2, 100, true)]);
        let mut file = vec![post(150), post(200), post(250)];
        let mut c = PostsCursor::default();
        let mut timelines = HashMap::new();
        let step = |rewinds: &mut Rewinds,
                    log: &FollowLog,
                    file: &[Post],
                    c: &mut PostsCursor,
                    timelines: &mut HashMap<u64, Vec<Nanos>>| {
            let next = rewinds
                .next_posts(user(1), ClusterId(2), log, P, c, |at| read_after(file, at))
                .unwrap();
            let (plan, offset) = next?;
            deliver(timelines, &plan);
            c.at.advance(plan.through, offset);
            Some(plan)
        };
        let first = step(&mut rewinds, &log, &file, &mut c, &mut timelines).unwrap();
        assert!(first.items.iter().all(|rp| rp.targets == vec![2]));
        record(&mut log, &[event(5, 180, true)]);
        file.push(post(300));
        let second = step(&mut rewinds, &log, &file, &mut c, &mut timelines).unwrap();
        let times: Vec<Nanos> = second
            .items
            .iter()
            .filter_map(|rp| rp.post.as_ref().map(|p| p.time_ns))
            .collect();
        assert_eq!(times, vec![200, 250, 300], "the posts since the follow");
        assert!(second.items.iter().all(|rp| rp.targets == vec![2, 5]));
        assert!(step(&mut rewinds, &log, &file, &mut c, &mut timelines).is_none());
        assert_eq!(timelines[&5], vec![200, 250, 300], "nothing lost");
        assert_eq!(timelines[&2], vec![150, 200, 250, 300], "nothing twice");
    }

    #[test]
    fn nothing_is_read_for_a_peer_nobody_there_follows() {
        let mut rewinds = Rewinds::default();
        let mut log = FollowLog::default();
        record(&mut log, &[event(3, 100, true)]);
        let mut c = PostsCursor::default();
        let next = rewinds.next_posts(user(1), ClusterId(2), &log, P, &mut c, |_| {
            Err::<Option<(Vec<Post>, u64)>, &str>("read")
        });
        assert_eq!(next, Ok(None));
        assert_eq!(c.at, Default::default(), "the cursor waits");
    }

    #[test]
    fn posts_are_targeted_to_followers_at_the_post_time() {
        let mut log = FollowLog::default();
        record(
            &mut log,
            &[
                // User 2: follow, unfollow, follow again.
                event(2, 100, true),
                event(2, 200, false),
                event(2, 300, true),
                // User 5 follows throughout; user 3 is in another cluster.
                event(5, 10, true),
                event(3, 10, true),
            ],
        );
        let batch = vec![post(50), post(100), post(150), post(250), post(350)];
        let plan = posts(user(1), ClusterId(2), batch, &log, P);
        let got: Vec<(Nanos, Vec<u64>)> = plan
            .items
            .iter()
            .map(|rp| {
                (
                    rp.post.as_ref().map_or(0, |p| p.time_ns),
                    rp.targets.clone(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (50, vec![5]),
                // A follow covers the posts after it.
                (100, vec![5]),
                (150, vec![2, 5]),
                (250, vec![5]),
                (350, vec![2, 5]),
            ]
        );
        assert_eq!(plan.through, Some(350));
        assert!(plan.items.iter().all(|rp| {
            rp.post
                .as_ref()
                .is_some_and(|p| p.author == 1 && p.text.starts_with("at "))
        }));
    }

    #[test]
    fn posts_for_nobody_there_send_nothing_but_move_the_cursor() {
        let mut log = FollowLog::default();
        record(&mut log, &[event(2, 100, true), event(2, 200, false)]);
        assert!(followed_from(&log, ClusterId(2), P));
        assert!(!followed_from(&log, ClusterId(3), P));
        let plan = posts(user(1), ClusterId(2), vec![post(250), post(260)], &log, P);
        assert!(plan.items.is_empty());
        assert_eq!(plan.through, Some(260));
        let none = posts(user(1), ClusterId(2), Vec::new(), &log, P);
        assert_eq!(none.through, None);
    }

    #[test]
    fn follow_events_go_only_to_the_followees_cluster() {
        let events = [
            event(2, 10, true),
            event(3, 20, true),
            event(5, 30, true),
            event(2, 40, false),
            event(6, 50, true),
        ];
        let to2 = follows(user(4), ClusterId(2), &events, P);
        let got: Vec<(u64, u64, Nanos, bool)> = to2
            .items
            .iter()
            .map(|f| (f.follower, f.followee, f.time_ns, f.follow))
            .collect();
        assert_eq!(
            got,
            vec![(4, 2, 10, true), (4, 5, 30, true), (4, 2, 40, false)]
        );
        // The cursor passes the events for other clusters too.
        assert_eq!(to2.through, Some(50));
        let to3 = follows(user(4), ClusterId(3), &events, P);
        assert_eq!(to3.items.len(), 2);
    }

    #[test]
    fn changes_map_to_the_files_sent_from() {
        let of_change = |k| Source::of_change(k, P);
        let of_file = |k| Source::of_file(k, P);
        assert_eq!(of_change(FileKind::Users), Some(Source::Users));
        assert_eq!(of_change(FileKind::Posts(4)), Some(Source::Posts(user(4))));
        assert_eq!(
            of_change(FileKind::Following(4)),
            Some(Source::Following(user(4)))
        );
        // A new follower of a local author may need older posts.
        assert_eq!(
            of_change(FileKind::Followers(4)),
            Some(Source::Posts(user(4)))
        );
        assert_eq!(of_file(FileKind::Followers(4)), None);
        // Remote users' files and timelines are not sent from.
        assert_eq!(of_change(FileKind::Posts(2)), None);
        assert_eq!(of_change(FileKind::Followers(2)), None);
        assert_eq!(of_change(FileKind::Timeline(4)), None);
        assert_eq!(Source::Posts(user(4)).file(), FileKind::Posts(4));
    }
}
