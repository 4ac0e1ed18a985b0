//! Service credentials. Each service holds an Ed25519 key of its own and signs,
//! for each service it calls, a short-lived token naming itself and that
//! callee. A callee accepts a claimed service name only with a token signed by
//! that service's key and addressed to itself, so one service's credential
//! cannot be used to claim another's name, nor a token one callee received be
//! replayed to another. Acting for a user is accepted only from a caller so
//! authenticated.
//!
//! Token: `v1.<caller>.<callee>.<expires>.<signature>`, the signature (base64url,
//! no padding) over `parley-service-token/v1 <caller> <callee> <expires>`, with
//! `expires` in Unix seconds. A verified token is remembered until it expires,
//! so a callee verifies each token once, not once per request.
//!
//! Payloads one service hands another through a third party (bus events
//! through Redis) carry a tag: HMAC-SHA256 under a key the two services share
//! without any further setting, derived once from their Ed25519 keys by X25519
//! (each side's private key with the other's public key, as `age` and
//! libsodium convert them) and HKDF-SHA256 bound to the two names. A tag is
//! checked in well under a microsecond where a signature takes about 30; its
//! cost is that either of the two could have made it (see ARCHITECTURE.md,
//! "Service credentials").

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tonic::metadata::AsciiMetadataValue;

use crate::serve::Secret;

/// The metadata key that carries the token.
pub const TOKEN_HEADER: &str = "x-parley-service-token";

/// How long a token is valid.
const LIFETIME: Duration = Duration::from_secs(600);
/// A token is renewed once less than this is left of it.
const RENEW_WHEN_LEFT: Duration = Duration::from_secs(300);
/// Clock difference between two machines that is tolerated.
const SKEW: u64 = 60;
/// Verified tokens remembered; past it the memory starts afresh.
const REMEMBERED: usize = 4096;

type HmacSha256 = Hmac<Sha256>;

/// A service name: 1 to 32 characters from `a-z` and `-`.
pub fn valid_service_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 32 && name.chars().all(|c| c.is_ascii_lowercase() || c == '-')
}

/// Why credentials could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CredentialError {
    /// The private key is not 32 bytes of base64.
    #[error("PARLEY_SERVICE_KEY must be a base64 Ed25519 private key (32 bytes)")]
    PrivateKey,
    /// An entry of the public key list is malformed.
    #[error(
        "PARLEY_SERVICE_PUBLIC_KEYS: {0:?} is not `name=key` with a service name and a base64 Ed25519 public key (32 bytes)"
    )]
    PublicKey(String),
    /// The private key does not belong to the public key listed under this
    /// service's own name.
    #[error("PARLEY_SERVICE_KEY is not the key PARLEY_SERVICE_PUBLIC_KEYS lists for {0}")]
    Mismatch(String),
    /// Neither, outside development mode.
    #[error(
        "no service credentials: set PARLEY_SERVICE_KEY and PARLEY_SERVICE_PUBLIC_KEYS (`parley keys` makes a set), or PARLEY_DEV_MODE=true on a development machine"
    )]
    Missing,
    /// Only one of the two settings is there.
    #[error("PARLEY_SERVICE_KEY and PARLEY_SERVICE_PUBLIC_KEYS go together: set both")]
    Incomplete,
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    /// No token, or not one of ours.
    #[error("missing or malformed service token")]
    Malformed,
    /// The token names another caller or callee than the request.
    #[error("the service token names another caller or callee")]
    Misaddressed,
    /// Expired, or valid for longer than any token is issued for.
    #[error("the service token has expired")]
    Expired,
    /// The caller's key is not known here, or the signature is wrong.
    #[error("the service token's signature is not its service's")]
    BadSignature,
}

fn decode_key(raw: &str) -> Option<[u8; 32]> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(raw.trim())
        .or_else(|_| URL_SAFE_NO_PAD.decode(raw.trim()))
        .ok()?;
    bytes.try_into().ok()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What a payload signature covers: a domain tag, the context's length and
