//! What is pushed, to whom, and the boundary every push service sits behind:
//! a [`Sender`] turns one push to one device into an [`Outcome`] the worker
//! acts on (done, retry, forget the token, give up).

use std::{fmt, sync::Arc, time::Duration};

use parley_proto::notification as pb;

/// The push service a device token belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Platform {
    /// Apple Push Notification service.
    Apns,
    /// Firebase Cloud Messaging.
    Fcm,
}

impl Platform {
    /// The stored code.
    pub fn code(self) -> i16 {
        match self {
            Self::Apns => 1,
            Self::Fcm => 2,
        }
    }

    /// The platform a stored code names.
    pub fn from_code(code: i16) -> Option<Self> {
        match code {
            1 => Some(Self::Apns),
            2 => Some(Self::Fcm),
            _ => None,
        }
    }

    /// The platform a request names.
    pub fn from_proto(raw: i32) -> Option<Self> {
        match pb::Platform::try_from(raw).ok()? {
            pb::Platform::Apns => Some(Self::Apns),
            pb::Platform::Fcm => Some(Self::Fcm),
            pb::Platform::Unspecified => None,
        }
    }

    /// Lower-case name, for logs and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Self::Apns => "apns",
            Self::Fcm => "fcm",
        }
    }
}

/// A device's push registration. `Debug` leaves the token out: tokens are
/// credentials and never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Device {
    /// The owner.
    pub uid: String,
    /// The device's stable id.
    pub device_id: String,
    /// APNs or FCM.
    pub platform: Platform,
    /// The push token.
    pub token: String,
    /// APNs topic (bundle id) or FCM project id (empty: the credentials' project).
    pub app_id: String,
    /// BCP 47 locale, possibly empty.
    pub locale: String,
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Device")
            .field("uid", &self.uid)
            .field("device_id", &self.device_id)
            .field("platform", &self.platform)
            .field("app_id", &self.app_id)
            .finish_non_exhaustive()
    }
}

/// One collapsed notification: the messages a user has not read in one group.
/// It carries no message content, only counts and ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Push {
    /// The group.
    pub gid: i64,
    /// The group's display name.
    pub group_name: String,
    /// Messages this push stands for.
    pub count: u32,
    /// First seq covered.
    pub first_seq: i64,
    /// Last seq covered.
    pub last_seq: i64,
    /// The newest message's id.
    pub last_msgid: i64,
    /// The user's unread count over every group: the app icon badge.
    pub badge: u32,
}

impl Push {
    /// The notification title: the group's name.
    pub fn title(&self) -> &str {
        if self.group_name.is_empty() {
            "Parley"
        } else {
            &self.group_name
        }
    }

    /// The notification text: "3 new messages in Design".
    pub fn body(&self) -> String {
        let what = if self.count == 1 {
            "New message".to_owned()
        } else {
            format!("{} new messages", self.count)
        };
        if self.group_name.is_empty() {
            what
        } else {
            format!("{what} in {}", self.group_name)
        }
    }

    /// The notification text as a key into the app's own strings and its
    /// arguments, for the phone to show in its language:
    /// `PARLEY_NEW_MESSAGE` with the group, or `PARLEY_NEW_MESSAGES` with the
    /// count and the group (two keys, as Android's string resources have no
    /// plurals; an iOS app may still give `PARLEY_NEW_MESSAGES` a
    /// `.stringsdict` for languages with more forms).
    pub fn body_key(&self) -> (&'static str, Vec<String>) {
        if self.count == 1 {
            ("PARLEY_NEW_MESSAGE", vec![self.title().to_owned()])
        } else {
            (
                "PARLEY_NEW_MESSAGES",
                vec![self.count.to_string(), self.title().to_owned()],
            )
        }
    }

    /// The collapse key: one visible notification per group on the device,
    /// so a re-sent or later push replaces the previous one.
    pub fn collapse_id(&self) -> String {
        format!("parley-group-{}", self.gid)
    }
}

/// How a push's text reaches the phone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Wording {
    /// English text, as the service writes it ("3 new messages in Design").
    #[default]
    Text,
    /// The English text, and [`Push::body_key`] for the phone to show in its
    /// own language: only for apps that ship those strings, as a phone shows
    /// an unknown key rather than the text.
    Keys,
}

