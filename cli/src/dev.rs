//! `parley dev`: the whole suite in one process on localhost: embedded SQLite
//! under a data directory, an in-process bus and presence, a dev JWT secret.

use std::{future::Future, io::Write as _, path::Path};

use parley_bus::Bus;
use parley_server::ports;
use parley_server::runner::Service as _;
use tokio::{net::TcpListener, sync::watch};

/// The HS256 secret `parley dev` gateways accept and `parley token` signs with.
/// For development only: production gateways verify RS256 tokens.
pub const DEV_JWT_SECRET: &str = "parley-dev-secret-not-for-production";

/// The first dev port, as the services' defaults have them: gateway,
/// message, presence, receipt and notification take it and the next four.
pub const PORTS: u16 = ports::GATEWAY;
/// The message service's port, this far above the first.
const MESSAGE: u16 = ports::MESSAGE - PORTS;
/// The presence service's port, this far above the first.
const PRESENCE: u16 = ports::PRESENCE - PORTS;
/// The receipt service's port, this far above the first.
const RECEIPT: u16 = ports::RECEIPT - PORTS;
/// The notification service's port, this far above the first.
const NOTIFICATION: u16 = ports::NOTIFICATION - PORTS;
/// The gateway's WebSocket, this far above the first port (50061).
const WS_OFFSET: u16 = 10;
/// The web client, this far above the first port (50080).
const WEB_OFFSET: u16 = 29;

/// Where `parley dev` listens.
#[derive(Clone, Debug)]
pub struct Options {
    /// The first of the ports (see [`PORTS`]).
    pub ports: u16,
    /// The built web client to serve (`clients/web/dist`), if any.
    pub web: Option<std::path::PathBuf>,
}

