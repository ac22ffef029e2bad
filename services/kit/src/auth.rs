//! Request authentication: the [`AuthUser`] extractor (Bearer token → verified claims, 401
//! otherwise) and the role guards ([`AuthUser::require`], [`RequireAdmin`]) that answer 403.

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

impl<S> FromRequestParts<S> for AuthUser
where
    JwtKeys: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let token = bearer_token(parts)?;
        let keys = JwtKeys::from_ref(state);
        keys.verify(token).map(AuthUser).map_err(|e| {
            ApiError::Unauthorized(match e {
                JwtError::Expired => "access token expired, refresh it".to_string(),
                other => format!("invalid access token: {other}"),
            })
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
