//! `parley-receipt`: the receipt service, started by the shared runner.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    parley_server::runner::main_stored::<parley_receipt::Receipt>().await
}
