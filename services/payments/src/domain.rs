//! The payment domain without I/O: validated amounts and currencies, the payment type, and the
//! status state machine with the event each transition emits.

use std::{fmt, str::FromStr};

use mfe_events::types;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Decimal places an amount may carry: the `numeric(19,4)` column keeps four.
pub const AMOUNT_SCALE: u32 = 4;

/// The largest amount the column holds: 15 integer digits before the four decimals.
pub fn max_amount() -> Decimal {
    Decimal::from_str("999999999999999.9999").expect("a valid decimal literal")
}

/// A problem with a client's input, answered with 422.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// Reads an amount sent as a JSON string (`"12.50"`, preferred: exact) or number (`12.5`) and
/// checks it is positive, has at most four decimals and fits the column.
pub fn parse_amount(raw: &serde_json::Value) -> Result<Decimal, Invalid> {
    let text = match raw {
        serde_json::Value::String(s) => s.trim().to_string(),
        // serde_json prints a float in its shortest round-trip form, so `10.12345` stays
        // `10.12345` and the scale check below sees the digits the client sent.
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::Null => return Err(Invalid("amount is required".into())),
        other => return Err(Invalid(format!("amount must be a decimal string or number, got {other}"))),
    };
    let amount = Decimal::from_str_exact(&text)
        .or_else(|_| Decimal::from_scientific(&text))
        .map_err(|_| Invalid(format!("amount {text:?} is not a decimal number")))?;
    if amount <= Decimal::ZERO {
        return Err(Invalid(format!("amount must be greater than 0, got {amount}")));
    }
    if amount.normalize().scale() > AMOUNT_SCALE {
        return Err(Invalid(format!("amount {amount} has more than {AMOUNT_SCALE} decimal places")));
    }
    if amount > max_amount() {
        return Err(Invalid(format!("amount {amount} is larger than the maximum {}", max_amount())));
    }
    Ok(amount.normalize())
}

/// ISO 4217 codes accepted for payments: the active currencies in common use. A code outside
/// this list is refused rather than stored, so reports never meet an unknown currency.
pub const CURRENCIES: &[&str] = &[
    "AED", "ARS", "AUD", "BGN", "BHD", "BRL", "CAD", "CHF", "CLP", "CNY", "COP", "CZK", "DKK", "EGP", "EUR", "GBP",
    "GHS", "HKD", "HUF", "IDR", "ILS", "INR", "ISK", "JOD", "JPY", "KES", "KRW", "KWD", "MAD", "MXN", "MYR", "NGN",
    "NOK", "NZD", "OMR", "PEN", "PHP", "PKR", "PLN", "QAR", "RON", "RSD", "RUB", "SAR", "SEK", "SGD", "THB", "TND",
    "TRY", "TWD", "UAH", "USD", "UYU", "VND", "ZAR",
];

/// Checks a currency code: three upper-case letters naming a known ISO 4217 currency.
pub fn parse_currency(raw: Option<&str>) -> Result<String, Invalid> {
    let code = raw.unwrap_or("USD").trim();
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(Invalid(format!("currency {code:?} must be three upper-case letters (ISO 4217), e.g. USD")));
    }
    if !CURRENCIES.contains(&code) {
        return Err(Invalid(format!("currency {code:?} is not a supported ISO 4217 code")));
    }
    Ok(code.to_string())
}

/// The `"PaymentStatus"` enum of payments_db.
///
/// Stored as text in queries (`status::text`, `$1::"PaymentStatus"`): the quoted, mixed-case
/// type name is then spelled once in SQL instead of in a derive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PaymentStatus {
    Pending,
    Processing,
    Completed,
    Failed,
    Cancelled,
}

