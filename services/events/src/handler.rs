//! What a consumer runs for each event: a [`Handler`].

use crate::envelope::Envelope;
use crate::error::HandlerError;
use std::future::Future;

/// Handles one event. `Ok` acknowledges it; `Err` retries it with backoff (or dead-letters it
/// when [`HandlerError::fatal`] or out of retries). Implementations may write `async fn handle`.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, env: Envelope) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// A [`Handler`] made from a closure; see [`handler_fn`].
pub struct FnHandler<F>(F);

impl<F, Fut> Handler for FnHandler<F>
where
    F: Fn(Envelope) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send,
{
    fn handle(&self, env: Envelope) -> impl Future<Output = Result<(), HandlerError>> + Send {
        (self.0)(env)
    }
}

/// `hub.subscribe(sub, handler_fn(|env| async move { ...; Ok(()) }))`.
pub fn handler_fn<F, Fut>(f: F) -> FnHandler<F>
where
    F: Fn(Envelope) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send,
{
    FnHandler(f)
}
