//! `parley-notification`: the notification service, started by the shared
//! runner.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    parley_server::runner::main_stored::<parley_notification::Notification>().await
}
