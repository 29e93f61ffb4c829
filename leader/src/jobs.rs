//! Async collection jobs (`Prefer: respond-async`), as Illumio's clients poll them.
//!
//! The result is computed at once and kept in this node's memory for a while;
//! the job's `Location` points back to the node that made it. Results are
//! bounded in number and age, so abandoned jobs cannot pile up.

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

/// This node's jobs.
#[derive(Default)]
pub struct Jobs {
    done: Mutex<VecDeque<(String, String, Instant, Value)>>,
}

impl Jobs {
    /// Stores a finished job's result; returns the job's location.
    pub fn finish(&self, path: &str, result: Value) -> String {
        let id = keys::new_id();
        if let Ok(mut d) = self.done.lock() {
            let now = Instant::now();
            d.retain(|(_, _, t, _)| now.duration_since(*t) < KEEP);
            while d.len() >= MAX_JOBS {
                d.pop_front();
            }
            d.push_back((id.clone(), path.to_string(), now, result));
        }
        format!("/orgs/{}/jobs/{id}", keys::ORG)
    }

    /// A job's status document.
    pub fn status(&self, id: &str) -> Option<Job> {
        let d = self.done.lock().ok()?;
        let (_, path, _, _) = d.iter().find(|(i, ..)| i == id)?;
        Some(Job {
            href: format!("/orgs/{}/jobs/{id}", keys::ORG),
            job_type: format!("GET {path}"),
            status: "done",
            result: HrefJson {
                href: format!("/orgs/{}/datafiles/{id}", keys::ORG),
            },
        })
    }

    /// A job's result.
    pub fn result(&self, id: &str) -> Option<Value> {
        let d = self.done.lock().ok()?;
        d.iter()
            .find(|(i, ..)| i == id)
            .map(|(_, _, _, v)| v.clone())
    }
}
