//! `parley-presence`: reads config, sets up logging, binds and runs the service.

use clap::Parser;
use parley_presence::Cli;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    parley_server::telemetry::init("parley-presence", cli.config.server.log_format);
    let config = cli.config;
    parley_server::main_with(
        "parley-presence",
        config.listen,
        &config.server.clone(),
        cli.command,
        async { Ok::<(), parley_presence::StartError>(()) },
        |listener| parley_presence::run(config, listener, parley_server::shutdown_signal()),
    )
    .await
}
