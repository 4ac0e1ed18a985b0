//! PullReceipts cursors from clients: refused, or a position that encodes
//! back to a cursor read the same way.
#![no_main]

use libfuzzer_sys::fuzz_target;
use parley_receipt::domain::{decode_pull_cursor, encode_pull_cursor};

fuzz_target!(|cursor: &str| {
    if let Ok((at, msgid)) = decode_pull_cursor(cursor)
        && !cursor.is_empty()
    {
        let again = decode_pull_cursor(&encode_pull_cursor(at, msgid)).ok();
        assert_eq!(again, Some((at, msgid)));
    }
});
