//! Why a command failed, told apart in the exit code so scripts can act on
//! it: the suite refused the request (3), the caller may not do it (4), or
//! the suite could not be reached (5); anything else is 1 (and clap's usage
//! errors are 2). The reason a refusal carries decides, so a script sees
//! NOT_A_MEMBER as "not allowed" and STORAGE_UNAVAILABLE as "unreachable"
//! whatever the message says; a refusal without a known reason falls back to
//! its gRPC code.

use std::{fmt, process::ExitCode};

use parley_server::{Reason, error::reason_text};
use tonic::Code;

/// A failed command: what kind of failure, the text for people, and the
/// refusal's reason when the suite gave one.
#[derive(Debug, PartialEq, Eq)]
pub struct Failure {
    kind: Kind,
    text: String,
    reason: Option<String>,
}

/// What kind of failure it is, which decides the exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// The suite answered and refused: bad input, no such group, a limit.
    Refused,
    /// The caller is not allowed: not a member, not an admin, bad token.
    Denied,
    /// The suite did not answer: not running, wrong address, overloaded.
    Unreachable,
    /// Anything else (a bad flag value the CLI checks itself, a file).
    Other,
}

impl Kind {
    /// Its name in `--json` output.
    fn name(self) -> &'static str {
        match self {
            Self::Refused => "refused",
            Self::Denied => "not_allowed",
            Self::Unreachable => "unreachable",
            Self::Other => "failed",
        }
    }
}

impl Failure {
    /// A failure of the CLI's own (a flag value, a file, an answer it did
    /// not expect).
    pub fn other(text: impl Into<String>) -> Self {
        Self {
            kind: Kind::Other,
            text: text.into(),
            reason: None,
        }
    }

    /// The suite did not answer.
    pub fn unreachable(text: impl Into<String>) -> Self {
        Self {
            kind: Kind::Unreachable,
            ..Self::other(text)
        }
    }

    /// `what` failed with `code`, `reason` (empty for none) and `message`:
    /// a gRPC status or a result frame's fields.
    pub fn of(what: &str, code: Code, reason: &str, message: &str) -> Self {
        let (text, said) = if reason.is_empty() {
            (format!("{what}: {message}"), None)
        } else {
            (
                format!("{what}: {message} [{reason}]"),
                Some(reason.to_owned()),
            )
        };
        // A known reason decides through its own code, whatever code came
        // with it; a fault of the suite's own is a plain failure.
        let kind = match Reason::parse(reason) {
            Some(Reason::Internal) => Kind::Other,
            Some(known) => Self::of_code(known.code()),
            None => Self::of_code(code),
        };
        Self {
            kind,
            text,
            reason: said,
        }
    }

    /// Which failure an answer with `code` is.
    fn of_code(code: Code) -> Kind {
        match code {
            Code::PermissionDenied | Code::Unauthenticated => Kind::Denied,
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => Kind::Unreachable,
            _ => Kind::Refused,
        }
    }

    /// A gRPC call for `what` that failed with `status`.
    pub fn status(what: &str) -> impl Fn(tonic::Status) -> Self + '_ {
        move |status| Self::of(what, status.code(), &reason_text(&status), status.message())
    }

    /// The process's exit code for it.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self.kind {
            Kind::Other => 1,
            Kind::Refused => 3,
            Kind::Denied => 4,
            Kind::Unreachable => 5,
        })
    }

    /// What `--json` prints on standard error: the kind, the reason (null
    /// without one) and the text.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "kind": self.kind.name(),
                "reason": self.reason,
                "message": self.text,
            }
        })
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            Kind::Refused => write!(f, "refused: {}", self.text),
            Kind::Denied => write!(f, "not allowed: {}", self.text),
            Kind::Unreachable => write!(f, "unreachable: {}", self.text),
            Kind::Other => f.write_str(&self.text),
        }
    }
}

impl From<String> for Failure {
    fn from(text: String) -> Self {
        Self::other(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_permission_and_unreachable_exit_differently() {
        let cases = [
            (Code::InvalidArgument, 3),
            (Code::NotFound, 3),
            (Code::FailedPrecondition, 3),
            (Code::ResourceExhausted, 3),
            (Code::PermissionDenied, 4),
            (Code::Unauthenticated, 4),
            (Code::Unavailable, 5),
            (Code::DeadlineExceeded, 5),
        ];
        for (code, exit) in cases {
            let failure = Failure::of("send", code, "", "why");
            assert_eq!(failure.exit_code(), ExitCode::from(exit), "{code:?}");
            assert!(failure.to_string().ends_with("send: why"), "{failure}");
        }
        assert_eq!(
            Failure::from("bad".to_owned()).exit_code(),
            ExitCode::FAILURE
        );
    }

    #[test]
    fn the_reason_decides_over_the_code_and_is_shown() {
        // A reason decides even where its code would say otherwise, so the
        // exit follows what happened, not how a service chose to say it.
        let cases = [
            (Reason::NotAMember, 4),
            (Reason::NotSenderOrAdmin, 4),
            (Reason::GroupNotFound, 3),
            (Reason::GroupFull, 3),
            (Reason::RateLimited, 3),
            (Reason::StorageUnavailable, 5),
            (Reason::Overloaded, 5),
            (Reason::Internal, 1),
        ];
        for (reason, exit) in cases {
            let status: tonic::Status = parley_server::Error::refused(reason).into();
            let failure = Failure::status("send")(status);
            assert_eq!(failure.exit_code(), ExitCode::from(exit), "{reason:?}");
            assert!(
                failure.to_string().contains(reason.as_str()),
                "the reason is shown: {failure}"
            );
        }
        let unknown = Failure::of("send", Code::PermissionDenied, "SOME_NEW_REASON", "why");
        assert_eq!(
            unknown.exit_code(),
            ExitCode::from(4),
            "unknown reasons fall back to the code"
        );
        assert_eq!(
            unknown.json()["error"],
            serde_json::json!({
                "kind": "not_allowed",
                "reason": "SOME_NEW_REASON",
                "message": "send: why [SOME_NEW_REASON]",
            })
        );
        assert_eq!(
            Failure::unreachable("gone").json()["error"]["reason"],
            serde_json::Value::Null
        );
    }
}
