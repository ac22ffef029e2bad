//! Refresh from two tabs: concurrent refreshes of one refresh token, launched together against
//! the real service and PostgreSQL, on both sides of the grace window.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::helpers::{spawn_app_with_grace, TestApp};

/// The refresh tokens of the family `refresh_token` belongs to: (stored token, live).
async fn family_of(app: &TestApp, refresh_token: &str) -> Vec<(String, bool)> {
    let hash = hex::encode(Sha256::digest(refresh_token.as_bytes()));
    sqlx::query_as(
        "SELECT token, rotated_at IS NULL AND revoked_at IS NULL FROM refresh_tokens
         WHERE family_id = (SELECT family_id FROM refresh_tokens WHERE token = $1) ORDER BY created_at",
    )
    .bind(hash)
    .fetch_all(&app.db)
    .await
    .unwrap()
}

/// The status and body of a refresh.
async fn refresh(app: &TestApp, token: &str) -> (StatusCode, Value) {
    let res = app.refresh(token).await;
    (res.status(), res.json().await.unwrap())
}

#[tokio::test]
async fn two_tabs_refreshing_one_token_at_once_both_succeed_and_share_one_live_family() {
    let app = spawn_app_with_grace(Duration::from_secs(5)).await;
    let signed = app.new_user(Some("laptop")).await;

    // Round 1: two tabs present the same token at the same moment.
    let ((status_a, tab_a), (status_b, tab_b)) =
        tokio::join!(refresh(&app, &signed.refresh_token), refresh(&app, &signed.refresh_token));
    assert_eq!((status_a, status_b), (StatusCode::OK, StatusCode::OK), "{tab_a} {tab_b}");
    let successor = tab_a["refreshToken"].as_str().unwrap().to_string();
    assert_eq!(tab_b["refreshToken"], successor.as_str(), "both tabs hold the same successor");
    assert_ne!(successor, signed.refresh_token);
    for tab in [&tab_a, &tab_b] {
        assert_eq!(app.me(tab["accessToken"].as_str().unwrap()).await.status(), StatusCode::OK);
    }
    // One family, one live token: the successor, stored only as its hash.
    let family = family_of(&app, &successor).await;
    let successor_hash = hex::encode(Sha256::digest(successor.as_bytes()));
    assert_eq!(family.len(), 2, "one rotation, not two: {family:?}");
    assert_eq!(family.iter().filter(|(_, live)| *live).collect::<Vec<_>>(), [&(successor_hash, true)]);
    assert!(family.iter().all(|(token, _)| token != &successor && token != &signed.refresh_token), "no raw token");

    // Round 2: four tabs at once, on the shared successor; all get the next one.
    let round: Vec<(StatusCode, Value)> = futures::future::join_all((0..4).map(|_| refresh(&app, &successor))).await;
    assert!(round.iter().all(|(s, _)| *s == StatusCode::OK), "{round:?}");
    let next = round[0].1["refreshToken"].as_str().unwrap().to_string();
    assert!(round.iter().all(|(_, body)| body["refreshToken"] == next.as_str()), "{round:?}");
    let family = family_of(&app, &next).await;
    assert_eq!((family.len(), family.iter().filter(|(_, live)| *live).count()), (3, 1), "{family:?}");

    // The family lives on: the next rotation works, and a successor already rotated gives the
    // first token no more grace — presenting it now is a reuse, even inside the window.
    let (status, third) = refresh(&app, &next).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = refresh(&app, &signed.refresh_token).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("already used"), "{body}");
    assert_eq!(refresh(&app, third["refreshToken"].as_str().unwrap()).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_reuse_after_the_grace_window_still_revokes_the_family() {
    let grace = Duration::from_millis(800);
    let app = spawn_app_with_grace(grace).await;
    let signed = app.new_user(None).await;
    let (status, first) = refresh(&app, &signed.refresh_token).await;
    assert_eq!(status, StatusCode::OK);
    let successor = first["refreshToken"].as_str().unwrap();

    tokio::time::sleep(grace + Duration::from_millis(300)).await;
    // Two copies of the rotated token come back together after the window: both refused.
    let ((status_a, body_a), (status_b, body_b)) =
        tokio::join!(refresh(&app, &signed.refresh_token), refresh(&app, &signed.refresh_token));
    assert_eq!((status_a, status_b), (StatusCode::UNAUTHORIZED, StatusCode::UNAUTHORIZED), "{body_a} {body_b}");
    assert!([&body_a, &body_b].iter().any(|b| b["error"]["message"].as_str().unwrap().contains("already used")));
    // … and the family is dead: the successor too.
    let (status, body) = refresh(&app, successor).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body["error"]["message"].as_str().unwrap().contains("revoked"), "{body}");
    assert!(family_of(&app, successor).await.iter().all(|(_, live)| !live));
}

#[tokio::test]
async fn with_the_grace_window_off_the_second_of_two_concurrent_refreshes_is_a_reuse() {
    let app = spawn_app_with_grace(Duration::ZERO).await;
    let signed = app.new_user(None).await;
    let ((status_a, tab_a), (status_b, tab_b)) =
        tokio::join!(refresh(&app, &signed.refresh_token), refresh(&app, &signed.refresh_token));
    let mut statuses = [status_a, status_b];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::OK, StatusCode::UNAUTHORIZED], "the two refreshes serialise: {tab_a} {tab_b}");
    let winner = if status_a == StatusCode::OK { &tab_a } else { &tab_b };
    let successor = winner["refreshToken"].as_str().unwrap();
    assert_eq!(refresh(&app, successor).await.0, StatusCode::UNAUTHORIZED, "the loser's reuse revoked the family");
}
