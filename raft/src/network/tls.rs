//! Mutual TLS for every hop between regions.
//!
//! Both sides trust only the cluster CA (no system roots): a server accepts a
//! client only with a certificate the CA signed, and a client accepts a server
//! only with a CA-signed certificate for the peer's node name.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// A TLS file that is missing or unusable, named so the operator can fix it.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file cannot be read.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        /// Which file (CA certificate, node certificate, node key).
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file holds no usable PEM object of the expected kind.
    #[error("{what} {path} is not a valid PEM {kind}: {reason}")]
    Pem {
        /// Which file.
        what: &'static str,
        /// Where it is.
        path: PathBuf,
        /// What was expected in it.
        kind: &'static str,
        /// Why it was refused.
        reason: String,
    },
}

/// The PEM material of one node (or operator): the cluster CA, its certificate, its key.
#[derive(Clone)]
pub struct TlsMaterial {
    /// The cluster CA certificate: the only trust root.
    pub ca_pem: String,
    /// This node's certificate, signed by the CA.
    pub cert_pem: String,
    /// This node's private key.
    pub key_pem: String,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("TlsMaterial").finish_non_exhaustive()
    }
}

fn read(what: &'static str, path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

impl TlsMaterial {
    /// Loads and checks the three PEM files.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let m = TlsMaterial {
            ca_pem: read("CA certificate", ca)?,
            cert_pem: read("node certificate", cert)?,
            key_pem: read("node key", key)?,
        };
        for (what, path, pem) in [
            ("CA certificate", ca, &m.ca_pem),
            ("node certificate", cert, &m.cert_pem),
        ] {
            let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
            match certs {
                Ok(c) if !c.is_empty() => {}
                Ok(_) => {
                    return Err(pem_err(
                        what,
                        path,
                        "certificate",
                        "no certificate found".into(),
                    ))
                }
                Err(e) => return Err(pem_err(what, path, "certificate", e.to_string())),
            }
        }
        if let Err(e) = PrivateKeyDer::from_pem_slice(m.key_pem.as_bytes()) {
            return Err(pem_err("node key", key, "private key", e.to_string()));
        }
        Ok(m)
    }

    /// The server side: present our certificate, require a CA-signed client
    /// certificate. A handshake that is not done within `handshake` is dropped,
    /// so a client that stalls half-way holds no connection slot.
    pub fn server_config(&self, handshake: Duration) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
            .client_auth_optional(false)
            .timeout(handshake)
    }

    /// The client side for one peer: present our certificate, accept only a
    /// CA-signed server certificate issued for `peer_name`.
    ///
    /// The handshake gives up after `handshake`. tonic bounds only the TCP
    /// connect by default, and a channel redials only once its connect attempt
    /// has ended: a server hello that never comes (the peer's end of the
    /// connection went away while a cut dropped its FIN) kept a leader's
    /// channel to a healed follower waiting for minutes in a chaos run.
    pub fn client_config(&self, peer_name: &str, handshake: Duration) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .domain_name(peer_name.to_string())
            .timeout(handshake)
    }
}

fn pem_err(what: &'static str, path: &Path, kind: &'static str, reason: String) -> TlsError {
    TlsError::Pem {
        what,
        path: path.to_path_buf(),
        kind,
        reason,
    }
}
