//! `parley-gateway`: reads config, sets up logging, binds and runs the gateway.

use clap::Parser;
use parley_gateway::Cli;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    parley_server::telemetry::init("parley-gateway", cli.config.server.log_format);
    let config = cli.config;
    parley_server::main_with(
        "parley-gateway",
        config.listen,
        &config.server.clone(),
        cli.command,
        async { Ok::<(), parley_gateway::StartError>(()) },
        |listener| parley_gateway::run(config, listener, parley_server::shutdown_signal()),
    )
    .await
}
