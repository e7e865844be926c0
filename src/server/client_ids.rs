//! Client ids: how a retried write is recognised (pure).
//!
//! A write carries the client's id for it (`post_id`, `request_id`), so that
//! a write retried after a lost answer is recognised and answered as the
//! first one was. Master and slave remember the latest ids per user (a
//! bounded number), recorded when the write is staged and forgotten if it is
//! abandoned. A retry of a write still in flight waits for the first copy's
//! outcome ([`Known::InFlight`]). The ids of stored writes also go to
//! `client_ids.txt` ([`crate::storage::ids`]), read back at start-up and
//! sent with a snapshot, so a retry that reaches a restarted server (with
//! its directory, or rebuilt from its peer) is recognised too.

use crate::model::UserId;
use crate::proto::tinysns::{WriteOp, write_op};
use crate::storage::ids::IdLine;
use std::collections::{HashMap, HashSet, VecDeque};

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

    /// Its line in the ids file.
    pub fn line(self) -> IdLine {
        match self {
            ClientId::Post { author, id } => IdLine::Post {
                author: author.get(),
                id,
            },
            ClientId::Request { user, id } => IdLine::Request {
                user: user.get(),
                id,
            },
        }
    }

    pub fn from_line(line: IdLine) -> Option<ClientId> {
        Some(match line {
            IdLine::Post { author, id } => ClientId::Post {
                author: UserId::new(author)?,
                id,
            },
            IdLine::Request { user, id } => ClientId::Request {
                user: UserId::new(user)?,
                id,
            },
        })
    }

    /// The lines of the ids that `ops` carry.
    pub fn lines<'a>(ops: impl IntoIterator<Item = &'a WriteOp>) -> Vec<IdLine> {
        ops.into_iter()
            .filter_map(ClientId::of)
            .map(ClientId::line)
            .collect()
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

/// How many client ids are remembered in all, so that memory and the ids
/// file ([`crate::storage::ids`]) stay bounded with any number of users.
pub const RECENT_TOTAL: usize = 100_000;

/// What is known of a client id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    /// Its write is staged and not yet settled: a retry waits for it.
    InFlight,
    /// Its write is stored (or owed, which is promised).
    Done,
}

/// The latest client ids per user and kind, at most [`RECENT_TOTAL`] in all.
#[derive(Default)]
pub struct ClientIds {
    by_owner: HashMap<Owner, VecDeque<u64>>,
    /// Every id in the order it was recorded (and some forgotten since),
    /// for the total bound.
    order: VecDeque<ClientId>,
    in_flight: HashSet<ClientId>,
}

impl ClientIds {
    pub fn lookup(&self, id: ClientId) -> Option<Known> {
        if self.in_flight.contains(&id) {
            Some(Known::InFlight)
        } else if self.contains(id) {
            Some(Known::Done)
        } else {
            None
        }
    }

    pub fn contains(&self, id: ClientId) -> bool {
        let (owner, id) = id.key();
        self.by_owner
            .get(&owner)
            .is_some_and(|ids| ids.contains(&id))
    }

    /// Remembers an id as done (stored by the master, mirrored, replayed,
    /// or read back from the ids file).
    pub fn insert(&mut self, id: ClientId) {
        if self.contains(id) {
            return;
        }
        if self.order.len() >= RECENT_TOTAL
            && let Some(old) = self.order.pop_front()
        {
            self.drop_from_owner(old);
        }
        let (owner, n) = id.key();
        let ids = self.by_owner.entry(owner).or_default();
        if ids.len() == RECENT_IDS {
            ids.pop_front();
        }
        ids.push_back(n);
        self.order.push_back(id);
    }

    fn drop_from_owner(&mut self, id: ClientId) {
        let (owner, n) = id.key();
        if let Some(ids) = self.by_owner.get_mut(&owner) {
            ids.retain(|i| *i != n);
            if ids.is_empty() {
                self.by_owner.remove(&owner);
            }
        }
    }

