//! The system's vocabulary: ids as types, and the rules about user input
//! that the client and the server both enforce.
//!
//! Ids are newtypes so that a user can never be passed where a cluster is
//! meant, and "none" is `Option`, never `0`: the wire's `0` (proto3 has no
//! absent integers) is turned into `None` where a message is read.

use std::fmt;

/// A user: a positive integer (SPEC §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(u64);

impl UserId {
    /// `None` for 0, which is no user.
    pub fn new(id: u64) -> Option<UserId> {
        (id != 0).then_some(UserId(id))
    }

    /// Parses a user id as the protocol spells it: a positive decimal
    /// integer without sign or spaces.
    pub fn parse(s: &str) -> Option<UserId> {
        crate::config::parse_user(s).map(UserId)
    }

    pub fn get(self) -> u64 {
        self.0
    }

    /// The cluster this user lives in: `((id - 1) % n) + 1`.
    pub fn cluster(self, clusters: u32) -> ClusterId {
        ClusterId(crate::config::cluster_of(self.0, clusters))
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A cluster, numbered from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClusterId(pub u32);

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A server within its cluster, numbered from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerId(pub u32);

impl ServerId {
    /// `None` for the wire's 0.
    pub fn from_wire(id: u32) -> Option<ServerId> {
        (id != 0).then_some(ServerId(id))
    }
}

impl fmt::Display for ServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One run of a server process (`ServerInfo.process`): random, never 0, so
/// that a report about an earlier run is told from one about this run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RunId(pub u64);

impl RunId {
    pub fn random() -> RunId {
        RunId(rand::random::<u64>() | 1)
    }

    /// `None` for the wire's 0 (an older process that sends none).
    pub fn from_wire(id: u64) -> Option<RunId> {
        (id != 0).then_some(RunId(id))
    }
}

/// Longest post, in bytes of UTF-8.
pub const MAX_POST_BYTES: usize = 255;

/// Checks a post's text: one line of at most 255 bytes of UTF-8 without
/// control characters, and not empty. The error says why, for a person.
pub fn validate_post(text: &str) -> Result<(), String> {
    if text.is_empty() {
        return Err("a post cannot be empty".into());
    }
    if text.len() > MAX_POST_BYTES {
        return Err(format!(
            "a post is at most {MAX_POST_BYTES} bytes; this one has {}",
            text.len()
        ));
    }
    if text.chars().any(char::is_control) {
        return Err("a post is one line without control characters".into());
    }
    Ok(())
}

/// Checks an operation that came from another process (a mirrored batch, a
/// synchronizer's push): users are positive, a post's text is valid.
pub fn validate_op(op: &crate::proto::tinysns::WriteOp) -> Result<(), String> {
    use crate::proto::tinysns::write_op::Op;
    match &op.op {
        Some(Op::AddUser(a)) if a.user == 0 => Err("user 0 does not exist".into()),
        Some(Op::Follow(f)) if f.follower == 0 || f.followee == 0 => {
            Err("user 0 does not exist".into())
        }
        Some(Op::Post(p)) if p.author == 0 => Err("user 0 does not exist".into()),
        Some(Op::Post(p)) => validate_post(&p.text),
        Some(_) => Ok(()),
        None => Err("empty operation".into()),
    }
}

// ---------------------------------------------------------------------------
// Peer input (SPEC §5, "peers are checked too"): what another process of the
// system may send us is checked as strictly as a client's request. The
// synchronizer's own rules (which cluster may send which users) are in
// `synchronizer::inbound`; these are the pieces they share with the
// replication service.

/// A user id from another process: positive, and of `home` when given.
pub fn check_user(id: u64, clusters: u32, home: Option<ClusterId>) -> Result<UserId, String> {
    let user = UserId::new(id).ok_or("user 0 does not exist")?;
    match home {
        Some(home) if user.cluster(clusters) != home => Err(format!(
            "user {user} lives in cluster {}, not {home}",
            user.cluster(clusters)
        )),
        _ => Ok(user),
    }
}

/// Checks one operation a master sends its slave (in `Apply` or in a join
/// reply) as the master checked the client request it came from: a new user,
/// a follower and an author are users of `cluster` (only they log in here); a
/// followee is any other user; a post's text is valid (SPEC §2); times are
/// within bounds of `now` ([`crate::timefmt::check_peer_time`]).
pub fn check_mirrored_op(
    op: &crate::proto::tinysns::WriteOp,
    cluster: ClusterId,
    clusters: u32,
    now: crate::timefmt::Nanos,
) -> Result<(), String> {
    use crate::proto::tinysns::write_op::Op;
    let local = Some(cluster);
    match &op.op {
        Some(Op::AddUser(a)) => check_user(a.user, clusters, local).map(drop),
        Some(Op::Follow(f)) => {
            let follower = check_user(f.follower, clusters, local)?;
            let followee = check_user(f.followee, clusters, None)?;
            if follower == followee {
                return Err(format!("user {follower} cannot follow themselves"));
            }
            crate::timefmt::check_peer_time(f.time_ns, now)
        }
        Some(Op::Post(p)) => {
            check_user(p.author, clusters, local)?;
            validate_post(&p.text)?;
            crate::timefmt::check_peer_time(p.time_ns, now)
        }
        None => Err("empty operation".into()),
    }
}

#[cfg(test)]
mod peer_input_tests {
    use super::*;
    use crate::proto::tinysns::{AddUser, FollowOp, PostOp, WriteOp, write_op::Op};

    const NOW: i64 = 1_795_457_407_000_000_000;

    fn check(op: Op) -> Result<(), String> {
        check_mirrored_op(&WriteOp { op: Some(op) }, ClusterId(1), 3, NOW)
    }

    fn follow(follower: u64, followee: u64, time_ns: i64) -> Op {
        Op::Follow(FollowOp {
            follower,
            followee,
            time_ns,
            follow: true,
            request_id: 9,
        })
    }

    fn post(author: u64, time_ns: i64, text: &str) -> Op {
        Op::Post(PostOp {
            author,
            time_ns,
            text: text.into(),
            post_id: 3,
        })
    }

    #[test]
    fn mirrored_operations_are_checked_like_client_requests() {
        // What a master of cluster 1 (of 3) sends.
        assert!(check(Op::AddUser(AddUser { user: 4 })).is_ok());
        assert!(check(follow(4, 2, NOW)).is_ok(), "a followee anywhere");
        assert!(check(follow(4, 7, NOW)).is_ok());
        assert!(check(post(1, NOW, "hello")).is_ok());
        let bad = [
            Op::AddUser(AddUser { user: 0 }),
            Op::AddUser(AddUser { user: 2 }),
            follow(0, 1, NOW),
            follow(4, 0, NOW),
            follow(2, 1, NOW),
            follow(4, 4, NOW),
            follow(4, 1, i64::MAX),
            follow(4, 1, 0),
            post(0, NOW, "x"),
            post(2, NOW, "x"),
            post(1, NOW, ""),
            post(1, NOW, "two\nlines"),
            post(1, NOW, &"a".repeat(256)),
            post(1, i64::MAX, "x"),
            post(1, i64::MIN, "x"),
        ];
        for op in bad {
            assert!(check(op.clone()).is_err(), "{op:?}");
        }
        assert!(check_mirrored_op(&WriteOp { op: None }, ClusterId(1), 3, NOW).is_err());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posts() {
        assert!(validate_post("hello world").is_ok());
        assert!(validate_post(&"é".repeat(127)).is_ok());
        assert!(validate_post(&"a".repeat(255)).is_ok());
        assert!(validate_post(&"a".repeat(256)).is_err());
        assert!(validate_post("").is_err());
        assert!(validate_post("two\nlines").is_err());
        assert!(validate_post("tab\there").is_err());
        assert!(validate_post("nul\0").is_err());
    }
}
