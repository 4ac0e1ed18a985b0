//! Where a service finds the others: one flag and variable per callee
//! (`--presence-url` / `PARLEY_PRESENCE_URL`, ...), the typed client each
//! names, and [`callees!`](crate::callees), which declares the flags a
//! service's `Config` flattens and the clients it builds from them.

use parley_proto::{
    message::message_service_client::MessageServiceClient,
    notification::notification_service_client::NotificationServiceClient,
    presence::presence_service_client::PresenceServiceClient,
    receipt::receipt_service_client::ReceiptServiceClient,
};
use tonic::{codegen::InterceptedService, transport::Channel};

use crate::{ServiceIdentity, StartError};

/// A channel whose calls carry the calling service's identity.
pub type Intercepted = InterceptedService<Channel, ServiceIdentity>;

/// A client of the message service, calling as this service.
pub type MessageClient = MessageServiceClient<Intercepted>;
/// A client of the presence service, calling as this service.
pub type PresenceClient = PresenceServiceClient<Intercepted>;
/// A client of the receipt service, calling as this service.
pub type ReceiptClient = ReceiptServiceClient<Intercepted>;
/// A client of the notification service, calling as this service.
pub type NotificationClient = NotificationServiceClient<Intercepted>;

/// A service's URL flag, and the client it makes.
pub trait Callee {
    /// The generated client, over a channel carrying the caller's identity.
    type Client;

    /// A client of the service, connected on first use, with `identity`'s
    /// proof on every call. Fails only on a URL that cannot be one.
    fn client(&self, identity: &ServiceIdentity) -> Result<Self::Client, StartError>;
}

macro_rules! service_url {
    ($(#[$doc:meta])* $name:ident, $client:ident, $service:literal, $id:literal, $flag:literal, $env:literal, $port:path) => {
        $(#[$doc])*
        #[derive(Clone, Debug, clap::Args)]
        pub struct $name {
            $(#[$doc])*
            #[arg(id = $id, long = $flag, env = $env, default_value_t = crate::ports::local_url($port), value_name = "URL")]
            pub url: String,
        }

        impl Callee for $name {
            type Client = $client;

            fn client(&self, identity: &ServiceIdentity) -> Result<$client, StartError> {
                let channel = crate::lazy_channel($service, &self.url).map_err(StartError::Config)?;
                Ok($client::new(InterceptedService::new(channel, identity.to($service))))
            }
        }
    };
}

service_url!(
    /// Where the message service listens.
    MessageUrl, MessageClient, "message", "message_url", "message-url", "PARLEY_MESSAGE_URL", crate::ports::MESSAGE
);
service_url!(
    /// Where the presence service listens.
    PresenceUrl, PresenceClient, "presence", "presence_url", "presence-url", "PARLEY_PRESENCE_URL", crate::ports::PRESENCE
);
service_url!(
    /// Where the receipt service listens.
    ReceiptUrl, ReceiptClient, "receipt", "receipt_url", "receipt-url", "PARLEY_RECEIPT_URL", crate::ports::RECEIPT
);
service_url!(
    /// Where the notification service listens.
    NotificationUrl, NotificationClient, "notification", "notification_url", "notification-url", "PARLEY_NOTIFICATION_URL", crate::ports::NOTIFICATION
);

/// Declares the services a service calls, once: `Callees`, the URL flags its
/// `Config` flattens (`#[command(flatten)] pub calls: Callees`), and
/// `Clients`, a client of each built with the service's credentials, beside
/// the keys it checks its own callers with.
///
/// ```ignore
/// parley_server::callees!("receipt" calls {
///     /// The presence service, to find senders' gateways.
///     presence: PresenceUrl,
///     /// The message service, for how far a group's messages go.
///     message: MessageUrl,
/// });
/// ```
#[macro_export]
macro_rules! callees {
    ($caller:literal calls { $($(#[$doc:meta])* $field:ident: $url:ident),+ $(,)? }) => {
        /// The services this one calls: a URL flag each.
        #[derive(Clone, Debug, clap::Args)]
        pub struct Callees {
            $(
                $(#[$doc])*
                #[command(flatten)]
                pub $field: $crate::upstream::$url,
            )+
        }

        /// A client of each service this one calls, and the keys it checks
        /// its own callers' credentials with (none: development mode).
        pub struct Clients {
            /// The keys of this service's credentials.
            pub keys: ::std::option::Option<$crate::credentials::Keys>,
            $(
                $(#[$doc])*
                pub $field: <$crate::upstream::$url as $crate::upstream::Callee>::Client,
            )+
        }

        impl Clients {
            /// The clients `callees` names, calling with the credentials
            /// `server` names; fails, before anything is bound, on
            /// credentials or a URL that cannot work.
            pub fn new(
                callees: &Callees,
                server: &$crate::ServerArgs,
            ) -> ::std::result::Result<Self, $crate::StartError> {
                use $crate::upstream::Callee as _;
                let (keys, identity) = server.identity($caller)?;
                Ok(Self {
                    $($field: callees.$field.client(&identity)?,)+
                    keys,
                })
            }
        }
    };
}
