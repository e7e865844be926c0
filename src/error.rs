//! The crate's one error type, grouped by how the caller should react.
//!
//! Every part of the system returns [`Error`]; it becomes a `tonic::Status`
//! in exactly one place ([`From<Error> for Status`]) when it leaves a process,
//! and a `Status` that arrives from another process becomes an [`Error`]
//! again in one place ([`From<Status> for Error`]), so a caller decides what
//! to do from the variant, never from a status code or a message.
//!
//! | group | variants | the caller... | gRPC code |
//! |---|---|---|---|
//! | the request is wrong | [`Invalid`](Error::Invalid), [`NotFound`](Error::NotFound), [`AlreadyExists`](Error::AlreadyExists), [`Precondition`](Error::Precondition) | tells the user; a retry gets the same answer | `INVALID_ARGUMENT`, `NOT_FOUND`, `ALREADY_EXISTS`, `FAILED_PRECONDITION` |
//! | who are you | [`Unauthenticated`](Error::Unauthenticated) | logs in again | `UNAUTHENTICATED` |
//! | not here, not now | [`Unavailable`](Error::Unavailable) | asks the coordinator and retries, with the same client id | `UNAVAILABLE` (and `DEADLINE_EXCEEDED`, transport failures on the way back) |
//! | the replica lost track | [`OutOfSync`](Error::OutOfSync) | resyncs | `ABORTED` |
//! | too much | [`Exhausted`](Error::Exhausted) | backs off | `RESOURCE_EXHAUSTED` |
//! | our fault | [`Storage`](Error::Storage), [`Internal`](Error::Internal) | logs it; the operator looks | `INTERNAL` |
//!
//! The user's own outcomes in Login, Follow and UnFollow (already followed,
//! no such user, ...) are not errors: they are OK replies in the course's
//! convention ([`crate::course`], SPEC §6).
//!
//! A master fenced by a newer epoch hears [`Precondition`](Error::Precondition)
//! from its slave and steps down: for the master the request was wrong, not
//! the network.

use std::fmt;
use tonic::{Code, Status};

/// What went wrong, grouped by how the caller reacts (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Malformed input: not a user id, a bad post, a bad flag or file name.
    Invalid(String),
    /// Something named does not exist (a user).
    NotFound(String),
    /// It is already so (already following, already logged in).
    AlreadyExists(String),
    /// Valid, but the state forbids it: not following, the user lives in
    /// another cluster, a stale epoch, this server is the master.
    Precondition(String),
    /// No session, or a session that ended.
    Unauthenticated(String),
    /// Not the master, no lease, shutting down, a peer that does not answer:
    /// ask the coordinator and try again.
    Unavailable(String),
    /// A slave that is not in step with its master's operations: resync.
    OutOfSync(String),
    /// A bound was reached.
    Exhausted(String),
    /// A file could not be read or written.
    Storage(String),
    /// A bug or an impossible state.
    Internal(String),
}

/// Most bytes of someone's input that an error message quotes (SPEC §5).
pub const QUOTE_BYTES: usize = 64;

/// `input` as an error message quotes it: escaped, in quotes, at most
/// [`QUOTE_BYTES`] of it (cut at a character boundary), with its length
/// when cut. Every message that repeats input goes through here, so that a
/// megabyte of input is never echoed back or logged.
pub fn quote(input: &str) -> String {
    match cut(input, QUOTE_BYTES) {
        None => format!("{input:?}"),
        Some(head) => format!("{head:?}... ({} bytes)", input.len()),
    }
}

/// The first `max` bytes of `s` at most, cut at a character boundary, when
/// `s` is longer.
fn cut(s: &str, max: usize) -> Option<&str> {
    if s.len() <= max {
        return None;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Some(&s[..end])
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether the caller should ask the coordinator and try again.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::Unavailable(_))
    }

    /// The message, for a person.
    pub fn message(&self) -> &str {
        match self {
            Error::Invalid(m)
            | Error::NotFound(m)
            | Error::AlreadyExists(m)
            | Error::Precondition(m)
            | Error::Unauthenticated(m)
            | Error::Unavailable(m)
            | Error::OutOfSync(m)
            | Error::Exhausted(m)
            | Error::Storage(m)
            | Error::Internal(m) => m,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Storage(format!("storage error: {e}"))
    }
}

impl From<tonic::transport::Error> for Error {
    fn from(e: tonic::transport::Error) -> Self {
        Error::Unavailable(format!("transport: {e}"))
    }
}

