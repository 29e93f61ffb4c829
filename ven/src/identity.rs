//! Pairing, and what a VEN keeps on disk: its identity (key, certificate, the
//! CA that signs members' certificates, the member list) and its last policy, so
//! it can enforce after a restart with no PCE reachable.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sc_proto::ven::ven_client::VenClient;
use sc_proto::ven::{Member, PairRequest};
use sc_proto::version::stamped;
use serde::{Deserialize, Serialize};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// Why the VEN could not do something.
#[derive(Debug, thiserror::Error)]
pub enum VenError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A stored file is not what this VEN wrote.
    #[error("{path}: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The PCE refused the request.
    #[error("the PCE refused: {0}")]
    Refused(String),
    /// No member could be reached.
    #[error("no member reachable: {0}")]
    Unreachable(String),
    /// Key generation or the policy could not be used.
    #[error("{0}")]
    Other(String),
    /// Applying the firewall failed.
    #[error("enforcement failed: {0}")]
    Enforce(String),
}

/// A member as the VEN remembers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberAddr {
    /// Node name.
    pub name: String,
    /// Region.
    pub region: String,
    /// `host:port` of its VEN service.
    pub addr: String,
}

impl From<Member> for MemberAddr {
    fn from(m: Member) -> Self {
        MemberAddr {
            name: m.name,
            region: m.region,
            addr: m.addr,
        }
    }
}

/// Who this VEN is.
#[derive(Clone, Serialize, Deserialize)]
pub struct Identity {
    /// The workload it speaks for.
    pub workload_id: String,
    /// Its private key (PEM); never leaves the host.
    pub key_pem: String,
    /// Its certificate (PEM), signed at pairing.
    pub cert_pem: String,
    /// The CA that signs member certificates.
    pub server_ca_pem: String,
    /// Known members.
    pub members: Vec<MemberAddr>,
    /// The workload's home region, from pairing: its members come first when
    /// the VEN picks where to stream from, so losing one node of a region
    /// moves its VENs to the region's other nodes, not across regions.
    /// `None` in identities saved before regions had several nodes (and from
    /// a member of that release): the VEN then goes by round-trip time alone.
    #[serde(default)]
    pub home_region: Option<String>,
    /// The revision of the workload record `home_region` was read from (0:
    /// from pairing): a rehome older than this comes from a replica that has
    /// not applied the move yet, and is ignored.
    #[serde(default)]
    pub home_revision: u64,
    /// When this process took `home_region` (not saved): an older revision
    /// is ignored only for [`STALE_REHOME_WINDOW`] after, the time replicas
    /// take to agree. Revisions are not comparable forever: a cluster
    /// restored from a backup counts them again from where the backup was.
    #[serde(skip)]
    pub home_taken_at: Option<std::time::Instant>,
}

/// How long after taking a home region a rehome of an older revision is
/// ignored as a lagging replica's.
pub const STALE_REHOME_WINDOW: Duration = Duration::from_secs(60);

impl Identity {
    /// Takes `region`, named by the workload record at revision `rev`, as
    /// home; returns whether the home region changed. An older revision than
    /// the one last taken is ignored: it comes from a replica that has not yet
    /// applied the move.
    pub fn take_home(&mut self, region: &str, rev: u64) -> bool {
        self.take_home_at(region, rev, std::time::Instant::now())
    }

    /// [`Identity::take_home`] at `now`.
    pub fn take_home_at(&mut self, region: &str, rev: u64, now: std::time::Instant) -> bool {
        if region.is_empty() {
            return false;
        }
        let guarded = self
            .home_taken_at
            .is_some_and(|t| now.saturating_duration_since(t) < STALE_REHOME_WINDOW);
        if rev < self.home_revision && guarded {
            tracing::debug!(%region, rev, known = self.home_revision, "stale rehome ignored");
            return false;
        }
        // May go down: past the window, the member's word stands.
        self.home_revision = rev;
        if self.home_region.as_deref() == Some(region) {
            return false;
        }
        self.home_region = Some(region.to_string());
        self.home_taken_at = Some(now);
        true
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("workload_id", &self.workload_id)
            .field("members", &self.members)
            .field("home_region", &self.home_region)
            .finish_non_exhaustive()
    }
}

/// The last policy the VEN applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredPolicy {
    /// Active version it came from.
    pub version: u64,
    /// Its hash (what the VEN reports).
    pub hash: String,
    /// The compiled policy (JSON of `sc_policy::CompiledPolicy`).
    pub compiled_json: String,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> VenError + '_ {
    move |source| VenError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `text` atomically (temp file, fsync, rename) with mode 0600.
