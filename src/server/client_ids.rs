//! Client ids: how a retried write is recognised (pure).
//!
//! A write carries the client's id for it (`post_id`, `request_id`), so that
//! a write retried after a lost answer is recognised and answered as the
//! first one was. Master and slave remember the latest ids per user (a
//! bounded number), recorded when the write is staged and forgotten if it is
//! abandoned.

use crate::model::UserId;
use crate::proto::tinysns::{WriteOp, write_op};
use std::collections::{HashMap, VecDeque};

/// How many client ids per user are remembered to recognise a retry.
const RECENT_IDS: usize = 1024;

/// A client's id for one write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientId {
    /// A post's `post_id`.
    Post { author: UserId, id: u64 },
    /// A follow or unfollow's `request_id`.
    Request { user: UserId, id: u64 },
}

impl ClientId {
    /// The client id an operation carries, if any (the wire's 0 is none).
    pub fn of(op: &WriteOp) -> Option<ClientId> {
        match &op.op {
            Some(write_op::Op::Post(p)) if p.post_id != 0 => Some(ClientId::Post {
                author: UserId::new(p.author)?,
                id: p.post_id,
            }),
            Some(write_op::Op::Follow(f)) if f.request_id != 0 => Some(ClientId::Request {
                user: UserId::new(f.follower)?,
                id: f.request_id,
            }),
            _ => None,
        }
    }

    /// Whose ids it is among, and the id.
    fn key(self) -> (Owner, u64) {
        match self {
            ClientId::Post { author, id } => (Owner::Posts(author), id),
            ClientId::Request { user, id } => (Owner::Requests(user), id),
        }
    }
}

/// Posts and requests are numbered apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Owner {
    Posts(UserId),
    Requests(UserId),
}

/// The latest client ids per user and kind.
#[derive(Default)]
pub struct ClientIds(HashMap<Owner, VecDeque<u64>>);

impl ClientIds {
    pub fn contains(&self, id: ClientId) -> bool {
        let (owner, id) = id.key();
        self.0.get(&owner).is_some_and(|ids| ids.contains(&id))
    }

    pub fn insert(&mut self, id: ClientId) {
        let (owner, id) = id.key();
        let ids = self.0.entry(owner).or_default();
        if ids.len() == RECENT_IDS {
            ids.pop_front();
        }
        ids.push_back(id);
    }

    pub fn remove(&mut self, id: ClientId) {
        let (owner, id) = id.key();
        if let Some(ids) = self.0.get_mut(&owner) {
            ids.retain(|i| *i != id);
        }
    }

    /// Remembers the id an operation carries.
    pub fn record(&mut self, op: &WriteOp) {
        if let Some(id) = ClientId::of(op) {
            self.insert(id);
        }
    }

    /// Forgets it again (the operation was abandoned).
    pub fn forget(&mut self, op: &WriteOp) {
        if let Some(id) = ClientId::of(op) {
            self.remove(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::tinysns::PostOp;

    fn u(id: u64) -> UserId {
        UserId::new(id).unwrap()
    }

    #[test]
    fn client_ids_are_remembered_per_user_and_kind_and_bounded() {
        let mut ids = ClientIds::default();
        let post = ClientId::Post {
            author: u(1),
            id: 5,
        };
        ids.insert(post);
        assert!(ids.contains(post));
        assert!(!ids.contains(ClientId::Request { user: u(1), id: 5 }));
        assert!(!ids.contains(ClientId::Post {
            author: u(2),
            id: 5
        }));
        for i in 0..RECENT_IDS as u64 {
            ids.insert(ClientId::Post {
                author: u(1),
                id: 100 + i,
            });
        }
        assert!(!ids.contains(post), "the oldest is forgotten");
        ids.remove(ClientId::Post {
            author: u(1),
            id: 100,
        });
        assert!(!ids.contains(ClientId::Post {
            author: u(1),
            id: 100
        }));
    }

    #[test]
    fn an_operation_without_a_client_id_records_nothing() {
        let op = |post_id| WriteOp {
            op: Some(write_op::Op::Post(PostOp {
                author: 3,
                time_ns: 1,
                text: "x".into(),
                post_id,
            })),
        };
        assert_eq!(ClientId::of(&op(0)), None);
        let mut ids = ClientIds::default();
        ids.record(&op(9));
        assert!(ids.contains(ClientId::Post {
            author: u(3),
            id: 9
        }));
        ids.forget(&op(9));
        assert!(!ids.contains(ClientId::Post {
            author: u(3),
            id: 9
        }));
    }
}
