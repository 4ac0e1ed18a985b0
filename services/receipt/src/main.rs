//! `parley-receipt`: reads config, sets up logging, binds and runs the service.

use clap::Parser;
use parley_receipt::Cli;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    parley_server::telemetry::init("parley-receipt", cli.config.server.log_format);
    let config = cli.config;
    parley_server::main_with(
        "parley-receipt",
        config.listen,
        &config.server.clone(),
        cli.command,
        parley_receipt::migrate(&config.clone()),
        |listener| parley_receipt::run(config, listener, parley_server::shutdown_signal()),
    )
    .await
}
