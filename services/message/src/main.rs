//! `parley-message`: the message service, started by the shared runner.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    parley_server::runner::main_stored::<parley_message::Message>().await
}
