//! The one rule of every environment read, against the real process environment. Each test owns
//! the variables it sets (tests of one binary run in parallel, sharing the environment).
//! Its own test binary, not a module of `tests/it`: the variables it sets would leak into every
//! other test of a shared process.

use std::time::Duration;

use mfe_core::env::{self, parse_env, parse_env_bool, parse_env_ms, parse_env_ms_list, parse_env_secs};

#[test]
fn unset_and_empty_take_the_default_and_a_value_parses() {
    std::env::remove_var("WS_SEND_QUEUE");
    assert_eq!(parse_env("WS_SEND_QUEUE", 256usize), Ok(256));
    std::env::set_var("WS_SEND_QUEUE", "  ");
    assert_eq!(parse_env("WS_SEND_QUEUE", 256usize), Ok(256));
    std::env::set_var("WS_SEND_QUEUE", " 64 ");
    assert_eq!(parse_env("WS_SEND_QUEUE", 256usize), Ok(64));
}

#[test]
fn garbage_is_an_error_naming_the_variable_and_the_value() {
    std::env::set_var("GATEWAY_WORKERS", "many");
    let err = parse_env("GATEWAY_WORKERS", 0usize).unwrap_err();
    assert_eq!(err.to_string(), r#"GATEWAY_WORKERS="many" is not a non-negative whole number"#);
    std::env::set_var("PORT", "-1");
    assert_eq!(parse_env("PORT", 3000u16).unwrap_err().to_string(), r#"PORT="-1" is not a port number (0-65535)"#);
}

#[test]
fn durations_parse_by_the_same_rule() {
    std::env::set_var("WS_PONG_TIMEOUT_MS", "250");
    assert_eq!(parse_env_ms("WS_PONG_TIMEOUT_MS", Duration::from_secs(10)), Ok(Duration::from_millis(250)));
    std::env::set_var("AUTH_REFRESH_GRACE_SECONDS", "");
    assert_eq!(parse_env_secs("AUTH_REFRESH_GRACE_SECONDS", Duration::from_secs(5)), Ok(Duration::from_secs(5)));
    std::env::set_var("WS_PING_INTERVAL_MS", "1s");
    assert!(parse_env_ms("WS_PING_INTERVAL_MS", Duration::ZERO).unwrap_err().to_string().contains(r#""1s""#));
    std::env::set_var("EVENT_RETRY_DELAYS_MS", "100, 200");
    assert_eq!(
        parse_env_ms_list("EVENT_RETRY_DELAYS_MS", vec![]),
        Ok(vec![Duration::from_millis(100), Duration::from_millis(200)])
    );
}

#[test]
fn switches_and_strings_follow_the_rule() {
    std::env::set_var("ADMIN_EVENTS_QUEUE_EXCLUSIVE", "TRUE");
    assert_eq!(parse_env_bool("ADMIN_EVENTS_QUEUE_EXCLUSIVE", false), Ok(true));
    std::env::set_var("ADMIN_EVENTS_QUEUE_EXCLUSIVE", "perhaps");
    assert!(parse_env_bool("ADMIN_EVENTS_QUEUE_EXCLUSIVE", false).is_err());
    std::env::set_var("NGINX_HOST", "");
    assert_eq!(env::get("NGINX_HOST"), "localhost");
}
