//! Reading what the servers wrote: whole files, posts, records, and
//! snapshots of directories to prove that something wrote nothing.

use super::process::wait_for;
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Reads a whole file as text ("" if missing).
pub fn read(path: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    s
}

/// The posts `(author, text)` in a timeline or posts file, in file order.
pub fn posts_in(path: &Path) -> Vec<(u64, String)> {
    read(path)
        .split("\n\n")
        .filter(|r| !r.is_empty())
        .filter_map(|r| {
            let mut lines = r.lines();
            let _t = lines.next()?.strip_prefix("T ")?;
            let u = lines.next()?.strip_prefix("U ")?.parse().ok()?;
            let w = lines.next()?.strip_prefix("W ")?.to_string();
            Some((u, w))
        })
        .collect()
}

/// The texts of the posts in a timeline or posts file, in file order.
pub fn post_texts(path: &Path) -> Vec<String> {
    posts_in(path).into_iter().map(|(_, t)| t).collect()
}

/// Every record of every data file in a directory, sorted, per file name.
pub fn records(dir: &Path) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).expect("server dir").flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        // Data files only: the journal is each server's own.
        if tinysns::storage::FileKind::parse(&e.path()).is_none() {
            continue;
        }
        let text = read(&e.path());
        let sep = if name.ends_with("_timeline.txt") || name.ends_with("_posts.txt") {
            "\n\n"
        } else {
            "\n"
        };
        let mut recs: Vec<String> = text
            .split(sep)
            .filter(|r| !r.is_empty())
            .map(String::from)
            .collect();
        recs.sort();
        out.insert(name, recs);
    }
    out
}

pub fn assert_no_duplicates(dir: &Path) {
    for (name, recs) in records(dir) {
        let mut d = recs.clone();
        d.dedup();
        assert_eq!(
            d.len(),
            recs.len(),
            "duplicate records in {}/{name}",
            dir.display()
        );
    }
}

/// Files by path relative to a root, with their bytes.
pub type Snapshot = BTreeMap<PathBuf, Vec<u8>>;

/// Every file under each of `dirs` (recursively), by its path relative to
/// `root`, with its bytes. A directory or file that does not exist (any
/// more) adds nothing; any other error is a failure. Links are not followed
/// and FIFOs or devices not opened: each is recorded as what it is (a test
/// may plant one where a data file should be).
pub fn snapshot(root: &Path, dirs: &[PathBuf]) -> Snapshot {
    fn walk(root: &Path, dir: &Path, out: &mut Snapshot) {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => panic!("cannot list {}: {e}", dir.display()),
        };
        for entry in entries {
            let entry = entry.expect("directory entry");
            let path = entry.path();
            let kind = entry.file_type().expect("file type");
            if kind.is_dir() {
                walk(root, &path, out);
                continue;
            }
            if !kind.is_file() {
                let what = match std::fs::read_link(&path) {
                    Ok(to) => format!("a link to {}", to.display()),
                    Err(_) => "not a regular file".to_string(),
                };
                let rel = path.strip_prefix(root).expect("under root").to_path_buf();
                out.insert(rel, what.into_bytes());
                continue;
            }
            match std::fs::read(&path) {
                Ok(bytes) => {
                    let rel = path.strip_prefix(root).expect("under root").to_path_buf();
                    out.insert(rel, bytes);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => panic!("cannot read {}: {e}", path.display()),
            }
        }
    }
    let mut out = Snapshot::new();
    for dir in dirs {
        walk(root, dir, &mut out);
    }
    out
}

/// Panics, naming each file that was removed, changed or created (with its
/// contents), unless `after` holds exactly what `before` did.
pub fn assert_same_files(before: &Snapshot, after: &Snapshot, what: &str) {
    if after == before {
        return;
    }
    let mut diffs = Vec::new();
    for (p, b) in before {
        match after.get(p) {
            None => diffs.push(format!("{} was removed", p.display())),
            Some(a) if a != b => diffs.push(format!(
                "{} changed:\n--- before\n{}\n--- after\n{}",
                p.display(),
                String::from_utf8_lossy(b),
                String::from_utf8_lossy(a)
            )),
            _ => {}
        }
    }
    for (p, a) in after {
        if !before.contains_key(p) {
            diffs.push(format!(
                "{} was created:\n{}",
                p.display(),
                String::from_utf8_lossy(a)
            ));
        }
    }
    panic!("{what} changed files:\n{}", diffs.join("\n"));
}

/// Each text of `want` occurs exactly once in `got`, and nothing in `got`
/// occurs twice.
pub fn assert_each_once(got: &[String], want: &[String], what: &str) {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for g in got {
        *counts.entry(g.as_str()).or_default() += 1;
    }
    let dups: Vec<(&str, usize)> = counts
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(t, n)| (*t, *n))
        .collect();
    assert!(dups.is_empty(), "{what}: shown more than once: {dups:?}");
    let missing: Vec<&String> = want
        .iter()
        .filter(|w| !counts.contains_key(w.as_str()))
        .collect();
    assert!(missing.is_empty(), "{what}: missing {missing:?}");
}

/// Polls until every text of `want` by `author` is in the post file, then
/// asserts that each is there exactly once. On the deadline, panics naming
/// the missing texts.
pub fn wait_file_posts(path: &Path, author: u64, want: &[String]) {
    let texts = || -> Vec<String> {
        posts_in(path)
            .into_iter()
            .filter(|(u, _)| *u == author)
            .map(|(_, t)| t)
            .collect()
    };
    wait_for(
        &format!("the posts of {author} in {}", path.display()),
        || {
            let got = texts();
            let missing: Vec<&String> = want.iter().filter(|w| !got.contains(w)).collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!("missing {missing:?} (has {} of them)", got.len()))
            }
        },
    );
    assert_each_once(&texts(), want, &path.display().to_string());
}
