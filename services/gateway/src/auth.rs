//! Stream authentication: the first frame carries a JWT whose subject is the
//! user id. HS256 with a shared secret suits development; production verifies
//! RS256 with the identity provider's public key. Expired, forged or
//! malformed tokens are refused the same way, without saying which.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use parley_server::Uid;

/// What the gateway reads from a token.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Expiry, in seconds since the Unix epoch (required).
    pub exp: u64,
}

/// Why a token was refused. The client is only told "invalid token".
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Bad signature, expired, wrong algorithm, malformed.
    #[error("token: {0}")]
    Token(#[from] jsonwebtoken::errors::Error),
    /// The subject is not a valid user id.
    #[error("token subject is not a valid uid")]
    Subject,
}

/// Checks tokens with one key.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl Verifier {
    fn new(key: DecodingKey, algorithm: Algorithm) -> Self {
        let mut validation = Validation::new(algorithm);
        validation.leeway = 5;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self { key, validation }
    }

    /// Verifies HS256 tokens signed with `secret`.
    pub fn hs256(secret: &[u8]) -> Self {
        Self::new(DecodingKey::from_secret(secret), Algorithm::HS256)
    }

    /// Verifies RS256 tokens against a PEM-encoded RSA public key.
    pub fn rs256(public_key_pem: &[u8]) -> Result<Self, AuthError> {
        Ok(Self::new(
            DecodingKey::from_rsa_pem(public_key_pem)?,
            Algorithm::RS256,
        ))
    }

    /// Also requires the `aud` claim to name `audience` and the `iss` claim
    /// to be `issuer`, each when given: a token the identity provider issued
    /// for another service, or another provider's, is refused.
    pub fn expecting(mut self, audience: Option<&str>, issuer: Option<&str>) -> Self {
        let mut required = vec!["exp", "sub"];
        if let Some(audience) = audience {
            self.validation.set_audience(&[audience]);
            self.validation.validate_aud = true;
            required.push("aud");
        }
        if let Some(issuer) = issuer {
            self.validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        self.validation.set_required_spec_claims(&required);
        self
    }

    /// The user a token speaks for.
    pub fn verify(&self, token: &str) -> Result<Uid, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)?;
        Uid::parse(&data.claims.sub).map_err(|_| AuthError::Subject)
    }
}

/// Signs an HS256 token for `uid` valid for `ttl_secs`: for `make dev`, the
/// CLI and tests. Production tokens come from the identity provider.
pub fn issue_hs256(secret: &[u8], uid: &Uid, ttl_secs: u64) -> Result<String, AuthError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    issue(
        &Header::new(Algorithm::HS256),
        &EncodingKey::from_secret(secret),
        uid,
        now.saturating_add(ttl_secs),
    )
}

/// Signs a token with any key and expiry (tests sign expired and RS256 ones).
pub fn issue(header: &Header, key: &EncodingKey, uid: &Uid, exp: u64) -> Result<String, AuthError> {
    let claims = Claims {
        sub: uid.as_str().to_owned(),
        exp,
    };
    Ok(jsonwebtoken::encode(header, &claims, key)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"a-development-secret-of-some-length";

    fn uid(raw: &str) -> Uid {
        Uid::parse(raw).expect("valid uid")
    }

    #[test]
    fn a_signed_token_names_its_user() {
        let token = issue_hs256(SECRET, &uid("uid1"), 60).expect("sign");
        assert_eq!(
            Verifier::hs256(SECRET).verify(&token).ok(),
            Some(uid("uid1"))
        );
    }

    #[test]
    fn forged_expired_and_garbage_tokens_are_refused() {
        let verifier = Verifier::hs256(SECRET);
        let forged =
            issue_hs256(b"another-secret-of-some-length!!", &uid("uid1"), 60).expect("sign");
        assert!(verifier.verify(&forged).is_err());
        let expired = issue(
            &Header::new(Algorithm::HS256),
            &EncodingKey::from_secret(SECRET),
            &uid("uid1"),
            1_000,
        )
        .expect("sign");
        assert!(verifier.verify(&expired).is_err());
        assert!(verifier.verify("not.a.token").is_err());
        assert!(verifier.verify("").is_err());
    }

    #[test]
    fn audience_and_issuer_are_checked_when_configured() {
        #[derive(serde::Serialize)]
        struct WithClaims<'a> {
            sub: &'a str,
            exp: u64,
            #[serde(skip_serializing_if = "Option::is_none")]
            aud: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            iss: Option<&'a str>,
        }
        let sign = |aud, iss| {
            let claims = WithClaims {
                sub: "uid1",
                exp: u64::MAX / 2,
                aud,
                iss,
            };
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &claims,
                &EncodingKey::from_secret(SECRET),
            )
            .expect("sign")
        };
        let strict = Verifier::hs256(SECRET).expecting(Some("parley"), Some("https://id.example"));
        let good = sign(Some("parley"), Some("https://id.example"));
        assert_eq!(strict.verify(&good).ok(), Some(uid("uid1")));
        for (aud, iss) in [
            (Some("billing"), Some("https://id.example")),
            (Some("parley"), Some("https://evil.example")),
            (None, Some("https://id.example")),
            (Some("parley"), None),
        ] {
            assert!(strict.verify(&sign(aud, iss)).is_err(), "{aud:?} {iss:?}");
        }
        // Unconfigured, the claims are not looked at.
        assert!(
            Verifier::hs256(SECRET)
                .verify(&sign(Some("billing"), None))
                .is_ok()
        );
    }

    #[test]
    fn a_token_for_another_algorithm_is_refused() {
        let token = issue(
            &Header::new(Algorithm::HS384),
            &EncodingKey::from_secret(SECRET),
            &uid("uid1"),
            u64::MAX / 2,
        )
        .expect("sign");
        assert!(Verifier::hs256(SECRET).verify(&token).is_err());
    }

    /// Properties over any input; `make fuzz` runs them with many more cases.
    mod properties {
        use super::*;

        proptest::proptest! {
            /// Whatever a client sends as its token, it is refused unless it
            /// is signed with the key: three dot-joined parts of any base64
            /// included, never a panic.
            #[test]
            fn any_token_is_refused_unless_signed(
                raw in "\\PC{0,300}",
                parts in proptest::collection::vec("[A-Za-z0-9_=-]{0,60}", 0..5),
            ) {
                let verifier = Verifier::hs256(SECRET).expecting(Some("parley"), Some("idp"));
                proptest::prop_assert!(verifier.verify(&raw).is_err());
                proptest::prop_assert!(verifier.verify(&parts.join(".")).is_err());
            }
        }
    }
}
