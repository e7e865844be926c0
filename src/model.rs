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
