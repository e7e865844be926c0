//! What a peer synchronizer may push to us: the rules, as pure functions of
//! a batch, our [`Partition`] and our clock's `now` (no files, no network).
//!
//! A push is checked whole before anything is written: one bad item refuses
//! the batch with `INVALID_ARGUMENT` naming the item, and nothing of it is
//! stored. The rules are exactly the shape of what a legitimate pusher sends
//! ([`super::plan`]): the synchronizer of cluster `c` reads only the files
//! of `c`'s users, so everything it pushes is about them.
//!
//! * `from_cluster` is a cluster of the system and not ours.
//! * **Users**: every user lives in `from_cluster` (`all_users.txt` is read
//!   for its local users only).
//! * **Follows**: the follower lives in `from_cluster` (the events come from
//!   its `_following` file), the followee here (they go to the followee's
//!   cluster). So no peer can make one of our users follow anyone, or speak
//!   for a third cluster's user.
//! * **Posts**: the author lives in `from_cluster` (the posts come from its
//!   `_posts` file); every target lives here, and there is at least one
//!   (a post that nobody here follows is not sent); the text is a valid post
//!   (SPEC §2).
//! * **Times** of follows and posts are within bounds of our clock
//!   ([`crate::timefmt::check_peer_time`]): history may be old, but nothing
//!   is dated before 2000 or more than [`crate::timefmt::MAX_SKEW`] ahead.
//!   A post far ahead would otherwise hide every later post of its author,
//!   and a follow far ahead would outlast every unfollow.
//!
//! A push cannot prove which cluster sent it (the cluster key is one for
//! the whole system), so a process with the key can still speak for the
//! users of the cluster it claims to be: that cluster's data, which its
//! synchronizer carries anyway. What these rules take away is any say, in one
//! push, over another cluster's users, and over times outside the bounds.

use super::plan::Partition;
use crate::error::quote;
use crate::error::{Error, Result};
use crate::model::{ClusterId, UserId, check_user, validate_post};
use crate::proto::tinysns::{FollowBatch, FollowOp, PostBatch, UserBatch};
use crate::storage::Post;
use crate::timefmt::{Nanos, check_peer_time};

/// The sender, checked: a cluster of the system, not ours.
pub fn sender(p: Partition, from_cluster: u32) -> Result<ClusterId> {
    if from_cluster == 0 || from_cluster > p.clusters {
        return Err(Error::Invalid(format!(
            "from_cluster {from_cluster} is outside 1..={}",
            p.clusters
        )));
    }
    if from_cluster == p.me.0 {
        return Err(Error::Invalid(format!(
            "from_cluster {from_cluster} is this synchronizer's own cluster"
        )));
    }
    Ok(ClusterId(from_cluster))
}

/// A refusal naming the item: `"<what> #<index> (<detail>): <why>"`.
fn refuse(what: &str, index: usize, detail: &str, why: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("{what} #{index} ({detail}): {why}"))
}

/// The users of a `PushUsers`, checked.
pub fn users(p: Partition, batch: &UserBatch) -> Result<Vec<UserId>> {
    let from = sender(p, batch.from_cluster)?;
    batch
        .users
        .iter()
        .enumerate()
        .map(|(i, &u)| {
            check_user(u, p.clusters, Some(from))
                .map_err(|why| refuse("user", i, &u.to_string(), why))
        })
        .collect()
}

/// The events of a `PushFollows`, checked.
pub fn follows(p: Partition, now: Nanos, batch: &FollowBatch) -> Result<Vec<FollowOp>> {
    let from = sender(p, batch.from_cluster)?;
    let mut out = Vec::with_capacity(batch.events.len());
    for (i, e) in batch.events.iter().enumerate() {
        let detail = format!("{} -> {}", e.follower, e.followee);
        let checked = check_user(e.follower, p.clusters, Some(from))
            .and_then(|_| check_user(e.followee, p.clusters, Some(p.me)))
            .and_then(|_| check_peer_time(e.time_ns, now));
        checked.map_err(|why| refuse("follow event", i, &detail, why))?;
        out.push(FollowOp {
            // A client's id means nothing in another cluster.
            request_id: 0,
            ..*e
        });
    }
    Ok(out)
}