fn addr(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

type Failure = String;

async fn bind(name: &str, addr: &str) -> Result<TcpListener, Failure> {
    TcpListener::bind(addr).await.map_err(|e| {
        format!("{name}: cannot listen on {addr}: {e} (is another `make dev` running?)")
    })
}

/// A service's configuration in development mode: no service credentials,
/// each call trusted to name its service and user (each service says so in
/// its log at start); `args`, then `--<callee>-url` for each of `calls`,
/// from `base`. Flags alone: no `PARLEY_*` variable of the shell reaches the
/// suite.
fn config<C: clap::Parser>(base: u16, args: &[&str], calls: &[&str]) -> Result<C, Failure> {
    let mut args: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
    for callee in calls {
        let offset = match *callee {
            "message" => MESSAGE,
            "presence" => PRESENCE,
            "receipt" => RECEIPT,
            "notification" => NOTIFICATION,
            other => return Err(format!("no service {other:?} to call")),
        };
        let url = format!("http://{}", addr(base.saturating_add(offset)));
        args.extend([format!("--{callee}-url"), url]);
    }
    args.extend(["--dev-mode".to_owned(), "true".to_owned()]);
    parley_server::runner::config_from_args(args).map_err(|e| e.to_string())
}

/// Where `parley dev` appends the pushes its logging sender would have sent.
pub fn push_log_path(data: &Path) -> std::path::PathBuf {
    data.join("pushes.jsonl")
}

/// Runs every service until Ctrl-C.
pub async fn run(data: &Path, options: &Options) -> Result<(), Failure> {
    std::fs::create_dir_all(data).map_err(|e| format!("cannot create {}: {e}", data.display()))?;
    let base = options.ports;
    if base.checked_add(WEB_OFFSET).is_none() {
        return Err(format!(
            "--ports {base}: the web client's port would be past 65535"
        ));
    }
    let port = |offset: u16| base.saturating_add(offset);
    let web = addr(port(WEB_OFFSET));
    let origins = format!("http://{web},http://localhost:{}", port(WEB_OFFSET));
    let db = |name: &str| format!("sqlite:{}", data.join(format!("{name}.db")).display());
    let (message_db, receipt_db, notification_db) =
        (db("message"), db("receipt"), db("notification"));
    let bus = Bus::local();
    let (stop, stopping) = watch::channel(false);
    let until_stop = move || {
        let mut stopping = stopping.clone();
        async move {
            let _ = stopping.wait_for(|s| *s).await;
        }
    };

    let presence = config::<parley_presence::Cli>(base, &["parley-presence"], &[])?.config;
    let push_log = push_log_path(data).display().to_string();
    let notification = config::<parley_notification::Cli>(
        base,
        &[
            "parley-notification",
            "--database-url",
            &notification_db,
            "--push-log",
            "--push-log-file",
            &push_log,
        ],
        &["presence", "receipt", "message"],
    )?
    .config;
    let receipt = config::<parley_receipt::Cli>(
        base,
        &["parley-receipt", "--database-url", &receipt_db],
        &["presence", "message"],
    )?
    .config;
    let message = config::<parley_message::Cli>(
        base,
        &["parley-message", "--database-url", &message_db],
        &["receipt", "presence", "notification"],
    )?
    .config;
    let gateway = config::<parley_gateway::Cli>(
        base,
        &[
            "parley-gateway",
            "--gateway-id",
            "dev-gateway",
            "--jwt-hs256-secret",
            DEV_JWT_SECRET,
            "--ws-allowed-origins",
            &origins,
        ],
        &["message", "receipt", "presence", "notification"],
    )?
    .config;

    let listeners = (
        bind("presence", &addr(port(PRESENCE))).await?,
        bind("notification", &addr(port(NOTIFICATION))).await?,
        bind("receipt", &addr(port(RECEIPT))).await?,
        bind("message", &addr(port(MESSAGE))).await?,
        parley_gateway::Listeners {
            grpc: bind("gateway", &addr(port(0))).await?,
            ws: Some(bind("gateway WebSocket", &addr(port(WS_OFFSET))).await?),
        },
    );
    let web_listener = match &options.web {
        Some(_) => Some(bind("web client", &web).await?),
        None => None,
    };
    let mut tasks = tokio::task::JoinSet::new();
    spawn(
        &mut tasks,
        "presence",
        parley_presence::Presence::run(presence, listeners.0, until_stop()),
    );
    spawn(
        &mut tasks,
        "notification",
        parley_notification::Notification::run(notification, listeners.1, until_stop()),
    );
    spawn(
        &mut tasks,
        "receipt",
        parley_receipt::run_on_bus(receipt, bus.clone(), listeners.2, until_stop()),
    );
    spawn(
        &mut tasks,
        "message",
        parley_message::run_on_bus(message, bus.clone(), listeners.3, until_stop()),
    );
    spawn(
        &mut tasks,
        "gateway",
        parley_gateway::run_on_bus(gateway, bus, listeners.4, until_stop()),
    );
    let ws = format!("ws://{}{}", addr(port(WS_OFFSET)), parley_gateway::ws::PATH);
    let web_line = match (&options.web, web_listener) {
        (Some(dir), Some(listener)) => {
            let site = crate::web::Site::new(dir.clone(), ws.clone(), DEV_JWT_SECRET);
            spawn(
                &mut tasks,
                "web client",
                crate::web::serve(listener, site, until_stop()),
            );
            format!("web client    http://{web}/   (open it in a browser; sign in as any user)")
        }
        _ => {
            "web client    not served (build it with `make web`, then pass --web clients/web/dist)"
                .to_owned()
        }
    };

    // A closed standard output (a pipe whose reader went) must not stop the
    // suite: the banner is written, or not, and the services go on.
    let _ = writeln!(
        std::io::stdout(),
        "parley dev suite: embedded SQLite under {dir}, in-process bus and presence\n\
         \x20 {web_line}\n\
         \x20 gateway       {gateway}   (parley.gateway.v1.GatewayService, JWT HS256 dev secret)\n\
         \x20               {ws}   (the same frames over WebSocket)\n\
         \x20 message       {message}   (parley.message.v1.MessageService)\n\
         \x20 presence      {presence}   (parley.presence.v1.PresenceService)\n\
         \x20 receipt       {receipt}   (parley.receipt.v1.ReceiptService)\n\
         \x20 notification  {notification}   (parley.notification.v1.NotificationService;\n\
         \x20                                 pushes are logged, and appended to {pushes})\n\
         Development mode: no service credentials; each service trusts the identity\n\
         a call names. For this machine only (a real install sets PARLEY_SERVICE_KEY).\n\
         Try `make demo` in another terminal, or `cargo run -q -p parley-cli -- --help`.\n\
         Ctrl-C stops everything.",
        dir = data.display(),
        pushes = push_log.as_str(),
        gateway = addr(port(0)),
        message = addr(port(MESSAGE)),
        presence = addr(port(PRESENCE)),
        receipt = addr(port(RECEIPT)),
        notification = addr(port(NOTIFICATION)),
    );

    let outcome = tokio::select! {
        () = parley_server::shutdown_signal() => Ok(()),
        Some(done) = tasks.join_next() => match done {
            Ok(Err(error)) => Err(error),
            _ => Err("a service stopped unexpectedly".to_owned()),
        },
    };
    let _ = stop.send(true);
    while tasks.join_next().await.is_some() {}
    outcome
}

fn spawn<F, E>(
    tasks: &mut tokio::task::JoinSet<Result<(), Failure>>,
    name: &'static str,
    service: F,
) where
    F: Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display,
{
    tasks.spawn(async move { service.await.map_err(|e| format!("{name}: {e}")) });
}
