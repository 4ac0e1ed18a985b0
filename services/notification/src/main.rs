//! `parley-notification`: the notification service (offline push). Its gRPC contract is in
//! `proto/parley/notification/v1/`; the service itself is built by issue #4 and this
//! binary refuses to start until then rather than pretend to serve.

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    eprintln!(
        "parley-notification: not implemented yet (issue #4); its contract is proto/parley/notification/v1"
    );
    std::process::ExitCode::from(2)
}
