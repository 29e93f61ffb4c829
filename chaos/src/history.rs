//! Recording a run's client operations for the linearizability checker.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use sc_raft::{ClientId, Command, Consistency, Mutation, Node};

use crate::checker::{Op, OpKind};

/// Every operation of a run, with invocation and response times from one clock.
pub struct History {
    start: Instant,
    /// A std mutex: held only to push, never across an await.
    ops: Mutex<Vec<Op>>,
}

impl History {
    /// An empty history whose clock starts now.
    pub fn new() -> Arc<History> {
        Arc::new(History {
            start: Instant::now(),
            ops: Mutex::new(Vec::new()),
        })
    }

    /// Nanoseconds since the run started.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Adds one finished (or abandoned) operation.
    pub fn record(&self, op: Op) {
        if let Ok(mut ops) = self.ops.lock() {
            ops.push(op);
        }
    }

    /// A copy of everything recorded so far.
    pub fn ops(&self) -> Vec<Op> {
        self.ops.lock().map(|o| o.clone()).unwrap_or_default()
    }
}

/// A client of a run: writes unique values and reads, recording each operation.
pub struct RecordingClient {
    /// Client number in reports.
    pub number: usize,
    id: ClientId,
    serial: u64,
    history: Arc<History>,
}

impl RecordingClient {
    /// Client `number`, recording into `history`.
    pub fn new(number: usize, history: Arc<History>) -> Self {
        RecordingClient {
            number,
            id: ClientId::random(),
            serial: 0,
            history,
        }
    }

    /// Puts `value` under `key` through `node`. An error leaves the outcome
    /// unknown (the write may still commit), and is recorded as such.
    pub async fn write(&mut self, node: &Node, key: &[u8], value: &[u8]) -> bool {
        self.serial += 1;
        let cmd = Command {
            client: self.id,
            serial: self.serial,
            expect_revision: None,
            compare: vec![],
            ops: vec![Mutation::Put {
                key: key.to_vec(),
                value: value.to_vec(),
            }],
        };
        let invoke = self.history.now();
        let ok = node.write(cmd).await.is_ok();
        let complete = ok.then(|| self.history.now());
        self.history.record(Op {
            client: self.number,
            key: key.to_vec(),
            kind: OpKind::Write(value.to_vec()),
            invoke,
            complete,
        });
        ok
    }

    /// Reads `key` through `node`; a failed read observed nothing and is not recorded.
    pub async fn read(
        &mut self,
        node: &Node,
        key: &[u8],
        consistency: Consistency,
    ) -> Option<Option<Vec<u8>>> {
        let invoke = self.history.now();
        let r = node.get(key, consistency).await.ok()?;
        let complete = self.history.now();
        let value = r.value.map(|e| e.value);
        self.history.record(Op {
            client: self.number,
            key: key.to_vec(),
            kind: OpKind::Read(value.clone()),
            invoke,
            complete: Some(complete),
        });
        Some(value)
    }
}
