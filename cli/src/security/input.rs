//! Input attacks: injection, control characters, malformed and oversized bodies, e-mail
//! addresses that look like another, user enumeration and password guessing.

use reqwest::Method;
use serde_json::json;

use super::{answer_line, call, expect_status, leaks_internals, message, sign_up, Target};
use crate::report::Check;

/// Wrong passwords tried before a 429 must have come.
const GUESSES: usize = 30;

pub async fn run(t: &Target) -> Vec<Check> {
    let alice = &t.alice;
    let payments = format!("{}/api/payments", t.gateway);
    let signup = format!("{}/api/auth/signup", t.gateway);
    let mut checks = Vec::new();

    // SQL in a query parameter: refused or harmless, never a 5xx, never another user's rows.
    let url = format!("{payments}?status=pending%27%20OR%20%271%27%3D%271");
    let name = "input: SQL in a query parameter";
    checks.push(match call(&t.http, Method::GET, &url, Some(&alice.access), None).await {
        Ok((s, body)) => {
            let leaked = body.to_string().contains(&t.bobs_payment);
            Check::new(name, !s.is_server_error() && !leaked, answer_line(s, &body, &[200, 400, 422]))
        }
        Err(e) => Check::new(name, false, format!("{e:#}")),
    });

    // SQL in a stored field comes back as it was written.
    let sql = "'); DROP TABLE payments; --";
    let name = "input: SQL in a stored field round-trips";
    let created = call(
        &t.http,
        Method::POST,
        &payments,
        Some(&alice.access),
        Some(json!({"amount": "3.00", "currency": "USD", "recipientId": t.bob.id, "description": sql})),
    )
    .await;
    checks.push(match created {
        Ok((s, body)) if s.is_success() => {
            let id = body["id"].as_str().unwrap_or_default();
            match call(&t.http, Method::GET, &format!("{payments}/{id}"), Some(&alice.access), None).await {
                Ok((s, body)) => {
                    Check::new(name, s.is_success() && body["description"] == sql, answer_line(s, &body, &[200]))
                }
                Err(e) => Check::new(name, false, format!("{e:#}")),
            }
        }
        other => expect_status(name, &other, &[201]),
    });

    // Control characters: 422 naming the field, never a 500 from the database.
    let answer = call(
        &t.http,
        Method::POST,
        &payments,
        Some(&alice.access),
        Some(json!({"amount": "1.00", "currency": "USD", "recipientId": t.bob.id, "description": "nul\u{0}byte"})),
    )
    .await;
    checks.push(names_the_field("input: NUL in a payment description", &answer, "description"));
    let answer = call(
        &t.http,
        Method::POST,
        &signup,
        None,
        Some(json!({"email": t.email("nul"), "password": "Long-enough-pw-1", "name": "nul\u{0}name"})),
    )
    .await;
    checks.push(names_the_field("input: NUL in a sign-up name", &answer, "name"));

    // Malformed, mistyped, deeply nested and oversized bodies.
    checks.push(raw_body(t, "input: malformed JSON", &signup, None, "{\"email\": ", &[400]).await);
    let mistyped = r#"{"email": 5, "password": "x", "name": "y"}"#;
    checks.push(raw_body(t, "input: a field of the wrong type", &signup, None, mistyped, &[400, 422]).await);
    // Nested past serde_json's recursion limit, in the free-form `metadata` of a payment.
    let nested = format!(
        r#"{{"amount": "1.00", "currency": "USD", "recipientId": "x", "metadata": {{"a": {}{}}}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    checks.push(raw_body(t, "input: deeply nested JSON", &payments, Some(&alice.access), &nested, &[400, 422]).await);
    let big = format!(r#"{{"email": "x@example.com", "password": "x", "name": "{}"}}"#, "a".repeat(3 << 20));
    checks.push(raw_body(t, "input: a 3 MB body", &signup, None, &big, &[413]).await);

    // E-mail addresses that look like another.
    let local = format!("security-{}", t.run);
    for (name, email) in [
        ("input: confusable e-mail (Cyrillic a)", format!("{local}-p\u{430}ypal@example.com")),
        ("input: zero-width space in an e-mail", format!("{local}-zero\u{200b}width@example.com")),
    ] {
        let answer = call(
            &t.http,
            Method::POST,
            &signup,
            None,
            Some(json!({"email": email, "password": "Long-enough-pw-1", "name": "Look Alike"})),
        )
        .await;
        checks.push(names_the_field(name, &answer, "email"));
    }
    let answer = call(
        &t.http,
        Method::POST,
        &signup,
        None,
        Some(json!({"email": alice.email.to_uppercase(), "password": "Long-enough-pw-1", "name": "Case Variant"})),
    )
    .await;
    checks.push(expect_status("input: an upper-case copy of an existing e-mail", &answer, &[409]));

    checks.push(enumeration(t).await);
    checks.push(throttling(t).await);
    checks
}

/// The answer is a 422 whose message names `field` and leaks nothing.
fn names_the_field(name: &str, answer: &anyhow::Result<super::Answer>, field: &str) -> Check {
    let mut check = expect_status(name, answer, &[422]);
    if let Ok((_, body)) = answer {
        if check.passed && !message(body).contains(field) {
            check.passed = false;
            check.detail = format!("422, but the message does not name {field:?}: {body}");
        }
    }
    check
}

/// `POST url` with `body` as it is: `expected`, and a message that leaks nothing.
async fn raw_body(t: &Target, name: &str, url: &str, token: Option<&str>, body: &str, expected: &[u16]) -> Check {
    let mut req = t.http.post(url).header("content-type", "application/json").body(body.to_string());
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let sent = req.send().await;
    let answer = match sent {
        Ok(resp) => {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            Ok((status, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))))
        }
        Err(e) => Err(anyhow::Error::new(e)),
    };
    let mut check = expect_status(name, &answer, expected);
    if let Ok((_, body)) = &answer {
        if check.passed && leaks_internals(message(body)) {
            check.passed = false;
            check.detail = format!("refused, but the body leaks internals: {body}");
        }
    }
    check
}

