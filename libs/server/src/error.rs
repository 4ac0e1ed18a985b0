//! One error convention for every service. A handler fails with an [`Error`],
//! and [`From<Error> for Status`] is the one mapping to gRPC: the code comes
//! from the [`Reason`], and the status carries machine-readable details
//! (`google.rpc.ErrorInfo` with the reason in domain [`DOMAIN`], `BadRequest`
//! naming the malformed field, `RetryInfo` on UNAVAILABLE and
//! RESOURCE_EXHAUSTED). Callers switch on [`reason`], never on the message
//! text, which is for people and may change.
//!
//! Storage failures are told apart here too: a pool timeout or a broken
//! connection is UNAVAILABLE (retry), anything else INTERNAL; the cause stays
//! in the log and the client never sees SQL or a Redis reply.

use std::{borrow::Cow, collections::HashMap, time::Duration};

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `ErrorInfo.domain` of every Parley refusal.
pub const DOMAIN: &str = "parley";

/// How long a client should wait before retrying after storage was
/// unavailable.
pub const STORAGE_RETRY: Duration = Duration::from_secs(1);

macro_rules! reasons {
    ($($(#[$doc:meta])* $name:ident = $text:literal, $code:ident, $message:literal;)+) => {
        /// Why a request was refused: stable, documented in the protos, and
        /// carried in `ErrorInfo.reason`. New reasons may be added; a client
        /// treats one it does not know by its gRPC code.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Reason {
            $($(#[$doc])* $name,)+
        }

        impl Reason {
            /// Every reason, in the order documented.
            pub const ALL: &'static [Reason] = &[$(Reason::$name,)+];

            /// The reason as it travels: `NOT_A_MEMBER`.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$name => $text,)+
                }
            }

            /// The gRPC code a refusal for this reason has.
            pub fn code(self) -> Code {
                match self {
                    $(Reason::$name => Code::$code,)+
                }
            }

            /// The message a refusal for this reason has unless it says more.
            pub fn message(self) -> &'static str {
                match self {
                    $(Reason::$name => $message,)+
                }
            }

            /// The reason that travels as `text`, if it is one.
            pub fn parse(text: &str) -> Option<Reason> {
                match text {
                    $($text => Some(Reason::$name),)+
                    _ => None,
                }
            }
        }
    };
}

reasons! {
    /// A field of the request is malformed; `BadRequest` names it.
    InvalidField = "INVALID_FIELD", InvalidArgument, "a field of the request is malformed";
    /// The caller's identity is missing or malformed.
    Unauthenticated = "UNAUTHENTICATED", Unauthenticated, "no valid caller identity";
    /// The RPC is not for this kind of caller (internal-only, or user-only).
    WrongCaller = "WRONG_CALLER", PermissionDenied, "this caller may not call this RPC";
    /// No such group.
    GroupNotFound = "GROUP_NOT_FOUND", NotFound, "group not found";
    /// No such message in the group.
    MessageNotFound = "MESSAGE_NOT_FOUND", NotFound, "message not found";
    /// The caller is not a member of the group.
    NotAMember = "NOT_A_MEMBER", PermissionDenied, "not a member of this group";
    /// Only the group's admins may do this.
    NotAnAdmin = "NOT_AN_ADMIN", PermissionDenied, "only the group's admins may do this";
    /// Only the message's sender and the group's admins see its receipts.
    NotSenderOrAdmin = "NOT_SENDER_OR_ADMIN", PermissionDenied,
        "only a message's sender and group admins see its receipts";
    /// The group has as many members as it may.
    GroupFull = "GROUP_FULL", FailedPrecondition, "the group is full";
    /// The members of a direct conversation cannot change.
    DirectConversation = "DIRECT_CONVERSATION", FailedPrecondition,
        "the members of a direct conversation cannot change";
    /// The caller hides their reads in this group, so sees no one's.
    ReadsHidden = "READS_HIDDEN", FailedPrecondition,
        "you hide your reads in this group, so you see no one's";
    /// The message was sent where only read counts are shown.
    CountsOnly = "RECEIPTS_COUNTS_ONLY", FailedPrecondition,
        "this message was sent where only read counts are shown";
    /// The message was sent with receipts off.
    ReceiptsOff = "RECEIPTS_OFF", FailedPrecondition, "this message was sent with receipts off";
    /// An ack past the group's last seq.
    PastLastSeq = "PAST_LAST_SEQ", OutOfRange, "up_to_seq is past the group's last seq";
    /// A stream frame larger than the gateway takes.
    FrameTooLarge = "FRAME_TOO_LARGE", ResourceExhausted, "frame too large";
    /// The user has as many push devices as they may.
    TooManyDevices = "TOO_MANY_DEVICES", ResourceExhausted, "too many devices";
    /// The caller is over its rate; `RetryInfo` says when to try again.
    RateLimited = "RATE_LIMITED", ResourceExhausted, "rate limited; retry later";
    /// The server is busy; `RetryInfo` says when to try again.
    Overloaded = "OVERLOADED", Unavailable, "busy; retry later";
    /// Storage could not be reached in time; `RetryInfo` says when to retry.
    StorageUnavailable = "STORAGE_UNAVAILABLE", Unavailable, "storage unavailable; retry later";
    /// Another service this call needs did not answer.
    DependencyUnavailable = "DEPENDENCY_UNAVAILABLE", Unavailable,
        "a service this call needs is unavailable; retry later";
    /// A fault of the server's own, logged where it happened.
    Internal = "INTERNAL", Internal, "internal error";
}

