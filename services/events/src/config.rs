//! [`HubConfig`]: where the broker is and how the topology is named and shaped.

use std::str::FromStr;
use std::time::Duration;

use mfe_core::env::{self, EnvError};

/// The RabbitMQ queue type of every durable queue the hub declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueType {
    /// One node: the default.
    Classic,
    /// Replicated queues for a RabbitMQ cluster.
    Quorum,
}

impl QueueType {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }
}

impl FromStr for QueueType {
    type Err = String;

    /// `classic` or `quorum`, any case.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "classic" => Ok(QueueType::Classic),
            "quorum" => Ok(QueueType::Quorum),
            other => Err(format!("unknown queue type `{other}` (classic or quorum)")),
        }
    }
}

/// Everything the hub needs to know; [`HubConfig::from_env`] reads it from the environment.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Broker URLs tried in turn (failover), from the comma-separated `RABBITMQ_URL`.
    pub urls: Vec<String>,
    /// The topic exchange every event is published to (`events`).
    pub exchange: String,
    /// The dead-letter exchange (`events.dlx`).
    pub dlx: String,
    /// The dead-letter queue bound to the DLX with its own name as routing key (`events.dlq`).
    pub dlq: String,
    pub queue_type: QueueType,
    /// Delay before each retry of a failed message; its length is the number of retries.
    pub retry_delays: Vec<Duration>,
    /// Unacknowledged deliveries per consumer channel.
    pub prefetch: u16,
    /// How long a publish waits for a connection and then for its confirm.
    pub publish_timeout: Duration,
    /// First and largest pause between reconnect attempts (doubling in between).
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// Shown in the management UI to tell connections apart.
    pub connection_name: String,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            urls: parse_urls(env::var("RABBITMQ_URL").default),
            exchange: "events".into(),
            dlx: "events.dlx".into(),
            dlq: "events.dlq".into(),
            queue_type: QueueType::Classic,
            retry_delays: vec![Duration::from_secs(1), Duration::from_secs(2), Duration::from_secs(4)],
            prefetch: 200,
            publish_timeout: Duration::from_secs(10),
            reconnect_min: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(5),
            connection_name: "mfe-events".into(),
        }
    }
}

impl HubConfig {
    /// Reads `RABBITMQ_URL` (comma-separated failover list), `RABBITMQ_QUEUE_TYPE`
    /// (`classic`|`quorum`) and `EVENT_RETRY_DELAYS_MS` (e.g. `1000,2000,4000`) by the rule of
    /// [`mfe_core::env`]: unset or empty keeps the default of SPEC §7, garbage is an error.
    pub fn from_env() -> Result<Self, EnvError> {
        let default = Self::default();
        let urls = parse_urls(&env::get("RABBITMQ_URL"));
        let queue_type = match env::lookup("RABBITMQ_QUEUE_TYPE") {
            None => default.queue_type,
            Some(raw) => raw.parse().map_err(|_| EnvError::new("RABBITMQ_QUEUE_TYPE", &raw, "classic or quorum"))?,
        };
        let retry_delays = env::parse_env_ms_list("EVENT_RETRY_DELAYS_MS", default.retry_delays.clone())?;
        Ok(Self {
            urls: if urls.is_empty() { default.urls.clone() } else { urls },
            queue_type,
            retry_delays,
            ..default
        })
    }

    /// The same topology under a private prefix (`<prefix>.events`, ...), so a test suite never
    /// touches live queues; service queues get the prefix through [`crate::Subscription`] names.
    pub fn isolated(mut self, prefix: &str) -> Self {
        self.exchange = format!("{prefix}.{}", self.exchange);
        self.dlx = format!("{prefix}.{}", self.dlx);
        self.dlq = format!("{prefix}.{}", self.dlq);
        self
    }

    pub fn with_connection_name(mut self, name: impl Into<String>) -> Self {
        self.connection_name = name.into();
        self
    }
}

/// Splits a comma-separated URL list, dropping blanks.
pub fn parse_urls(raw: &str) -> Vec<String> {
    raw.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
}

/// `1000,2000,4000` → delays; `None` when any item is not a number of milliseconds.
pub fn parse_delays(raw: &str) -> Option<Vec<Duration>> {
    Some(env::parse_list::<u64>(raw)?.into_iter().map(Duration::from_millis).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_comma_separated_url_list_gives_failover_candidates_in_order() {
        assert_eq!(parse_urls("amqp://a:5672/%2f, amqp://b:5672/%2f,"), vec!["amqp://a:5672/%2f", "amqp://b:5672/%2f"]);
    }

    #[test]
    fn retry_delays_parse_from_milliseconds_and_reject_garbage() {
        assert_eq!(parse_delays("100, 200"), Some(vec![Duration::from_millis(100), Duration::from_millis(200)]));
        assert_eq!(parse_delays("1s"), None);
    }

    #[test]
    fn queue_types_parse_in_any_case_and_others_are_refused() {
        assert_eq!(" Quorum".parse::<QueueType>(), Ok(QueueType::Quorum));
        assert!("mirrored".parse::<QueueType>().is_err());
    }

    #[test]
    fn an_isolated_config_prefixes_every_exchange_and_the_dlq() {
        let cfg = HubConfig::default().isolated("mfe.test.x");
        assert_eq!(
            (cfg.exchange.as_str(), cfg.dlx.as_str(), cfg.dlq.as_str()),
            ("mfe.test.x.events", "mfe.test.x.events.dlx", "mfe.test.x.events.dlq")
        );
    }
}
