//! Provider set-up from configuration: which senders exist for which
//! credentials, and clear refusals for unusable ones.

use parley_notification::Cli;
use parley_testkit::fcm::MockFcm;

const APNS_KEY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/apns-test-key.p8"
);

fn push_args(extra: &[&str]) -> parley_notification::providers::PushArgs {
    let mut args = vec!["parley-notification"];
    args.extend_from_slice(extra);
    parley_server::runner::config_from_args::<Cli, _, _>(args)
        .expect("valid flags")
        .config
        .push
}

#[tokio::test]
async fn only_configured_providers_are_enabled() {
    let none = push_args(&[]).senders().expect("no credentials is fine");
    assert!(none.apns.is_none() && none.fcm.is_none());

    let fcm = MockFcm::start().await;
    let json = fcm.service_account_json();
    let only_fcm = push_args(&["--fcm-credentials", &json, "--fcm-base-url", fcm.base_url()])
        .senders()
        .expect("FCM credentials");
    assert!(only_fcm.fcm.is_some() && only_fcm.apns.is_none());

    let both = push_args(&[
        "--fcm-credentials",
        &json,
        "--apns-key-file",
        APNS_KEY,
        "--apns-key-id",
        "ABC123DEFG",
        "--apns-team-id",
        "TEAM123456",
    ])
    .senders()
    .expect("both");
    assert!(both.fcm.is_some() && both.apns.is_some());

    let logging = push_args(&["--push-log"]).senders().expect("logging");
    assert!(logging.fcm.is_some() && logging.apns.is_some());
}

#[test]
fn unusable_credentials_are_refused_with_the_reason() {
    let error = push_args(&["--apns-key-file", APNS_KEY])
        .senders()
        .err()
        .expect("an APNs key without ids is refused")
        .to_string();
    assert!(error.contains("APNS_KEY_ID"), "{error}");

    let error = push_args(&["--fcm-credentials-file", "/nonexistent/sa.json"])
        .senders()
        .err()
        .expect("a missing file is refused")
        .to_string();
    assert!(error.contains("/nonexistent/sa.json"), "{error}");

    let error = push_args(&["--fcm-credentials", "{\"not\": \"a service account\"}"])
        .senders()
        .err()
        .expect("a malformed key is refused")
        .to_string();
    assert!(error.contains("FCM service account"), "{error}");
    assert!(
        !error.contains("not\": \"a service"),
        "the secret is not echoed: {error}"
    );
}
