//! The gateway binary, built beside the integration tests: they run it as a
//! child process to stop it with a real SIGTERM.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    parley_server::runner::main::<parley_gateway::Gateway>().await
}
