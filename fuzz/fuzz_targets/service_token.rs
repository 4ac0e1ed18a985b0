//! Service tokens as any caller can send them: refused unless signed.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use parley_server::credentials::{Keys, generate_keys};

static RECEIPT: LazyLock<Keys> = LazyLock::new(|| {
    let [_gateway, receipt] = generate_keys(&["gateway", "receipt"])
        .try_into()
        .expect("two keys");
    receipt
});

fuzz_target!(|token: &str| {
    assert!(RECEIPT.verify("gateway", token).is_err());
});
