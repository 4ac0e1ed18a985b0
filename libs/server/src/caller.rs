//! Who is calling. The gateway (or a trusted internal service acting for a user)
//! puts the acting user in the `x-parley-uid` metadata; a service acting on its
//! own behalf puts its name in `x-parley-service`. The guard layer parses them
//! once per request and stores a [`Caller`] in the request extensions.

use std::fmt;

use tonic::Status;

/// Metadata key carrying the acting user's id.
pub const UID_HEADER: &str = "x-parley-uid";
/// Metadata key carrying the calling service's name, for internal RPCs.
pub const SERVICE_HEADER: &str = "x-parley-service";
/// Longest user id accepted, in bytes.
pub const MAX_UID_LEN: usize = 64;

/// A validated user id: 1 to 64 characters from `[A-Za-z0-9._@:-]`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Uid(String);

impl Uid {
    /// Validates a user id.
    pub fn parse(raw: &str) -> Result<Self, InvalidUid> {
        let valid_char =
            |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | ':' | '-');
        if raw.is_empty() || raw.len() > MAX_UID_LEN || !raw.chars().all(valid_char) {
            return Err(InvalidUid);
        }
        Ok(Self(raw.to_owned()))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id as an owned string.
    pub fn into_string(self) -> String {
        self.0
    }
}

/// Maps keyed by `Uid` can be looked up by a plain `&str` (a `String`'s hash
/// is its `str`'s), without validating or allocating.
impl std::borrow::Borrow<str> for Uid {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether `raw` is a valid device id (or gateway id): 1 to 64 printable
/// ASCII characters, no spaces and no `|` (presence stores ids joined by it).
pub fn valid_device_id(raw: &str) -> bool {
    !raw.is_empty() && raw.len() <= 64 && raw.bytes().all(|b| b.is_ascii_graphic() && b != b'|')
}

/// The rule of [`valid_device_id`], as refusals and configuration errors say it.
pub const DEVICE_ID_RULE: &str = "1 to 64 printable ASCII characters without spaces or '|'";

/// Checks a request's device (or gateway) id; the refusal names `field`.
pub fn check_device_id(raw: &str, field: &'static str) -> Result<(), crate::Error> {
    if valid_device_id(raw) {
        Ok(())
    } else {
        Err(crate::Error::invalid(field, DEVICE_ID_RULE))
    }
}

/// A string that is not a valid user id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("user ids are 1 to 64 characters from [A-Za-z0-9._@:-]")]
pub struct InvalidUid;

/// The identity a request acts under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// A user, authenticated by the gateway or named by a trusted internal service.
    User(Uid),
    /// An internal service acting on its own behalf (for example the message
    /// service's outbox drainer).
    Service(String),
}

impl Caller {
    /// Reads the caller from request headers.
    pub fn from_headers(headers: &http::HeaderMap) -> Result<Self, Status> {
        if let Some(value) = headers.get(UID_HEADER) {
            let raw = value.to_str().map_err(|_| {
                crate::error::status(crate::Reason::Unauthenticated, "malformed x-parley-uid")
            })?;
            let uid = Uid::parse(raw).map_err(|_| {
                crate::error::status(crate::Reason::Unauthenticated, "malformed x-parley-uid")
            })?;
            return Ok(Self::User(uid));
        }
        if let Some(value) = headers.get(SERVICE_HEADER) {
            let name = value
                .to_str()
                .ok()
                .filter(|n| crate::credentials::valid_service_name(n))
                .ok_or_else(|| {
                    crate::error::status(
                        crate::Reason::Unauthenticated,
                        "malformed x-parley-service",
                    )
                })?;
            return Ok(Self::Service(name.to_owned()));
        }
        Err(crate::error::status(
            crate::Reason::Unauthenticated,
            "no caller identity: x-parley-uid is required",
        ))
    }

    /// The caller the guard layer identified; every RPC passes the guard, so a
    /// request without one did not come through it and is refused.
    pub fn of<T>(request: &tonic::Request<T>) -> Result<Self, Status> {
        request
            .extensions()
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| {
                crate::error::status(crate::Reason::Unauthenticated, "no caller identity")
            })
    }

    /// The acting user, or UNAUTHENTICATED for a service identity.
    pub fn user_of<T>(request: &tonic::Request<T>) -> Result<Uid, Status> {
        match Self::of(request)? {
            Self::User(uid) => Ok(uid),
            Self::Service(_) => Err(crate::error::status(
                crate::Reason::Unauthenticated,
                "this RPC acts for a user: x-parley-uid is required",
            )),
        }
    }

    /// Succeeds only for the named internal service.
    pub fn require_service<T>(request: &tonic::Request<T>, name: &str) -> Result<(), Status> {
        match Self::of(request)? {
            Self::Service(caller) if caller == name => Ok(()),
            _ => Err(crate::error::status(
                crate::Reason::WrongCaller,
                format!("internal RPC: only the {name} service may call it"),
            )),
        }
    }

    /// Succeeds for any internal service, refuses users: for reads that
    /// expose what only Parley's own services may see (where each device is
    /// connected).
    pub fn require_any_service<T>(request: &tonic::Request<T>) -> Result<(), Status> {
        match Self::of(request)? {
            Self::Service(_) => Ok(()),
            Self::User(_) => Err(crate::error::status(
                crate::Reason::WrongCaller,
                "internal RPC: only Parley's services may call it",
            )),
        }
    }

    /// The user rate limits are counted for; internal services are trusted and
    /// bounded by the concurrency limit alone.
    pub fn rate_key(&self) -> Option<&Uid> {
        match self {
            Self::User(uid) => Some(uid),
            Self::Service(_) => None,
        }
    }
}

