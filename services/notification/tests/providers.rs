//! Provider set-up from configuration: which senders exist for which
//! credentials, and clear refusals for unusable ones.

use parley_notification::{
    Cli,
    push::{Device, Outcome, Platform, Push},
};
use parley_testkit::{
    apns::{KEY_ID, MockApns, Reply, TEAM_ID},
    fcm::MockFcm,
};

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

    let mut flags = vec!["--fcm-credentials", json.as_str()];
    flags.extend(apns_flags("http://127.0.0.1:9"));
    let both = push_args(&flags).senders().expect("both");
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

/// The flags of an APNs sender with the test key, sending to `base_url`.
fn apns_flags(base_url: &str) -> [&str; 8] {
    [
        "--apns-key-file",
        APNS_KEY,
        "--apns-key-id",
        KEY_ID,
        "--apns-team-id",
        TEAM_ID,
        "--apns-base-url",
        base_url,
    ]
}

/// u1's phone on `platform`, with `token`.
fn phone(platform: Platform, token: String) -> Device {
    Device {
        uid: "u1".into(),
        device_id: "phone".into(),
        platform,
        token,
        app_id: "com.example.chat".into(),
        locale: "fr-FR".into(),
    }
}

/// Two new messages in Design, eleven unread in all.
fn two_in_design() -> Push {
    Push {
        gid: 12,
        group_name: "Design".into(),
        count: 2,
        first_seq: 9,
        last_seq: 10,
        last_msgid: 77,
        badge: 11,
    }
}

/// The APNs sender against a stand-in speaking the provider API over real
/// HTTP/2: what it sends, the ES256 provider token it signs once and reuses,
/// and what each answer becomes.
#[tokio::test]
async fn apns_pushes_go_over_http2_with_a_signed_provider_token() {
    let apns = MockApns::start().await;
    let senders = push_args(&apns_flags(apns.base_url()))
        .senders()
        .expect("APNs credentials");
    let sender = senders.apns.expect("an APNs sender");
    let device = |token: &str| phone(Platform::Apns, token.to_owned());
    let push = two_in_design();

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
        "2 new messages in Design"
    );
    assert_eq!(first.body["aps"]["badge"], 11);
    assert_eq!(first.body["parley"]["last_seq"], 10);
    assert!(
        first.body["aps"]["alert"].get("loc-key").is_none(),
        "English text by default"
    );

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
    let other = parley_testkit::apns::other_public_key();
    let apns = MockApns::trusting(other.as_bytes(), KEY_ID, TEAM_ID).await;
    let senders = push_args(&apns_flags(apns.base_url()))
        .senders()
        .expect("APNs credentials");
    let device = phone(Platform::Apns, "ab".repeat(32));
    let outcome = senders
        .apns
        .expect("APNs")
        .send(&device, &two_in_design())
        .await;
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
    let apns = MockApns::start().await;
    let fcm = MockFcm::start().await;
    let json = fcm.service_account_json();
    let mut flags = vec![
        "--push-wording",
        "keys",
        "--fcm-credentials",
        &json,
        "--fcm-base-url",
        fcm.base_url(),
    ];
    flags.extend(apns_flags(apns.base_url()));
    let senders = push_args(&flags).senders().expect("both providers");
    let push = two_in_design();
    let iphone = phone(Platform::Apns, "ab".repeat(32));
    let android = phone(Platform::Fcm, format!("u1:{}", "APA91b-x_".repeat(6)));
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
