//! Pairing: a pairing key and host facts become a managed workload (one
//! replicated write through the leader) and a signed VEN identity.

use std::net::IpAddr;

use sc_proto::contract::MAX_ADDRESSES;
use sc_proto::ven::PairRequest;
use sc_raft::pki::VenSigner;
use sc_store::audit::AuditEvent;
use sc_store::db::{Db, Txn};
use sc_store::keys::{self, Kind, Space};
use sc_store::objects::{InterfaceJson, PairingKeyDoc, PairingProfileDoc, WorkloadDoc};
use sc_store::record::{Meta, Record, RECORD_V};
use sc_store::{transact, PlanError, StoreError};
use tonic::Status;

/// What pairing produced.
pub struct Paired {
    /// The new workload.
    pub workload_id: String,
    /// Its client certificate.
    pub cert_pem: String,
}

/// Why a pairing was refused.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    /// No pairing key has this activation code (here, yet).
    #[error("unknown pairing key")]
    UnknownKey,
    /// The key's lifetime is over.
    #[error("the pairing key has expired")]
    Expired,
    /// The key's uses are spent.
    #[error("the pairing key has no uses left")]
    Exhausted,
    /// The key's profile is gone or disabled.
    #[error("the pairing profile {0}")]
    ProfileDisabled(&'static str),
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A key or profile just made in another region may not be applied here yet:
/// such refusals are planned once more after catching up.
impl PlanError for Refusal {
    fn may_be_stale(&self) -> bool {
        !matches!(self, Refusal::Store(_))
    }
}

fn refused(e: Refusal) -> Status {
    let msg = e.to_string();
    match e {
        Refusal::UnknownKey => Status::not_found(msg),
        Refusal::Expired | Refusal::Exhausted | Refusal::ProfileDisabled(_) => {
            Status::permission_denied(msg)
        }
        Refusal::Store(s) if s.is_unavailable() => Status::unavailable(msg),
        Refusal::Store(StoreError::TooLarge(_) | StoreError::KeptChanging(_)) => {
            Status::failed_precondition(msg)
        }
        Refusal::Store(_) => Status::internal(msg),
    }
}

/// Refuses a malformed pairing request before anything is read or written;
/// returns the host's interfaces.
fn check_request(req: &PairRequest) -> Result<Vec<InterfaceJson>, Status> {
    if req.activation_code.is_empty() || req.activation_code.len() > 256 {
        return Err(Status::invalid_argument(
            "activation_code: give the pairing key (1-256 characters)",
        ));
    }
    if req.hostname.is_empty()
        || req.hostname.len() > 255
        || req.hostname.chars().any(char::is_control)
    {
        return Err(Status::invalid_argument(
            "hostname: 1-255 printable characters",
        ));
    }
    if req.addresses.len() > MAX_ADDRESSES {
        return Err(Status::invalid_argument(format!(
            "addresses: at most {MAX_ADDRESSES}"
        )));
    }
    let mut interfaces = Vec::new();
    for (i, a) in req.addresses.iter().enumerate() {
        let address: IpAddr = a.parse().map_err(|_| {
            Status::invalid_argument(format!("addresses[{i}]: {a:?} is not an IP address"))
        })?;
        interfaces.push(InterfaceJson {
            name: format!("if{i}"),
            address,
            cidr_block: None,
            link_state: None,
        });
    }
    Ok(interfaces)
}

/// Whether the pairing key with this hash can pair now (a key made a moment
/// ago in another region is looked for again after catching up).
async fn usable(db: &Db, key: &[u8], now_ms: u64) -> Result<(), Refusal> {
    let pk = match db.get::<PairingKeyDoc>(key).await? {
        Some(pk) => pk,
        None => {
            db.linearize().await?;
            db.get::<PairingKeyDoc>(key)
                .await?
                .ok_or(Refusal::UnknownKey)?
        }
    };
    if pk.value.expires_at.is_some_and(|t| t <= now_ms) {
        return Err(Refusal::Expired);
    }
    if pk.value.uses_left == Some(0) {
        return Err(Refusal::Exhausted);
    }
    Ok(())
}

/// Checks the request, consumes one use of the key, registers the workload.
pub async fn pair(
    db: &Db,
    signer: &VenSigner,
    region: &str,
    node: &str,
    req: &PairRequest,
    now_ms: u64,
) -> Result<Paired, Status> {
    let interfaces = check_request(req)?;
    let workload_id = keys::new_id();
    let key = keys::pairing_key_of_code(&req.activation_code);
    // The key first: nothing is signed for a caller without a usable one
    // (the transaction below checks again, against the key it consumes).
    usable(db, &key, now_ms).await.map_err(refused)?;
    // Then the CSR, before the transaction: a bad CSR must not consume a use.
    let cert_pem = signer
        .sign(&req.csr_pem, &workload_id)
        .map_err(|e| Status::invalid_argument(format!("csr_pem: {e}")))?;
    let result = transact!(db, Refusal, async {
        let pk = db
            .get::<PairingKeyDoc>(&key)
            .await?
            .ok_or(Refusal::UnknownKey)?;
        if pk.value.expires_at.is_some_and(|t| t <= now_ms) {
            return Err(Refusal::Expired);
        }
        if pk.value.uses_left == Some(0) {
            return Err(Refusal::Exhausted);
        }
        let pkey = keys::obj(Space::Live, Kind::PairingProfile, &pk.value.profile);
        let prof = db
            .get::<Record<PairingProfileDoc>>(&pkey)
            .await?
            .ok_or(Refusal::ProfileDisabled("no longer exists"))?;
        if !prof.value.doc.enabled {
            return Err(Refusal::ProfileDisabled("is disabled"));
        }
        let mut txn = Txn::default();
        txn.expect(key.clone(), Some(pk.rev));
        txn.expect(pkey, Some(prof.rev));
        // A limited key is consumed (concurrent pairings serialise on it); an
        // unlimited one is only read, so a fleet can pair with one key at once.
        if let Some(n) = pk.value.uses_left {
            let mut left = pk.value.clone();
            left.uses_left = Some(n - 1);
            txn.put(key.clone(), &left)?;
        }
        let by = format!("/pairing_profiles/{}", pk.value.profile);
        let rec = Record {
            v: RECORD_V,
            meta: Meta {
                created_at: now_ms,
                updated_at: now_ms,
                created_by: by.clone(),
                updated_by: by,
            },
            doc: WorkloadDoc {
                name: req.hostname.clone(),
                hostname: req.hostname.clone(),
                description: Some(format!("paired through {node} ({}); os {}", region, req.os)),
                interfaces: interfaces.clone(),
                labels: prof.value.doc.labels.clone(),
                enforcement_mode: prof.value.doc.enforcement_mode,
                online: true,
                managed: true,
                public_ip: None,
                region: Some(region.to_string()),
                quarantined: false,
                suspended: false,
                served_by: None,
                visibility_level: prof.value.doc.visibility_level,
            },
        };
        let wkey = keys::obj(Space::Live, Kind::Workload, &workload_id);
        txn.expect(wkey.clone(), None);
        txn.put(wkey, &rec)?;
        let ev = AuditEvent {
            time_ms: now_ms,
            event_type: "ven.pair".into(),
            status: "success".into(),
            actor: format!("/pairing_profiles/{}", pk.value.profile),
            username: "ven".into(),
            api_method: "gRPC".into(),
            api_endpoint: "Ven/Pair".into(),
            http_status: 200,
            src_ip: String::new(),
            node: node.to_string(),
            region: region.to_string(),
            resource: keys::href(Space::Live, Kind::Workload, &workload_id),
            errors: vec![],
        };
        ev.add_to(&mut txn)?;
        Ok((txn, ()))
    });
    result.map_err(refused)?;
    Ok(Paired {
        workload_id,
        cert_pem,
    })
}
