//! The master's recent operations, for slaves that are joining.
//!
//! Operations are numbered from 1 in each incarnation; the log keeps the
//! latest [`LOG_CAPACITY`] of them. A slave whose snapshot was cut at an
//! operation the log no longer holds takes another snapshot.

use crate::proto::tinysns::WriteOp;
use prost::Message;
use std::collections::VecDeque;

/// How many recent operations a master keeps for slaves that are joining.
pub const LOG_CAPACITY: usize = 100_000;

/// The master's recent operations, numbered from 1 in each incarnation.
///
/// They are kept encoded (protobuf, one after another), not as `WriteOp`s:
/// a `WriteOp` is 48 bytes and, for a post, a string of its own, where an
/// encoded follow is about 25 bytes. Held as structs, a full log was the
/// largest thing in a master's memory at 100,000 users (6.3 MB, heaptrack
/// under `bench scale`). It is read only when a slave joins, which decodes
/// what it sends anyway.
#[derive(Debug, Default)]
pub struct OpLog {
    bytes: VecDeque<u8>,
    /// Each kept operation's encoded length, oldest first.
    lens: VecDeque<u32>,
    /// Number of the last operation (0 before the first).
    last: u64,
    scratch: Vec<u8>,
}

impl OpLog {
    pub fn push(&mut self, op: WriteOp) -> u64 {
        if self.lens.len() == LOG_CAPACITY
            && let Some(n) = self.lens.pop_front()
        {
            self.bytes.drain(..n as usize);
        }
        self.scratch.clear();
        // Encoding into a Vec cannot fail: it grows as needed.
        let _ = op.encode(&mut self.scratch);
        self.bytes.extend(&self.scratch);
        // One operation is far below 4 GB: a post is at most a few hundred
        // bytes, and a mirrored batch is bounded long before.
        self.lens.push_back(self.scratch.len() as u32);
        self.last += 1;
        self.last
    }

    pub fn last(&self) -> u64 {
        self.last
    }

    /// The operations after `seq`, if the log still has all of them.
    pub fn since(&self, seq: u64) -> Option<Vec<WriteOp>> {
        // `seq` comes from a peer: checked before any arithmetic on it.
        if seq > self.last {
            return None;
        }
        let first_kept = self.last + 1 - self.lens.len() as u64;
        if seq + 1 < first_kept {
            return None;
        }
        let skip = (seq + 1 - first_kept) as usize;
        let mut at: usize = self.lens.iter().take(skip).map(|n| *n as usize).sum();
        let mut out = Vec::with_capacity(self.lens.len() - skip);
        let mut buf = Vec::new();
        for n in self.lens.iter().skip(skip).map(|n| *n as usize) {
            buf.clear();
            buf.extend(self.bytes.range(at..at + n));
            at += n;
            match WriteOp::decode(buf.as_slice()) {
                Ok(op) => out.push(op),
                Err(e) => {
                    // Our own encoding: cannot happen. Were it to, the
                    // slave takes a snapshot instead, which is always safe.
                    log::error!("the operation log holds an undecodable operation: {e}");
                    return None;
                }
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::tinysns::{AddUser, write_op};

    fn op(user: u64) -> WriteOp {
        WriteOp {
            op: Some(write_op::Op::AddUser(AddUser { user })),
        }
    }

    #[test]
    fn since_returns_what_follows_and_refuses_what_is_gone() {
        let mut log = OpLog::default();
        assert_eq!(log.since(0), Some(vec![]));
        assert_eq!(log.since(u64::MAX), None);
        for u in 1..=3 {
            log.push(op(u));
        }
        assert_eq!(log.since(1), Some(vec![op(2), op(3)]));
        assert_eq!(log.since(3), Some(vec![]));
        assert_eq!(log.since(4), None, "ahead of the log");
    }

    #[test]
    fn operations_come_back_as_they_went_in() {
        use crate::proto::tinysns::{FollowOp, PostOp};
        let post = WriteOp {
            op: Some(write_op::Op::Post(PostOp {
                author: 4,
                time_ns: 1_700_000_000_000_000_000,
                text: "héllo, one line".repeat(10),
                post_id: 77,
            })),
        };
        let follow = WriteOp {
            op: Some(write_op::Op::Follow(FollowOp {
                follower: 4,
                followee: 5,
                time_ns: 9,
                follow: false,
                request_id: u64::MAX,
            })),
        };
        let mut log = OpLog::default();
        for _ in 0..3 {
            log.push(post.clone());
            log.push(follow.clone());
            log.push(op(8));
        }
        let all = log.since(0).unwrap();
        assert_eq!(all.len(), 9);
        assert_eq!(all[..3], [post.clone(), follow.clone(), op(8)]);
        assert_eq!(log.since(7), Some(vec![follow, op(8)]));
    }

    #[test]
    fn a_full_log_forgets_its_oldest() {
        let mut log = OpLog::default();
        for u in 1..=(LOG_CAPACITY as u64 + 2) {
            log.push(op(u));
        }
        assert_eq!(log.since(0), None);
        assert_eq!(log.since(1), None);
        assert_eq!(log.since(2).map(|v| v.len()), Some(LOG_CAPACITY));
    }
}
