//! The message service's errors and their one mapping to gRPC statuses.

use tonic::Status;

/// Everything a message RPC can fail with.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    /// The request is malformed; the message says which field.
    #[error("{0}")]
    Invalid(String),
    /// No such group.
    #[error("group not found")]
    GroupNotFound,
    /// The caller may not do this in the group.
    #[error("{0}")]
    Denied(&'static str),
    /// The request is valid but the group's state forbids it.
    #[error("{0}")]
    Precondition(&'static str),
    /// The storage backend failed.
    #[error("storage: {0}")]
    Storage(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl MessageError {
    /// A malformed request.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid(message.into())
    }
}

impl From<MessageError> for Status {
    fn from(error: MessageError) -> Self {
        match error {
            MessageError::Invalid(message) => Status::invalid_argument(message),
            MessageError::GroupNotFound => Status::not_found("group not found"),
            MessageError::Denied(message) => Status::permission_denied(message),
            MessageError::Precondition(message) => Status::failed_precondition(message),
            MessageError::Storage(error) => {
                // The cause stays in the log; the client never sees SQL.
                tracing::error!(error = %error, "storage failure");
                if matches!(error, sqlx::Error::PoolTimedOut | sqlx::Error::Io(_)) {
                    Status::unavailable("storage unavailable; retry later")
                } else {
                    Status::internal("internal error")
                }
            }
            MessageError::Migrate(error) => {
                tracing::error!(error = %error, "migration failure");
                Status::internal("internal error")
            }
        }
    }
}
