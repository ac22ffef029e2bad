//! Access tokens: HS256 JWTs signed with `JWT_SECRET`. This is the one place that issues and
//! verifies them; the services and the gateway all call [`JwtKeys`].
//!
//! The algorithm is pinned to HS256 (a token whose header names another algorithm, `none`
//! included, is rejected), `exp` is required and enforced with a small leeway for clock skew.

use std::{fmt, str::FromStr, sync::Arc, time::Duration};

use jsonwebtoken::{decode, encode, errors::ErrorKind, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Clock skew tolerated when checking `exp`, in seconds. Small on purpose: a stolen, expired
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
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwtError {
    #[error("token expired")]
    Expired,
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
        validation.set_required_spec_claims(&["exp", "sub", "iat"]);
        Self {
            inner: Arc::new(Keys {
                encoding: EncodingKey::from_secret(secret.as_bytes()),
                decoding: DecodingKey::from_secret(secret.as_bytes()),
                validation,
            }),
        }
    }

    /// Issues an access token for `user_id` valid for `ttl`; returns the token and its claims.
    pub fn issue(
        &self,
        user_id: &str,
        role: Role,
        ttl: Duration,
        device_id: Option<String>,
    ) -> Result<(String, Claims), JwtError> {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: user_id.to_string(),
            role,
            iat: now,
            exp: now + ttl.as_secs() as i64,
            jti: uuid::Uuid::new_v4().to_string(),
            device_id,
        };
        let token = encode(&Header::new(Algorithm::HS256), &claims, &self.inner.encoding)
            .map_err(|e| JwtError::Signing(e.to_string()))?;
        Ok((token, claims))
    }

    /// Verifies signature, algorithm and expiry of `token` and returns its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, JwtError> {
        decode::<Claims>(token, &self.inner.decoding, &self.inner.validation).map(|data| data.claims).map_err(|e| {
            match e.kind() {
                ErrorKind::ExpiredSignature => JwtError::Expired,
                ErrorKind::InvalidSignature => JwtError::BadSignature,
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => JwtError::WrongAlgorithm,
                _ => JwtError::Malformed(e.to_string()),
            }
        })
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
        let claims =
            Claims { sub: "u1".into(), role: Role::Admin, iat: now, exp: now + 600, jti: "j".into(), device_id: None };
        let token =
            encode(&Header::new(Algorithm::HS512), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap();
        assert_eq!(JwtKeys::new(SECRET).verify(&token), Err(JwtError::WrongAlgorithm));
    }
}