/// the context, then the payload, so no two (context, payload) pairs sign
/// the same bytes.
fn signed_bytes(context: &str, payload: &[u8]) -> Vec<u8> {
    let tag = b"parley-signed/v1\0";
    let length = u32::try_from(context.len())
        .unwrap_or(u32::MAX)
        .to_be_bytes();
    let mut bytes = Vec::with_capacity(tag.len() + 4 + context.len() + payload.len());
    bytes.extend_from_slice(tag);
    bytes.extend_from_slice(&length);
    bytes.extend_from_slice(context.as_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

/// The HMAC key `name` (holding `own`) and `peer` (with public key `theirs`)
/// share: X25519 of one's private and the other's public key, the same from
/// both sides, then HKDF-SHA256 over both names in a fixed order, so each
/// pair of services has a key of its own. `None` for a public key of small
/// order, whose shared secret is known to all.
fn pair_key(own: &SigningKey, name: &str, peer: &str, theirs: &VerifyingKey) -> Option<HmacSha256> {
    let secret = theirs.to_montgomery().mul_clamped(own.to_scalar_bytes());
    if secret.as_bytes() == &[0; 32] {
        return None;
    }
    let (first, second) = if name <= peer {
        (name, peer)
    } else {
        (peer, name)
    };
    let info = [first.as_bytes(), b"\0", second.as_bytes()].concat();
    let mut key = [0; 32];
    hkdf::Hkdf::<Sha256>::new(Some(b"parley-pair-key/v1"), secret.as_bytes())
        .expand(&info, &mut key)
        .ok()?;
    HmacSha256::new_from_slice(&key).ok()
}

/// The MAC over what a tag covers: a domain tag, the sender's name and the
/// context, each after its length, then the payload.
fn tagged(key: &HmacSha256, sender: &str, context: &str, payload: &[u8]) -> HmacSha256 {
    let mut mac = key.clone();
    mac.update(b"parley-tag/v1\0");
    for part in [sender, context] {
        let length = u32::try_from(part.len()).unwrap_or(u32::MAX);
        mac.update(&length.to_be_bytes());
        mac.update(part.as_bytes());
    }
    mac.update(payload);
    mac
}

fn signed_text(caller: &str, callee: &str, expires: u64) -> String {
    format!("parley-service-token/v1 {caller} {callee} {expires}")
}

/// What this service proves and accepts: its own key and the public keys of
/// the services it takes calls from. Cheap to clone: every clone shares them,
/// and the tokens verified so far.
#[derive(Clone)]
pub struct Keys(Arc<KeySet>);

struct KeySet {
    name: String,
    own: SigningKey,
    trusted: HashMap<String, VerifyingKey>,
    /// For each trusted service, the HMAC key it and this service share.
    shared: HashMap<String, HmacSha256>,
    verified: Mutex<HashMap<String, u64>>,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keys")
            .field("name", &self.0.name)
            .field("trusted", &self.0.trusted.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Keys {
    /// `name`'s credentials: its private key and the `name=key` list of
    /// public keys (comma or whitespace separated), which must list `name`
    /// with the private key's public half.
    pub fn new(name: &str, private: &Secret, public: &str) -> Result<Self, CredentialError> {
        let own = SigningKey::from_bytes(
            &decode_key(private.expose()).ok_or(CredentialError::PrivateKey)?,
        );
        let mut trusted = HashMap::new();
        for entry in public
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|e| !e.is_empty())
        {
            let malformed = || CredentialError::PublicKey(entry.to_owned());
            let (service, key) = entry.split_once('=').ok_or_else(malformed)?;
            if !valid_service_name(service) {
                return Err(malformed());
            }
            let key = decode_key(key)
                .and_then(|bytes| VerifyingKey::from_bytes(&bytes).ok())
                .ok_or_else(malformed)?;
            trusted.insert(service.to_owned(), key);
        }
        if trusted.get(name) != Some(&own.verifying_key()) {
            return Err(CredentialError::Mismatch(name.to_owned()));
        }
        let mut shared = HashMap::new();
        for (service, key) in &trusted {
            let pair = pair_key(&own, name, service, key)
                .ok_or_else(|| CredentialError::PublicKey(service.clone()))?;
            shared.insert(service.clone(), pair);
        }
        Ok(Self(Arc::new(KeySet {
            name: name.to_owned(),
            own,
            trusted,
            shared,
            verified: Mutex::new(HashMap::new()),
        })))
    }

    /// Whether `service`'s public key is listed.
    pub fn trusts(&self, service: &str) -> bool {
        self.0.trusted.contains_key(service)
    }

    /// This service's tag for `peer` over `payload` in `context`, or `None`
    /// when `peer`'s key is not listed.
    pub fn tag(&self, peer: &str, context: &str, payload: &[u8]) -> Option<Vec<u8>> {
        let tag = tagged(self.0.shared.get(peer)?, &self.0.name, context, payload);
        Some(tag.finalize().into_bytes().to_vec())
    }

    /// Checks that `tag` is `signer`'s for this service over `payload` in
    /// `context`, and that `signer` is one of `allowed`.
    pub fn verify_tag(
        &self,
        signer: &str,
        allowed: &[&str],
        context: &str,
        payload: &[u8],
        tag: &[u8],
    ) -> Result<(), Refused> {
        if !allowed.contains(&signer) {
            return Err(Refused::Misaddressed);
        }
        let key = self.0.shared.get(signer).ok_or(Refused::BadSignature)?;
        tagged(key, signer, context, payload)
            .verify_slice(tag)
            .map_err(|_| Refused::BadSignature)
    }

    /// This service's name.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// This service's signature over `payload` in `context` (for example
    /// the bus channel it is published on, so it holds for that one only).
    pub fn sign(&self, context: &str, payload: &[u8]) -> Vec<u8> {
        self.0
            .own
            .sign(&signed_bytes(context, payload))
            .to_bytes()
            .to_vec()
    }

    /// Checks that `signature` is `signer`'s over `signed`.
    fn check(&self, signer: &str, signed: &[u8], signature: &[u8]) -> Result<(), Refused> {
        let key = self.0.trusted.get(signer).ok_or(Refused::BadSignature)?;
        let signature = Signature::from_slice(signature).map_err(|_| Refused::Malformed)?;
        key.verify(signed, &signature)
            .map_err(|_| Refused::BadSignature)
    }

    /// Checks that `signature` is `signer`'s over `payload` in `context`,
    /// and that `signer` is one of `allowed`.
    pub fn verify_signature(
        &self,
        signer: &str,
        allowed: &[&str],
        context: &str,
        payload: &[u8],
        signature: &[u8],
    ) -> Result<(), Refused> {
        if !allowed.contains(&signer) {
            return Err(Refused::Misaddressed);
        }
        self.check(signer, &signed_bytes(context, payload), signature)
    }

    /// A token from this service to `callee`, valid until `expires` (Unix s).
    fn issue(&self, callee: &str, expires: u64) -> String {
        let name = &self.0.name;
        let signature = self
            .0
            .own
            .sign(signed_text(name, callee, expires).as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(signature.to_bytes());
        format!("v1.{name}.{callee}.{expires}.{signature}")
    }

    /// Checks that `token` proves a call from `caller` to this service.
    pub fn verify(&self, caller: &str, token: &str) -> Result<(), Refused> {
        self.verify_at(caller, token, unix_now())
    }

    fn verify_at(&self, caller: &str, token: &str, now: u64) -> Result<(), Refused> {
        let mut parts = token.split('.');
        let (Some("v1"), Some(from), Some(to), Some(expires), Some(signature), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(Refused::Malformed);
        };
        let expires: u64 = expires.parse().map_err(|_| Refused::Malformed)?;
        if from != caller || to != self.0.name {
            return Err(Refused::Misaddressed);
        }
        let lifetime = LIFETIME.as_secs();
        if now > expires.saturating_add(SKEW) || expires > now.saturating_add(lifetime + SKEW) {
            return Err(Refused::Expired);
        }
        let mut verified = self
            .0
            .verified
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if verified.get(token).is_some_and(|&until| until == expires) {
            return Ok(());
        }
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| Refused::Malformed)?;
        self.check(from, signed_text(from, to, expires).as_bytes(), &signature)?;
        if verified.len() >= REMEMBERED {
            verified.retain(|_, until| until.saturating_add(SKEW) >= now);
            if verified.len() >= REMEMBERED {
                verified.clear();
            }
        }
        verified.insert(token.to_owned(), expires);
        Ok(())
    }
}

/// Outgoing tokens of one caller to one callee, renewed before they expire,
/// each kept as the header value calls carry.
#[derive(Clone, Debug)]
pub struct Issuer {
    keys: Keys,
    callee: &'static str,
    current: Arc<Mutex<Option<(AsciiMetadataValue, u64)>>>,
}

impl Issuer {
    /// Tokens from `keys`' service to `callee`.
    pub fn new(keys: Keys, callee: &'static str) -> Self {
        Self {
            keys,
            callee,
            current: Arc::new(Mutex::new(None)),
        }
    }

    /// A token valid for at least [`RENEW_WHEN_LEFT`] more, as the value of
    /// [`TOKEN_HEADER`].
    pub fn token(&self) -> AsciiMetadataValue {
        let now = unix_now();
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        match &*current {
            Some((token, expires)) if *expires > now + RENEW_WHEN_LEFT.as_secs() => token.clone(),
            _ => {
                let expires = now + LIFETIME.as_secs();
                // Names, digits, dots and base64url: always a valid value.
                let token = AsciiMetadataValue::try_from(self.keys.issue(self.callee, expires))
                    .unwrap_or_else(|_| AsciiMetadataValue::from_static(""));
                *current = Some((token.clone(), expires));
                token
            }
        }
    }
}

/// A fresh set of credentials for `names`: each one's private key (base64) and
/// the public key list every service is given. For `parley keys` and tests.
pub fn generate(names: &[&str]) -> (Vec<(String, Secret)>, String) {
    let mut private = Vec::new();
    let mut public = Vec::new();
    for name in names {
        let seed: [u8; 32] = rand::random();
        let key = SigningKey::from_bytes(&seed);
        let encoded = base64::engine::general_purpose::STANDARD.encode(seed);
        // A base64 seed is printable and long enough to be a Secret.
        if let Ok(secret) = encoded.parse::<Secret>() {
            private.push(((*name).to_owned(), secret));
        }
        let verifying =
            base64::engine::general_purpose::STANDARD.encode(key.verifying_key().to_bytes());
        public.push(format!("{name}={verifying}"));
    }
    (private, public.join(","))
}

/// Fresh credentials for `names`, in that order, each knowing every one's
/// public key: for tests and fuzzing, which need them ready to use.
pub fn generate_keys(names: &[&str]) -> Vec<Keys> {
    let (private, public) = generate(names);
    private
        .iter()
        .filter_map(|(name, secret)| Keys::new(name, secret, &public).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys_of(name: &str, private: &[(String, Secret)], public: &str) -> Keys {
        let own = private
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, k)| k)
            .expect("generated");
        Keys::new(name, own, public).expect("valid credentials")
    }

    #[test]
    fn a_token_proves_its_caller_to_its_callee_only() {
        let (private, public) = generate(&["gateway", "message", "receipt"]);
        let gateway = keys_of("gateway", &private, &public);
        let receipt = keys_of("receipt", &private, &public);
        let message = keys_of("message", &private, &public);
        let to_receipt = Issuer::new(gateway.clone(), "receipt").token();
        let to_receipt = to_receipt.to_str().expect("ascii");
        assert_eq!(receipt.verify("gateway", to_receipt), Ok(()));
        assert_eq!(receipt.verify("gateway", to_receipt), Ok(()), "remembered");
        // The gateway's token claims no other name, and reaches no other callee.
        assert_eq!(
            receipt.verify("message", to_receipt),
            Err(Refused::Misaddressed)
        );
        assert_eq!(
            message.verify("gateway", to_receipt),
            Err(Refused::Misaddressed)
        );
        // A token the gateway signs in the message service's name is not the
        // message service's signature.
        let forged =
            gateway
                .issue("receipt", unix_now() + 60)
                .replacen("v1.gateway.", "v1.message.", 1);
        assert_eq!(
            receipt.verify("message", &forged),
            Err(Refused::BadSignature)
        );
        assert_eq!(
            receipt.verify("gateway", "v1.gateway.receipt"),
            Err(Refused::Malformed)
        );
        assert_eq!(receipt.verify("gateway", ""), Err(Refused::Malformed));
    }

    #[test]
    fn a_payload_signature_holds_for_its_signer_and_context_only() {
        let (private, public) = generate(&["gateway", "message"]);
        let gateway = keys_of("gateway", &private, &public);
        let message = keys_of("message", &private, &public);
        let signature = message.sign("parley:gw:a", b"event");
        let check = |signer, context, payload: &[u8], signature: &[u8]| {
            gateway.verify_signature(signer, &["message"], context, payload, signature)
        };
        assert_eq!(
            check("message", "parley:gw:a", b"event", &signature),
            Ok(())
        );
        assert_eq!(
            check("message", "parley:gw:b", b"event", &signature),
            Err(Refused::BadSignature)
        );
        assert_eq!(
            check("message", "parley:gw:a", b"other", &signature),
            Err(Refused::BadSignature)
        );
        assert_eq!(
            check("message", "parley:gw:a", b"event", b"short"),
            Err(Refused::Malformed)
        );
        // The gateway's own key is trusted for calls, not for publishing.
        let own = gateway.sign("parley:gw:a", b"event");
        assert_eq!(
            check("gateway", "parley:gw:a", b"event", &own),
            Err(Refused::Misaddressed)
        );
    }

    #[test]
    fn a_tag_holds_for_its_sender_recipient_and_context_only() {
        let (private, public) = generate(&["gateway", "message", "receipt"]);
        let gateway = keys_of("gateway", &private, &public);
        let message = keys_of("message", &private, &public);
        let receipt = keys_of("receipt", &private, &public);
        let tag = message
            .tag("gateway", "parley:gw:a", b"event")
            .expect("listed");
        let check = |signer, context, payload: &[u8], tag: &[u8]| {
            gateway.verify_tag(signer, &["message", "receipt"], context, payload, tag)
        };
        assert_eq!(check("message", "parley:gw:a", b"event", &tag), Ok(()));
        assert_eq!(
            check("message", "parley:gw:b", b"event", &tag),
            Err(Refused::BadSignature)
        );
        assert_eq!(
            check("message", "parley:gw:a", b"other", &tag),
            Err(Refused::BadSignature)
        );
        assert_eq!(
            check("message", "parley:gw:a", b"event", &tag[..16]),
            Err(Refused::BadSignature)
        );
        // Each pair has a key of its own, and the sender's name is covered:
        // the receipt service cannot pass its tag off as the message
        // service's, nor the message service's tag for the gateway be shown
        // to the receipt service.
        let from_receipt = receipt
            .tag("gateway", "parley:gw:a", b"event")
            .expect("listed");
        assert_eq!(
            check("message", "parley:gw:a", b"event", &from_receipt),
            Err(Refused::BadSignature)
        );
        assert_eq!(
            receipt.verify_tag("message", &["message"], "parley:gw:a", b"event", &tag),
            Err(Refused::BadSignature)
        );
        // Only the allowed senders, and only listed ones.
        let own = gateway
            .tag("gateway", "parley:gw:a", b"event")
            .expect("listed");
        assert_eq!(
            check("gateway", "parley:gw:a", b"event", &own),
            Err(Refused::Misaddressed)
        );
        assert_eq!(message.tag("presence", "parley:gw:a", b"event"), None);
        assert!(message.trusts("gateway") && !message.trusts("presence"));
    }

    #[test]
    fn a_public_key_of_small_order_is_refused() {
        let (private, public) = generate(&["gateway"]);
        // The identity point: every private key shares the same secret with it.
        let identity = {
            let mut bytes = [0_u8; 32];
            bytes[0] = 1;
            base64::engine::general_purpose::STANDARD.encode(bytes)
        };
        assert_eq!(
            Keys::new(
                "gateway",
                &private[0].1,
                &format!("{public},weak={identity}")
            )
            .err(),
            Some(CredentialError::PublicKey("weak".to_owned()))
        );
    }

    #[test]
    fn tokens_expire_and_are_not_valid_for_longer_than_issued() {
        let (private, public) = generate(&["gateway", "receipt"]);
        let gateway = keys_of("gateway", &private, &public);
        let receipt = keys_of("receipt", &private, &public);
        let now = unix_now();
        let token = gateway.issue("receipt", now + 10);
        assert_eq!(receipt.verify_at("gateway", &token, now), Ok(()));
        assert_eq!(
            receipt.verify_at("gateway", &token, now + 10 + SKEW + 1),
            Err(Refused::Expired)
        );
        let forever = gateway.issue("receipt", u64::MAX);
        assert_eq!(
            receipt.verify_at("gateway", &forever, now),
            Err(Refused::Expired)
        );
    }

    #[test]
    fn credentials_must_match_their_name_and_be_well_formed() {
        let (private, public) = generate(&["gateway", "receipt"]);
        let gateway_key = &private[0].1;
        assert!(matches!(
            Keys::new("receipt", gateway_key, &public),
            Err(CredentialError::Mismatch(_))
        ));
        assert!(matches!(
            Keys::new("gateway", gateway_key, "gateway=short"),
            Err(CredentialError::PublicKey(_))
        ));
        assert!(matches!(
            Keys::new("gateway", gateway_key, "Not_A_Name=AAAA"),
            Err(CredentialError::PublicKey(_))
        ));
        let not_a_key: Secret = "not base64 at all!!".parse().expect("a secret");
        assert!(matches!(
            Keys::new("gateway", &not_a_key, &public),
            Err(CredentialError::PrivateKey)
        ));
        // The error names no key material.
        let error = Keys::new("receipt", gateway_key, &public)
            .expect_err("mismatch")
            .to_string();
        assert!(!error.contains(gateway_key.expose()));
    }

    mod properties {
        use super::*;

        proptest::proptest! {
            /// Whatever a caller sends as a token, it is refused or it is a
            /// genuine token; it never panics.
            #[test]
            fn any_token_is_refused_unless_signed(raw in "\\PC{0,200}", dots in proptest::collection::vec("[a-z0-9A-Z_-]{0,20}", 0..7)) {
                let (private, public) = generate(&["gateway", "receipt"]);
                let receipt = keys_of("receipt", &private, &public);
                proptest::prop_assert!(receipt.verify("gateway", &raw).is_err());
                proptest::prop_assert!(receipt.verify("gateway", &dots.join(".")).is_err());
            }
        }
    }
}
