//! The data on disk: plain, append-only text files that a person can `cat`.
//!
//! # Files
//! A server's directory holds, per SPEC §3:
//!
//! | file | format | written by |
//! |---|---|---|
//! | `all_users.txt` | one user id a line | server (local users), synchronizer (remote) |
//! | `u<id>_posts.txt` | post records | server (the user's own posts) |
//! | `u<id>_timeline.txt` | post records | server (local authors), synchronizer (remote) |
//! | `u<id>_following.txt` | follow events | server |
//! | `u<id>_followers.txt` | follow events | server (local followers), synchronizer (remote) |
//!
//! A post record is `T <rfc3339>\nU <author>\nW <text>\n\n`. A follow event is
//! one line, `+ <user> <rfc3339>` (started following) or `- <user> <rfc3339>`
//! (stopped); the current set is the fold of the events, and `(user, time)`
//! identifies an event. Nothing is ever rewritten: an unfollow is an event.
//!
//! # Invariants
//! * **Whole records.** Every append is one `write` of whole records, made while
//!   holding an exclusive `flock` on the file. Before writing, the appender
//!   checks that the file ends on a record boundary and cuts off a torn tail (a
//!   record cut short by a crash), so a torn record is never followed by a good
//!   one. Start-up repairs every file the same way ([`repair_dir`]).
//! * **Readers never see half a record.** They take a shared lock, and a reader
//!   that runs into an incomplete last record stops before it.
//! * **Check and append are atomic across processes.** [`Tail::append_with`]
//!   refreshes its view of the file and decides what to write while holding the
//!   exclusive lock, so the server and the synchronizer, which both append to
//!   some files, can never both add the same record.
//! * **Incremental.** A [`Tail`] remembers the offset it has read up to and only
//!   ever reads what was appended since: its cost grows with what changed, not
//!   with history. A file that shrank or was replaced (deleted and rebuilt by
//!   a resync) is read again from the start.
//! * **Staged before written.** A [`Tail`] can hold *staged* records: decided
//!   and folded into its state (so the next check sees them) but not yet
//!   written. The master writes them ([`Tail::flush_front`]) only once its
//!   slave has them, so nothing a reader can see vanishes in a failover.
//! * **Bounded reads of damaged files.** A valid record has a longest length
//!   ([`Format::max_record`]: 315 bytes for a post, a 20-digit user, a
//!   30-byte time and a 255-byte text; 54 for a line). Forward reads (the
//!   views, [`Follower`], [`read_from`]) go through a [`Scanner`] 64 KiB at a
//!   time and hold at most one valid record's worth between chunks; a longer
//!   record is logged once with its file and offset and skipped to its
//!   terminator, and the reader remembers where it is, so 50 MiB without a
//!   terminator cost one pass, not one per look (nor a quadratic re-read).
//!   [`last_posts`] looks back at most one valid record's length for the
//!   end of the last record, and stops at a record too long to be valid:
//!   the posts before it are not among the last ones shown. Records that fit
//!   are checked field by field ([`Post::parse`]: a sane time, a user id,
//!   a text valid per `model::validate_post`); a bad one is reported with
//!   its offset and skipped. [`read_from`] returns the file's own bytes (its
//!   callers count offsets in them), so it stops before a long record, and
//!   skips it only when it comes first and has ended.
//! * **One gate per directory.** Writers other than the server (the
//!   synchronizer) hold `writers.lock` shared while they write
//!   ([`try_enter_dir`]); a server rebuilding its directory holds it
//!   exclusively ([`close_dir`]), so nobody appends to a half-copied file.
//!
//! # When the disk fails, or a file is not what it should be
//! * **An append is whole or absent.** One that fails (disk full, an I/O
//!   error) is cut back to where the file ended, under the same lock, so
//!   neither part of a record nor some of several records stay; the view
//!   folds a record only once it is written. A write that touches several
//!   files is made whole by the caller: the server's journal finishes it
//!   ([`journal`], and `server::replication::mirror`), a synchronizer's push
//!   is sent again until it is acknowledged.
//! * **Data files are regular files we made.** Each is opened without
//!   following a link and without waiting on a FIFO, and refused unless it
//!   is a regular file, so a directory, a link (to `/dev/zero`, to a file
//!   elsewhere), a FIFO or a device in its place is never read, written or
//!   copied: it is [`Damaged`] (as is a file we may not open), an error that
//!   names the file. Reads are bounded by the length of a regular file.
//! * **A damaged file is its user's problem.** Start-up reports it and goes
//!   on ([`repair_dir`]); a client's write that needs it is refused, fan-out
//!   to a damaged timeline is skipped, and applying (replay, a slave, a push)
//!   skips it ([`store`]). What must get out of the way (a resync installing
//!   the master's copy, a damaged journal or `positions.txt`) is moved aside
//!   to `<name>.damaged` ([`set_aside`]), never deleted: a person decides.
//!   Records that do not parse inside a regular file are skipped where they
//!   are read.
//!
//! # Layout
//!
//! Start with [`store`]: it is where the operations of the protocol meet
//! these files.
//!
//! | file | what it is |
//! |---|---|
//! | `record` | record formats ([`Post`], [`FollowEvent`], [`Format`], [`split_records`]), their bounds and the [`Scanner`], and file names ([`FileKind`]); pure |
//! | `file` | files under `flock`: opening only regular files ([`open_read`], [`open_append`], [`Damaged`]), whole-or-absent appends, reads of whole records, torn-tail repair, [`last_posts`] read backwards, the directory gate ([`try_enter_dir`], [`close_dir`]), [`content_hash`], flushing |
//! | `tail` | incremental views: [`Tail`] and the states it folds ([`UserSet`], [`FollowLog`], [`AuthorClock`]); [`Follower`], a reader that follows a file |
//! | [`store`] | one directory as an idempotent state machine of write operations |
//! | [`journal`] | the write-ahead journal of a mirrored batch |
//! | [`ids`] | `client_ids.txt`, the client ids of the latest writes |
//! | [`watch`] | `notify` watches for appends (not opens and closes) |
//!
//! Everything of `record`, `file` and `tail` is re-exported here, so a caller
//! names `storage::Post` or `storage::read_from`, not the file it lives in.

mod file;
pub mod ids;
pub mod journal;
mod record;
pub mod store;
pub mod tail;
pub mod watch;

#[cfg(test)]
pub(crate) use file::faults;
pub use file::{
    Checked, Damaged, GATE_FILE, LastPosts, close_dir, content_hash, damaged_of, data_files,
    data_metadata, is_damaged, last_posts, offset_after, open_append, open_read, read_at_most,
    read_from, records_end, repair, repair_dir, replace_whole, set_aside, sync_dir, sync_files,
    try_enter_dir,
};
pub use record::{
    FileKind, FollowEvent, Format, Found, MAX_LINE_RECORD, MAX_POST_RECORD, Post, SANE_TIMES,
    Scanner, USERS_FILE, followers_file, following_file, posts_file, split_records, timeline_file,
    users_file,
};
pub use tail::{
    Appended, AuthorClock, Fold, FollowLog, Follower, Handles, READ_CHUNK, Tail, UserSet,
};
