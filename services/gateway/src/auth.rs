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
}
