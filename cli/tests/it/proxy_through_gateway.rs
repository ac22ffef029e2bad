//! `mfe test proxy` through a gateway in front of the real auth, payments and profile services.

use crate::proxy_support;

#[tokio::test]
async fn sign_in_get_put_patch_a_streamed_upload_and_json_errors_pass_through_the_gateway() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let stack = proxy_support::spawn_stack().await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let checks = mfe::proxy_test::suite(&http, "gateway", &stack.gateway, 8).await;
    let names: Vec<&str> = checks.iter().map(|c| c.name.as_str()).collect();
    for expected in [
        "sign-in (POST)",
        "GET /api/auth/me",
        "PUT /api/profile/me",
        "PATCH /api/payments/{id}/status",
        "streamed upload",
    ] {
        assert!(names.iter().any(|n| n.ends_with(expected)), "no `{expected}` check in {names:?}");
    }
    let failed: Vec<String> =
        checks.iter().filter(|c| !c.passed).map(|c| format!("{}: {}", c.name, c.detail)).collect();
    assert!(failed.is_empty(), "failed checks: {failed:#?}");
}
