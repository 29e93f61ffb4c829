//! The collector thread: reads NFLOG and adds each logged connection to the
//! current interval's summaries, which the agent takes every report interval.
//! Summaries keep growing (within their bound) while no member answers, so
//! nothing is lost to a short outage and a long one costs bounded memory.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use sc_policy::flowlog::NFLOG_GROUP;
use sc_proto::ven::Flow;

use super::{FlowSource, NflogReader, Summaries};
use crate::identity::VenError;

/// Distinct summaries kept per interval before new keys are dropped (and counted).
pub const MAX_KEYS: usize = 20_000;

/// A running collector.
pub struct Collector {
    summaries: Arc<Mutex<Summaries>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Collector {
    /// Binds NFLOG in this process's network namespace and starts reading.
    pub fn start() -> Result<Collector, VenError> {
        // Bind here, so a missing permission or kernel module is reported to
        // the caller rather than lost in the thread.
        let mut reader = NflogReader::open(NFLOG_GROUP, Duration::from_millis(250))
            .map_err(|e| VenError::Other(format!("cannot read NFLOG group {NFLOG_GROUP}: {e}")))?;
        let summaries = Arc::new(Mutex::new(Summaries::new(MAX_KEYS)));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (summaries.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("flow-collector".into())
            .spawn(move || {
                while !st.load(Ordering::Relaxed) {
                    match reader.read() {
                        Ok(seen) if !seen.is_empty() => {
                            let now = super::now_ms();
                            if let Ok(mut sum) = s.lock() {
                                for o in &seen {
                                    sum.add(o, now);
                                }
                            }
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::error!(error = %e, "NFLOG read failed; flow collection stops");
                            return;
                        }
                    }
                }
            })
            .map_err(|e| VenError::Other(format!("cannot start the flow collector: {e}")))?;
        Ok(Collector {
            summaries,
            stop,
            thread: Some(thread),
        })
    }
}

impl FlowSource for Collector {
    fn take(&self) -> (Vec<Flow>, u64) {
        let (list, dropped) = match self.summaries.lock() {
            Ok(mut s) => s.take(),
            Err(_) => return (vec![], 0),
        };
        (
            list.iter()
                .map(|(k, s)| super::summary::to_wire(k, s))
                .collect(),
            dropped,
        )
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