impl From<tokio::task::JoinError> for Error {
    fn from(e: tokio::task::JoinError) -> Self {
        Error::Internal(format!("a task failed: {e}"))
    }
}

/// The one place an [`Error`] becomes a status on the wire.
impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::Invalid(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::Precondition(_) => Code::FailedPrecondition,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::Unavailable(_) => Code::Unavailable,
            Error::OutOfSync(_) => Code::Aborted,
            Error::Exhausted(_) => Code::ResourceExhausted,
            Error::Storage(m) | Error::Internal(m) => {
                log::error!("{m}");
                Code::Internal
            }
        };
        Status::new(code, e.message())
    }
}

/// The one place a status from another process becomes an [`Error`]. A
/// status that tonic made from a local transport failure carries its source
/// error, whatever its code: the other side did not answer.
/// Most of another process's error message that is kept: ours are a
/// sentence, and what a peer or stranger sends is logged and shown.
const REMOTE_MESSAGE_BYTES: usize = 1024;

/// `m`, cut to [`REMOTE_MESSAGE_BYTES`] at a character boundary.
fn bounded(m: &str) -> String {
    match cut(m, REMOTE_MESSAGE_BYTES) {
        None => m.to_string(),
        Some(head) => format!("{head}... ({} bytes)", m.len()),
    }
}

impl From<Status> for Error {
    fn from(s: Status) -> Self {
        let m = bounded(s.message());
        if std::error::Error::source(&s).is_some() {
            return Error::Unavailable(m);
        }
        match s.code() {
            Code::InvalidArgument => Error::Invalid(m),
            Code::NotFound => Error::NotFound(m),
            Code::AlreadyExists => Error::AlreadyExists(m),
            Code::FailedPrecondition => Error::Precondition(m),
            Code::Unauthenticated | Code::PermissionDenied => Error::Unauthenticated(m),
            // A CANCELLED that a server sent is its answer; one from a
            // broken connection carries its cause (above).
            Code::Unavailable | Code::DeadlineExceeded => Error::Unavailable(m),
            // The channel's readiness error is turned into a bare UNKNOWN.
            Code::Unknown if m.starts_with("Service was not ready") => Error::Unavailable(m),
            Code::Aborted => Error::OutOfSync(m),
            Code::ResourceExhausted => Error::Exhausted(m),
            _ => Error::Internal(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_remote_message_is_cut() {
        let long = "é".repeat(4000);
        let e = Error::from(Status::internal(long));
        assert!(
            e.message().len() < REMOTE_MESSAGE_BYTES + 32,
            "{}",
            e.message().len()
        );
        assert!(e.message().ends_with("(8000 bytes)"));
        let short = Error::from(Status::internal("short"));
        assert_eq!(short.message(), "short");
    }

    #[test]
    fn every_variant_survives_the_wire() {
        let all = [
            Error::Invalid("a".into()),
            Error::NotFound("b".into()),
            Error::AlreadyExists("c".into()),
            Error::Precondition("d".into()),
            Error::Unauthenticated("e".into()),
            Error::Unavailable("f".into()),
            Error::OutOfSync("g".into()),
            Error::Exhausted("h".into()),
            Error::Internal("i".into()),
        ];
        for e in all {
            let back = Error::from(Status::from(e.clone()));
            assert_eq!(back, e);
        }
        // Storage is INTERNAL on the wire: the caller cannot act on the
        // difference.
        let s = Status::from(Error::Storage("disk".into()));
        assert_eq!(s.code(), Code::Internal);
    }

    #[test]
    fn quotes_hold_at_most_64_bytes_of_the_input() {
        assert_eq!(quote("abc"), "\"abc\"");
        assert_eq!(quote("4\n"), "\"4\\n\"");
        let long = "x".repeat(1 << 20);
        let q = quote(&long);
        assert_eq!(q, format!("{:?}... (1048576 bytes)", "x".repeat(64)));
        // Cut at a character boundary: 21 three-byte characters fit.
        let q = quote(&"€".repeat(100));
        assert!(q.starts_with(&format!("\"{}\"", "€".repeat(21))), "{q}");
    }

    #[test]
    fn timeouts_and_transport_failures_mean_try_elsewhere() {
        assert!(Error::from(Status::deadline_exceeded("slow")).is_unavailable());
        assert!(Error::from(Status::unknown("Service was not ready: x")).is_unavailable());
        assert!(!Error::from(Status::unknown("something else")).is_unavailable());
    }
}