    /// Remembers the id of a write being staged: in flight until settled.
    pub fn stage(&mut self, op: &WriteOp) {
        if let Some(id) = ClientId::of(op) {
            self.insert(id);
            self.in_flight.insert(id);
        }
    }

    /// The write of `op` is stored or promised: its id is done.
    pub fn settle(&mut self, op: &WriteOp) {
        if let Some(id) = ClientId::of(op) {
            self.in_flight.remove(&id);
        }
    }

    pub fn remove(&mut self, id: ClientId) {
        self.in_flight.remove(&id);
        self.drop_from_owner(id);
    }

    /// Remembers the id an operation carries, as done.
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

    /// The ids that are done, oldest first: what the ids file is rewritten
    /// with. An id forgotten and recorded again (an abandoned write, retried)
    /// is in `order` twice and comes twice; loading the file takes it once.
    /// Sifting them out took a set of every id, 3.3 MB at the bound
    /// (heaptrack, `bench scale`), for lines that cost nothing.
    pub fn done(&self) -> impl Iterator<Item = ClientId> + '_ {
        self.order
            .iter()
            .copied()
            .filter(move |id| !self.in_flight.contains(id) && self.contains(*id))
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

#[cfg(test)]
mod in_flight_tests {
    use super::*;
    use crate::proto::tinysns::PostOp;

    fn post(author: u64, post_id: u64) -> WriteOp {
        WriteOp {
            op: Some(write_op::Op::Post(PostOp {
                author,
                time_ns: 1,
                text: "x".into(),
                post_id,
            })),
        }
    }

    fn id(author: u64, n: u64) -> ClientId {
        ClientId::Post {
            author: UserId::new(author).unwrap(),
            id: n,
        }
    }

    #[test]
    fn a_staged_id_is_in_flight_until_settled_or_forgotten() {
        let mut ids = ClientIds::default();
        ids.stage(&post(1, 5));
        assert_eq!(ids.lookup(id(1, 5)), Some(Known::InFlight));
        assert_eq!(ids.done().count(), 0, "not written to the file yet");
        ids.settle(&post(1, 5));
        assert_eq!(ids.lookup(id(1, 5)), Some(Known::Done));
        assert_eq!(ids.done().collect::<Vec<_>>(), [id(1, 5)]);
        ids.stage(&post(1, 6));
        ids.forget(&post(1, 6));
        assert_eq!(ids.lookup(id(1, 6)), None, "abandoned: a retry stores it");
        assert_eq!(ids.done().collect::<Vec<_>>(), [id(1, 5)]);
    }

    #[test]
    fn an_id_recorded_again_is_written_twice_and_loaded_once() {
        let mut ids = ClientIds::default();
        ids.record(&post(1, 5));
        ids.stage(&post(1, 6));
        ids.forget(&post(1, 6));
        ids.stage(&post(1, 6));
        ids.settle(&post(1, 6));
        let lines: Vec<ClientId> = ids.done().collect();
        assert_eq!(lines, [id(1, 5), id(1, 6), id(1, 6)]);
        let mut loaded = ClientIds::default();
        for l in lines {
            loaded.insert(l);
        }
        assert_eq!(loaded.done().collect::<Vec<_>>(), [id(1, 5), id(1, 6)]);
    }

    #[test]
    fn ids_are_bounded_in_all_and_recorded_once() {
        let mut ids = ClientIds::default();
        for n in 0..(RECENT_TOTAL as u64 + 10) {
            ids.insert(id(1 + n % 1000, n + 1));
        }
        ids.insert(id(
            1 + (RECENT_TOTAL as u64 + 9) % 1000,
            RECENT_TOTAL as u64 + 10,
        ));
        assert_eq!(ids.done().count(), RECENT_TOTAL);
        assert_eq!(ids.lookup(id(1, 1)), None, "the oldest are forgotten");
        assert_eq!(
            ids.lookup(id(
                1 + (RECENT_TOTAL as u64 + 9) % 1000,
                RECENT_TOTAL as u64 + 10
            )),
            Some(Known::Done)
        );
    }
}
