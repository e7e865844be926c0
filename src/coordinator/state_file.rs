//! `<state_dir>/epochs.txt`: what the coordinator must remember across its
//! own restarts, one `<cluster> <epoch> <master_id> <in_service_id>` line per
//! cluster (0 = none; see "Epochs and the state file" in the module doc of
//! [`crate::coordinator`]).
//!
//! The file's `0` is turned into `None` where a line is read and back where
//! it is written; nothing else in the coordinator sees it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use crate::model::ServerId;

/// Name of the state file inside the state directory (named for what it first
/// held; it now holds epoch, master and in-service slave per cluster).
pub const EPOCH_FILE: &str = "epochs.txt";

/// What is persisted per cluster (one line of the state file).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClusterState {
    /// The epoch (0 = never had a master: epochs are counted from there).
    pub epoch: u64,
    /// The master of `epoch`; `None` if there is none yet, or it is unknown
    /// (a file in the old two-field form).
    pub master: Option<ServerId>,
    /// The in-service slave, if any.
    pub in_service: Option<ServerId>,
}

/// The cluster states of every cluster, by cluster id.
pub type States = BTreeMap<u32, ClusterState>;

/// A snapshot of the cluster states still to be written to disk.
#[derive(Debug, Clone)]
pub struct StateSnapshot {
    dir: PathBuf,
    states: States,
}

impl StateSnapshot {
    pub(super) fn new(dir: PathBuf, states: States) -> StateSnapshot {
        StateSnapshot { dir, states }
    }

    /// Writes the states durably: temp file, fsync, rename, fsync of the
    /// directory (so the rename itself survives a crash, and a crash or a
    /// shutdown in the middle leaves the previous file whole). Blocking.
    pub fn write(&self) -> io::Result<()> {
        let mut text = String::new();
        for (c, st) in &self.states {
            let _ = writeln!(
                text,
                "{c} {} {} {}",
                st.epoch,
                to_field(st.master),
                to_field(st.in_service)
            );
        }
        let path = self.dir.join(EPOCH_FILE);
        let tmp = self.dir.join(format!("{EPOCH_FILE}.tmp"));
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(&self.dir)?.sync_all()
    }
}

/// The file's spelling of "no server".
fn to_field(id: Option<ServerId>) -> u32 {
    id.map_or(0, |ServerId(id)| id)
}

/// Reads `<dir>/epochs.txt`: `<cluster> <epoch> <master> <in_service>` lines,
/// or the old `<cluster> <epoch>` form (master and in-service slave unknown).
/// A missing file means every cluster is new; anything unreadable or
/// malformed is an error ([`io::ErrorKind::InvalidData`] for a bad line),
/// because resetting epochs would let a deposed master look current again,
/// and forgetting a master could let a slave that lacks acknowledged writes
/// take over.
pub fn load(dir: &Path) -> io::Result<States> {
    let path = dir.join(EPOCH_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("cannot read {}: {e}", path.display()),
            ));
        }
    };
    let mut states = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |why: &str| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}:{}: {why} in {line:?} (expected `<cluster> <epoch> <master> \
                     <in_service>`); refusing to start rather than reset the epochs: fix or \
                     remove the file",
                    path.display(),
                    n + 1
                ),
            )
        };
        let (cluster, state) = parse_line(line).map_err(bad)?;
        if states.insert(cluster, state).is_some() {
            return Err(bad("duplicate cluster"));
        }
    }
    Ok(states)
}

/// One non-empty line: its cluster and state, or why it is malformed.
fn parse_line(line: &str) -> Result<(u32, ClusterState), &'static str> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (c, e, m, s) = match fields[..] {
        [c, e] => (c, e, "0", "0"),
        [c, e, m, s] => (c, e, m, s),
        _ => return Err("wrong number of fields"),
    };
    let cluster: u32 = c.parse().map_err(|_| "bad cluster id")?;
    let epoch: u64 = e.parse().map_err(|_| "bad epoch")?;
    let master = m
        .parse()
        .map(ServerId::from_wire)
        .map_err(|_| "bad master id")?;
    let in_service = s
        .parse()
        .map(ServerId::from_wire)
        .map_err(|_| "bad in-service id")?;
    if cluster == 0 {
        return Err("cluster 0");
    }
    if master.is_some() && epoch == 0 {
        return Err("a master at epoch 0");
    }
    if in_service.is_some() && (master.is_none() || in_service == master) {
        return Err("an in-service slave without a master, or that is the master");
    }
    Ok((
        cluster,
        ClusterState {
            epoch,
            master,
            in_service,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(epoch: u64, master: u32, in_service: u32) -> ClusterState {
        ClusterState {
            epoch,
            master: ServerId::from_wire(master),
            in_service: ServerId::from_wire(in_service),
        }
    }

    #[test]
    fn state_file_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(load(dir.path()).expect("missing").is_empty());
        for bad in [
            "1\n",
            "1 2 3\n",
            "1 2 3 4 5\n",
            "x 1\n",
            "1 -1\n",
            "0 1\n",
            "1 1\n1 2\n",
            "1 2 x 0\n",
            "1 2 1 -1\n",
            "1 0 1 0\n",
            "1 2 0 3\n",
            "1 2 3 3\n",
        ] {
            std::fs::write(dir.path().join(EPOCH_FILE), bad).expect("write");
            let err = load(dir.path()).expect_err(bad);
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{bad:?}");
        }
        std::fs::write(dir.path().join(EPOCH_FILE), "\n1 3\n\n2 5 1 2\n").expect("write");
        let states = load(dir.path()).expect("ok");
        assert_eq!((states[&1], states[&2]), (state(3, 0, 0), state(5, 1, 2)));
    }

    #[test]
    fn a_written_file_reads_back_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let states: States = [
            (1, state(4, 2, 1)),
            (2, state(0, 0, 0)),
            (3, state(7, 3, 0)),
        ]
        .into_iter()
        .collect();
        StateSnapshot::new(dir.path().to_path_buf(), states.clone())
            .write()
            .expect("write");
        let text = std::fs::read_to_string(dir.path().join(EPOCH_FILE)).expect("file");
        assert_eq!(text, "1 4 2 1\n2 0 0 0\n3 7 3 0\n");
        assert_eq!(load(dir.path()).expect("load"), states);
        assert!(!dir.path().join(format!("{EPOCH_FILE}.tmp")).exists());
    }
}
