//! TLS: loading an operator's PEM files, and making a CA and a certificate
//! for `./startup.sh --tls` (`snsctl tls init`).

use std::path::{Path, PathBuf};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// Largest PEM file read: a certificate chain is a few KB; anything near
/// this is not one.
const MAX_PEM_BYTES: u64 = 1 << 20;

/// A process's TLS settings: what it presents as a server and the CA it
/// checks the servers it calls against.
#[derive(Clone, Debug)]
pub struct Tls {
    pub server: ServerTlsConfig,
    pub client: ClientTlsConfig,
}

fn read_pem(what: &str, path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let shown = path.display();
    let f =
        std::fs::File::open(path).map_err(|e| format!("cannot read the {what} {shown}: {e}"))?;
    let mut bytes = Vec::new();
    f.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read the {what} {shown}: {e}"))?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(format!("the {what} {shown} is larger than 1 MiB"));
    }
    if !bytes.starts_with(b"-----BEGIN") && !String::from_utf8_lossy(&bytes).contains("-----BEGIN ")
    {
        return Err(format!("the {what} {shown} is not a PEM file"));
    }
    Ok(bytes)
}

/// The client half: verify servers against the CA at `ca`.
pub fn client_config(ca: &Path) -> Result<ClientTlsConfig, String> {
    let ca = read_pem("TLS CA certificate", ca)?;
    Ok(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))
}

/// A daemon's TLS: it serves with `cert`/`key` and verifies the servers it
/// calls against `ca`. Checked here, so that a bad file stops the process
/// at start-up with one line, not at its first call.
pub fn load(cert: &Path, key: &Path, ca: &Path) -> Result<Tls, String> {
    let identity = Identity::from_pem(
        read_pem("TLS certificate", cert)?,
        read_pem("TLS private key", key)?,
    );
    let server = ServerTlsConfig::new().identity(identity);
    tonic::transport::Server::builder()
        .tls_config(server.clone())
        .map_err(|e| {
            format!(
                "the TLS certificate {} and key {} do not make a usable pair: {e}",
                cert.display(),
                key.display()
            )
        })?;
    let client = client_config(ca)?;
    tonic::transport::Endpoint::from_static("https://localhost")
        .tls_config(client.clone())
        .map_err(|e| format!("the TLS CA certificate {} is unusable: {e}", ca.display()))?;
    Ok(Tls { server, client })
}

/// The files [`make`] writes.
pub struct Made {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Makes a CA (`ca.pem`, `ca.key`) and one certificate signed by it for
/// the given host names and addresses (`node.pem`, `node.key`) in `dir`.
/// Private keys are written with mode 0600. One certificate serves every
/// process of a machine; each machine of a system gets its own, signed by
/// the same CA.
pub fn make(dir: &Path, hosts: &[String]) -> Result<Made, String> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let fail = |what: &str, e: rcgen::Error| format!("cannot make the {what}: {e}");
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;

    let ca_key = KeyPair::generate().map_err(|e| fail("CA key", e))?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(|e| fail("CA", e))?;
    ca.distinguished_name
        .push(DnType::CommonName, "Tiny SNS CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).map_err(|e| fail("CA", e))?;

    let node_key = KeyPair::generate().map_err(|e| fail("key", e))?;
    let mut node = CertificateParams::new(hosts.to_vec()).map_err(|e| fail("certificate", e))?;
    node.distinguished_name
        .push(DnType::CommonName, "Tiny SNS node");
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = Issuer::new(ca, ca_key);
    let node_cert = node
        .signed_by(&node_key, &issuer)
        .map_err(|e| fail("certificate", e))?;

    let made = Made {
        ca: dir.join("ca.pem"),
        cert: dir.join("node.pem"),
        key: dir.join("node.key"),
    };
    write(&made.ca, &ca_cert.pem(), 0o644)?;
    write(&dir.join("ca.key"), &ca_key_pem, 0o600)?;
    write(&made.cert, &node_cert.pem(), 0o644)?;
    write(&made.key, &node_key.serialize_pem(), 0o600)?;
    Ok(made)
}

fn write(path: &Path, text: &str, mode: u32) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    f.write_all(text.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_files_load_and_bad_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let m = make(dir.path(), &hosts).unwrap();
        load(&m.cert, &m.key, &m.ca).unwrap();
        let e = load(&m.cert, &m.ca, &m.ca).unwrap_err();
        assert!(e.contains("usable pair"), "{e}");
        let missing = dir.path().join("nope.pem");
        let e = load(&m.cert, &m.key, &missing).unwrap_err();
        assert!(e.contains("nope.pem"), "{e}");
        std::fs::write(&missing, "junk").unwrap();
        assert!(
            load(&m.cert, &m.key, &missing)
                .unwrap_err()
                .contains("not a PEM")
        );
    }
}
