//! Token and access attacks: what a forged, altered, stale or revoked token gets, and what a
//! valid customer token must not reach.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde_json::{json, Value};

use super::{call, expect_status, leaks_internals, message, sign_up, Target};
use crate::report::Check;

const REFUSED: &[u16] = &[401];
const FORBIDDEN: &[u16] = &[401, 403, 404];

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Claims of an access token for `sub`, adjusted by `edit`.
fn claims(sub: &str, role: &str, edit: impl FnOnce(&mut Value)) -> Value {
    let mut c = json!({"sub": sub, "role": role, "iat": now(), "exp": now() + 600,
        "jti": uuid::Uuid::new_v4().to_string()});
    edit(&mut c);
    c
}

/// `claims` signed with `secret` and `alg`.
fn sign(claims: &Value, alg: Algorithm, secret: &str) -> String {
    encode(&Header::new(alg), claims, &EncodingKey::from_secret(secret.as_bytes())).expect("claims are JSON")
}

/// A token with header `{"alg":"none"}` and no signature.
fn unsigned(claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{payload}.")
}

/// `token` with its payload's `role` set to ADMIN and the original signature kept.
fn with_role_changed(token: &str) -> Option<String> {
    let mut parts = token.split('.');
    let (header, payload, signature) = (parts.next()?, parts.next()?, parts.next()?);
    let mut claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    claims["role"] = json!("ADMIN");
    Some(format!("{header}.{}.{signature}", URL_SAFE_NO_PAD.encode(claims.to_string())))
}

/// `GET /api/payments` with `token` must be refused with a 401 whose message leaks nothing.
async fn refused(t: &Target, name: &str, token: &str) -> Check {
    let answer = call(&t.http, Method::GET, &format!("{}/api/payments", t.gateway), Some(token), None).await;
    let mut check = expect_status(name, &answer, REFUSED);
    if let Ok((_, body)) = &answer {
        if check.passed && leaks_internals(message(body)) {
            check.passed = false;
            check.detail = format!("refused, but the body leaks internals: {body}");
        }
    }
    check
}