/// The posts of a `PushPosts`, checked, each with its targets.
pub fn posts(p: Partition, now: Nanos, batch: PostBatch) -> Result<Vec<(Post, Vec<u64>)>> {
    let from = sender(p, batch.from_cluster)?;
    let mut out = Vec::with_capacity(batch.posts.len());
    for (i, rp) in batch.posts.into_iter().enumerate() {
        let Some(op) = rp.post else {
            return Err(refuse("post", i, "none", "a remote post without its post"));
        };
        let detail = format!("by {} at {}", op.author, op.time_ns);
        let checked = check_user(op.author, p.clusters, Some(from))
            .map(drop)
            .and_then(|_| {
                validate_post(&op.text).map_err(|why| format!("{why}: {}", quote(&op.text)))
            })
            .and_then(|_| check_peer_time(op.time_ns, now))
            .and_then(|_| {
                if rp.targets.is_empty() {
                    Err("no targets".to_string())
                } else {
                    Ok(())
                }
            })
            .and_then(|_| {
                rp.targets
                    .iter()
                    .try_for_each(|&t| check_user(t, p.clusters, Some(p.me)).map(drop))
                    .map_err(|why| format!("target: {why}"))
            });
        checked.map_err(|why| refuse("post", i, &detail, why))?;
        let post = Post {
            author: op.author,
            time: op.time_ns,
            text: op.text,
        };
        out.push((post, rp.targets));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::tinysns::{PostOp, RemotePost};
    use crate::storage::{Fold, FollowEvent, FollowLog};
    use crate::timefmt::{MAX_SKEW, MIN_TIME};

    /// We are cluster 1 of 3: users 1, 4, 7 live here; 2, 5, 8 in cluster 2;
    /// 3, 6, 9 in cluster 3.
    const P: Partition = Partition {
        me: ClusterId(1),
        clusters: 3,
    };
    const NOW: Nanos = 1_795_457_407_000_000_000;

    fn user_batch(from_cluster: u32, users: &[u64]) -> UserBatch {
        UserBatch {
            from_cluster,
            users: users.to_vec(),
        }
    }

    fn event(follower: u64, followee: u64, time_ns: Nanos) -> FollowOp {
        FollowOp {
            follower,
            followee,
            time_ns,
            follow: true,
            request_id: 0,
        }
    }

    fn follow_batch(from_cluster: u32, events: Vec<FollowOp>) -> FollowBatch {
        FollowBatch {
            from_cluster,
            events,
        }
    }

    fn remote(author: u64, time_ns: Nanos, text: &str, targets: &[u64]) -> RemotePost {
        RemotePost {
            post: Some(PostOp {
                author,
                time_ns,
                text: text.into(),
                post_id: 0,
            }),
            targets: targets.to_vec(),
        }
    }

    fn post_batch(from_cluster: u32, posts: Vec<RemotePost>) -> PostBatch {
        PostBatch {
            from_cluster,
            posts,
        }
    }

    fn invalid<T: std::fmt::Debug>(r: Result<T>) -> String {
        match r {
            Err(Error::Invalid(m)) => m,
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    #[test]
    fn the_sender_is_another_cluster_of_the_system() {
        assert_eq!(sender(P, 2).ok(), Some(ClusterId(2)));
        for bad in [0, 1, 4, u32::MAX] {
            invalid(sender(P, bad));
        }
        // Every kind of push checks it.
        invalid(users(P, &user_batch(1, &[])));
        invalid(follows(P, NOW, &follow_batch(4, vec![])));
        invalid(posts(P, NOW, post_batch(0, vec![])));
    }

    #[test]
    fn pushed_users_are_the_senders() {
        let got = users(P, &user_batch(2, &[2, 5, 8])).expect("cluster 2's users");
        assert_eq!(got.iter().map(|u| u.get()).collect::<Vec<_>>(), [2, 5, 8]);
        // One user of another cluster, or user 0, refuses the whole batch,
        // and the message names it.
        let m = invalid(users(P, &user_batch(2, &[2, 5, 3])));
        assert!(m.contains("user #2 (3)"), "{m}");
        invalid(users(P, &user_batch(2, &[2, 4])));
        invalid(users(P, &user_batch(2, &[0])));
    }

    #[test]
    fn follows_are_of_the_senders_users_of_ours() {
        let ok = follow_batch(2, vec![event(2, 1, NOW), event(5, 7, NOW - 1)]);
        let got = follows(P, NOW, &ok).expect("legitimate");
        assert_eq!(got.len(), 2);
        let bad = [
            event(4, 1, NOW), // our user made to follow
            event(3, 1, NOW), // a third cluster's user
            event(2, 5, NOW), // a followee that is not ours
            event(0, 1, NOW),
            event(2, 0, NOW),
            event(2, 1, i64::MAX),
            event(2, 1, NOW + MAX_SKEW + 1),
            event(2, 1, 0),
            event(2, 1, i64::MIN),
        ];
        for e in bad {
            let batch = follow_batch(2, vec![event(2, 1, NOW), e]);
            let m = invalid(follows(P, NOW, &batch));
            assert!(m.starts_with("follow event #1"), "{e:?}: {m}");
        }
        // A client's id is not carried into another cluster.
        let mut e = event(2, 1, NOW);
        e.request_id = 77;
        let got = follows(P, NOW, &follow_batch(2, vec![e])).expect("legitimate");
        assert_eq!(got[0].request_id, 0);
    }

    #[test]
    fn posts_are_the_senders_authors_for_our_users() {
        let ok = post_batch(
            2,
            vec![
                remote(2, NOW, "hello", &[1, 4]),
                remote(5, MIN_TIME, "old history is fine", &[7]),
                remote(2, NOW + MAX_SKEW, "a clock a little ahead", &[1]),
            ],
        );
        let got = posts(P, NOW, ok).expect("legitimate");
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].0.author, 2);
        assert_eq!(got[0].1, vec![1, 4]);
        let long = "x".repeat(300);
        let bad = [
            remote(3, NOW, "a third cluster's author", &[1]),
            remote(1, NOW, "our own author", &[4]),
            remote(0, NOW, "nobody", &[1]),
            remote(2, NOW, "a target elsewhere", &[1, 5]),
            remote(2, NOW, "target 0", &[0]),
            remote(2, NOW, "for nobody", &[]),
            remote(2, NOW, "", &[1]),
            remote(2, NOW, "two\nlines", &[1]),
            remote(2, NOW, &long, &[1]),
            remote(2, i64::MAX, "from the end of time", &[1]),
            remote(2, NOW + MAX_SKEW + 1, "too far ahead", &[1]),
            remote(2, 0, "1970", &[1]),
            RemotePost {
                post: None,
                targets: vec![1],
            },
        ];
        for rp in bad {
            let what = format!("{rp:?}");
            let batch = post_batch(2, vec![remote(2, NOW, "fine", &[1]), rp]);
            let m = invalid(posts(P, NOW, batch));
            assert!(m.starts_with("post #1"), "{what}: {m}");
            assert!(m.len() < 200, "a short message: {m}");
        }
    }

    /// What the pusher of cluster 2 plans for us is exactly what we take.
    #[test]
    fn a_legitimate_pushers_plan_passes() {
        let them = Partition {
            me: ClusterId(2),
            clusters: 3,
        };
        let events = [
            FollowEvent {
                user: 1,
                follow: true,
                time: NOW - 100,
            },
            FollowEvent {
                user: 3,
                follow: true,
                time: NOW - 90,
            },
            FollowEvent {
                user: 1,
                follow: false,
                time: NOW - 80,
            },
        ];
        let plan = super::super::plan::follows(UserId::new(5).expect("user"), P.me, &events, them);
        let batch = follow_batch(2, plan.items);
        assert_eq!(follows(P, NOW, &batch).expect("passes").len(), 2);

        let mut followers = FollowLog::default();
        for e in [(1, NOW - 100), (4, NOW - 50), (6, NOW - 50)] {
            let record = FollowEvent {
                user: e.0,
                follow: true,
                time: e.1,
            }
            .encode();
            followers
                .apply(record.trim_end().as_bytes())
                .expect("a valid record");
        }
        let history: Vec<Post> = (0..5)
            .map(|i| Post {
                author: 5,
                time: NOW - 200 + i * 40,
                text: format!("post {i}"),
            })
            .collect();
        let plan = super::super::plan::posts(
            UserId::new(5).expect("user"),
            P.me,
            history,
            &followers,
            them,
        );
        assert!(!plan.items.is_empty());
        let n = plan.items.len();
        let got = posts(P, NOW, post_batch(2, plan.items)).expect("passes");
        assert_eq!(got.len(), n);
    }
}
