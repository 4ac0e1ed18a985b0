//! `parley-gateway`: the gateway, started by the shared runner.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    parley_server::runner::main::<parley_gateway::Gateway>().await
}
