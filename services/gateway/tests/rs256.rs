//! Production tokens: RS256, verified with the identity provider's public key.
//! The key pair under `fixtures/` exists for this test only.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parley_gateway::auth::{Verifier, issue};
use parley_server::Uid;

const PRIVATE: &[u8] = include_bytes!("fixtures/rs256-private.pem");
const PUBLIC: &[u8] = include_bytes!("fixtures/rs256-public.pem");

fn in_an_hour() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() + 3600)
        .unwrap_or(u64::MAX / 2)
}

#[test]
fn rs256_tokens_signed_by_the_provider_are_accepted_and_others_refused() {
    let uid = Uid::parse("uid1").expect("uid");
    let key = EncodingKey::from_rsa_pem(PRIVATE).expect("private key");
    let verifier = Verifier::rs256(PUBLIC).expect("public key");
    let token = issue(&Header::new(Algorithm::RS256), &key, &uid, in_an_hour()).expect("sign");
    assert_eq!(verifier.verify(&token).ok(), Some(uid.clone()));

    let expired = issue(&Header::new(Algorithm::RS256), &key, &uid, 1_000).expect("sign");
    assert!(verifier.verify(&expired).is_err(), "expired");
    // An HS256 token "signed" with the public key must not pass as RS256.
    let confused = issue(
        &Header::new(Algorithm::HS256),
        &EncodingKey::from_secret(PUBLIC),
        &uid,
        in_an_hour(),
    )
    .expect("sign");
    assert!(verifier.verify(&confused).is_err(), "algorithm confusion");
    assert!(Verifier::rs256(b"not a key").is_err());
}