impl Reason {
    /// Whether a refusal for this reason may pass if tried again later: the
    /// server was busy, down or at fault, as opposed to refusing the request
    /// itself, which no retry changes.
    pub fn may_pass(self) -> bool {
        matches!(
            self,
            Reason::RateLimited
                | Reason::Overloaded
                | Reason::StorageUnavailable
                | Reason::DependencyUnavailable
                | Reason::Internal
        )
    }
}

/// Everything an RPC can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A field of the request is malformed: INVALID_ARGUMENT with a
    /// `BadRequest` violation naming the field.
    #[error("{field}: {description}")]
    Invalid {
        /// The field's path in the request: `messages[3].gid`.
        field: Cow<'static, str>,
        /// What is wrong with it.
        description: String,
    },
    /// A well-formed request refused: the code comes from the reason.
    #[error("{message}")]
    Refused {
        /// Why.
        reason: Reason,
        /// For people: the reason's message or a more precise one.
        message: Cow<'static, str>,
        /// When a retry may succeed, for a refusal that may pass later.
        retry_after: Option<Duration>,
    },
    /// The storage backend failed.
    #[error("storage: {0}")]
    Storage(#[from] sqlx::Error),
    /// Another backend (Redis, a pool) failed; `transient` when a retry may
    /// succeed.
    #[error("{source}")]
    Backend {
        /// Whether the failure may pass (a dropped connection, a timeout).
        transient: bool,
        /// The cause, for the log only.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    /// A malformed `field`.
    pub fn invalid(field: impl Into<Cow<'static, str>>, description: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            description: description.into(),
        }
    }

    /// A refusal for `reason` with its own message.
    pub fn refused(reason: Reason) -> Self {
        Self::refused_because(reason, reason.message())
    }

    /// A refusal for `reason` that says more than the reason's message.
    pub fn refused_because(reason: Reason, message: impl Into<Cow<'static, str>>) -> Self {
        Self::Refused {
            reason,
            message: message.into(),
            retry_after: None,
        }
    }

    /// A refusal that may pass after `retry_after` (capped at
    /// [`crate::shed::MAX_RETRY_AFTER`]).
    pub fn retry_later(
        reason: Reason,
        message: impl Into<Cow<'static, str>>,
        retry_after: Duration,
    ) -> Self {
        Self::Refused {
            reason,
            message: message.into(),
            retry_after: Some(retry_after.min(crate::shed::MAX_RETRY_AFTER)),
        }
    }

    /// A failure of a backend other than SQL.
    pub fn backend(
        transient: bool,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Backend {
            transient,
            source: Box::new(source),
        }
    }

    /// The reason this error is refused with.
    pub fn reason(&self) -> Reason {
        match self {
            Self::Invalid { .. } => Reason::InvalidField,
            Self::Refused { reason, .. } => *reason,
            Self::Storage(error) if storage_is_transient(error) => Reason::StorageUnavailable,
            Self::Backend {
                transient: true, ..
            } => Reason::StorageUnavailable,
            Self::Storage(_) | Self::Backend { .. } => Reason::Internal,
        }
    }

    /// True for a transaction the database aborted to break a deadlock,
    /// which is safe to run again.
    pub fn is_deadlock(&self) -> bool {
        matches!(self, Self::Storage(error) if crate::db::is_deadlock(error))
    }

    /// The same error with its field inside `parent` (`messages[3]`): for a
    /// check of one item of a repeated field. Other errors are unchanged.
    pub fn within(self, parent: &str) -> Self {
        match self {
            Self::Invalid { field, description } => Self::Invalid {
                field: Cow::Owned(nest(parent, &field)),
                description,
            },
            other => other,
        }
    }
}

