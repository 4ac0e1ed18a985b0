//! Stream tokens as any client can send them: refused unless signed.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use parley_gateway::auth::Verifier;

static VERIFIER: LazyLock<Verifier> = LazyLock::new(|| {
    Verifier::hs256(b"a-secret-the-fuzzer-does-not-know").expecting(Some("parley"), Some("idp"))
});

fuzz_target!(|token: &str| {
    assert!(VERIFIER.verify(token).is_err());
});
