//! Push provider set-up from configuration: credentials come from files or
//! environment variables and are never logged; a provider without credentials
//! is disabled (or, with `--push-log`, replaced by the logging sender), and the
//! service says at start which is which.

use std::{path::PathBuf, sync::Arc, time::Duration};

use parley_server::serve::Secret;

use crate::{
    apns::{self, ApnsKey, ApnsSender, PushStyle},
    fcm::{self, FcmSender},
    push::{LogSender, Senders, Wording},
};

/// Push provider flags.
#[derive(Clone, Debug, clap::Args)]
pub struct PushArgs {
    /// FCM service-account key (JSON) file.
    #[arg(long, env = "PARLEY_NOTIFICATION_FCM_CREDENTIALS_FILE")]
    pub fcm_credentials_file: Option<PathBuf>,
    /// FCM service-account key as JSON text, instead of a file.
    #[arg(
        long,
        env = "PARLEY_NOTIFICATION_FCM_CREDENTIALS",
        hide_env_values = true,
        conflicts_with = "fcm_credentials_file"
    )]
    pub fcm_credentials: Option<Secret>,
    /// FCM HTTP v1 base URL; plain `http://` URLs are spoken to over HTTP/2
    /// without TLS (for local stand-ins).
    #[arg(long, env = "PARLEY_NOTIFICATION_FCM_BASE_URL", default_value = fcm::DEFAULT_BASE_URL)]
    pub fcm_base_url: String,
    /// APNs token-auth key (.p8) file.
    #[arg(long, env = "PARLEY_NOTIFICATION_APNS_KEY_FILE")]
    pub apns_key_file: Option<PathBuf>,
    /// APNs .p8 key as PEM text, instead of a file.
    #[arg(
        long,
        env = "PARLEY_NOTIFICATION_APNS_KEY",
        hide_env_values = true,
        conflicts_with = "apns_key_file"
    )]
    pub apns_key: Option<Secret>,
    /// The .p8 key's id (10 characters, from the Apple developer account).
    #[arg(long, env = "PARLEY_NOTIFICATION_APNS_KEY_ID")]
    pub apns_key_id: Option<String>,
    /// The Apple developer team id.
    #[arg(long, env = "PARLEY_NOTIFICATION_APNS_TEAM_ID")]
    pub apns_team_id: Option<String>,
    /// Send to the APNs sandbox (development builds of the app).
    #[arg(
        long,
        env = "PARLEY_NOTIFICATION_APNS_SANDBOX",
        default_value_t = false
    )]
    pub apns_sandbox: bool,
    /// APNs base URL instead of Apple's (production, or the sandbox with
    /// `--apns-sandbox`): a proxy, or a local stand-in, spoken to over HTTP/2
    /// without TLS when it is `http://`.
    #[arg(long, env = "PARLEY_NOTIFICATION_APNS_BASE_URL")]
    pub apns_base_url: Option<String>,
    /// APNs push type: a visible alert, or a background wake-up.
    #[arg(
        long,
        env = "PARLEY_NOTIFICATION_APNS_PUSH_TYPE",
        value_enum,
        default_value = "alert"
    )]
    pub apns_push_type: PushStyle,
    /// How push text reaches phones: `text` (English), or `keys`, which adds
    /// `PARLEY_NEW_MESSAGE` / `PARLEY_NEW_MESSAGES` and their arguments for
    /// the phone to show in its language (only for apps that ship those
    /// strings: a phone shows an unknown key).
    #[arg(
        long,
        env = "PARLEY_NOTIFICATION_PUSH_WORDING",
        value_enum,
        default_value = "text"
    )]
    pub push_wording: Wording,
    /// Log pushes for platforms without credentials instead of skipping them
    /// (development: nothing leaves the machine).
    #[arg(long, env = "PARLEY_NOTIFICATION_PUSH_LOG", default_value_t = false)]
    pub push_log: bool,
    /// With `--push-log`, also append each logged push as a JSON line here
    /// (no tokens, no message content).
    #[arg(long, env = "PARLEY_NOTIFICATION_PUSH_LOG_FILE", requires = "push_log")]
    pub push_log_file: Option<PathBuf>,
    /// Requests in flight per provider.
    #[arg(long, env = "PARLEY_NOTIFICATION_MAX_IN_FLIGHT", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_in_flight: u32,
    /// Timeout of one provider request, in milliseconds.
    #[arg(long, env = "PARLEY_NOTIFICATION_PUSH_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(100..=120_000))]
    pub push_timeout_ms: u64,
}

