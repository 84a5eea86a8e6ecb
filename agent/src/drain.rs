//! Graceful shutdown: listeners stop accepting when the drain starts; connections in flight
//! hold a watcher and finish on their own, up to a deadline.

use std::time::Duration;

use tokio::sync::watch;

/// Starts a drain and waits for it.
pub struct DrainTrigger(watch::Sender<bool>);

/// Held by every listener and connection; the drain is complete when all are dropped.
#[derive(Clone)]
pub struct DrainWatcher(watch::Receiver<bool>);

pub fn new() -> (DrainTrigger, DrainWatcher) {
    let (tx, rx) = watch::channel(false);
    (DrainTrigger(tx), DrainWatcher(rx))
}

impl DrainTrigger {
    /// Signals every watcher, then waits until all are dropped or `deadline` passes.
    /// Returns whether everything finished in time.
    pub async fn drain(self, deadline: Duration) -> bool {
        let _ = self.0.send(true);
        tokio::time::timeout(deadline, self.0.closed())
            .await
            .is_ok()
    }
}

impl DrainWatcher {
    /// Resolves once a drain has started.
    pub async fn signalled(&mut self) {
        // An error means the trigger is gone, which is a drain too.
        let _ = self.0.wait_for(|draining| *draining).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_waits_for_watchers_then_gives_up_at_the_deadline() {
        let (trigger, watcher) = new();
        let mut held = watcher.clone();
        drop(watcher);
        let task = tokio::spawn(async move {
            held.signalled().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(held);
        });
        assert!(trigger.drain(Duration::from_secs(5)).await);
        task.await.unwrap();

        let (trigger, watcher) = new();
        assert!(!trigger.drain(Duration::from_millis(20)).await);
        drop(watcher);
    }
}
