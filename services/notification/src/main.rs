//! `parley-notification`: reads config, sets up logging, binds and runs the service.

use clap::Parser;
use parley_notification::Cli;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    parley_server::telemetry::init("parley-notification", cli.config.server.log_format);
    let config = cli.config;
    parley_server::main_with(
        "parley-notification",
        config.listen,
        &config.server.clone(),
        cli.command,
        parley_notification::migrate(&config.clone()),
        |listener| parley_notification::run(config, listener, parley_server::shutdown_signal()),
    )
    .await
}
