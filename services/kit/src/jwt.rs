//! Access tokens: HS256 JWTs signed with `JWT_SECRET`. This is the one place that issues and
//! verifies them; the services and the gateway all call [`JwtKeys`].
//!
//! The algorithm is pinned to HS256 (a token whose header names another algorithm, `none`
//! included, is rejected), `exp` is required and enforced with a small leeway for clock skew,
//! and a token is refused before its time: `iat` (required) or `nbf` (when present) more than
//! the leeway in the future.
//!
//! Two kinds of tokens share the secret: user access tokens (auth issues them at sign-in and
//! refresh; they carry `sid`, the session they belong to, so logout can end them, see
//! [`crate::revocation`]) and short-lived service tokens ([`JwtKeys::issue_service`], with the
//! `svc` claim), which a service presents to another's service-to-service endpoints. The user
//! extractors refuse service tokens and the other way round.

use std::{fmt, str::FromStr, sync::Arc, time::Duration};

use jsonwebtoken::{decode, encode, errors::ErrorKind, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Clock skew tolerated when checking `exp`, `nbf` and `iat`, in seconds. Small on purpose: a stolen, expired
/// token should stop working almost at once.
pub const LEEWAY_SECS: u64 = 5;

/// The role of a user, as stored in `users.role` and carried in the `role` claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Role {
    Admin,
    Customer,
    Vendor,
}

impl Role {
    /// The upper-case spelling used in the database enum and in tokens.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "ADMIN",
            Role::Customer => "CUSTOMER",
            Role::Vendor => "VENDOR",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ADMIN" => Ok(Role::Admin),
            "CUSTOMER" => Ok(Role::Customer),
            "VENDOR" => Ok(Role::Vendor),
            other => Err(format!("unknown role {other:?} (expected ADMIN, CUSTOMER or VENDOR)")),
        }
    }
}

/// The claims of an access token (SPEC §4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    pub role: Role,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
    /// Issued at, seconds since the epoch.
    pub iat: i64,
    /// Unique token id, so a single token can be told apart in logs and revocation lists.
    pub jti: String,
    /// The device session the token belongs to, when the client registered one.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "deviceId")]
    pub device_id: Option<String>,
    /// Not before, seconds since the epoch (auth does not set it; honoured when present).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// The session (refresh-token family) the token was issued for; logout and every other
    /// revocation of the session deny it (see [`crate::revocation`]). Absent on tokens issued
    /// before sessions were tracked, which stay valid until they expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// Set on service tokens only: the name of the calling service (`sub` is `service:<name>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub svc: Option<String>,
}

impl Claims {
    /// Whether this is a service token ([`JwtKeys::issue_service`]) rather than a user's.
    pub fn is_service(&self) -> bool {
        self.svc.is_some()
    }
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwtError {
    #[error("token expired")]
    Expired,
    #[error("token is not valid yet (iat or nbf in the future)")]
    NotYetValid,
    #[error("token was revoked (its session ended)")]
    Revoked,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token algorithm is not HS256")]
    WrongAlgorithm,
    #[error("token is malformed: {0}")]
    Malformed(String),
    #[error("cannot sign token: {0}")]
    Signing(String),
}

/// Signing and verification keys derived from the shared secret. Cheap to clone.
#[derive(Clone)]
pub struct JwtKeys {
    inner: Arc<Keys>,
}

struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    /// The denylist of ended sessions, checked by [`JwtKeys::authenticate`]; `None` without
    /// Redis (tokens are then valid until they expire).
    revocations: Option<crate::revocation::Revocations>,
}

impl fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JwtKeys([redacted])")
    }
}

impl JwtKeys {
    /// Keys for HS256 with `secret`.
    pub fn new(secret: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub", "iat"]);
        Self {
            inner: Arc::new(Keys {
                encoding: EncodingKey::from_secret(secret.as_bytes()),
                decoding: DecodingKey::from_secret(secret.as_bytes()),
                validation,
                revocations: None,
            }),
        }
    }

    /// These keys, with [`JwtKeys::authenticate`] also refusing the tokens of sessions in
    /// `revocations` (`None`: no denylist, as [`JwtKeys::new`]).
    pub fn with_revocations(self, revocations: Option<crate::revocation::Revocations>) -> Self {
        let keys = &self.inner;
        Self {
            inner: Arc::new(Keys {
                encoding: keys.encoding.clone(),
                decoding: keys.decoding.clone(),
                validation: keys.validation.clone(),
                revocations,
            }),
        }
    }

