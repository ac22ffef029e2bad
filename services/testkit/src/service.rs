//! A service under test: its configuration on port 0 with a fresh database, and a stand-in
//! for the auth service's account lookup.

use mfe_core::Service;
use mfe_kit::config::ServiceConfig;

use crate::db::fresh_database;

/// The configuration of `service` from the environment, on port 0 with a fresh database.
pub async fn test_config(service: Service) -> ServiceConfig {
    let mut config = ServiceConfig::from_env(service).expect("test configuration");
    config.port = 0;
    config.bind = "127.0.0.1".into();
    config.database_url = fresh_database(&config.database_url).await;
    config
}

/// A stand-in for the auth service's `GET /api/auth/users/{id}` on a free port: the ids in
/// `known` exist (200), any other is 404; only service tokens signed with `jwt_secret` are
/// answered (401 otherwise), as auth does. Returns its base URL, for `ServiceUrls::auth`.
pub async fn fake_auth_users(jwt_secret: &str, known: Vec<String>) -> String {
    use axum::{extract::Path, http::StatusCode, routing::get, Router};

    use mfe_kit::{auth::Caller, JwtKeys};
    let app = Router::new()
        .route(
            "/api/auth/users/{id}",
            get(move |caller: Caller, Path(id): Path<String>| {
                let known = known.clone();
                async move {
                    match caller {
                        Caller::Service(_) if known.contains(&id) => StatusCode::OK,
                        Caller::Service(_) => StatusCode::NOT_FOUND,
                        Caller::User(_) => StatusCode::FORBIDDEN,
                    }
                }
            }),
        )
        .with_state(JwtKeys::new(jwt_secret));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the fake auth service");
    let url = format!("http://{}", listener.local_addr().expect("bound"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    url
}
