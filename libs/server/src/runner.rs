//! One way to run a service: each binary's `main` is [`main`] (or
//! [`main_stored`] for the services that keep a database), which reads the
//! flags, checks the whole configuration before anything is bound, opens the
//! metrics listener, binds and serves until SIGTERM. A service's background
//! work runs under [`Background`]: on stop each task is told, finishes what it
//! holds (the outbox its batch, the digests their window) and is awaited for
//! the grace period, before the service closes its pools.

use std::{
    future::Future, net::SocketAddr, pin::Pin, process::ExitCode, sync::Arc, time::Duration,
};

use clap::{CommandFactory, FromArgMatches};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle, time::Instant};

use tonic::service::RoutesBuilder;

use crate::{
    Command, ServerArgs,
    credentials::Keys,
    db::{DatabaseArgs, DatabaseUrl, OpenError, Opened, Pooled},
    serve::ServeError,
    telemetry,
};

/// A Parley service, as the runner starts it.
pub trait Service: Sized + 'static {
    /// The binary's name (`parley-message`), for `--help` and log lines.
    const BINARY: &'static str;
    /// One line on what it does, for `--help`.
    const ABOUT: &'static str;
    /// Its configuration: flags, each with a `PARLEY_*` variable.
    type Config: ServiceConfig + clap::Args + Send + 'static;

    /// Checks everything that can be checked without binding or connecting
    /// (credentials, URLs, keys), so a configuration that cannot work stops
    /// the start before anything is bound or changed.
    fn check(config: &Self::Config) -> Result<(), StartError>;

    /// Serves on `listener` until `shutdown` resolves, then stops its
    /// background work and closes its pools.
    fn run<F>(
        config: Self::Config,
        listener: TcpListener,
        shutdown: F,
    ) -> impl Future<Output = Result<(), StartError>> + Send
    where
        F: Future<Output = ()> + Send + 'static;
}

/// What the runner reads from every service's configuration;
/// [`service_config!`](crate::service_config) implements it for a `Config`
/// with a `listen` address and the shared `server` flags.
pub trait ServiceConfig {
    /// Where the service serves gRPC.
    fn listen(&self) -> SocketAddr;

    /// The flags every service has.
    fn server(&self) -> &ServerArgs;
}

/// Implements [`ServiceConfig`] for a configuration struct with the fields
/// `listen: SocketAddr` and `server: ServerArgs`.
#[macro_export]
macro_rules! service_config {
    ($config:ty) => {
        impl $crate::runner::ServiceConfig for $config {
            fn listen(&self) -> ::std::net::SocketAddr {
                self.listen
            }

            fn server(&self) -> &$crate::ServerArgs {
                &self.server
            }
        }
    };
    ($config:ty, stored) => {
        $crate::service_config!($config);

        impl $crate::runner::StoredConfig for $config {
            fn database(&self) -> (&$crate::db::DatabaseUrl, &$crate::db::DatabaseArgs) {
                (&self.database_url, &self.database)
            }
        }
    };
}

/// What the runner reads from the configuration of a service with a
/// database; `service_config!(Config, stored)` implements it for fields
/// `database_url` and `database`.
pub trait StoredConfig: ServiceConfig {
    /// The database's URL and pool flags.
    fn database(&self) -> (&DatabaseUrl, &DatabaseArgs);
}

/// A service that keeps a database: it has the database flags and a
/// `migrate` command.
pub trait Stored: Service<Config: StoredConfig> {
    /// Its store on a MySQL-compatible server.
    type MySql: Pooled<Db = sqlx::MySql>;
    /// Its store in an SQLite file.
    type Sqlite: Pooled<Db = sqlx::Sqlite>;

    /// Opens the store the configuration names (migrating it first when the
    /// flags say so).
    fn open(
        config: &Self::Config,
    ) -> impl Future<Output = Result<Opened<Self::MySql, Self::Sqlite>, OpenError>> + Send {
        let (url, args) = config.database();
        Opened::open(url, args)
    }
}

/// The command line of a service without a database: flags only.
#[derive(Debug, clap::Parser)]
pub struct Cli<C: clap::Args> {
    /// Configuration.
    #[command(flatten)]
    pub config: C,
}

/// The command line of a service with a database: serve (the default) or
/// migrate, and flags.
#[derive(Debug, clap::Parser)]
pub struct StoredCli<C: clap::Args> {
    /// What to do.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Configuration.
    #[command(flatten)]
    pub config: C,
}

/// Why a service could not start, or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The database could not be opened or migrated.
    #[error(transparent)]
    Database(#[from] OpenError),
    /// Serving failed.
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// Something the service cannot run without ended.
    #[error("stopped: {0}")]
    Failed(String),
}

