//! Control characters in client input, refused once for every service: in JSON bodies (by the
//! kit's [`crate::Json`] extractor) and in paths and query strings
//! ([`refuse_control_characters`], a layer of [`crate::server::with_common_layers`]). PostgreSQL cannot store U+0000 in `text` or
//! `jsonb`, and no field of the platform has a use for the other C0/C1 controls, so they are a
//! 422 naming the field instead of a 500 from the database.
//!
//! Tab, line feed and carriage return are allowed (a payment description or an announcement may
//! span lines); a service that wants a single line checks that itself.

use axum::{
    extract::Request,
    middleware::Next,
    response::{IntoResponse, Response},
};
use serde_json::Value;

use crate::error::ApiError;

/// Whether `c` is refused in client text: a C0 or C1 control other than tab, LF and CR.
pub fn is_refused_control(c: char) -> bool {
    c.is_control() && !matches!(c, '\t' | '\n' | '\r')
}

fn describe(c: char) -> String {
    format!("a control character (U+{:04X})", c as u32)
}

/// Whether the JSON text `body` may hold a refused control character in a string. Valid JSON
/// carries C0 controls only as escapes (`\u0000`, `\b`, `\f`) and C1 controls and DEL either as
/// escapes or raw (UTF-8 `C2 80`..`C2 9F`, `7F`), so one pass over the bytes finds every
/// candidate without parsing; only a body that has one is parsed to name the field.
pub fn json_may_hold_control(body: &[u8]) -> bool {
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'\\' => {
                match body.get(i + 1) {
                    Some(b'b' | b'f') => return true,
                    Some(b'u') => {
                        if let Some(hex) = body.get(i + 2..i + 6) {
                            let code = std::str::from_utf8(hex).ok().and_then(|h| u32::from_str_radix(h, 16).ok());
                            if code.and_then(char::from_u32).is_some_and(is_refused_control) {
                                return true;
                            }
                        }
                    }
                    _ => {}
                }
                i += 2;
            }
            0x7f => return true,
            0xc2 if body.get(i + 1).is_some_and(|b| (0x80..=0x9f).contains(b)) => return true,
            _ => i += 1,
        }
    }
    false
}

/// The first refused control character in `value` (strings and object keys, depth first) as a
/// 422 naming its path (`items[0].name`), or `None`.
pub fn control_in_json(value: &Value) -> Option<ApiError> {
    fn walk(value: &Value, path: &mut String) -> Option<ApiError> {
        match value {
            Value::String(s) => s.chars().find(|c| is_refused_control(*c)).map(|c| {
                let what = describe(c);
                ApiError::Validation(if path.is_empty() {
                    format!("the body contains {what}")
                } else {
                    format!("field {path:?} contains {what}")
                })
            }),
            Value::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                let found = walk(item, path);
                path.truncate(len);
                found
            }),
            Value::Object(map) => map.iter().find_map(|(key, item)| {
                if let Some(c) = key.chars().find(|c| is_refused_control(*c)) {
                    let what = describe(c);
                    return Some(ApiError::Validation(if path.is_empty() {
                        format!("a field name contains {what}")
                    } else {
                        format!("a field name in {path:?} contains {what}")
                    }));
                }
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                let found = walk(item, path);
                path.truncate(len);
                found
            }),
            _ => None,
        }
    }
    walk(value, &mut String::new())
}

/// The first query parameter of `query` whose name or value decodes to a refused control
/// character, as a 422 naming it.
pub fn control_in_query(query: &str) -> Option<ApiError> {
    // Raw controls cannot be in a request target; only percent-escapes can carry them.
    if !query.contains('%') {
        return None;
    }
    query.split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decoded_name = decode(name);
        let c = decoded_name.chars().chain(decode(value).chars()).find(|c| is_refused_control(*c))?;
        let shown: String = decoded_name.chars().filter(|c| !c.is_control()).take(64).collect();
        Some(ApiError::Validation(format!("query parameter {shown:?} contains {}", describe(c))))
    })
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned()
}

