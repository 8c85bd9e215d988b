//! An in-memory sink for tests: keeps every rendered change and the size of every write; can
//! hold each write until the test lets it through, or fail for good.

use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;

use super::{render_line, Batch, Sink, SinkError};

/// Stores each change as a parsed JSON value (the same form the JSON-lines sink writes).
#[derive(Debug, Clone, Default)]
pub struct MemorySink {
    events: Arc<Mutex<Vec<serde_json::Value>>>,
    /// Changes per successful write, in order.
    writes: Arc<Mutex<Vec<usize>>>,
    /// Logical decoding messages written, in order.
    messages: Arc<Mutex<Vec<crate::decode::MessageEvent>>>,
    /// When set, each write takes one permit first (the test adds permits to let writes through).
    gate: Option<Arc<Semaphore>>,
    /// When set, every write fails with this reason (not retryable).
    fail: Option<String>,
}

impl MemorySink {
    /// An empty sink; clones share the same storage.
    pub fn new() -> Self {
        Self::default()
    }

    /// A sink whose writes each wait for a permit of the returned semaphore (none at first).
    pub fn gated() -> (Self, Arc<Semaphore>) {
        let gate = Arc::new(Semaphore::new(0));
        (Self { gate: Some(Arc::clone(&gate)), ..Self::default() }, gate)
    }

    /// A sink whose every write fails for good with `reason`.
    pub fn failing(reason: &str) -> Self {
        Self { fail: Some(reason.to_string()), ..Self::default() }
    }

    /// Everything written so far.
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.events.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// The logical decoding messages written so far.
    pub fn messages(&self) -> Vec<crate::decode::MessageEvent> {
        self.messages.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// The number of changes of each write so far (a batch without changes counts as 0).
    pub fn writes(&self) -> Vec<usize> {
        self.writes.lock().map(|w| w.clone()).unwrap_or_default()
    }
}

impl Sink for MemorySink {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn write(&mut self, batch: &Batch) -> Result<(), SinkError> {
        if let Some(gate) = &self.gate {
            let permit = gate.acquire().await.map_err(|_| SinkError::Fatal { sink: "memory", reason: "gate closed".into() })?;
            permit.forget();
        }
        if let Some(reason) = &self.fail {
            return Err(SinkError::Fatal { sink: "memory", reason: reason.clone() });
        }
        let mut rendered = Vec::with_capacity(batch.changes.len());
        let mut line = Vec::new();
        for change in &batch.changes {
            line.clear();
            render_line(change, &mut line)?;
            let value = serde_json::from_slice(&line)
                .map_err(|e| SinkError::Fatal { sink: "memory", reason: format!("rendered invalid JSON: {e}") })?;
            rendered.push(value);
        }
        let mut events = self.events.lock().map_err(|_| SinkError::Fatal { sink: "memory", reason: "storage lock poisoned".into() })?;
        events.extend(rendered);
        drop(events);
        let mut writes = self.writes.lock().map_err(|_| SinkError::Fatal { sink: "memory", reason: "storage lock poisoned".into() })?;
        writes.push(batch.changes.len());
        drop(writes);
        let mut messages = self.messages.lock().map_err(|_| SinkError::Fatal { sink: "memory", reason: "storage lock poisoned".into() })?;
        messages.extend(batch.messages.iter().cloned());
        Ok(())
    }
}
