//! Where a service finds the others: one flag and variable per callee
//! (`--presence-url` / `PARLEY_PRESENCE_URL`, ...), flattened into each
//! service's `Config`, with the lazily connected channel it names.

use tonic::transport::Channel;

macro_rules! service_url {
    ($(#[$doc:meta])* $name:ident, $service:literal, $id:literal, $flag:literal, $env:literal, $default:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, clap::Args)]
        pub struct $name {
            $(#[$doc])*
            #[arg(id = $id, long = $flag, env = $env, default_value = $default, value_name = "URL")]
            pub url: String,
        }

        impl $name {
            /// A channel to the service, connected on first use.
            pub fn channel(&self) -> Result<Channel, String> {
                crate::lazy_channel($service, &self.url)
            }
        }
    };
}

service_url!(
    /// Where the message service listens.
    MessageUrl, "message", "message_url", "message-url", "PARLEY_MESSAGE_URL", "http://127.0.0.1:50052"
);
service_url!(
    /// Where the presence service listens.
    PresenceUrl, "presence", "presence_url", "presence-url", "PARLEY_PRESENCE_URL", "http://127.0.0.1:50053"
);
service_url!(
    /// Where the receipt service listens.
    ReceiptUrl, "receipt", "receipt_url", "receipt-url", "PARLEY_RECEIPT_URL", "http://127.0.0.1:50054"
);
service_url!(
    /// Where the notification service listens.
    NotificationUrl, "notification", "notification_url", "notification-url", "PARLEY_NOTIFICATION_URL", "http://127.0.0.1:50055"
);