    /// The denylist of ended sessions these keys check, if any.
    pub fn revocations(&self) -> Option<&crate::revocation::Revocations> {
        self.inner.revocations.as_ref()
    }

    /// Issues an access token for `user_id` valid for `ttl`, without a session; returns the
    /// token and its claims.
    pub fn issue(
        &self,
        user_id: &str,
        role: Role,
        ttl: Duration,
        device_id: Option<String>,
    ) -> Result<(String, Claims), JwtError> {
        self.sign(Claims::new(user_id, role, ttl, device_id))
    }

    /// Issues an access token of session `session_id` (the refresh-token family) for `user_id`.
    pub fn issue_for_session(
        &self,
        user_id: &str,
        role: Role,
        ttl: Duration,
        device_id: Option<String>,
        session_id: &str,
    ) -> Result<(String, Claims), JwtError> {
        self.sign(Claims { sid: Some(session_id.to_string()), ..Claims::new(user_id, role, ttl, device_id) })
    }

    /// Issues a service token for `service` valid for `ttl` (keep it short: a minute). Its
    /// `sub` is `service:<service>`, its role the least privileged one; user extractors refuse
    /// it ([`crate::auth::AuthUser`]), [`crate::auth::Caller`] accepts it.
    pub fn issue_service(&self, service: &str, ttl: Duration) -> Result<String, JwtError> {
        let claims = Claims {
            svc: Some(service.to_string()),
            ..Claims::new(&format!("service:{service}"), Role::Customer, ttl, None)
        };
        self.sign(claims).map(|(token, _)| token)
    }

    fn sign(&self, claims: Claims) -> Result<(String, Claims), JwtError> {
        let token = encode(&Header::new(Algorithm::HS256), &claims, &self.inner.encoding)
            .map_err(|e| JwtError::Signing(e.to_string()))?;
        Ok((token, claims))
    }

    /// Verifies signature, algorithm, expiry and issue time (`iat`, `nbf`) of `token` and
    /// returns its claims. Does not consult the denylist: see [`JwtKeys::authenticate`].
    pub fn verify(&self, token: &str) -> Result<Claims, JwtError> {
        let claims = decode::<Claims>(token, &self.inner.decoding, &self.inner.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => JwtError::Expired,
                ErrorKind::ImmatureSignature => JwtError::NotYetValid,
                ErrorKind::InvalidSignature => JwtError::BadSignature,
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => JwtError::WrongAlgorithm,
                _ => JwtError::Malformed(e.to_string()),
            })?;
        // jsonwebtoken checks `nbf` but not `iat`: a token issued in the future was minted on a
        // wrong clock or by someone planning ahead.
        if claims.iat > chrono::Utc::now().timestamp() + LEEWAY_SECS as i64 {
            return Err(JwtError::NotYetValid);
        }
        Ok(claims)
    }

    /// [`JwtKeys::verify`], then refuses a token whose session was ended (logout, device
    /// revoke, refresh-token reuse). While Redis cannot answer the token is accepted (fail
    /// open, with a warning and `access_token_revocation_unchecked_total`): access tokens live
    /// 15 minutes, and a Redis outage must not log every user out.
    pub async fn authenticate(&self, token: &str) -> Result<Claims, JwtError> {
        let claims = self.verify(token)?;
        if let (Some(sid), Some(revocations)) = (&claims.sid, &self.inner.revocations) {
            if revocations.is_revoked(sid).await {
                return Err(JwtError::Revoked);
            }
        }
        Ok(claims)
    }
}

