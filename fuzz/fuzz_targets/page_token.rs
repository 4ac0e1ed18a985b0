//! Page tokens from clients: refused, or a key that encodes back to a token
//! read the same way.
#![no_main]

use libfuzzer_sys::fuzz_target;
use parley_server::page::{decode, decode_id, encode};

fuzz_target!(|token: &str| {
    if let Ok(Some(key)) = decode(token) {
        assert_eq!(decode(&encode(&key)).ok(), Some(Some(key)));
    }
    if let Ok(Some(id)) = decode_id(token) {
        assert!(id >= 0, "a stored id is never negative");
    }
});
