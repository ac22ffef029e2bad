use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::spawn_app;

#[tokio::test]
async fn signup_then_signin_then_me_returns_the_user() {
    let app = spawn_app().await;
    let res = app.signup("  Ann@Example.com ", "s3cret-pass").await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let signup: Value = res.json().await.unwrap();
    assert_eq!(signup["user"]["email"], "ann@example.com");
    assert_eq!(signup["user"]["role"], "CUSTOMER");
    assert!(signup["user"].get("passwordHash").is_none());

    let res = app.signin("ann@example.com", "s3cret-pass", None).await;
    assert_eq!(res.status(), StatusCode::OK);
    let signin: Value = res.json().await.unwrap();
    let token = signin["accessToken"].as_str().unwrap();
    assert!(signin["refreshToken"].as_str().unwrap().len() >= 32);

    let me: Value = app.me(token).await.json().await.unwrap();
    assert_eq!(me["id"], signup["user"]["id"]);
    assert_eq!(me["name"], "Ann Example");

    let stored: String = sqlx::query_scalar("SELECT password_hash FROM users WHERE email = 'ann@example.com'")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert!(stored.starts_with("$argon2id$"), "passwords are stored as argon2id hashes");
}

#[tokio::test]
async fn a_wrong_password_or_unknown_email_is_refused_with_401() {
    let app = spawn_app().await;
    assert_eq!(app.signup("bob@example.com", "s3cret-pass").await.status(), StatusCode::CREATED);
    let res = app.signin("bob@example.com", "wrong-pass1", None).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    assert_eq!(app.signin("nobody@example.com", "s3cret-pass", None).await.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_duplicate_email_is_refused_with_409() {
    let app = spawn_app().await;
    assert_eq!(app.signup("carol@example.com", "s3cret-pass").await.status(), StatusCode::CREATED);
    let res = app.signup("CAROL@example.com", "0ther-pass").await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "conflict");
    assert!(body["error"]["message"].as_str().unwrap().contains("already exists"));
}

#[tokio::test]
async fn malformed_json_is_refused_with_400_and_a_clear_message() {
    let app = spawn_app().await;
    let res = app
        .client
        .post(app.url("/api/auth/signup"))
        .header("content-type", "application/json")
        .body(r#"{"email": "x@example.com", "password": "#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_request");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("malformed JSON body"), "{message}");

    let res = app.post_json("/api/auth/signup", &json!({"email": "x@example.com"}), None).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let body: Value = res.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("password"), "{body}");
}

#[tokio::test]
async fn signup_input_is_validated_with_422() {
    let app = spawn_app().await;
    for (email, password) in
        [("not-an-email", "s3cret-pass"), ("d@example.com", "short1"), ("d@example.com", "lettersonly")]
    {
        let res = app.signup(email, password).await;
        assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY, "{email} / {password}");
    }
    let res = app
        .post_json(
            "/api/auth/signup",
            &json!({"email": "e@example.com", "password": "s3cret-pass", "name": "E", "role": "ADMIN"}),
            None,
        )
        .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN, "ADMIN cannot be self-assigned");
}

#[tokio::test]
async fn users_are_listed_for_admins_only_and_looked_up_by_themselves_admins_and_services() {
    let app = spawn_app().await;
    let admin = app.new_user(None).await;
    let other = app.new_user(None).await;
    let other_id = other.user["id"].as_str().unwrap();

    // A CUSTOMER cannot read another user (service to service, SPEC §3), only itself, and
    // cannot list users.
    let res =
        app.get(&format!("/api/auth/users/{}", admin.user["id"].as_str().unwrap()), Some(&other.access_token)).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let body = res.text().await.unwrap();
    assert!(!body.contains("Ann Example") && !body.contains("CUSTOMER"), "nothing of the user leaks: {body}");
    let own: Value =
        app.get(&format!("/api/auth/users/{other_id}"), Some(&other.access_token)).await.json().await.unwrap();
    assert_eq!(own["email"], other.user["email"]);
    // Another service, with a service token signed with the shared secret, reads any user.
    let keys = mfe_kit::JwtKeys::new(app.config.jwt_secret.expose());
    let service = keys.issue_service("payments", std::time::Duration::from_secs(60)).unwrap();
    let res = app.get(&format!("/api/auth/users/{}", admin.user["id"].as_str().unwrap()), Some(&service)).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.json::<Value>().await.unwrap()["id"], admin.user["id"]);
    // ...but a service token is no user: `me` refuses it.
    assert_eq!(app.me(&service).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(app.get("/api/auth/users", Some(&other.access_token)).await.status(), StatusCode::FORBIDDEN);
    assert_eq!(app.get("/api/auth/users", None).await.status(), StatusCode::UNAUTHORIZED);

    sqlx::query(r#"UPDATE users SET role = 'ADMIN' WHERE id = $1"#)
        .bind(admin.user["id"].as_str().unwrap())
        .execute(&app.db)
        .await
        .unwrap();
    let signin: Value =
        app.signin(admin.user["email"].as_str().unwrap(), "s3cret-pass", None).await.json().await.unwrap();
    let admin_token = signin["accessToken"].as_str().unwrap();

    let page: Value = app.get("/api/auth/users?page=1&limit=1", Some(admin_token)).await.json().await.unwrap();
    assert_eq!(page["total"], 2);
    assert_eq!(page["totalPages"], 2);
    assert_eq!(page["users"].as_array().unwrap().len(), 1);

    let full: Value = app.get(&format!("/api/auth/users/{other_id}"), Some(admin_token)).await.json().await.unwrap();
    assert_eq!(full["email"], other.user["email"]);
    assert_eq!(app.get("/api/auth/users/no-such-user", Some(admin_token)).await.status(), StatusCode::NOT_FOUND);
}
