//! The cluster key: 256 random bits shared by every process of one system,
//! kept in a file as 64 hex digits.

use rand::RngCore;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use subtle::ConstantTimeEq;

/// The gRPC metadata entry that carries the key on every peer call.
pub const HEADER: &str = "x-sns-cluster-key";

/// Length of the key in bytes (256 bits).
const KEY_BYTES: usize = 32;

/// A system's cluster key, in the hex form it travels in. Its `Debug` shows
/// nothing of it, so it cannot end up in a log by accident.
#[derive(Clone)]
pub struct ClusterKey {
    hex: String,
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

impl ClusterKey {
    /// The key as it travels: 64 lowercase hex digits.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// Whether `presented` (a header's bytes) is this key. The comparison
    /// takes the same time wherever the bytes differ, so timing a refusal
    /// tells nothing about how much of a guess was right. (The length is
    /// not secret: every key has 64 digits.)
    pub fn matches(&self, presented: &[u8]) -> bool {
        presented.len() == self.hex.len() && bool::from(presented.ct_eq(self.hex.as_bytes()))
    }

    /// Parses a key file's contents: 64 hex digits, optionally followed by
    /// white space (an editor's newline). The reason never quotes the
    /// contents: they may be most of a secret.
    pub fn parse(text: &[u8]) -> Result<ClusterKey, &'static str> {
        let trimmed = text.trim_ascii();
        if trimmed.is_empty() {
            return Err("it is empty");
        }
        if trimmed.len() != 2 * KEY_BYTES || !trimmed.iter().all(u8::is_ascii_hexdigit) {
            return Err("it does not hold 64 hex digits");
        }
        let hex = String::from_utf8_lossy(trimmed).to_ascii_lowercase();
        Ok(ClusterKey { hex })
    }

    /// A new random key.
    pub fn generate() -> ClusterKey {
        let mut bytes = [0u8; KEY_BYTES];
        rand::rng().fill_bytes(&mut bytes);
        ClusterKey {
            hex: bytes.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }

    /// Reads the key at `path`, creating it first if there is no file:
    /// SPEC §5's "the first process that needs it creates it". Creation is
    /// atomic (written whole to a private temporary file, then linked into
    /// place, which fails if another process got there first, whose key is
    /// then read), so processes started together agree on one key.
    pub fn load_or_create(path: &Path) -> Result<ClusterKey, String> {
        let shown = path.display();
        match std::fs::read(path) {
            Ok(bytes) => return Self::checked(path, &bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot read the cluster key file {shown}: {e}")),
        }
        let key = ClusterKey::generate();
        match create(path, &key) {
            Ok(true) => {
                log::info!("created the cluster key file {shown}");
                Ok(key)
            }
            Ok(false) => match std::fs::read(path) {
                Ok(bytes) => Self::checked(path, &bytes),
                Err(e) => Err(format!("cannot read the cluster key file {shown}: {e}")),
            },
            Err(e) => Err(format!("cannot create the cluster key file {shown}: {e}")),
        }
    }

    fn checked(path: &Path, bytes: &[u8]) -> Result<ClusterKey, String> {
        let key = ClusterKey::parse(bytes).map_err(|why| {
            format!(
                "the cluster key file {} is malformed: {why}",
                path.display()
            )
        })?;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            log::warn!(
                "the cluster key file {} can be read by others than its owner (chmod 600 it)",
                path.display()
            );
        }
        Ok(key)
    }
}

/// Writes `key` to `path` unless a file is there already: `Ok(false)` when
/// another process made it first.
fn create(path: &Path, key: &ClusterKey) -> std::io::Result<bool> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.{}.{:x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(format!("{}\n", key.hex).as_bytes())?;
        f.sync_all()?;
        match std::fs::hard_link(&tmp, path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        }
    })();
    let _ = std::fs::remove_file(&tmp);
    let made = written?;
    if made && let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(made)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_64_hex_digits() {
        let good = "ab".repeat(32);
        assert!(ClusterKey::parse(good.as_bytes()).is_ok());
        assert!(ClusterKey::parse(format!("{good}\n").as_bytes()).is_ok());
        let upper = ClusterKey::parse(good.to_uppercase().as_bytes()).unwrap();
        assert!(upper.matches(good.as_bytes()), "hex digits are case-free");
        assert_eq!(ClusterKey::parse(b"").unwrap_err(), "it is empty");
        assert_eq!(ClusterKey::parse(b" \n").unwrap_err(), "it is empty");
        for bad in [
            "ab".repeat(31),
            "ab".repeat(33),
            format!("{}zz", "ab".repeat(31)),
        ] {
            assert!(ClusterKey::parse(bad.as_bytes()).is_err(), "{bad}");
        }
        assert!(ClusterKey::parse(&[0xff; 64]).is_err());
    }

    #[test]
    fn matches_only_itself() {
        let k = ClusterKey::generate();
        assert!(k.matches(k.hex().as_bytes()));
        assert!(!k.matches(ClusterKey::generate().hex().as_bytes()));
        assert!(!k.matches(&k.hex().as_bytes()[..63]));
        assert!(!k.matches(b""));
        assert_eq!(format!("{k:?}"), "ClusterKey(..)");
    }

    #[test]
    fn is_created_once_private_and_then_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("cluster.key");
        let a = ClusterKey::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = ClusterKey::load_or_create(&path).unwrap();
        assert_eq!(a.hex(), b.hex());
        // No temporary file is left behind.
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
    }

    #[test]
    fn processes_started_together_agree_on_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.key");
        let keys: Vec<String> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|_| s.spawn(|| ClusterKey::load_or_create(&path).unwrap().hex().to_string()))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(keys.iter().all(|k| k == &keys[0]));
    }

    #[test]
    fn a_bad_file_is_refused_without_quoting_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.key");
        std::fs::write(&path, "secret-ish but wrong").unwrap();
        let e = ClusterKey::load_or_create(&path).unwrap_err();
        assert!(e.contains("malformed"), "{e}");
        assert!(!e.contains("secret"), "{e}");
        std::fs::write(&path, "").unwrap();
        assert!(
            ClusterKey::load_or_create(&path)
                .unwrap_err()
                .contains("empty")
        );
        let unreadable = dir.path().join("adir");
        std::fs::create_dir(&unreadable).unwrap();
        assert!(
            ClusterKey::load_or_create(&unreadable)
                .unwrap_err()
                .contains("cannot read")
        );
    }
}
