//! The stubbed payment service provider: with `PSP_AUTO_COMPLETE_MS` set, every new payment is
//! accepted (→ processing) and settled (→ completed) asynchronously, one step per delay. Each
//! step goes through the same status change as the API (transaction row, event, cache
//! invalidation) and is logged; a payment changed meanwhile (e.g. cancelled) is left alone.

use std::time::Duration;

use crate::{domain::PaymentStatus, service::PaymentsService, store::StatusChangeError};

#[derive(Debug, Clone, Copy)]
pub struct Psp {
    /// Delay before each of the two steps.
    step: Duration,
}

impl Psp {
    pub fn new(step: Duration) -> Self {
        Self { step }
    }

    /// Drives payment `id` to completed in the background.
    pub fn start(&self, service: PaymentsService, payment_id: String, correlation_id: Option<String>) {
        let step = self.step;
        tokio::spawn(async move {
            let psp_transaction_id = format!("psp_{}", uuid::Uuid::new_v4().simple());
            let steps = [
                (PaymentStatus::Processing, "psp accepted the payment"),
                (PaymentStatus::Completed, "psp settled the payment"),
            ];
            for (status, message) in steps {
                tokio::time::sleep(step).await;
                let result = service
                    .change_status(
                        &payment_id,
                        status,
                        Some(message),
                        Some(&psp_transaction_id),
                        correlation_id.clone(),
                    )
                    .await;
                match result {
                    Ok(_) => {
                        tracing::info!(payment_id = %payment_id, %status, psp_transaction_id = %psp_transaction_id, "psp stub: {message}")
                    }
                    Err(StatusChangeError::Illegal(e)) => {
                        tracing::info!(payment_id = %payment_id, "psp stub: stopping, the payment changed meanwhile: {e}");
                        return;
                    }
                    Err(e) => {
                        tracing::error!(payment_id = %payment_id, %status, error = %e, "psp stub: status change failed; the payment stays where it is");
                        return;
                    }
                }
            }
        });
    }
}