pub fn write_private(path: &Path, text: &str) -> Result<(), VenError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(text.as_bytes()).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// The format of the VEN's state files (`identity.json`, `policy.json`): a
/// `format` field beside the content. Files from before the field are format
/// 1; a file of a newer format (a newer VEN ran here, then an older one was
/// put back) is refused by name, not misread.
pub const STATE_FORMAT: u32 = 1;

/// A state file: its format, and the content's fields beside it.
#[derive(Serialize, Deserialize)]
struct Versioned<T> {
    #[serde(default = "format_1")]
    format: u32,
    #[serde(flatten)]
    body: T,
}

fn format_1() -> u32 {
    1
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, VenError> {
    let corrupt = |message: String| VenError::Corrupt {
        path: path.to_path_buf(),
        message,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            // The format first, so a newer file is named as such rather than
            // failing on whatever field changed.
            #[derive(Deserialize)]
            struct Format {
                #[serde(default = "format_1")]
                format: u32,
            }
            let f: Format = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
            if f.format > STATE_FORMAT {
                return Err(corrupt(format!(
                    "written in format {}, this VEN reads format {STATE_FORMAT}: run the newer VEN release that wrote it",
                    f.format
                )));
            }
            serde_json::from_str::<Versioned<T>>(&text)
                .map(|v| Some(v.body))
                .map_err(|e| corrupt(e.to_string()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(path)(e)),
    }
}

/// `value` as a state file's JSON, with its format.
fn to_json<T: Serialize>(value: &T, pretty: bool) -> Result<String, VenError> {
    let v = Versioned {
        format: STATE_FORMAT,
        body: value,
    };
    if pretty {
        serde_json::to_string_pretty(&v)
    } else {
        serde_json::to_string(&v)
    }
    .map_err(|e| VenError::Other(e.to_string()))
}

impl Identity {
    /// The identity file in a VEN's state directory.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("identity.json")
    }

    /// Loads the identity (`None`: not paired yet).
    pub fn load(dir: &Path) -> Result<Option<Identity>, VenError> {
        read_json(&Self::path(dir))
    }

    /// Saves it (mode 0600).
    pub fn save(&self, dir: &Path) -> Result<(), VenError> {
        write_private(&Self::path(dir), &to_json(self, true)?)
    }
}

impl StoredPolicy {
    /// The policy file in a VEN's state directory.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("policy.json")
    }

    /// Loads the last applied policy.
    pub fn load(dir: &Path) -> Result<Option<StoredPolicy>, VenError> {
        read_json(&Self::path(dir))
    }

    /// Saves it.
    pub fn save(&self, dir: &Path) -> Result<(), VenError> {
        write_private(&Self::path(dir), &to_json(self, false)?)
    }
}

/// A channel to a member's VEN service (TLS, verified against `server_ca_pem`,
/// presenting `identity` when given).
pub async fn channel(
    addr: &str,
    server_ca_pem: &str,
    identity: Option<(&str, &str)>,
    timeout: Duration,
) -> Result<Channel, VenError> {
    channel_from(addr, server_ca_pem, identity, timeout, None).await
}

/// [`channel`], leaving from `local` when given: the simulator gives each
/// simulated VEN an address of its own, as real VENs have their hosts', so a
/// member's cap on connections per address sees many hosts, not one.
pub async fn channel_from(
    addr: &str,
    server_ca_pem: &str,
    identity: Option<(&str, &str)>,
    timeout: Duration,
    local: Option<std::net::IpAddr>,
) -> Result<Channel, VenError> {
    // The handshake is bounded too: tonic bounds only the TCP connect, and a
    // server hello that never comes would hold the channel's redial for good.
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(server_ca_pem))
        .timeout(timeout);
    if let Some((cert, key)) = identity {
        tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
    }
    Endpoint::from_shared(format!("https://{addr}"))
        .map_err(|e| VenError::Unreachable(format!("{addr}: {e}")))?
        .tls_config(tls)
        .map_err(|e| VenError::Unreachable(format!("{addr}: {e}")))?
        .connect_timeout(timeout)
        .local_address(local)
        .timeout(timeout)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| VenError::Unreachable(format!("{addr}: {e}")))
}

/// Host facts a VEN reports at pairing.
#[derive(Debug, Clone)]
pub struct HostFacts {
    /// Host name.
    pub hostname: String,
    /// Interface addresses.
    pub addresses: Vec<String>,
    /// Operating system.
    pub os: String,
}