/// Credentials that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// A credentials (or push log) file could not be opened.
    #[error("{what}: cannot open {path}: {source}")]
    Read {
        /// Which credentials.
        what: &'static str,
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// FCM credentials were refused.
    #[error(transparent)]
    Fcm(#[from] fcm::FcmSetupError),
    /// APNs credentials were refused.
    #[error(transparent)]
    Apns(#[from] apns::ApnsSetupError),
    /// An APNs key without its key id and team id.
    #[error(
        "APNs: a key needs PARLEY_NOTIFICATION_APNS_KEY_ID and PARLEY_NOTIFICATION_APNS_TEAM_ID"
    )]
    ApnsIds,
}

fn read(what: &'static str, path: &PathBuf) -> Result<String, ProviderError> {
    std::fs::read_to_string(path).map_err(|source| ProviderError::Read {
        what,
        path: path.display().to_string(),
        source,
    })
}

/// A credential given as a file or inline (the file wins; clap refuses both).
fn credential(
    what: &'static str,
    file: Option<&PathBuf>,
    inline: Option<&Secret>,
) -> Result<Option<String>, ProviderError> {
    match (file, inline) {
        (Some(path), _) => read(what, path).map(Some),
        (None, Some(secret)) => Ok(Some(secret.expose().to_owned())),
        (None, None) => Ok(None),
    }
}

impl PushArgs {
    /// Builds the senders.
    pub fn senders(&self) -> Result<Senders, ProviderError> {
        let timeout = Duration::from_millis(self.push_timeout_ms);
        let in_flight = usize::try_from(self.max_in_flight).unwrap_or(usize::MAX);
        let mut senders = Senders::default();
        let fcm_key = credential(
            "FCM credentials",
            self.fcm_credentials_file.as_ref(),
            self.fcm_credentials.as_ref(),
        )?;
        if let Some(key) = fcm_key {
            let sender = FcmSender::new(
                &key,
                &self.fcm_base_url,
                self.push_wording,
                in_flight,
                timeout,
            )?;
            senders.fcm = Some(Arc::new(sender));
        }
        let apns_key = credential(
            "APNs key",
            self.apns_key_file.as_ref(),
            self.apns_key.as_ref(),
        )?;
        if let Some(key) = apns_key {
            let (Some(key_id), Some(team_id)) = (&self.apns_key_id, &self.apns_team_id) else {
                return Err(ProviderError::ApnsIds);
            };
            let key = ApnsKey {
                pkcs8_pem: key.as_bytes(),
                key_id,
                team_id,
            };
            let sender = ApnsSender::new(
                key,
                self.apns_url(),
                self.apns_push_type,
                self.push_wording,
                in_flight,
                timeout,
            )?;
            senders.apns = Some(Arc::new(sender));
        }
        if self.push_log {
            let log = match &self.push_log_file {
                Some(path) => LogSender::with_file(path).map_err(|source| ProviderError::Read {
                    what: "push log file",
                    path: path.display().to_string(),
                    source,
                })?,
                None => LogSender::new(),
            };
            let log: Arc<dyn crate::push::Sender> = Arc::new(log);
            senders.apns.get_or_insert_with(|| log.clone());
            senders.fcm.get_or_insert(log);
        }
        Ok(senders)
    }

    /// Where APNs pushes go: the configured URL, or Apple's sandbox or
    /// production endpoint.
    fn apns_url(&self) -> &str {
        match (&self.apns_base_url, self.apns_sandbox) {
            (Some(url), _) => url,
            (None, true) => apns::SANDBOX_URL,
            (None, false) => apns::PRODUCTION_URL,
        }
    }

    /// Logs which providers the senders reach (those not set only log,
    /// when `--push-log` says so).
    pub fn log_providers(&self, senders: &Senders) {
        let state = |configured: bool| match (configured, self.push_log) {
            (true, _) => "enabled",
            (false, true) => "logging only (no credentials)",
            (false, false) => "disabled (no credentials)",
        };
        tracing::info!(
            apns = state(senders.apns.is_some()),
            fcm = state(senders.fcm.is_some()),
            apns_url = %self.apns_url(),
            fcm_base_url = %self.fcm_base_url,
            "push providers"
        );
    }
}
