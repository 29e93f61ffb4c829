//! The cluster's certificate authority: `pce certs init` and `pce certs issue`.
//!
//! One CA per supercluster is the root of trust for every inter-region hop. Node
//! certificates name the node (DNS SAN, also the TLS server name peers ask for)
//! and its region (organizational unit), and are valid for both server and client
//! authentication because every node is both.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// Why certificate material could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Key or certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The CA files are missing; `certs init` must run first.
    #[error("no cluster CA in {0}: run `pce certs init` first")]
    NoCa(PathBuf),
    /// A CA already exists; refusing to replace the root of trust by accident.
    #[error("a cluster CA already exists in {0}; refusing to overwrite it")]
    CaExists(PathBuf),
    /// The node name cannot be a DNS name (it is the TLS server name).
    #[error(
        "node name {0:?} must be 1-63 characters of [a-z0-9-], not starting or ending with '-'"
    )]
    BadName(String),
}

/// File names inside a certificate directory.
pub const CA_CERT: &str = "ca.pem";
/// The CA's private key (mode 0600).
pub const CA_KEY: &str = "ca.key";

/// Is `name` usable as a node name (a DNS label)?
pub fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), PkiError> {
    let io = |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    f.write_all(contents.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    // `mode` applies only on creation; enforce it on an existing file too.
    fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).map_err(io)
}

/// Creates a new cluster CA in `dir` (`ca.pem`, and `ca.key` with mode 0600).
pub fn init_ca(dir: &Path, cluster_name: &str) -> Result<PathBuf, PkiError> {
    fs::create_dir_all(dir).map_err(|source| PkiError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let cert_path = dir.join(CA_CERT);
    if cert_path.exists() {
        return Err(PkiError::CaExists(dir.to_path_buf()));
    }
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        format!("{cluster_name} supercluster CA"),
    );
    dn.push(DnType::OrganizationName, "Supercluster");
    params.distinguished_name = dn;
    params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    let cert = params.self_signed(&key)?;
    write_file(&dir.join(CA_KEY), &key.serialize_pem(), 0o600)?;
    write_file(&cert_path, &cert.pem(), 0o644)?;
    Ok(cert_path)
}

/// The files of one issued certificate.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// The private key (PEM, mode 0600).
    pub key: PathBuf,
}

/// Issues a node certificate signed by the CA in `dir`, written as `NAME.pem` and
/// `NAME.key` (mode 0600) in the same directory.
pub fn issue(dir: &Path, name: &str, region: &str, ips: &[IpAddr]) -> Result<Issued, PkiError> {
    if !valid_node_name(name) {
        return Err(PkiError::BadName(name.to_string()));
    }
    let ca_cert_path = dir.join(CA_CERT);
    let ca_key_path = dir.join(CA_KEY);
    if !ca_cert_path.exists() || !ca_key_path.exists() {
        return Err(PkiError::NoCa(dir.to_path_buf()));
    }
    let read = |p: &Path| {
        fs::read_to_string(p).map_err(|source| PkiError::Io {
            path: p.to_path_buf(),
            source,
        })
    };
    let ca_key = KeyPair::from_pem(&read(&ca_key_path)?)?;
    let issuer = Issuer::from_ca_cert_pem(&read(&ca_cert_path)?, ca_key)?;

    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![name.to_string(), "localhost".to_string()])?;
    for ip in ips {
        params.subject_alt_names.push(SanType::IpAddress(*ip));
    }
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn.push(DnType::OrganizationalUnitName, region);
    dn.push(DnType::OrganizationName, "Supercluster");
    params.distinguished_name = dn;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_after = rcgen::date_time_ymd(2035, 1, 1);
    let cert = params.signed_by(&key, &issuer)?;
    let issued = Issued {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
    };
    write_file(&issued.key, &key.serialize_pem(), 0o600)?;
    write_file(&issued.cert, &cert.pem(), 0o644)?;
    Ok(issued)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn keys_are_private_and_the_ca_is_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path(), "t").unwrap();
        let issued = issue(
            dir.path(),
            "us-east-1",
            "us-east",
            &["127.0.0.1".parse().unwrap()],
        )
        .unwrap();
        for key in [dir.path().join(CA_KEY), issued.key.clone()] {
            assert_eq!(
                fs::metadata(&key).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        assert!(matches!(
            init_ca(dir.path(), "t"),
            Err(PkiError::CaExists(_))
        ));
        assert!(matches!(
            issue(dir.path(), "Bad_Name", "r", &[]),
            Err(PkiError::BadName(_))
        ));
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            issue(empty.path(), "n1", "r", &[]),
            Err(PkiError::NoCa(_))
        ));
        crate::network::TlsMaterial::load(&dir.path().join(CA_CERT), &issued.cert, &issued.key)
            .unwrap();
    }
}