impl StartError {
    /// A configuration error from anything that explains itself.
    pub fn config(error: impl std::fmt::Display) -> Self {
        Self::Config(error.to_string())
    }
}

/// The `main` of a service without a database.
pub async fn main<S: Service>() -> ExitCode {
    match parse::<S, Cli<S::Config>>() {
        Ok(cli) => start::<S>(cli.config).await,
        Err(exit) => exit,
    }
}

/// The `main` of a service with a database: `migrate` applies pending
/// migrations and exits; otherwise it serves.
pub async fn main_stored<S: Stored>() -> ExitCode {
    let cli = match parse::<S, StoredCli<S::Config>>() {
        Ok(cli) => cli,
        Err(exit) => return exit,
    };
    match cli.command.unwrap_or_default() {
        Command::Serve => start::<S>(cli.config).await,
        Command::Migrate => {
            telemetry::init(S::BINARY, cli.config.server().log_format);
            let (url, _) = cli.config.database();
            let args = DatabaseArgs {
                db_max_connections: 1,
                migrate_on_start: true,
            };
            let migrated = match Opened::<S::MySql, S::Sqlite>::open(url, &args).await {
                Ok(store) => {
                    store.close().await;
                    tracing::info!("migrations applied");
                    Ok(())
                }
                Err(error) => Err(StartError::from(error)),
            };
            finish::<S>(migrated, ExitCode::FAILURE)
        }
    }
}

/// The command line `C` of service `S`, named and described as `S`.
fn parse<S: Service, C: CommandFactory + FromArgMatches>() -> Result<C, ExitCode> {
    let command = C::command()
        .name(S::BINARY)
        .bin_name(S::BINARY)
        .about(S::ABOUT)
        .version(env!("CARGO_PKG_VERSION"));
    C::from_arg_matches(&command.get_matches()).map_err(|error| {
        let _ = error.print();
        ExitCode::from(2)
    })
}

/// Parses `args` (the binary's name first) as `C`'s command line reading no
/// environment variable: how tests and in-process suites build a service's
/// configuration, so a `PARLEY_*` variable in the shell that runs them
/// changes nothing they start. Binaries read flags and variables alike.
pub fn config_from_args<C, I, T>(args: I) -> Result<C, clap::Error>
where
    C: CommandFactory + FromArgMatches,
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let matches = without_env(C::command()).try_get_matches_from(args)?;
    C::from_arg_matches(&matches)
}

/// `command` with no argument that reads the environment, at any depth.
fn without_env(command: clap::Command) -> clap::Command {
    command
        .mut_args(|arg| arg.env(None))
        .mut_subcommands(without_env)
}

/// The environment of this process without its `PARLEY_*` variables: what a
/// child process started for a suite inherits, before it is given exactly
/// the variables it should have.
pub fn inherited_env() -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
    std::env::vars_os()
        .filter(|(key, _)| !key.to_string_lossy().starts_with("PARLEY_"))
        .collect()
}

/// Checks, binds and serves `config` until SIGTERM or Ctrl-C.
async fn start<S: Service>(config: S::Config) -> ExitCode {
    telemetry::init(S::BINARY, config.server().log_format);
    if let Err(error) = S::check(&config) {
        return finish::<S>(Err(error), ExitCode::from(2));
    }
    config.server().warn_development_mode(S::BINARY);
    if let Err(error) = telemetry::serve_metrics(config.server().metrics_listen).await {
        return finish::<S>(Err(StartError::Config(error)), ExitCode::FAILURE);
    }
    let listen = config.listen();
    let outcome = match TcpListener::bind(listen).await {
        Ok(listener) => S::run(config, listener, crate::shutdown_signal()).await,
        Err(error) => Err(StartError::Config(format!(
            "cannot listen on {listen}: {error}"
        ))),
    };
    finish::<S>(outcome, ExitCode::FAILURE)
}

/// What a started service serves and until when: its gRPC services (health
/// and reflection list them by name), the keys it checks its callers'
/// credentials with, its background tasks, the listener and the signal to
/// stop.
pub struct Serving {
    routes: RoutesBuilder,
    names: Vec<&'static str>,
    keys: Option<Keys>,
    listener: TcpListener,
    shutdown: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// The loops that run beside the server until it stops.
    pub background: Background,
}

impl Serving {
    /// Nothing served yet on `listener`, until `shutdown` resolves; callers
    /// are checked with `keys` (none: development mode).
    pub fn new(
        keys: Option<Keys>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Self {
        Self {
            routes: RoutesBuilder::default(),
            names: Vec::new(),
            keys,
            listener,
            shutdown: Box::pin(shutdown),
            background: Background::default(),
        }
    }

    /// Adds a gRPC service, listed by its own name.
    pub fn add<S>(&mut self, service: S) -> &mut Self
    where
        S: tower::Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Error = std::convert::Infallible,
            > + tonic::server::NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.names.push(S::NAME);
        self.routes.add_service(service);
        self
    }

