//! `parley-message`: reads config, sets up logging, binds and runs the service.

use clap::Parser;
use parley_message::Cli;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    parley_server::telemetry::init("parley-message", cli.config.server.log_format);
    let config = cli.config;
    parley_server::main_with(
        "parley-message",
        config.listen,
        &config.server.clone(),
        cli.command,
        parley_message::migrate(&config.clone()),
        |listener| parley_message::run(config, listener, parley_server::shutdown_signal()),
    )
    .await
}
