//! The master's recent operations, for slaves that are joining.
//!
//! Operations are numbered from 1 in each incarnation; the log keeps the
//! latest [`LOG_CAPACITY`] of them. A slave whose snapshot was cut at an
//! operation the log no longer holds takes another snapshot.

use crate::proto::tinysns::WriteOp;
use std::collections::VecDeque;

/// How many recent operations a master keeps for slaves that are joining.
pub const LOG_CAPACITY: usize = 100_000;

/// The master's recent operations, numbered from 1 in each incarnation.
#[derive(Debug, Default)]
pub struct OpLog {
    ops: VecDeque<WriteOp>,
    /// Number of the last operation (0 before the first).
    last: u64,
}

impl OpLog {
    pub fn push(&mut self, op: WriteOp) -> u64 {
        if self.ops.len() == LOG_CAPACITY {
            self.ops.pop_front();
        }
        self.ops.push_back(op);
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
        let first_kept = self.last + 1 - self.ops.len() as u64;
        if seq + 1 < first_kept {
            return None;
        }
        let skip = (seq + 1 - first_kept) as usize;
        Some(self.ops.iter().skip(skip).cloned().collect())
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