pub async fn run(t: &Target) -> Vec<Check> {
    let alice = &t.alice;
    let secret = t.jwt_secret.as_str();
    let mut checks = Vec::new();

    let answer = call(&t.http, Method::GET, &format!("{}/api/payments", t.gateway), None, None).await;
    checks.push(expect_status("tokens: no token", &answer, REFUSED));
    checks.push(refused(t, "tokens: alg none", &unsigned(&claims(&alice.id, "ADMIN", |_| {}))).await);
    checks.push(
        refused(
            t,
            "tokens: HS512 with the stack's secret",
            &sign(&claims(&alice.id, "ADMIN", |_| {}), Algorithm::HS512, secret),
        )
        .await,
    );
    checks.push(
        refused(
            t,
            "tokens: signed with another secret",
            &sign(&claims(&alice.id, "ADMIN", |_| {}), Algorithm::HS256, "an-attackers-secret-of-sufficient-length"),
        )
        .await,
    );
    match with_role_changed(&alice.access) {
        Some(token) => checks.push(refused(t, "tokens: role claim changed after signing", &token).await),
        None => {
            checks.push(Check::new("tokens: role claim changed after signing", false, "alice's token is not a JWT"))
        }
    }
    checks.push(refused(t, "tokens: garbage", "abc.def.ghi").await);
    let expired = sign(
        &claims(&alice.id, "CUSTOMER", |c| {
            c["iat"] = json!(now() - 3600);
            c["exp"] = json!(now() - 600);
        }),
        Algorithm::HS256,
        secret,
    );
    checks.push(refused(t, "tokens: expired", &expired).await);
    let future_iat = sign(&claims(&alice.id, "CUSTOMER", |c| c["iat"] = json!(now() + 3600)), Algorithm::HS256, secret);
    checks.push(refused(t, "tokens: iat an hour ahead", &future_iat).await);
    let future_nbf = sign(&claims(&alice.id, "CUSTOMER", |c| c["nbf"] = json!(now() + 3600)), Algorithm::HS256, secret);
    checks.push(refused(t, "tokens: nbf an hour ahead", &future_nbf).await);
    let no_exp = sign(
        &claims(&alice.id, "CUSTOMER", |c| {
            c.as_object_mut().map(|o| o.remove("exp"));
        }),
        Algorithm::HS256,
        secret,
    );
    checks.push(refused(t, "tokens: no exp", &no_exp).await);

    // A valid signature for a user that was never signed up.
    let ghost = sign(&claims(&uuid::Uuid::new_v4().to_string(), "CUSTOMER", |_| {}), Algorithm::HS256, secret);
    let answer = call(
        &t.http,
        Method::POST,
        &format!("{}/api/payments", t.gateway),
        Some(&ghost),
        Some(json!({"amount": "1.00", "currency": "USD", "recipientId": alice.id, "description": "ghost"})),
    )
    .await;
    checks.push(expect_status("tokens: a user that does not exist creates a payment", &answer, &[401, 403]));

    checks.push(after_logout(t).await);

    // Access with a valid customer token.
    let answer = call(
        &t.http,
        Method::GET,
        &format!("{}/api/payments/{}", t.gateway, t.bobs_payment),
        Some(&alice.access),
        None,
    )
    .await;
    checks.push(expect_status("access: another user's payment", &answer, FORBIDDEN));
    let answer = call(&t.http, Method::GET, &format!("{}/api/admin/users", t.gateway), Some(&alice.access), None).await;
    checks.push(expect_status("access: the admin API as a customer", &answer, &[403]));
    let answer =
        call(&t.http, Method::GET, &format!("{}/api/auth/users/{}", t.gateway, t.bob.id), Some(&alice.access), None)
            .await;
    checks.push(expect_status("access: another user's account by id", &answer, FORBIDDEN));
    let answer = call(
        &t.http,
        Method::PATCH,
        &format!("{}/api/payments/{}/status", t.gateway, t.bobs_payment),
        Some(&t.bob.access),
        Some(json!({"status": "completed"})),
    )
    .await;
    checks.push(expect_status("access: a customer moves its own payment", &answer, &[403]));
    checks
}

/// Signs up a user, logs out, and uses the access token of the ended session.
async fn after_logout(t: &Target) -> Check {
    let name = "tokens: access token after logout";
    let user = match sign_up(&t.http, &t.gateway, &t.email("logout")).await {
        Ok(u) => u,
        Err(e) => return Check::new(name, false, format!("{e:#}")),
    };
    let logout = call(
        &t.http,
        Method::POST,
        &format!("{}/api/auth/logout", t.gateway),
        Some(&user.access),
        Some(json!({"refreshToken": user.refresh})),
    )
    .await;
    match &logout {
        Ok((s, _)) if s.is_success() => refused(t, name, &user.access).await,
        _ => expect_status(&format!("{name} (the logout itself)"), &logout, &[200, 204]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_role_keeps_the_signature_and_changes_only_the_role() {
        let token = sign(&claims("u1", "CUSTOMER", |_| {}), Algorithm::HS256, "s");
        let changed = with_role_changed(&token).unwrap();
        assert_eq!(token.rsplit('.').next(), changed.rsplit('.').next());
        let payload = changed.split('.').nth(1).unwrap();
        let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        assert_eq!(claims["role"], "ADMIN");
        assert_eq!(claims["sub"], "u1");
        assert!(with_role_changed("not-a-jwt").is_none());
    }

    #[test]
    fn an_unsigned_token_has_an_empty_signature_and_alg_none() {
        let token = unsigned(&claims("u1", "ADMIN", |_| {}));
        let header = token.split('.').next().unwrap();
        assert!(String::from_utf8(URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap().contains("\"none\""));
        assert!(token.ends_with('.'));
    }
}
