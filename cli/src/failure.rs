//! Why a command failed, told apart in the exit code so scripts can act on
//! it: the suite refused the request (3), the caller may not do it (4), or
//! the suite could not be reached (5); anything else is 1 (and clap's usage
//! errors are 2).

use std::{fmt, process::ExitCode};

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
    /// `what` failed with `code` and `message` (a gRPC status or a result
    /// frame's code).
    pub fn of(what: &str, code: Code, message: &str) -> Self {
        let text = format!("{what}: {message}");
        match code {
            Code::PermissionDenied | Code::Unauthenticated => Self::Denied(text),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => Self::Unreachable(text),
            _ => Self::Refused(text),
        }
    }

    /// A gRPC call for `what` that failed with `status`.
    pub fn status(what: &str) -> impl Fn(tonic::Status) -> Self + '_ {
        move |status| Self::of(what, status.code(), status.message())
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
            let failure = Failure::of("send", code, "why");
            assert_eq!(failure.exit_code(), ExitCode::from(exit), "{code:?}");
            assert!(failure.to_string().ends_with("send: why"), "{failure}");
        }
        assert_eq!(
            Failure::from("bad".to_owned()).exit_code(),
            ExitCode::FAILURE
        );
    }
}
