//! The receipt service's errors and their one mapping to gRPC statuses.

use tonic::Status;

/// Everything a receipt RPC can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ReceiptError {
    /// The request is malformed; the message says which field.
    #[error("{0}")]
    Invalid(String),
    /// No such group (or the receipt service has not heard of it yet).
    #[error("group not found")]
    GroupNotFound,
    /// No such message in the group.
    #[error("message not found")]
    MessageNotFound,
    /// The caller may not do this.
    #[error("{0}")]
    Denied(&'static str),
    /// Not for this message: its group's receipt policy rules it out.
    #[error("{0}")]
    Precondition(&'static str),
    /// An ack past the highest seq the receipt service can vouch for: the
    /// handler asks the message service what was committed and acks up to it.
    #[error("up_to_seq is past the group's last seq")]
    PastLastSeq,
    /// The storage backend failed.
    #[error("storage: {0}")]
    Storage(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl ReceiptError {
    /// A malformed request.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid(message.into())
    }

    /// True for a transaction the database aborted to break a deadlock, which
    /// is safe to run again.
    pub fn is_deadlock(&self) -> bool {
        match self {
            Self::Storage(error) => parley_server::db::is_deadlock(error),
            _ => false,
        }
    }
}

impl From<ReceiptError> for Status {
    fn from(error: ReceiptError) -> Self {
        match error {
            ReceiptError::Invalid(message) => Status::invalid_argument(message),
            ReceiptError::GroupNotFound => Status::not_found("group not found"),
            ReceiptError::MessageNotFound => Status::not_found("message not found"),
            ReceiptError::Denied(message) => Status::permission_denied(message),
            ReceiptError::Precondition(message) => Status::failed_precondition(message),
            ReceiptError::PastLastSeq => {
                Status::out_of_range("up_to_seq is past the group's last seq")
            }
            ReceiptError::Storage(error) => {
                // The cause stays in the log; the client never sees SQL.
                tracing::error!(error = %error, "storage failure");
                if matches!(error, sqlx::Error::PoolTimedOut | sqlx::Error::Io(_)) {
                    Status::unavailable("storage unavailable; retry later")
                } else {
                    Status::internal("internal error")
                }
            }
            ReceiptError::Migrate(error) => {
                tracing::error!(error = %error, "migration failure");
                Status::internal("internal error")
            }
        }
    }
}
