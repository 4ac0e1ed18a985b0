//! `parley-gateway`: the gateway service (client streams). Its gRPC contract is in
//! `proto/parley/gateway/v1/`; the service itself is built by issue #3 and this
//! binary refuses to start until then rather than pretend to serve.

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    eprintln!(
        "parley-gateway: not implemented yet (issue #3); its contract is proto/parley/gateway/v1"
    );
    std::process::ExitCode::from(2)
}