/// Pairs with the member at `addr`: a new key (kept here), a CSR, the pairing key
/// and the host facts; returns the identity to save.
pub async fn pair(
    addr: &str,
    server_ca_pem: &str,
    activation_code: &str,
    facts: &HostFacts,
) -> Result<Identity, VenError> {
    let key = rcgen::KeyPair::generate().map_err(|e| VenError::Other(e.to_string()))?;
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .and_then(|p| p.serialize_request(&key))
        .and_then(|r| r.pem())
        .map_err(|e| VenError::Other(e.to_string()))?;
    let ch = channel(addr, server_ca_pem, None, Duration::from_secs(10)).await?;
    let resp = VenClient::new(stamped(ch))
        .pair(PairRequest {
            activation_code: activation_code.to_string(),
            hostname: facts.hostname.clone(),
            addresses: facts.addresses.clone(),
            os: facts.os.clone(),
            csr_pem: csr,
        })
        .await
        .map_err(|s| VenError::Refused(format!("{:?}: {}", s.code(), s.message())))?
        .into_inner();
    let mut members: Vec<MemberAddr> = resp.members.into_iter().map(MemberAddr::from).collect();
    if members.is_empty() {
        members.push(MemberAddr {
            name: addr.to_string(),
            region: String::new(),
            addr: addr.to_string(),
        });
    }
    Ok(Identity {
        workload_id: resp.workload_id,
        key_pem: key.serialize_pem(),
        cert_pem: resp.cert_pem,
        server_ca_pem: if resp.server_ca_pem.is_empty() {
            server_ca_pem.to_string()
        } else {
            resp.server_ca_pem
        },
        members,
        home_region: Some(resp.region).filter(|r| !r.is_empty()),
        home_revision: 0,
        home_taken_at: None,
    })
}

#[cfg(test)]
mod format_tests {
    use super::*;

    fn policy() -> StoredPolicy {
        StoredPolicy {
            version: 3,
            hash: "abc".into(),
            compiled_json: "{}".into(),
        }
    }

    #[test]
    fn state_files_carry_their_format_and_a_newer_one_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        policy().save(dir.path()).unwrap();
        let text = std::fs::read_to_string(StoredPolicy::path(dir.path())).unwrap();
        assert!(text.contains("\"format\":1"), "{text}");
        assert_eq!(StoredPolicy::load(dir.path()).unwrap(), Some(policy()));
        // A file from before the format field is format 1.
        std::fs::write(
            StoredPolicy::path(dir.path()),
            r#"{"version":3,"hash":"abc","compiled_json":"{}"}"#,
        )
        .unwrap();
        assert_eq!(StoredPolicy::load(dir.path()).unwrap(), Some(policy()));
        std::fs::write(
            StoredPolicy::path(dir.path()),
            r#"{"format":2,"version":3,"hash":"abc","compiled_json":"{}","new":1}"#,
        )
        .unwrap();
        let e = StoredPolicy::load(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("format 2") && e.contains("reads format 1"),
            "{e}"
        );
    }
}

#[cfg(test)]
mod home_tests {
    use super::*;

    fn identity(home: &str) -> Identity {
        Identity {
            workload_id: "w1".into(),
            key_pem: String::new(),
            cert_pem: String::new(),
            server_ca_pem: String::new(),
            members: vec![],
            home_region: Some(home.into()),
            home_revision: 0,
            home_taken_at: None,
        }
    }

    #[test]
    fn a_rehome_older_than_the_one_taken_is_ignored_while_replicas_catch_up() {
        let t0 = std::time::Instant::now();
        let mut id = identity("r1");
        // The application moved to r2 at revision 40: the VEN goes there.
        assert!(id.take_home_at("r2", 40, t0));
        assert_eq!(id.home_region.as_deref(), Some("r2"));
        // r1's replica has not applied the move yet: its word (the record at
        // revision 31) does not send the VEN back.
        assert!(!id.take_home_at("r1", 31, t0 + Duration::from_secs(1)));
        assert_eq!(id.home_region.as_deref(), Some("r2"));
        // The same region again, at a newer revision, is no news.
        assert!(!id.take_home_at("r2", 45, t0 + Duration::from_secs(2)));
        assert_eq!(id.home_revision, 45);
        // A later move back is taken.
        assert!(id.take_home_at("r1", 60, t0 + Duration::from_secs(3)));
        assert_eq!(id.home_region.as_deref(), Some("r1"));
        assert!(!id.take_home_at("", 99, t0), "an empty region is no region");
        // Past the window an older revision stands (a cluster restored from a
        // backup counts revisions again from the backup's).
        let later = t0 + Duration::from_secs(3) + STALE_REHOME_WINDOW;
        assert!(id.take_home_at("r3", 7, later));
        assert_eq!(
            (id.home_region.as_deref(), id.home_revision),
            (Some("r3"), 7)
        );
    }
}