/// A 422 when the percent-decoded `path` holds a refused control character (a path parameter
/// such as `/api/auth/users/%00` reaches SQL like a query parameter does).
pub fn control_in_path(path: &str) -> Option<ApiError> {
    if !path.contains('%') {
        return None;
    }
    let c = percent_encoding::percent_decode_str(path).decode_utf8_lossy().chars().find(|c| is_refused_control(*c))?;
    Some(ApiError::Validation(format!("the path contains {}", describe(c))))
}

/// Middleware: a request whose path or query string carries a refused control character is
/// answered 422 before any handler runs.
pub async fn refuse_control_characters(req: Request, next: Next) -> Response {
    let uri = req.uri();
    if let Some(err) = control_in_path(uri.path()).or_else(|| uri.query().and_then(control_in_query)) {
        return err.into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(e: ApiError) -> String {
        assert!(matches!(e, ApiError::Validation(_)), "{e:?}");
        e.to_string()
    }

    #[test]
    fn the_byte_scan_finds_every_escaped_or_raw_control_and_passes_text() {
        for body in [r#"{"a":"x\u0000"}"#, r#"{"a":"\u001F"}"#, r#"{"a":"\b"}"#, r#"{"a":"\f"}"#, r#"{"a":"\u009f"}"#] {
            assert!(json_may_hold_control(body.as_bytes()), "{body}");
        }
        assert!(json_may_hold_control("{\"a\":\"x\u{7f}\"}".as_bytes()));
        assert!(json_may_hold_control("{\"a\":\"x\u{85}\"}".as_bytes()));
        for body in [r#"{"a":"line\nbreak\ttab\r"}"#, r#"{"a":"\\u0000 is text"}"#, r#"{"a":"é ü \u00e9 \u2028"}"#] {
            assert!(!json_may_hold_control(body.as_bytes()), "{body}");
        }
    }

    #[test]
    fn the_path_of_the_offending_string_or_key_is_named() {
        let v: Value = serde_json::from_str(r#"{"ok":"a","items":[{"name":"b"},{"name":"c\u0000"}]}"#).unwrap();
        assert_eq!(
            message(control_in_json(&v).unwrap()),
            r#"field "items[1].name" contains a control character (U+0000)"#
        );
        let v: Value = serde_json::from_str(r#"{"description":"x\u0007"}"#).unwrap();
        assert_eq!(
            message(control_in_json(&v).unwrap()),
            r#"field "description" contains a control character (U+0007)"#
        );
        let v: Value = serde_json::from_str(r#"{"meta":{"k\u0000":1}}"#).unwrap();
        assert_eq!(
            message(control_in_json(&v).unwrap()),
            r#"a field name in "meta" contains a control character (U+0000)"#
        );
        let v: Value = serde_json::from_str(r#"{"description":"two\nlines\tand a tab"}"#).unwrap();
        assert!(control_in_json(&v).is_none());
    }

    #[test]
    fn a_query_parameter_with_an_escaped_control_is_named() {
        assert_eq!(
            message(control_in_query("limit=5&action=login%00x").unwrap()),
            r#"query parameter "action" contains a control character (U+0000)"#
        );
        assert_eq!(
            message(control_in_query("a%01b=1").unwrap()),
            r#"query parameter "ab" contains a control character (U+0001)"#
        );
        assert!(control_in_query("q=50%25+off&x=%E2%82%AC&nl=%0A").is_none());
        assert!(control_in_query("plain=1").is_none());
    }

    #[test]
    fn a_path_with_an_escaped_control_is_refused() {
        assert_eq!(
            message(control_in_path("/api/auth/users/%00").unwrap()),
            "the path contains a control character (U+0000)"
        );
        assert!(control_in_path("/api/auth/users/a%20b%C3%A9").is_none());
        assert!(control_in_path("/api/payments/123").is_none());
    }
}