impl Claims {
    /// The claims of a user token issued now for `ttl`, without a session.
    fn new(user_id: &str, role: Role, ttl: Duration, device_id: Option<String>) -> Self {
        let now = chrono::Utc::now().timestamp();
        Claims {
            sub: user_id.to_string(),
            role,
            iat: now,
            exp: now + ttl.as_secs() as i64,
            jti: uuid::Uuid::new_v4().to_string(),
            device_id,
            nbf: None,
            sid: None,
            svc: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";

    fn b64(bytes: &[u8]) -> String {
        // URL-safe base64 without padding, enough for hand-made test tokens.
        const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            let chars = [(n >> 18) & 63, (n >> 12) & 63, (n >> 6) & 63, n & 63];
            for c in chars.iter().take(chunk.len() + 1) {
                out.push(TABLE[*c as usize] as char);
            }
        }
        out
    }

    #[test]
    fn an_issued_token_verifies_and_carries_its_claims() {
        let keys = JwtKeys::new(SECRET);
        let (token, claims) = keys.issue("u1", Role::Vendor, Duration::from_secs(60), Some("d1".into())).unwrap();
        let verified = keys.verify(&token).unwrap();
        assert_eq!(verified, claims);
        assert_eq!(verified.role, Role::Vendor);
        assert_eq!(verified.device_id.as_deref(), Some("d1"));
    }

    #[test]
    fn a_token_signed_with_another_secret_is_rejected() {
        let (token, _) = JwtKeys::new("another-secret-another-secret-another")
            .issue("u1", Role::Admin, Duration::from_secs(60), None)
            .unwrap();
        assert_eq!(JwtKeys::new(SECRET).verify(&token), Err(JwtError::BadSignature));
    }

    #[test]
    fn an_expired_token_is_rejected_beyond_the_leeway() {
        let keys = JwtKeys::new(SECRET);
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: "u1".into(),
            role: Role::Customer,
            iat: now - 120,
            exp: now - 30,
            jti: "j".into(),
            device_id: None,
            nbf: None,
            sid: None,
            svc: None,
        };
        let token =
            encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap();
        assert_eq!(keys.verify(&token), Err(JwtError::Expired));
    }

    #[test]
    fn an_alg_none_token_is_rejected() {
        let now = chrono::Utc::now().timestamp();
        let header = b64(br#"{"alg":"none","typ":"JWT"}"#);
        let payload =
            b64(format!(r#"{{"sub":"u1","role":"ADMIN","exp":{},"iat":{now},"jti":"x"}}"#, now + 600).as_bytes());
        let token = format!("{header}.{payload}.");
        assert!(JwtKeys::new(SECRET).verify(&token).is_err());
    }

    #[test]
    fn an_hs512_token_with_the_right_secret_is_rejected() {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims::new("u1", Role::Admin, Duration::from_secs(600), None);
        assert!(claims.iat >= now);
        let token =
            encode(&Header::new(Algorithm::HS512), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap();
        assert_eq!(JwtKeys::new(SECRET).verify(&token), Err(JwtError::WrongAlgorithm));
    }

    fn signed(claims: &Claims) -> String {
        encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
    }

    #[test]
    fn a_token_issued_or_valid_only_in_the_future_is_rejected_beyond_the_leeway() {
        let keys = JwtKeys::new(SECRET);
        let now = chrono::Utc::now().timestamp();
        let base = Claims::new("u1", Role::Customer, Duration::from_secs(7200), None);
        let future_iat = Claims { iat: now + 3600, ..base.clone() };
        assert_eq!(keys.verify(&signed(&future_iat)), Err(JwtError::NotYetValid), "iat an hour ahead");
        let future_nbf = Claims { nbf: Some(now + 3600), ..base.clone() };
        assert_eq!(keys.verify(&signed(&future_nbf)), Err(JwtError::NotYetValid), "nbf an hour ahead");
        // Within the leeway (a clock slightly ahead) both pass, as does a past nbf.
        let skewed = Claims { iat: now + 2, nbf: Some(now + 2), ..base.clone() };
        assert!(keys.verify(&signed(&skewed)).is_ok());
        let past_nbf = Claims { nbf: Some(now - 60), ..base };
        assert!(keys.verify(&signed(&past_nbf)).is_ok());
    }

    #[test]
    fn session_and_service_tokens_carry_their_claims_and_old_tokens_still_verify() {
        let keys = JwtKeys::new(SECRET);
        let (token, _) = keys.issue_for_session("u1", Role::Vendor, Duration::from_secs(60), None, "fam-1").unwrap();
        let claims = keys.verify(&token).unwrap();
        assert_eq!(claims.sid.as_deref(), Some("fam-1"));
        assert!(!claims.is_service());
        let service = keys.verify(&keys.issue_service("payments", Duration::from_secs(60)).unwrap()).unwrap();
        assert_eq!(service.svc.as_deref(), Some("payments"));
        assert_eq!(service.sub, "service:payments");
        assert!(service.is_service());
        // A token of before sessions (no sid, nbf, svc) still verifies.
        let now = chrono::Utc::now().timestamp();
        let old = format!(r#"{{"sub":"u1","role":"ADMIN","exp":{},"iat":{now},"jti":"x"}}"#, now + 600);
        let old: Claims = serde_json::from_str(&old).unwrap();
        assert_eq!(keys.verify(&signed(&old)).unwrap().sid, None);
    }
}
