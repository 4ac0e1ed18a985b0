//! Where a service finds the others: one flag and variable per callee
//! (`--presence-url` / `PARLEY_PRESENCE_URL`, ...), flattened into each
//! service's `Config`, with the lazily connected channel it names.

use tonic::{codegen::InterceptedService, transport::Channel};

use crate::{ServiceIdentity, StartError};

/// A channel whose calls carry the calling service's identity.
pub type Intercepted = InterceptedService<Channel, ServiceIdentity>;

macro_rules! service_url {
    ($(#[$doc:meta])* $name:ident, $service:literal, $id:literal, $flag:literal, $env:literal, $port:path) => {
        $(#[$doc])*
        #[derive(Clone, Debug, clap::Args)]
        pub struct $name {
            $(#[$doc])*
            #[arg(id = $id, long = $flag, env = $env, default_value_t = crate::ports::local_url($port), value_name = "URL")]
            pub url: String,
        }

        impl $name {
            /// A channel to the service, connected on first use, with
            /// `identity`'s proof on every call: for a generated client's `new`.
            pub fn calling_as(&self, identity: &ServiceIdentity) -> Result<Intercepted, StartError> {
                Ok(InterceptedService::new(
                    crate::lazy_channel($service, &self.url).map_err(StartError::Config)?,
                    identity.to($service),
                ))
            }
        }
    };
}

service_url!(
    /// Where the message service listens.
    MessageUrl, "message", "message_url", "message-url", "PARLEY_MESSAGE_URL", crate::ports::MESSAGE
);
service_url!(
    /// Where the presence service listens.
    PresenceUrl, "presence", "presence_url", "presence-url", "PARLEY_PRESENCE_URL", crate::ports::PRESENCE
);
service_url!(
    /// Where the receipt service listens.
    ReceiptUrl, "receipt", "receipt_url", "receipt-url", "PARLEY_RECEIPT_URL", crate::ports::RECEIPT
);
service_url!(
    /// Where the notification service listens.
    NotificationUrl, "notification", "notification_url", "notification-url", "PARLEY_NOTIFICATION_URL", crate::ports::NOTIFICATION
);