    /// Serves until the shutdown signal, telling the background tasks to stop
    /// as soon as it resolves; once the server has stopped, waits for them
    /// within the grace period.
    pub async fn serve(self, server: &ServerArgs) -> Result<(), StartError> {
        let Serving {
            routes,
            names,
            keys,
            listener,
            shutdown,
            background,
        } = self;
        let addr = listener.local_addr().map_err(StartError::config)?;
        tracing::info!(%addr, services = ?names, "listening");
        let served = crate::serve(
            listener,
            server,
            keys,
            routes,
            &names,
            background.signal_on(shutdown),
        )
        .await;
        background.stop(server.shutdown_grace()).await;
        Ok(served?)
    }

    /// [`serve`](Self::serve), then close `store`'s pool: last, once the
    /// background tasks have finished what they held (an outbox batch, the
    /// last digests).
    pub async fn serve_stored<P: Pooled>(
        self,
        store: &P,
        server: &ServerArgs,
    ) -> Result<(), StartError> {
        let served = self.serve(server).await;
        store.close().await;
        served
    }
}

/// Flushes telemetry and turns the outcome into the exit code: `failed`
/// for a failure, with one line on standard error.
fn finish<S: Service>(outcome: Result<(), StartError>, failed: ExitCode) -> ExitCode {
    telemetry::shutdown();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{}: {error}", S::BINARY);
            failed
        }
    }
}

/// A service's background tasks, stopped together: each gets a
/// [`Stopping`], is told as soon as the service is asked to stop (while the
/// server drains its requests), and is awaited until the grace period from
/// that moment is over, so it can finish what it holds.
pub struct Background {
    stop: Arc<watch::Sender<Option<Instant>>>,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
}

impl Default for Background {
    fn default() -> Self {
        Self {
            stop: Arc::new(watch::channel(None).0),
            tasks: Vec::new(),
        }
    }
}

impl Background {
    /// A signal its tasks (and anything else that should end with them, such
    /// as long-lived streams) can wait on.
    pub fn stopping(&self) -> Stopping {
        Stopping(self.stop.subscribe())
    }

    /// Runs `task` until it ends; it should end soon after its [`Stopping`]
    /// says so.
    pub fn spawn<F, T>(&mut self, name: &'static str, task: T)
    where
        T: FnOnce(Stopping) -> F,
        F: Future<Output = ()> + Send + 'static,
    {
        let handle = tokio::spawn(task(self.stopping()));
        self.tasks.push((name, handle));
    }

    /// `shutdown`, which also tells the tasks to stop when it resolves: what
    /// a service hands its server.
    pub fn signal_on<F>(&self, shutdown: F) -> impl Future<Output = ()> + Send + 'static
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let stop = self.stop.clone();
        async move {
            shutdown.await;
            Self::signal(&stop);
        }
    }

    fn signal(stop: &watch::Sender<Option<Instant>>) -> Instant {
        let mut at = Instant::now();
        stop.send_if_modified(|told| match told {
            Some(earlier) => {
                at = *earlier;
                false
            }
            None => {
                *told = Some(at);
                true
            }
        });
        at
    }

    /// Tells every task to stop (if it has not been told) and waits for
    /// them until `grace` after they were told; a task still running then is
    /// cut off and named in the log.
    pub async fn stop(self, grace: Duration) {
        let deadline = Self::signal(&self.stop) + grace;
        for (name, mut handle) in self.tasks {
            match tokio::time::timeout_at(deadline, &mut handle).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::error!(task = name, error = %error, "background task failed")
                }
                Err(_) => {
                    tracing::warn!(
                        task = name,
                        "background task still running after the grace period; cut off"
                    );
                    handle.abort();
                }
            }
        }
    }
}

/// Tells a background task that its service is stopping. Dropping the
/// [`Background`] counts as stopping too, so no task outlives its service.
#[derive(Clone, Debug)]
pub struct Stopping(watch::Receiver<Option<Instant>>);

impl Stopping {
    /// Whether the service is stopping.
    pub fn is_stopping(&self) -> bool {
        self.0.borrow().is_some() || self.0.has_changed().is_err()
    }

    /// Resolves once the service is stopping.
    pub async fn stopped(&mut self) {
        let _ = self.0.wait_for(Option::is_some).await;
    }