fn nest(parent: &str, field: &str) -> String {
    if field.is_empty() {
        parent.to_owned()
    } else if field.starts_with('[') {
        format!("{parent}{field}")
    } else {
        format!("{parent}.{field}")
    }
}

/// Whether a SQL failure may pass on retry: the pool had no connection in
/// time or the connection broke.
fn storage_is_transient(error: &sqlx::Error) -> bool {
    matches!(
        error,
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed
    )
}

impl From<Error> for Status {
    /// The status for `error`, counted in `parley_refusals_total` by reason.
    fn from(error: Error) -> Self {
        let reason = error.reason();
        metrics::counter!("parley_refusals_total", "reason" => reason.as_str()).increment(1);
        to_status(error, reason)
    }
}

fn to_status(error: Error, reason: Reason) -> Status {
    let mut details = ErrorDetails::new();
    details.set_error_info(reason.as_str(), DOMAIN, HashMap::new());
    let message = match error {
        Error::Invalid { field, description } => {
            details.add_bad_request_violation(field.as_ref(), description.as_str());
            format!("{field}: {description}")
        }
        Error::Refused {
            message,
            retry_after,
            ..
        } => {
            if let Some(hint) = retry_after {
                details.set_retry_info(Some(hint));
            }
            message.into_owned()
        }
        Error::Storage(error) => {
            // The cause stays in the log; the client never sees SQL.
            tracing::error!(error = %error, "storage failure");
            storage_answer(reason, &mut details)
        }
        Error::Backend { source, .. } => {
            tracing::error!(error = %source, "storage failure");
            storage_answer(reason, &mut details)
        }
    };
    Status::with_error_details(reason.code(), message, details)
}

fn storage_answer(reason: Reason, details: &mut ErrorDetails) -> String {
    if reason == Reason::StorageUnavailable {
        details.set_retry_info(Some(STORAGE_RETRY));
    }
    reason.message().to_owned()
}

/// A status for `reason`, with its message: for code that answers with a
/// `Status` directly.
pub fn status(reason: Reason, message: impl Into<Cow<'static, str>>) -> Status {
    Error::refused_because(reason, message).into()
}

/// The reason a status was refused with, when it carries a Parley
/// `ErrorInfo` naming one this build knows.
pub fn reason(status: &Status) -> Option<Reason> {
    Reason::parse(&parley_reason(status)?)
}

/// Whether a failed call may succeed if tried again later: by its reason
/// when it carries one, else by its code (a status from outside Parley: a
/// transport error, a proxy, a timeout).
pub fn may_pass(status: &Status) -> bool {
    reason(status).map_or_else(
        || crate::shed::is_transient(status.code()),
        Reason::may_pass,
    )
}

/// The status a result field carried (`code`, `reason`, `message`), with its
/// reason as details again, so [`reason`] and [`may_pass`] read it as they
/// read the original.
pub fn rebuilt(code: Code, reason: &str, message: String) -> Status {
    match Reason::parse(reason) {
        // Not counted again: the service that refused counted it.
        Some(reason) if reason.code() == code => {
            to_status(Error::refused_because(reason, message), reason)
        }
        _ => Status::new(code, message),
    }
}

/// The reason a status was refused with, as it travels (`NOT_A_MEMBER`), or
/// empty when it carries none: what a client frame's `reason` holds.
pub fn reason_text(status: &Status) -> String {
    parley_reason(status).unwrap_or_default()
}

