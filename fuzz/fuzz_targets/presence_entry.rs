//! Whatever a presence key in Redis holds: skipped, or an entry whose stored
//! form reads back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use parley_presence::domain::Entry;

fuzz_target!(|raw: &str| {
    if let Some(entry) = Entry::decode(raw) {
        assert_eq!(Entry::decode(&entry.encode()), Some(entry));
    }
});
