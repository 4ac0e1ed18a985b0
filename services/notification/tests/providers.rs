//! Provider set-up from configuration: which senders exist for which
//! credentials, and clear refusals for unusable ones.

use parley_notification::Cli;
use parley_testkit::fcm::MockFcm;

use parley_testkit::apns::KEY_FILE as APNS_KEY;

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

/// The APNs sender against a stand-in speaking the provider API over real
/// HTTP/2: what it sends, the ES256 provider token it signs once and reuses,
/// and what each answer becomes.
#[tokio::test]
async fn apns_pushes_go_over_http2_with_a_signed_provider_token() {
    use parley_notification::push::{Device, Outcome, Platform, Push};
    use parley_testkit::apns::{MockApns, Reply};

    let apns = MockApns::start().await;
    let senders = push_args(&[
        "--apns-key-file",
        APNS_KEY,
        "--apns-key-id",
        "ABC123DEFG",
        "--apns-team-id",
        "TEAM123456",
        "--apns-base-url",
        apns.base_url(),
    ])
    .senders()
    .expect("APNs credentials");
    let sender = senders.apns.expect("an APNs sender");
    let device = |token: &str| Device {
        uid: "u1".into(),
        device_id: "phone".into(),
        platform: Platform::Apns,
        token: token.into(),
        app_id: "com.example.chat".into(),
        locale: String::new(),
    };
    let push = Push {
        gid: 12,
        group_name: "Design".into(),
        count: 3,
        first_seq: 8,
        last_seq: 10,
        last_msgid: 77,
        badge: 5,
    };

    let ok = "ab".repeat(32);
    assert_eq!(sender.send(&device(&ok), &push).await, Outcome::Sent);
    let sent = apns.sends();
    let first = &sent[0];
    assert_eq!(first.problem, None, "the stand-in accepted the request");
    assert_eq!(first.token, ok);
    assert_eq!(first.headers["apns-topic"], "com.example.chat");
    assert_eq!(first.headers["apns-push-type"], "alert");
    assert_eq!(first.headers["apns-priority"], "10");
    assert_eq!(first.headers["apns-collapse-id"], "parley-group-12");
    assert_eq!(
        first.body["aps"]["alert"]["body"],
        "3 new messages in Design"
    );
    assert_eq!(first.body["aps"]["badge"], 5);
    assert_eq!(first.body["parley"]["last_seq"], 10);

    let scripted = [
        ("cd", Reply::Unregistered),
        ("ef", Reply::TooManyRequests),
        ("0a", Reply::BadTopic),
    ];
    for (token, reply) in scripted {
        apns.script(&token.repeat(32), [reply]);
    }
    assert!(matches!(
        sender.send(&device(&"cd".repeat(32)), &push).await,
        Outcome::BadToken { .. }
    ));
    assert!(matches!(
        sender.send(&device(&"ef".repeat(32)), &push).await,
        Outcome::Retry { .. }
    ));
    assert_eq!(
        sender.send(&device(&"0a".repeat(32)), &push).await,
        Outcome::Failed {
            reason: "APNs 400 BadTopic".into()
        }
    );
    // A token that could change the path never leaves the service.
    assert!(matches!(
        sender.send(&device("ab/../../x"), &push).await,
        Outcome::BadToken { .. }
    ));
    let sent = apns.sends();
    assert_eq!(sent.len(), 4, "{sent:?}");
    assert!(
        sent.iter().all(|s| s.bearer == first.bearer),
        "one provider token for every push within its lifetime"
    );
    assert!(sent.iter().all(|s| s.problem.is_none()), "{sent:?}");
}

/// A key the stand-in does not know is refused as APNs refuses it, and the
/// push is given up, not retried.
#[tokio::test]
async fn an_apns_provider_token_from_another_key_is_refused() {
    use parley_notification::push::{Device, Outcome, Platform, Push};
    use parley_testkit::apns::MockApns;

    let other = parley_testkit::apns::other_public_key();
    let apns = MockApns::trusting(other.as_bytes(), "ABC123DEFG", "TEAM123456").await;
    let senders = push_args(&[
        "--apns-key-file",
        APNS_KEY,
        "--apns-key-id",
        "ABC123DEFG",
        "--apns-team-id",
        "TEAM123456",
        "--apns-base-url",
        apns.base_url(),
    ])
    .senders()
    .expect("APNs credentials");
    let device = Device {
        uid: "u1".into(),
        device_id: "phone".into(),
        platform: Platform::Apns,
        token: "ab".repeat(32),
        app_id: "com.example.chat".into(),
        locale: String::new(),
    };
    let push = Push {
        gid: 1,
        group_name: "G".into(),
        count: 1,
        first_seq: 1,
        last_seq: 1,
        last_msgid: 1,
        badge: 1,
    };
    let outcome = senders.apns.expect("APNs").send(&device, &push).await;
    assert_eq!(
        outcome,
        Outcome::Failed {
            reason: "APNs 403 InvalidProviderToken".into()
        }
    );
}

/// With `--push-wording keys`, both providers receive the text's key and
/// arguments beside the English text, over the wire.
#[tokio::test]
async fn keys_wording_reaches_both_providers() {
    use parley_notification::push::{Device, Outcome, Platform, Push};
    use parley_testkit::apns::{KEY_ID, MockApns, TEAM_ID};

    let apns = MockApns::start().await;
    let fcm = MockFcm::start().await;
    let json = fcm.service_account_json();
    let senders = push_args(&[
        "--push-wording",
        "keys",
        "--fcm-credentials",
        &json,
        "--fcm-base-url",
        fcm.base_url(),
        "--apns-key-file",
        APNS_KEY,
        "--apns-key-id",
        KEY_ID,
        "--apns-team-id",
        TEAM_ID,
        "--apns-base-url",
        apns.base_url(),
    ])
    .senders()
    .expect("both providers");
    let push = Push {
        gid: 3,
        group_name: "Design".into(),
        count: 2,
        first_seq: 1,
        last_seq: 2,
        last_msgid: 9,
        badge: 2,
    };
    let device = |platform, token: String| Device {
        uid: "u1".into(),
        device_id: "phone".into(),
        platform,
        token,
        app_id: "com.example.chat".into(),
        locale: "fr-FR".into(),
    };
    let iphone = device(Platform::Apns, "ab".repeat(32));
    let android = device(Platform::Fcm, format!("u1:{}", "APA91b-x_".repeat(6)));
    let apns_sender = senders.apns.expect("APNs");
    let fcm_sender = senders.fcm.expect("FCM");
    assert_eq!(apns_sender.send(&iphone, &push).await, Outcome::Sent);
    assert_eq!(fcm_sender.send(&android, &push).await, Outcome::Sent);

    let alert = &apns.sends()[0].body["aps"]["alert"];
    assert_eq!(alert["loc-key"], "PARLEY_NEW_MESSAGES");
    assert_eq!(alert["loc-args"], serde_json::json!(["2", "Design"]));
    assert_eq!(alert["body"], "2 new messages in Design");
    let message = &fcm.sends()[0].body["message"];
    assert_eq!(
        message["android"]["notification"]["body_loc_key"],
        "PARLEY_NEW_MESSAGES"
    );
    assert_eq!(
        message["android"]["notification"]["body_loc_args"],
        serde_json::json!(["2", "Design"])
    );
    assert_eq!(message["notification"]["body"], "2 new messages in Design");
}
