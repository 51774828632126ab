//! Chart results remembered per registry version: the first request for a view computes it,
//! requests for the same view wait for that one result instead of computing it again, and the
//! next change of the registry (its version, read at most once a second) starts afresh. So a
//! page is at most a second behind the registry, and fifty clients on one view cost one query.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::registry::Registry;

/// How long a version reading is trusted.
const FRESH: Duration = Duration::from_secs(1);
/// Views remembered at most (all forgotten when full).
const SLOTS: usize = 512;

type Slot = Arc<Mutex<Option<Arc<dyn Any + Send + Sync>>>>;

#[derive(Default)]
pub(super) struct Memo {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    stamp: Option<(Instant, String)>,
    slots: HashMap<String, Slot>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Memo {
    /// The registry's version, read again when the last reading is older than [`FRESH`].
    fn stamp(&self, reg: &Registry) -> Result<String> {
        if let Some((t, v)) = &lock(&self.state).stamp
            && t.elapsed() < FRESH
        {
            return Ok(v.clone());
        }
        let v = super::api::version_of(reg)?;
        lock(&self.state).stamp = Some((Instant::now(), v.clone()));
        Ok(v)
    }

    /// The value of view `key` at the registry's current version: remembered, or computed by
    /// `f` once while other requests for it wait. Errors are not remembered.
    pub(super) fn get<T: Clone + Send + Sync + 'static>(
        &self,
        reg: &mut Registry,
        key: String,
        f: impl FnOnce(&mut Registry) -> Result<T>,
    ) -> Result<T> {
        let key = format!("{}|{key}", self.stamp(reg)?);
        let slot = {
            let mut s = lock(&self.state);
            if s.slots.len() >= SLOTS && !s.slots.contains_key(&key) {
                s.slots.clear();
            }
            s.slots.entry(key).or_default().clone()
        };
        let mut held = lock(&slot);
        if let Some(v) = held.as_ref().and_then(|v| v.downcast_ref::<T>()) {
            return Ok(v.clone());
        }
        let v = f(reg)?;
        *held = Some(Arc::new(v.clone()));
        Ok(v)
    }
}