    /// Waits `period` unless the service stops first; `true` when the task
    /// should go on.
    pub async fn pause(&mut self, period: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(period) => !self.is_stopping(),
            () = self.stopped() => false,
        }
    }

    /// Waits for `interval`'s next tick unless the service stops first;
    /// `true` when the task should go on.
    pub async fn tick(&mut self, interval: &mut tokio::time::Interval) -> bool {
        tokio::select! {
            _ = interval.tick() => !self.is_stopping(),
            () = self.stopped() => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };

    use super::*;

    /// A service's own flags, as a test stands them in.
    #[derive(Debug, clap::Args)]
    struct Flags {
        #[arg(long, default_value_t = 1)]
        level: u32,
    }

    /// The same with the database flags.
    #[derive(Debug, clap::Args)]
    struct StoredFlags {
        #[arg(long, default_value_t = 1)]
        level: u32,
        #[command(flatten)]
        database: DatabaseArgs,
    }

    #[test]
    fn a_configuration_built_for_a_test_reads_no_environment() {
        fn reading_env(command: &clap::Command) -> Vec<String> {
            let own = command
                .get_arguments()
                .filter(|arg| arg.get_env().is_some())
                .map(|arg| arg.get_id().to_string());
            let nested = command.get_subcommands().flat_map(reading_env);
            own.chain(nested).collect()
        }
        let binary = StoredCli::<StoredFlags>::command();
        assert!(
            !reading_env(&binary).is_empty(),
            "the binary reads PARLEY_* variables"
        );
        assert_eq!(
            reading_env(&without_env(binary)),
            Vec::<String>::new(),
            "no argument of a test's configuration reads one, at any depth"
        );
        let cli: StoredCli<StoredFlags> =
            config_from_args(["x", "--level", "3", "migrate"]).expect("flags");
        assert_eq!((cli.config.level, cli.command), (3, Some(Command::Migrate)));
        assert!(
            inherited_env()
                .iter()
                .all(|(key, _)| !key.to_string_lossy().starts_with("PARLEY_")),
            "a child inherits no PARLEY_* variable"
        );
    }

    #[test]
    fn only_a_stored_service_has_the_migrate_command() {
        use clap::Parser as _;
        let plain = |args: &[&str]| Cli::<Flags>::try_parse_from(args).map(|cli| cli.config.level);
        assert_eq!(plain(&["x", "--level", "3"]).ok(), Some(3));
        assert!(plain(&["x", "migrate"]).is_err());
        let stored = |args: &[&str]| StoredCli::<StoredFlags>::try_parse_from(args);
        let cli = stored(&["x", "--db-max-connections", "4", "migrate"]).expect("flags");
        assert_eq!(cli.command, Some(Command::Migrate));
        assert_eq!(cli.config.database.db_max_connections, 4);
        assert_eq!(cli.config.level, 1);
        assert!(
            stored(&["x"])
                .expect("flags")
                .config
                .database
                .migrate_on_start
        );
    }

    #[tokio::test]
    async fn a_task_finishes_its_work_after_the_stop_and_is_awaited() {
        let mut background = Background::default();
        let finished = Arc::new(AtomicBool::new(false));
        background.spawn("flush", {
            let finished = finished.clone();
            |mut stopping| async move {
                let mut tick = tokio::time::interval(Duration::from_secs(3600));
                while stopping.tick(&mut tick).await {}
                // What a task holds is finished after the stop is told.
                tokio::task::yield_now().await;
                finished.store(true, Ordering::SeqCst);
            }
        });
        background.stop(Duration::from_secs(60)).await;
        assert!(
            finished.load(Ordering::SeqCst),
            "stop returned before the task ended"
        );
    }

    #[tokio::test]
    async fn a_task_that_ignores_the_stop_is_cut_off_after_the_grace_period() {
        let mut background = Background::default();
        let (_keep, mut never) = tokio::sync::mpsc::channel::<()>(1);
        background.spawn("stuck", |_stopping| async move {
            let _ = never.recv().await;
        });
        let started = Instant::now();
        background.stop(Duration::from_millis(50)).await;
        assert!(started.elapsed() >= Duration::from_millis(50));
    }

    #[tokio::test(start_paused = true)]
    async fn the_grace_period_counts_from_the_signal() {
        let mut background = Background::default();
        let (_keep, mut never) = tokio::sync::mpsc::channel::<()>(1);
        background.spawn("stuck", |_stopping| async move {
            let _ = never.recv().await;
        });
        let mut told = background.stopping();
        background.signal_on(std::future::ready(())).await;
        assert!(told.is_stopping());
        assert!(!told.pause(Duration::from_secs(3600)).await);
        // An hour since the signal, the half-hour grace is over: no wait.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        let started = Instant::now();
        background.stop(Duration::from_secs(1800)).await;
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn a_dropped_background_stops_its_tasks() {
        let background = Background::default();
        let mut stopping = background.stopping();
        assert!(!stopping.is_stopping());
        drop(background);
        assert!(stopping.is_stopping());
        assert!(!stopping.pause(Duration::from_secs(3600)).await);
    }
}
