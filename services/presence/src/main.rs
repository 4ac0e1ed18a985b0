//! `parley-presence`: the presence service, started by the shared runner.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    parley_server::runner::main::<parley_presence::Presence>().await
}
