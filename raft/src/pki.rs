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
    /// A certificate signing request that cannot be parsed or verified.
    #[error("the certificate signing request is invalid: {0}")]
    BadCsr(String),
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

/// Creates a new cluster CA in `dir` (`ca.pem`, and `ca.key` with mode 0600), and
/// the VEN CA beside it (see [`init_ven_ca`]).
pub fn init_ca(dir: &Path, cluster_name: &str) -> Result<PathBuf, PkiError> {
    let path = make_ca(
        dir,
        CA_CERT,
        CA_KEY,
        &format!("{cluster_name} supercluster CA"),
    )?;
    init_ven_ca(dir, cluster_name)?;
    Ok(path)
}

/// Creates the VEN CA in `dir` (`ven-ca.pem`, `ven-ca.key` mode 0600) unless it
/// exists. It signs VEN identities only and is separate from the cluster CA, so a
/// node (which must hold its key to sign at pairing) holds no key that could mint
/// a node certificate, and a VEN certificate is refused by the node-to-node
/// services, which trust the cluster CA only.
pub fn init_ven_ca(dir: &Path, cluster_name: &str) -> Result<PathBuf, PkiError> {
    if dir.join(VEN_CA_CERT).exists() {
        return Ok(dir.join(VEN_CA_CERT));
    }
    make_ca(
        dir,
        VEN_CA_CERT,
        VEN_CA_KEY,
        &format!("{cluster_name} VEN CA"),
    )
}

fn make_ca(
    dir: &Path,
    cert_name: &str,
    key_name: &str,
    common_name: &str,
) -> Result<PathBuf, PkiError> {
    crate::private::make_private(dir).map_err(|source| PkiError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let cert_path = dir.join(cert_name);
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
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "Supercluster");
    params.distinguished_name = dn;
    params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    let cert = params.self_signed(&key)?;
    write_file(&dir.join(key_name), &key.serialize_pem(), 0o600)?;
    write_file(&cert_path, &cert.pem(), 0o644)?;
    Ok(cert_path)
}

/// The VEN CA certificate.
pub const VEN_CA_CERT: &str = "ven-ca.pem";
/// The VEN CA key (mode 0600), held by every node to sign VEN identities.
pub const VEN_CA_KEY: &str = "ven-ca.key";

/// Signs VEN identities at pairing: the VEN sends a CSR for its own key, the node
/// returns a client certificate whose common name is the workload id.
pub struct VenSigner {
    issuer: Issuer<'static, KeyPair>,
    /// The VEN CA certificate (PEM), which the VEN service trusts for clients.
    pub ca_pem: String,
}

impl VenSigner {
    /// Loads the VEN CA from its certificate and key files.
    pub fn load(cert: &Path, key: &Path) -> Result<VenSigner, PkiError> {
        let read = |p: &Path| {
            fs::read_to_string(p).map_err(|source| PkiError::Io {
                path: p.to_path_buf(),
                source,
            })
        };
        let ca_pem = read(cert)?;
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, KeyPair::from_pem(&read(key)?)?)?;
        Ok(VenSigner { issuer, ca_pem })
    }

    /// Signs `csr_pem` as the identity of `workload_id` (client auth only).
    pub fn sign(&self, csr_pem: &str, workload_id: &str) -> Result<String, PkiError> {
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::BadCsr(e.to_string()))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, workload_id);
        dn.push(DnType::OrganizationalUnitName, "ven");
        dn.push(DnType::OrganizationName, "Supercluster");
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_after = rcgen::date_time_ymd(2035, 1, 1);
        csr.params = params;
        Ok(csr.signed_by(&self.issuer)?.pem())
    }
}

/// The common name of a DER certificate (a VEN's workload id), if it has one.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

/// The common name and DER bytes of the first certificate in a PEM text:
/// what names a cluster in a drill report (its CA's name, and a fingerprint
/// of the CA that no other cluster shares).
pub fn pem_identity(pem: &str) -> Option<(String, Vec<u8>)> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    let name = common_name(&block.contents)?;
    Some((name, block.contents))
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

    use rustls::pki_types::pem::PemObject;

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

    #[test]
    fn a_ven_csr_is_signed_as_its_workload_and_garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path(), "t").unwrap();
        let signer =
            VenSigner::load(&dir.path().join(VEN_CA_CERT), &dir.path().join(VEN_CA_KEY)).unwrap();
        let key = KeyPair::generate().unwrap();
        let csr = CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        let pem = signer.sign(&csr, "wl-123").unwrap();
        let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        assert_eq!(common_name(&der).as_deref(), Some("wl-123"));
        assert!(matches!(
            signer.sign("not a csr", "x"),
            Err(PkiError::BadCsr(_))
        ));
    }
}
