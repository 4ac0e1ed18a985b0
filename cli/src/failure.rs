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

/// A failed command.
#[derive(Debug, PartialEq, Eq)]
pub enum Failure {
    /// The suite answered and refused: bad input, no such group, a limit.
    Refused(String),
    /// The caller is not allowed: not a member, not an admin, bad token.
    Denied(String),
    /// The suite did not answer: not running, wrong address, overloaded.
    Unreachable(String),
    /// Anything else (a bad flag value the CLI checks itself, a file).
    Other(String),
}

impl Failure {
    /// `what` failed with `code`, `reason` (empty for none) and `message`:
    /// a gRPC status or a result frame's fields.
    pub fn of(what: &str, code: Code, reason: &str, message: &str) -> Self {
        let text = if reason.is_empty() {
            format!("{what}: {message}")
        } else {
            format!("{what}: {message} [{reason}]")
        };
        let kind = Reason::parse(reason).map_or_else(|| Self::of_code(code), Self::of_reason);
        kind(text)
    }

    /// Which failure a refusal for `reason` is.
    fn of_reason(reason: Reason) -> fn(String) -> Self {
        match reason {
            Reason::Unauthenticated
            | Reason::WrongCaller
            | Reason::NotAMember
            | Reason::NotAnAdmin
            | Reason::NotSenderOrAdmin => Self::Denied,
            Reason::Overloaded | Reason::StorageUnavailable | Reason::DependencyUnavailable => {
                Self::Unreachable
            }
            Reason::Internal => Self::Other,
            Reason::InvalidField
            | Reason::GroupNotFound
            | Reason::MessageNotFound
            | Reason::GroupFull
            | Reason::DirectConversation
            | Reason::ReadsHidden
            | Reason::CountsOnly
            | Reason::ReceiptsOff
            | Reason::PastLastSeq
            | Reason::TooManyDevices
            | Reason::FrameTooLarge
            | Reason::RateLimited => Self::Refused,
        }
    }

    /// Which failure an answer without a reason this build knows is.
    fn of_code(code: Code) -> fn(String) -> Self {
        match code {
            Code::PermissionDenied | Code::Unauthenticated => Self::Denied,
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => Self::Unreachable,
            _ => Self::Refused,
        }
    }

    /// A gRPC call for `what` that failed with `status`.
    pub fn status(what: &str) -> impl Fn(tonic::Status) -> Self + '_ {
        move |status| Self::of(what, status.code(), &reason_text(&status), status.message())
    }

    /// The process's exit code for it.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            Self::Other(_) => 1,
            Self::Refused(_) => 3,
            Self::Denied(_) => 4,
            Self::Unreachable(_) => 5,
        })
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Refused(text) => write!(f, "refused: {text}"),
            Self::Denied(text) => write!(f, "not allowed: {text}"),
            Self::Unreachable(text) => write!(f, "unreachable: {text}"),
            Self::Other(text) => f.write_str(text),
        }
    }
}

impl From<String> for Failure {
    fn from(text: String) -> Self {
        Self::Other(text)
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
    }
}