/// A request acting for `uid`: what the gateway (or a service acting for a
/// user) sends; the service identity interceptor adds its own name and token.
pub fn acting_for<T>(uid: &Uid, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    // A valid Uid is always a valid header value.
    if let Ok(value) = tonic::metadata::AsciiMetadataValue::try_from(uid.as_str()) {
        request.metadata_mut().insert(UID_HEADER, value);
    }
    request
}

/// A client interceptor that marks outgoing requests as coming from an internal
/// service and, with credentials, carries a token proving the service to its
/// callee.
#[derive(Clone, Debug)]
pub struct ServiceIdentity {
    service: &'static str,
    keys: Option<crate::credentials::Keys>,
    issuer: Option<crate::credentials::Issuer>,
}

impl ServiceIdentity {
    /// Identity of `service`, with its credentials when it has them (not in
    /// development mode). Each client takes it as presented to its callee:
    /// [`ServiceIdentity::to`].
    pub fn new(service: &'static str, keys: Option<crate::credentials::Keys>) -> Self {
        Self {
            service,
            keys,
            issuer: None,
        }
    }

    /// This identity as presented to `callee`: with credentials, each call
    /// carries a token addressed to it.
    pub fn to(&self, callee: &'static str) -> Self {
        Self {
            issuer: self
                .keys
                .clone()
                .map(|keys| crate::credentials::Issuer::new(keys, callee)),
            ..self.clone()
        }
    }
}

impl tonic::service::Interceptor for ServiceIdentity {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        let metadata = request.metadata_mut();
        metadata.insert(
            SERVICE_HEADER,
            tonic::metadata::AsciiMetadataValue::from_static(self.service),
        );
        if let Some(issuer) = &self.issuer {
            metadata.insert(crate::credentials::TOKEN_HEADER, issuer.token());
        }
        crate::telemetry::inject_current(metadata);
        // A call made while handling an RPC gets no longer than that RPC
        // has left; one with nothing left is not made.
        if let Some(left) = crate::guard::remaining() {
            if left.is_zero() {
                return Err(Status::deadline_exceeded(
                    "the deadline of the request this call serves has passed",
                ));
            }
            request.set_timeout(left);
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_accepts_plain_ids_and_rejects_the_rest() {
        assert!(Uid::parse("uid1").is_ok());
        assert!(Uid::parse("A").is_ok());
        assert!(Uid::parse("bot:crm-1@corp.example").is_ok());
        assert!(Uid::parse("").is_err());
        assert!(Uid::parse("with space").is_err());
        assert!(Uid::parse("é").is_err());
        assert!(Uid::parse(&"x".repeat(65)).is_err());
        assert!(Uid::parse(&"x".repeat(64)).is_ok());
    }

    #[test]
    fn caller_prefers_the_user_and_refuses_missing_identity() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(
            Caller::from_headers(&headers).map_err(|s| s.code()),
            Err(tonic::Code::Unauthenticated)
        );
        headers.insert(SERVICE_HEADER, http::HeaderValue::from_static("message"));
        assert_eq!(
            Caller::from_headers(&headers).ok(),
            Some(Caller::Service("message".into()))
        );
        headers.insert(UID_HEADER, http::HeaderValue::from_static("uid1"));
        assert_eq!(
            Caller::from_headers(&headers)
                .ok()
                .as_ref()
                .and_then(Caller::rate_key),
            Some(&Uid::parse("uid1").expect("valid"))
        );
        headers.insert(UID_HEADER, http::HeaderValue::from_static("bad uid"));
        assert_eq!(
            Caller::from_headers(&headers).map_err(|s| s.code()),
            Err(tonic::Code::Unauthenticated)
        );
    }

    /// Properties over any input; `make fuzz` runs them with many more cases.
    mod properties {
        use super::*;

        proptest::proptest! {
            /// A uid is accepted exactly when it is 1 to 64 characters from the
            /// documented set.
            #[test]
            fn uids_are_accepted_exactly_by_the_rule(raw in "\\PC{0,80}") {
                let allowed = |c: char| c.is_ascii_alphanumeric() || "._@:-".contains(c);
                let valid = !raw.is_empty() && raw.len() <= MAX_UID_LEN && raw.chars().all(allowed);
                proptest::prop_assert_eq!(Uid::parse(&raw).is_ok(), valid);
            }

            /// Any bytes in the identity headers give a caller or
            /// UNAUTHENTICATED, never a panic; a user named is a valid uid.
            #[test]
            fn identity_headers_are_read_or_refused(
                uid in proptest::collection::vec(proptest::num::u8::ANY, 0..80),
                service in proptest::collection::vec(proptest::num::u8::ANY, 0..40),
            ) {
                let mut headers = http::HeaderMap::new();
                for (name, value) in [(UID_HEADER, uid), (SERVICE_HEADER, service)] {
                    if let Ok(value) = http::HeaderValue::from_bytes(&value) {
                        headers.insert(name, value);
                    }
                }
                match Caller::from_headers(&headers) {
                    Ok(Caller::User(uid)) => proptest::prop_assert!(Uid::parse(uid.as_str()).is_ok()),
                    Ok(Caller::Service(name)) => proptest::prop_assert!(!name.is_empty() && name.len() <= 32),
                    Err(status) => proptest::prop_assert_eq!(status.code(), tonic::Code::Unauthenticated),
                }
            }
        }
    }
}
