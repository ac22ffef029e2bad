//! Events as a test sees them: everything published under some patterns, recorded.

use crate::START_HINT;

/// Every event published on the shared exchange under `patterns`, collected from a private
/// exclusive queue (gone when the hub closes), so a test never reads a shared queue. Other tests
/// publish to the same exchange: callers filter by their own ids.
pub struct EventRecorder {
    pub hub: mfe_events::Hub,
    events: std::sync::Arc<std::sync::Mutex<Vec<mfe_events::Envelope>>>,
    _subscription: mfe_events::SubscriptionHandle,
}

impl EventRecorder {
    /// Connects to the test stack's RabbitMQ as `consumer` and starts recording.
    ///
    /// # Panics
    /// When the broker cannot be reached, with a message saying how to start it.
    pub async fn start(consumer: &str, patterns: &[&str]) -> Self {
        use mfe_events::{handler_fn, Envelope, Hub, HubConfig, Subscription};
        let cfg = HubConfig::from_env().unwrap_or_else(|e| panic!("event hub configuration: {e}"));
        let hub = Hub::connect(cfg.with_connection_name(consumer))
            .await
            .unwrap_or_else(|e| panic!("{e} — the test needs the test stack's RabbitMQ: {START_HINT}"));
        let events: std::sync::Arc<std::sync::Mutex<Vec<Envelope>>> = Default::default();
        let sink = events.clone();
        let subscription = hub
            .subscribe(
                Subscription::exclusive(consumer, patterns),
                handler_fn(move |env: Envelope| {
                    let sink = sink.clone();
                    async move {
                        sink.lock().expect("event recorder lock").push(env);
                        Ok(())
                    }
                }),
            )
            .await
            .unwrap_or_else(|e| panic!("cannot subscribe a test queue for {patterns:?}: {e}"));
        Self { hub, events, _subscription: subscription }
    }

    /// The events recorded so far, in arrival order.
    pub fn events(&self) -> Vec<mfe_events::Envelope> {
        self.events.lock().expect("event recorder lock").clone()
    }
}
