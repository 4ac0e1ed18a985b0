//! `parley-message`: reads config, sets up logging, binds and runs the service.

use std::process::ExitCode;

use clap::Parser;
use parley_message::{Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    parley_server::telemetry::init(cli.config.log_format);
    let outcome = match cli.command.unwrap_or(Command::Serve) {
        Command::Migrate => parley_message::migrate(&cli.config)
            .await
            .map(|()| tracing::info!("migrations applied")),
        Command::Serve => match tokio::net::TcpListener::bind(cli.config.listen).await {
            Ok(listener) => {
                parley_message::run(cli.config, listener, parley_server::shutdown_signal()).await
            }
            Err(error) => {
                eprintln!(
                    "parley-message: cannot listen on {}: {error}",
                    cli.config.listen
                );
                return ExitCode::FAILURE;
            }
        },
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("parley-message: {error}");
            ExitCode::FAILURE
        }
    }
}
