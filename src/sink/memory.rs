//! An in-memory sink for tests: keeps every rendered change.

use std::sync::{Arc, Mutex};

use super::{render_line, Batch, Sink, SinkError};

/// Stores each change as a parsed JSON value (the same form the JSON-lines sink writes).
#[derive(Debug, Clone, Default)]
pub struct MemorySink {
    events: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl MemorySink {
    /// An empty sink; clones share the same storage.
    pub fn new() -> Self {
        Self::default()
    }

    /// Everything written so far.
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.events.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

impl Sink for MemorySink {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn write(&mut self, batch: &Batch) -> Result<(), SinkError> {
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
        Ok(())
    }
}
