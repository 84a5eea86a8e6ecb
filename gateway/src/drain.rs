//! Whether the gateway is draining (after SIGTERM): readiness answers 503 from then on.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

/// Cheap to clone; clones share the flag.
#[derive(Debug, Clone, Default)]
pub struct Draining(Arc<AtomicBool>);

impl Draining {
    pub fn start(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}
