//! Service tokens as any caller can send them: refused unless signed.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use parley_server::credentials::{Keys, generate};

static RECEIPT: LazyLock<Keys> = LazyLock::new(|| {
    let (private, public) = generate(&["gateway", "receipt"]);
    let (name, secret) = private
        .iter()
        .find(|(name, _)| name == "receipt")
        .expect("generated");
    Keys::new(name, secret, &public).expect("generated keys")
});

fuzz_target!(|token: &str| {
    assert!(RECEIPT.verify("gateway", token).is_err());
});