impl PaymentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::Pending => "pending",
            PaymentStatus::Processing => "processing",
            PaymentStatus::Completed => "completed",
            PaymentStatus::Failed => "failed",
            PaymentStatus::Cancelled => "cancelled",
        }
    }

    /// Whether the state machine allows `self → next`:
    /// pending → processing | cancelled; processing → completed | failed | cancelled.
    /// Completed, failed and cancelled are final.
    pub fn can_become(self, next: PaymentStatus) -> bool {
        use PaymentStatus::*;
        matches!((self, next), (Pending, Processing | Cancelled) | (Processing, Completed | Failed | Cancelled))
    }

    /// Whether no transition leaves this status.
    pub fn is_final(self) -> bool {
        matches!(self, PaymentStatus::Completed | PaymentStatus::Failed | PaymentStatus::Cancelled)
    }

    /// The event a change *into* this status emits: `.completed` and `.failed` for those
    /// outcomes, `.updated` for every other change.
    pub fn event_type(self) -> &'static str {
        match self {
            PaymentStatus::Completed => types::PAYMENTS_PAYMENT_COMPLETED,
            PaymentStatus::Failed => types::PAYMENTS_PAYMENT_FAILED,
            _ => types::PAYMENTS_PAYMENT_UPDATED,
        }
    }
}

impl FromStr for PaymentStatus {
    type Err = Invalid;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "pending" => PaymentStatus::Pending,
            "processing" => PaymentStatus::Processing,
            "completed" => PaymentStatus::Completed,
            "failed" => PaymentStatus::Failed,
            "cancelled" => PaymentStatus::Cancelled,
            other => {
                return Err(Invalid(format!(
                    "unknown payment status {other:?} (expected pending, processing, completed, failed or cancelled)"
                )))
            }
        })
    }
}

impl fmt::Display for PaymentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `"PaymentType"` enum of payments_db.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PaymentType {
    #[default]
    Instant,
    Scheduled,
    Recurring,
}

impl PaymentType {
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentType::Instant => "instant",
            PaymentType::Scheduled => "scheduled",
            PaymentType::Recurring => "recurring",
        }
    }
}

impl FromStr for PaymentType {
    type Err = Invalid;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "instant" => PaymentType::Instant,
            "scheduled" => PaymentType::Scheduled,
            "recurring" => PaymentType::Recurring,
            other => {
                return Err(Invalid(format!(
                    "unknown payment type {other:?} (expected instant, scheduled or recurring)"
                )))
            }
        })
    }
}

/// A refused status change: the payment is in `from` and cannot go to `to` (409).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a {from} payment cannot become {to}{}", if from.is_final() { " (it is final)" } else { "" })]
pub struct IllegalTransition {
    pub from: PaymentStatus,
    pub to: PaymentStatus,
}

/// Checks `from → to` against the state machine.
pub fn check_transition(from: PaymentStatus, to: PaymentStatus) -> Result<(), IllegalTransition> {
    if from.can_become(to) {
        Ok(())
    } else {
        Err(IllegalTransition { from, to })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use PaymentStatus::*;

    #[test]
    fn amounts_with_up_to_four_decimals_are_accepted_as_strings_or_numbers() {
        assert_eq!(parse_amount(&json!("12.5000")).unwrap().to_string(), "12.5");
        assert_eq!(parse_amount(&json!(0.0001)).unwrap().to_string(), "0.0001");
        assert_eq!(parse_amount(&json!(100)).unwrap().to_string(), "100");
    }

    #[test]
    fn zero_negative_five_decimal_and_oversized_amounts_are_refused() {
        for bad in [json!("0"), json!(-1), json!("10.12345"), json!(10.12345), json!("1e20"), json!("abc"), json!(null)]
        {
            assert!(parse_amount(&bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn currencies_must_be_known_upper_case_iso_codes() {
        assert_eq!(parse_currency(None).unwrap(), "USD");
        assert_eq!(parse_currency(Some("EUR")).unwrap(), "EUR");
        for bad in ["usd", "US", "USDX", "XYZ", ""] {
            assert!(parse_currency(Some(bad)).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn the_state_machine_allows_exactly_the_documented_transitions() {
        let all = [Pending, Processing, Completed, Failed, Cancelled];
        let allowed = [
            (Pending, Processing),
            (Pending, Cancelled),
            (Processing, Completed),
            (Processing, Failed),
            (Processing, Cancelled),
        ];
        for from in all {
            for to in all {
                assert_eq!(from.can_become(to), allowed.contains(&(from, to)), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn terminal_outcomes_have_their_own_event_types() {
        assert_eq!(Completed.event_type(), "payments.payment.completed");
        assert_eq!(Failed.event_type(), "payments.payment.failed");
        assert_eq!(Processing.event_type(), "payments.payment.updated");
        assert_eq!(Cancelled.event_type(), "payments.payment.updated");
    }
}
