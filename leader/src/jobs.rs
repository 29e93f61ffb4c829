//! Async collection jobs (`Prefer: respond-async`), as Illumio's clients poll them.
//!
//! The result is computed at once and kept in this node's memory for a while;
//! the job's `Location` points back to the node that made it. Results are
//! bounded in number and age, so abandoned jobs cannot pile up. A job belongs
//! to the user who asked: another user's status or result answers 404, as if
//! it did not exist (its result was filtered by its owner's roles).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::docs::HrefJson;
use sc_store::keys;

/// A job's status document (Illumio's shape; jobs here finish at once).
#[derive(Debug, Serialize, ToSchema)]
pub struct Job {
    href: String,
    /// `GET {path}` of the collection asked for.
    job_type: String,
    /// Always `done`.
    status: &'static str,
    /// Where the result is (`datafiles/{id}`).
    result: HrefJson,
}

/// How long a finished job's result is kept.
const KEEP: Duration = Duration::from_secs(600);
/// How many results are kept at most.
const MAX_JOBS: usize = 64;

/// One finished job.
struct Done {
    id: String,
    /// The user who asked (a user id): the only one who may read it.
    owner: String,
    path: String,
    at: Instant,
    result: Value,
}

/// This node's jobs.
#[derive(Default)]
pub struct Jobs {
    done: Mutex<VecDeque<Done>>,
}

impl Jobs {
    /// Stores a finished job's result; returns the job's location.
    pub fn finish(&self, owner: &str, path: &str, result: Value) -> String {
        let id = keys::new_id();
        if let Ok(mut d) = self.done.lock() {
            let now = Instant::now();
            d.retain(|j| now.duration_since(j.at) < KEEP);
            while d.len() >= MAX_JOBS {
                d.pop_front();
            }
            d.push_back(Done {
                id: id.clone(),
                owner: owner.to_string(),
                path: path.to_string(),
                at: now,
                result,
            });
        }
        format!("/orgs/{}/jobs/{id}", keys::ORG)
    }

    /// A job's status document, for its owner.
    pub fn status(&self, owner: &str, id: &str) -> Option<Job> {
        let d = self.done.lock().ok()?;
        let path = &d.iter().find(|j| j.id == id && j.owner == owner)?.path;
        Some(Job {
            href: format!("/orgs/{}/jobs/{id}", keys::ORG),
            job_type: format!("GET {path}"),
            status: "done",
            result: HrefJson {
                href: format!("/orgs/{}/datafiles/{id}", keys::ORG),
            },
        })
    }

    /// A job's result, for its owner.
    pub fn result(&self, owner: &str, id: &str) -> Option<Value> {
        let d = self.done.lock().ok()?;
        d.iter()
            .find(|j| j.id == id && j.owner == owner)
            .map(|j| j.result.clone())
    }
}