/// A wrong password and an unknown e-mail get the same answer.
async fn enumeration(t: &Target) -> Check {
    let name = "input: the sign-in answer does not tell whether an e-mail exists";
    let signin = format!("{}/api/auth/signin", t.gateway);
    let try_one = |email: String| {
        let http = t.http.clone();
        let signin = signin.clone();
        async move {
            call(&http, Method::POST, &signin, None, Some(json!({"email": email, "password": "Wrong-password-1"})))
                .await
        }
    };
    match (try_one(t.alice.email.clone()).await, try_one(t.email("nobody")).await) {
        (Ok((s1, b1)), Ok((s2, b2))) => {
            let same = s1 == s2 && message(&b1) == message(&b2) && s1.as_u16() == 401;
            Check::new(name, same, format!("existing: {s1} {:?}; unknown: {s2} {:?}", message(&b1), message(&b2)))
        }
        (Err(e), _) | (_, Err(e)) => Check::new(name, false, format!("{e:#}")),
    }
}

/// Wrong passwords for one account straight at the auth service (nginx bypassed) end in a 429.
async fn throttling(t: &Target) -> Check {
    let name = "input: password guessing at the auth service itself is throttled";
    let victim = match sign_up(&t.http, &t.gateway, &t.email("victim")).await {
        Ok(u) => u,
        Err(e) => return Check::new(name, false, format!("{e:#}")),
    };
    let signin = format!("{}/api/auth/signin", t.auth_service);
    for n in 1..=GUESSES {
        let guess = json!({"email": victim.email, "password": format!("Guess-{n}-pw")});
        match call(&t.http, Method::POST, &signin, None, Some(guess)).await {
            Ok((s, _)) if s.as_u16() == 429 => {
                return Check::new(name, true, format!("429 after {} wrong passwords", n - 1)).metric("guesses", n - 1)
            }
            Ok((s, body)) if s.as_u16() != 401 => {
                return Check::new(name, false, format!("guess {n}: {}", answer_line(s, &body, &[401, 429])))
            }
            Ok(_) => {}
            Err(e) => return Check::new(name, false, format!("{e:#}")),
        }
    }
    Check::new(name, false, format!("{GUESSES} wrong passwords in a row, never a 429"))
}