/// What a push service said about one push.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted.
    Sent,
    /// Try again later: throttled or a server error. `after` is the provider's
    /// `Retry-After`, when it gave one.
    Retry {
        /// The earliest time to retry, from the provider.
        after: Option<Duration>,
        /// What happened, for the dead letter if no attempt succeeds.
        reason: String,
    },
    /// The token is dead (unregistered, malformed, or not this app's): forget it.
    BadToken {
        /// What the provider said.
        reason: String,
    },
    /// Will never succeed as sent (bad payload, credentials refused): give up.
    Failed {
        /// What the provider said.
        reason: String,
    },
}

/// One push service.
#[tonic::async_trait]
pub trait Sender: Send + Sync + 'static {
    /// Sends `push` to `device` once; the worker retries.
    async fn send(&self, device: &Device, push: &Push) -> Outcome;
}

/// The sender for each platform; `None` where no credentials are configured.
#[derive(Clone, Default)]
pub struct Senders {
    /// APNs.
    pub apns: Option<Arc<dyn Sender>>,
    /// FCM.
    pub fcm: Option<Arc<dyn Sender>>,
}

impl Senders {
    /// The sender for `platform`.
    pub fn get(&self, platform: Platform) -> Option<&Arc<dyn Sender>> {
        match platform {
            Platform::Apns => self.apns.as_ref(),
            Platform::Fcm => self.fcm.as_ref(),
        }
    }
}

/// The development sender: logs what would be pushed (never the token),
/// optionally appends it as a JSON line to a file (what `parley demo` reads),
/// and reports success.
#[derive(Debug, Default)]
pub struct LogSender {
    file: Option<std::sync::Mutex<std::fs::File>>,
}

impl LogSender {
    /// A sender that logs only.
    pub fn new() -> Self {
        Self::default()
    }

    /// A sender that also appends each push to `path`.
    pub fn with_file(path: &std::path::Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self {
            file: Some(std::sync::Mutex::new(file)),
        })
    }
}

#[tonic::async_trait]
impl Sender for LogSender {
    async fn send(&self, device: &Device, push: &Push) -> Outcome {
        tracing::info!(
            uid = %device.uid,
            device = %device.device_id,
            platform = device.platform.name(),
            gid = push.gid,
            seqs = %format!("{}..={}", push.first_seq, push.last_seq),
            badge = push.badge,
            text = %push.body(),
            "push (logging sender: nothing leaves this machine)"
        );
        if let Some(file) = &self.file {
            let line = serde_json::json!({
                "uid": device.uid,
                "device_id": device.device_id,
                "platform": device.platform.name(),
                "gid": push.gid,
                "first_seq": push.first_seq,
                "last_seq": push.last_seq,
                "count": push.count,
                "badge": push.badge,
                "title": push.title(),
                "body": push.body(),
            });
            let mut file = file.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Err(error) =
                std::io::Write::write_all(&mut *file, format!("{line}\n").as_bytes())
            {
                tracing::warn!(error = %error, "push log file not written");
            }
        }
        Outcome::Sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(count: u32, group: &str) -> Push {
        Push {
            gid: 7,
            group_name: group.into(),
            count,
            first_seq: 1,
            last_seq: i64::from(count),
            last_msgid: 9,
            badge: 4,
        }
    }

    #[test]
    fn text_says_how_many_and_where() {
        assert_eq!(push(3, "Design").body(), "3 new messages in Design");
        assert_eq!(push(1, "Design").body(), "New message in Design");
        assert_eq!(push(2, "").body(), "2 new messages");
        assert_eq!(push(2, "").title(), "Parley");
        assert_eq!(push(2, "Design").collapse_id(), "parley-group-7");
    }

    #[test]
    fn device_debug_hides_the_token() {
        let device = Device {
            uid: "u".into(),
            device_id: "d".into(),
            platform: Platform::Fcm,
            token: "secret-token".into(),
            app_id: "p".into(),
            locale: String::new(),
        };
        assert!(!format!("{device:?}").contains("secret-token"));
    }

    #[test]
    fn platform_codes_round_trip() {
        for p in [Platform::Apns, Platform::Fcm] {
            assert_eq!(Platform::from_code(p.code()), Some(p));
        }
        assert_eq!(Platform::from_code(0), None);
        assert_eq!(Platform::from_proto(0), None);
        assert_eq!(Platform::from_proto(2), Some(Platform::Fcm));
    }
}