/// The reason of a status's Parley `ErrorInfo`, known to this build or not.
fn parley_reason(status: &Status) -> Option<String> {
    let info = status.get_details_error_info()?;
    (info.domain == DOMAIN).then_some(info.reason)
}

/// The fields a refused request named as malformed, with what is wrong.
pub fn field_violations(status: &Status) -> Vec<(String, String)> {
    status
        .get_details_bad_request()
        .map(|bad| {
            bad.field_violations
                .into_iter()
                .map(|v| (v.field, v.description))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_travels_and_comes_back() {
        for &reason in Reason::ALL {
            let status: Status = Error::refused(reason).into();
            assert_eq!(status.code(), reason.code(), "{reason:?}");
            assert_eq!(self::reason(&status), Some(reason));
            assert_eq!(reason_text(&status), reason.as_str());
            let text = reason.as_str();
            assert!(
                text.chars().all(|c| c.is_ascii_uppercase() || c == '_'),
                "{text} is UPPER_SNAKE_CASE"
            );
        }
        let mut texts: Vec<_> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        texts.sort_unstable();
        texts.dedup();
        assert_eq!(texts.len(), Reason::ALL.len(), "reasons are distinct");
    }

    #[test]
    fn a_malformed_field_is_named_in_bad_request() {
        let status: Status = Error::invalid("gid", "must be positive")
            .within("groups[2]")
            .into();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(reason(&status), Some(Reason::InvalidField));
        assert_eq!(
            field_violations(&status),
            vec![("groups[2].gid".to_owned(), "must be positive".to_owned())]
        );
        assert_eq!(status.message(), "groups[2].gid: must be positive");
        let whole: Status = Error::invalid("", "too many").within("uids").into();
        assert_eq!(field_violations(&whole)[0].0, "uids");
        let item: Status = Error::invalid("[4]", "bad uid").within("uids").into();
        assert_eq!(field_violations(&item)[0].0, "uids[4]");
    }

    #[test]
    fn storage_failures_are_unavailable_only_when_transient() {
        let timed_out: Status = Error::Storage(sqlx::Error::PoolTimedOut).into();
        assert_eq!(timed_out.code(), Code::Unavailable);
        assert_eq!(reason(&timed_out), Some(Reason::StorageUnavailable));
        assert_eq!(crate::shed::retry_after(&timed_out), Some(STORAGE_RETRY));

        let broken: Status = Error::Storage(sqlx::Error::RowNotFound).into();
        assert_eq!(broken.code(), Code::Internal);
        assert_eq!(reason(&broken), Some(Reason::Internal));
        assert_eq!(
            broken.message(),
            "internal error",
            "no SQL reaches the client"
        );

        let redis = std::io::Error::other("WRONGTYPE secret detail");
        let failed: Status = Error::backend(false, redis).into();
        assert_eq!(failed.code(), Code::Internal);
        assert!(!failed.message().contains("secret"));
    }

    #[test]
    fn a_refusal_that_may_pass_carries_its_hint() {
        let status: Status =
            Error::retry_later(Reason::RateLimited, "slow down", Duration::from_secs(600)).into();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            crate::shed::retry_after(&status),
            Some(crate::shed::MAX_RETRY_AFTER)
        );
    }

    #[test]
    fn whether_a_refusal_may_pass_follows_its_reason() {
        for &reason in Reason::ALL {
            let status: Status = Error::refused(reason).into();
            assert_eq!(may_pass(&status), reason.may_pass(), "{reason:?}");
            let again = rebuilt(
                status.code(),
                &reason_text(&status),
                status.message().into(),
            );
            assert_eq!(
                self::reason(&again),
                Some(reason),
                "rebuilt from a result field"
            );
        }
        assert!(may_pass(&Status::unavailable("connection refused")));
        assert!(!may_pass(&Status::permission_denied("no")));
        let forged = rebuilt(Code::Ok, "NOT_A_MEMBER", String::new());
        assert_eq!(
            reason(&forged),
            None,
            "a reason with the wrong code is not believed"
        );
    }

    #[test]
    fn a_status_without_parley_details_has_no_reason() {
        assert_eq!(reason(&Status::not_found("x")), None);
        assert_eq!(reason_text(&Status::not_found("x")), "");
    }
}
