//! Receipt rules as plain functions over plain data: how a cumulative ack moves
//! the cursors, what a recipient's ledger state is, which tier a message gets,
//! the unread count, and the PullReceipts cursor.

use crate::error::ReceiptError;

/// Largest batch of message ids in one request.
pub const MAX_MSGIDS_PER_REQUEST: usize = 100;
/// Largest list page.
pub const MAX_LIST_PAGE: u32 = 500;
/// Largest ledger a receipt service may be configured with: the message service
/// lists recipients in InitReceipts up to this many.
pub const MAX_LEDGER_MEMBERS: u32 = 5000;
/// Most messages one InitReceiptsBatch records.
pub const MAX_INIT_BATCH: usize = 100;
/// Most recipients listed in one InitReceiptsBatch, over all its messages:
/// four messages at the largest ledger.
pub const MAX_INIT_BATCH_RECIPIENTS: usize = 20_000;

/// Ledger state: not yet delivered.
pub const ACK_NONE: i64 = 0;
/// Ledger state: delivered.
pub const ACK_DELIVERED: i64 = 1;
/// Ledger state: read.
pub const ACK_READ: i64 = 2;

/// How far an ack says the member got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckKind {
    /// Reached a device.
    Delivered,
    /// Seen. Implies delivered.
    Read,
}

/// Readers or non-readers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReceiptState {
    /// Has read.
    Read,
    /// Has not read yet.
    Unread,
}

/// A member's cursors in one group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursors {
    /// Highest seq delivered.
    pub delivered: i64,
    /// Highest seq read.
    pub read: i64,
}

/// Moves cursors forward for a cumulative ack up to `up_to`. `None` when the ack
/// is behind (or at) the cursors: acks never move a cursor backwards.
pub fn advance(current: Cursors, up_to: i64, kind: AckKind) -> Option<Cursors> {
    let next = match kind {
        AckKind::Delivered => Cursors {
            delivered: current.delivered.max(up_to),
            read: current.read,
        },
        AckKind::Read => Cursors {
            delivered: current.delivered.max(up_to),
            read: current.read.max(up_to),
        },
    };
    (next != current).then_some(next)
}

/// The ledger state of a recipient of message `seq` with these cursors.
pub fn ledger_state(cursors: Cursors, seq: i64) -> i64 {
    if cursors.read >= seq {
        ACK_READ
    } else if cursors.delivered >= seq {
        ACK_DELIVERED
    } else {
        ACK_NONE
    }
}

/// Whether a message gets per-recipient ledger rows: it wants receipts, its
/// group is within the ledger size, the recipients were listed, and someone has
/// yet to read it (a fully read message is folded from the start).
pub fn wants_ledger(
    need_receipt: bool,
    recipient_count: i64,
    listed: usize,
    read_count: i64,
    ledger_max: i64,
) -> bool {
    need_receipt
        && recipient_count > 0
        && recipient_count <= ledger_max
        && i64::try_from(listed).is_ok_and(|n| n == recipient_count)
        && read_count < recipient_count
}

/// Unread messages for a member: never negative.
pub fn unread(last_seq: i64, read_seq: i64) -> u64 {
    u64::try_from(last_seq.saturating_sub(read_seq)).unwrap_or(0)
}

/// Encodes a PullReceipts position (change time, msgid).
pub fn encode_pull_cursor(changed_at_ms: i64, msgid: i64) -> String {
    format!("{changed_at_ms}.{msgid}")
}

/// Decodes a PullReceipts position; empty means the beginning.
pub fn decode_pull_cursor(raw: &str) -> Result<(i64, i64), ReceiptError> {
    if raw.is_empty() {
        return Ok((i64::MIN, 0));
    }
    let invalid = || ReceiptError::invalid("invalid cursor");
    let (at, msgid) = raw.split_once('.').ok_or_else(invalid)?;
    let at = at.parse().map_err(|_| invalid())?;
    let msgid = msgid.parse().map_err(|_| invalid())?;
    Ok((at, msgid))
}

/// A positive id from the wire, within storage range.
pub fn parse_id(raw: u64, field: &str) -> Result<i64, ReceiptError> {
    match i64::try_from(raw) {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(ReceiptError::invalid(format!(
            "{field} must be a positive id"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AT_10: Cursors = Cursors {
        delivered: 12,
        read: 10,
    };

    #[test]
    fn acks_are_cumulative_and_forward_only() {
        assert_eq!(
            advance(AT_10, 20, AckKind::Read),
            Some(Cursors {
                delivered: 20,
                read: 20
            })
        );
        assert_eq!(
            advance(AT_10, 15, AckKind::Delivered),
            Some(Cursors {
                delivered: 15,
                read: 10
            })
        );
        assert_eq!(
            advance(AT_10, 11, AckKind::Read),
            Some(Cursors {
                delivered: 12,
                read: 11
            })
        );
        assert_eq!(advance(AT_10, 5, AckKind::Read), None);
        assert_eq!(advance(AT_10, 12, AckKind::Delivered), None);
        assert_eq!(advance(AT_10, 10, AckKind::Read), None);
    }

    #[test]
    fn ledger_state_follows_the_cursors() {
        assert_eq!(ledger_state(AT_10, 9), ACK_READ);
        assert_eq!(ledger_state(AT_10, 11), ACK_DELIVERED);
        assert_eq!(ledger_state(AT_10, 13), ACK_NONE);
    }

    #[test]
    fn ledger_only_for_small_listed_unread_messages_that_want_it() {
        assert!(wants_ledger(true, 3, 3, 0, 200));
        assert!(!wants_ledger(false, 3, 3, 0, 200));
        assert!(!wants_ledger(true, 999, 999, 0, 200));
        assert!(!wants_ledger(true, 3, 0, 0, 200));
        assert!(!wants_ledger(true, 3, 3, 3, 200));
        assert!(!wants_ledger(true, 0, 0, 0, 200));
    }

    #[test]
    fn unread_is_never_negative_and_cursors_round_trip() {
        assert_eq!(unread(25, 0), 25);
        assert_eq!(unread(25, 30), 0);
        assert_eq!(
            decode_pull_cursor(&encode_pull_cursor(1_700_000, 42)).ok(),
            Some((1_700_000, 42))
        );
        assert!(decode_pull_cursor("17").is_err());
        assert!(decode_pull_cursor("a.b").is_err());
        assert!(parse_id(0, "gid").is_err());
        assert!(parse_id(u64::MAX, "gid").is_err());
    }

    /// Properties over any input; `make fuzz` runs them with many more cases.
    mod properties {
        use super::*;

        proptest::proptest! {
            /// Every PullReceipts position survives the round trip through its
            /// cursor, and anything else a client sends is refused, not a panic.
            #[test]
            fn pull_cursors_round_trip(at in proptest::num::i64::ANY, msgid in proptest::num::i64::ANY) {
                proptest::prop_assert_eq!(decode_pull_cursor(&encode_pull_cursor(at, msgid)).ok(), Some((at, msgid)));
            }

            #[test]
            fn any_cursor_is_refused_or_read(raw in "\\PC{0,64}") {
                if let Ok((at, msgid)) = decode_pull_cursor(&raw) {
                    proptest::prop_assert_eq!(decode_pull_cursor(&encode_pull_cursor(at, msgid)).ok(), Some((at, msgid)));
                }
            }
        }
    }
}
