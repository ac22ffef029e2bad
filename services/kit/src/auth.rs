//! Request authentication: the [`AuthUser`] extractor (Bearer token → verified claims, 401
//! otherwise) and the role guards ([`AuthUser::require`], [`RequireAdmin`]) that answer 403;
//! [`Caller`] for the service-to-service endpoints, which also take service tokens.
//!
//! A refused token answers a generic 401 (`invalid access token`, or `access token expired,
//! refresh it`, or `access token revoked, sign in again`): why exactly (the decoder's message)
//! goes to a debug log line, never to the client and never with the token.

use axum::{
    extract::{FromRef, FromRequestParts},
    http::{header::AUTHORIZATION, request::Parts},
};

use crate::{
    error::ApiError,
    jwt::{Claims, JwtError, JwtKeys, Role},
};

/// The authenticated caller: the verified claims of its Bearer token. Needs `JwtKeys` in the
/// router state (via `FromRef`).
#[derive(Debug, Clone)]
pub struct AuthUser(pub Claims);

impl AuthUser {
    /// The user id (`sub`).
    pub fn id(&self) -> &str {
        &self.0.sub
    }

    pub fn role(&self) -> Role {
        self.0.role
    }

    /// The device session the token belongs to, if any.
    pub fn device_id(&self) -> Option<&str> {
        self.0.device_id.as_deref()
    }

    /// 403 unless the caller has `role`.
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.0.role == role {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!("this action requires role {role}")))
        }
    }

    /// Whether the caller is `user_id` itself or an admin.
    pub fn is_self_or_admin(&self, user_id: &str) -> bool {
        self.0.sub == user_id || self.0.role == Role::Admin
    }
}

/// The Bearer token of a request, or a 401 saying what is missing.
pub fn bearer_token(parts: &Parts) -> Result<&str, ApiError> {
    let value = parts
        .headers
        .get(AUTHORIZATION)
        .ok_or_else(|| ApiError::Unauthorized("missing authorization header (expected: Bearer <token>)".into()))?;
    let value = value.to_str().map_err(|_| ApiError::Unauthorized("authorization header is not valid text".into()))?;
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => Ok(token.trim()),
        _ => Err(ApiError::Unauthorized("authorization header must be: Bearer <token>".into())),
    }
}

/// The claims of the request's Bearer token, verified and checked against the session
/// denylist, or the generic 401.
async fn authenticate(parts: &Parts, keys: &JwtKeys) -> Result<Claims, ApiError> {
    let token = bearer_token(parts)?;
    keys.authenticate(token).await.map_err(|e| {
        tracing::debug!(reason = %e, "access token refused");
        refusal(&e)
    })
}

/// The 401 a client sees for a refused token: what to do, not the decoder's internals.
pub fn refusal(e: &JwtError) -> ApiError {
    ApiError::Unauthorized(
        match e {
            JwtError::Expired => "access token expired, refresh it",
            JwtError::Revoked => "access token revoked, sign in again",
            _ => "invalid access token",
        }
        .to_string(),
    )
}

impl<S> FromRequestParts<S> for AuthUser
where
    JwtKeys: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let claims = authenticate(parts, &JwtKeys::from_ref(state)).await?;
        if claims.is_service() {
            // A service token is no user: it only opens service-to-service endpoints.
            tracing::debug!(service = claims.svc.as_deref(), "service token refused on a user endpoint");
            return Err(ApiError::Unauthorized("invalid access token".into()));
        }
        Ok(AuthUser(claims))
    }
}

/// Who calls a service-to-service endpoint: a user (its access token) or another service (a
/// service token, [`JwtKeys::issue_service`]).
#[derive(Debug, Clone)]
pub enum Caller {
    User(AuthUser),
    /// The name of the calling service.
    Service(String),
}

impl<S> FromRequestParts<S> for Caller
where
    JwtKeys: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let claims = authenticate(parts, &JwtKeys::from_ref(state)).await?;
        Ok(match claims.svc.clone() {
            Some(service) => Caller::Service(service),
            None => Caller::User(AuthUser(claims)),
        })
    }
}

/// An [`AuthUser`] that must be an ADMIN (401 without a valid token, 403 for other roles).
#[derive(Debug, Clone)]
pub struct RequireAdmin(pub AuthUser);

impl<S> FromRequestParts<S> for RequireAdmin
where
    JwtKeys: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let user = AuthUser::from_request_parts(parts, state).await?;
        user.require(Role::Admin)?;
        Ok(RequireAdmin(user))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::{body::Body, http::Request, routing::get, Router};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";

    async fn call(router: &Router, token: &str) -> (u16, String) {
        let req = Request::get("/").header(AUTHORIZATION, format!("Bearer {token}")).body(Body::empty()).unwrap();
        let res = router.clone().oneshot(req).await.unwrap();
        let status = res.status().as_u16();
        (status, String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap())
    }

    #[tokio::test]
    async fn a_refused_token_answers_a_generic_401_without_the_decoder_internals() {
        let keys = JwtKeys::new(SECRET);
        let router = Router::new().route("/", get(|_: AuthUser| async { "ok" })).with_state(keys.clone());
        // Signed with the right secret but without `exp`: the decoder says "missing field `exp`".
        let now = chrono::Utc::now().timestamp();
        let no_exp = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &serde_json::json!({"sub": "u1", "role": "ADMIN", "iat": now, "jti": "j"}),
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        for token in [no_exp.as_str(), "not.a.token", "eyJhbGciOiJIUzI1NiJ9.e30.x"] {
            let (status, body) = call(&router, token).await;
            assert_eq!(status, 401);
            let message = serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"]["message"].clone();
            assert_eq!(message, "invalid access token", "{token}: {body}");
        }
        let (token, _) = keys.issue("u1", Role::Customer, Duration::from_secs(60), None).unwrap();
        assert_eq!(call(&router, &token).await.0, 200);
    }

    #[tokio::test]
    async fn a_service_token_opens_caller_endpoints_only() {
        let keys = JwtKeys::new(SECRET);
        let router = Router::new()
            .route("/", get(|_: AuthUser| async { "user" }))
            .route(
                "/caller",
                get(|caller: Caller| async move {
                    match caller {
                        Caller::Service(name) => format!("service {name}"),
                        Caller::User(user) => format!("user {}", user.id()),
                    }
                }),
            )
            .with_state(keys.clone());
        let service = keys.issue_service("payments", Duration::from_secs(60)).unwrap();
        assert_eq!(call(&router, &service).await.0, 401, "a service token is no user");
        let req =
            Request::get("/caller").header(AUTHORIZATION, format!("Bearer {service}")).body(Body::empty()).unwrap();
        let res = router.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status().as_u16(), 200);
        assert_eq!(&res.into_body().collect().await.unwrap().to_bytes()[..], b"service payments");
    }
}
