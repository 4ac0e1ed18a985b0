//! `parley-gateway`: reads config, sets up logging, binds and runs the gateway.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    parley_gateway::main().await
}
