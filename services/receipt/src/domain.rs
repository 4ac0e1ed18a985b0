//! Receipt rules as plain functions over plain data: how a cumulative ack moves
//! the cursors (alone or in a group's batch), how many new readers a batch
//! gives each message, which tier a message gets, the unread count, and the
//! PullReceipts cursor.

use std::collections::BTreeMap;

use crate::error::ReceiptError;
use parley_server::Reason;

/// Largest batch of message ids in one request.
pub const MAX_MSGIDS_PER_REQUEST: usize = 100;
/// Largest list page.
pub const MAX_LIST_PAGE: u32 = 500;
/// Largest ledger a receipt service may be configured with, and the most
/// recipients an InitReceipts may list (older message services list them; the
/// list is not read).
pub const MAX_LEDGER_MEMBERS: u32 = 5000;
/// Most messages one InitReceiptsBatch records.
pub const MAX_INIT_BATCH: usize = 100;
/// Most recipients listed in one InitReceiptsBatch, over all its messages:
/// four messages at the largest ledger.
pub const MAX_INIT_BATCH_RECIPIENTS: usize = 20_000;
/// Most acks in one AckBatch, over all its groups.
pub const MAX_ACK_BATCH: usize = 5000;

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

/// What a message's sender (and the group's admins) may see of its reads:
/// the group's policy when it was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Counts and who read.
    Full,
    /// Counts only.
    Counts,
    /// Nothing: no counts, no lists, no digests.
    Off,
}

impl Policy {
    /// Stored representation, and the wire enum's number.
    pub fn code(self) -> i16 {
        match self {
            Self::Full => 1,
            Self::Counts => 2,
            Self::Off => 3,
        }
    }

    /// From the stored representation.
    pub fn from_code(code: i64) -> Self {
        match code {
            2 => Self::Counts,
            3 => Self::Off,
            _ => Self::Full,
        }
    }

    /// From the wire: unspecified (an older message service) is FULL.
    pub fn parse(raw: i32) -> Result<Self, ReceiptError> {
        match raw {
            0 | 1 => Ok(Self::Full),
            2 => Ok(Self::Counts),
            3 => Ok(Self::Off),
            _ => Err(ReceiptError::invalid(
                "receipt_policy",
                "FULL, COUNTS or OFF",
            )),
        }
    }
}

/// What a viewer may see of one message's reads. Every receipt path that
/// shows reads (GetReceipts, the member lists, the senders' digests,
/// PullReceipts, and through GetReceipts the gateway's heartbeat replies)
/// asks this, and only this: the policy the message was sent under, and
/// whether the viewer hides their own reads in its group. Privacy is
/// reciprocal: a viewer who hides their reads sees no one's, counts included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sight {
    /// The message's receipt policy.
    pub policy: Policy,
    /// The viewer hides their reads in the message's group.
    pub viewer_private: bool,
}

impl Sight {
    /// Whether the message's read counts are shown.
    pub fn shows_counts(self) -> bool {
        !self.viewer_private && self.policy != Policy::Off
    }

    /// Whether who read the message is shown; why not, when not.
    pub fn shows_lists(self) -> Result<(), ReceiptError> {
        if self.viewer_private {
            return Err(ReceiptError::refused(Reason::ReadsHidden));
        }
        match self.policy {
            Policy::Full => Ok(()),
            Policy::Counts => Err(ReceiptError::refused(Reason::CountsOnly)),
            Policy::Off => Err(ReceiptError::refused(Reason::ReceiptsOff)),
        }
    }
}

/// How far others may see a member has read once their read cursor moved
/// from `previous` to `read`: all of it when they share their reads; while
/// they hide them, what was shown before (`shown`). The one rule for the
/// other side of privacy: a private member is counted in no one's receipts.
/// What they read while private shows once they share again and read on.
pub fn shown_after(private: bool, shown: i64, previous: i64, read: i64) -> i64 {
    if private || read <= previous {
        shown
    } else {
        shown.max(read)
    }
}

/// How exactly a read time is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// From the ledger: when the reader's read ack first passed the message.
    Exact,
    /// From the cursor: the reader had read it by then.
    NoLaterThan,
}

/// When each reader read a message: the ledger's time where it has one, else
/// when the reader's cursor last moved (they had read it by then). Both
/// lists are in uid order; a reader in neither is left out.
pub fn read_times(
    readers: &[String],
    ledger: &[(String, i64)],
    cursors: &[(String, i64)],
) -> Vec<(String, i64, Precision)> {
    let find = |list: &[(String, i64)], uid: &str| {
        list.binary_search_by(|(u, _)| u.as_str().cmp(uid))
            .ok()
            .map(|i| list[i].1)
    };
    readers
        .iter()
        .filter_map(|uid| match find(ledger, uid) {
            Some(at) => Some((uid.clone(), at, Precision::Exact)),
            None => find(cursors, uid).map(|at| (uid.clone(), at, Precision::NoLaterThan)),
        })
        .collect()
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

/// A current member's place in a group, as a batch of acks finds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Standing {
    /// The group's seq when the member joined: later messages are theirs.
    pub joined: i64,
    /// Their cursors.
    pub cursors: Cursors,
    /// How far others see they have read (see [`shown_after`]).
    pub shown: i64,
    /// They hide their reads in this group.
    pub private: bool,
}

/// What one ack of a group's batch does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Planned {
    /// The member's cursors before and after this ack (equal when it was
    /// behind them).
    Moved {
        /// Before.
        previous: Cursors,
        /// After.
        cursors: Cursors,
        /// How far others saw the member had read before this ack; `None`
        /// while the member hides their reads (others see nothing move).
        shown_from: Option<i64>,
    },
    /// Past the highest seq the group is known to have: changes nothing.
    Past,
    /// From someone who is not a current member: changes nothing.
    NotMember,
}

/// One member's cursors moved by a batch, from its first ack to its last.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Move {
    /// The member.
    pub uid: String,
    /// Seq at join.
    pub joined: i64,
    /// Before the batch.
    pub previous: Cursors,
    /// After it.
    pub next: Cursors,
    /// How far others saw the member had read, before and after: the span
    /// whose messages gain this member as a reader.
    pub shown: (i64, i64),
}

/// A group's batch of acks, worked out before anything is written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// One per ack, in the batch's order.
    pub outcomes: Vec<Planned>,
    /// The members whose cursors moved, in uid order.
    pub moves: Vec<Move>,
}

/// Applies a group's acks in order, each as [`advance`] would alone, to the
/// current members' standing. An ack past `bound` (the highest seq the group is
/// known to have) changes nothing.
pub fn plan_acks<'a>(
    acks: impl IntoIterator<Item = (&'a str, i64, AckKind)>,
    bound: i64,
    standing: &BTreeMap<String, Standing>,
) -> Plan {
    // Each member's standing and where their cursors are so far.
    let mut now: BTreeMap<&str, (Standing, Cursors)> = BTreeMap::new();
    let outcomes = acks
        .into_iter()
        .map(|(uid, up_to, kind)| {
            let Some((uid, found)) = standing.get_key_value(uid) else {
                return Planned::NotMember;
            };
            if up_to > bound {
                return Planned::Past;
            }
            let (_, current) = now.entry(uid.as_str()).or_insert((*found, found.cursors));
            let previous = *current;
            if let Some(next) = advance(previous, up_to, kind) {
                *current = next;
            }
            // Shown so far: what was stored, then wherever this batch's
            // earlier acks took it.
            let shown = shown_after(
                found.private,
                found.shown,
                found.cursors.read,
                previous.read,
            );
            Planned::Moved {
                previous,
                cursors: *current,
                shown_from: (!found.private).then_some(shown),
            }
        })
        .collect();
    let moves = now
        .into_iter()
        .filter(|(_, (found, next))| *next != found.cursors)
        .map(|(uid, (found, next))| Move {
            uid: uid.to_owned(),
            joined: found.joined,
            previous: found.cursors,
            next,
            shown: (
                found.shown,
                shown_after(found.private, found.shown, found.cursors.read, next.read),
            ),
        })
        .collect();
    Plan { outcomes, moves }
}

/// Whether a member (`uid`, joined at `joined`, left at `left` if they did)
/// is a recipient of message `seq` sent by `sender`: they were a member when
/// it was sent and did not send it. Every receipt count and list applies this
/// rule (the cursor-tier SQL in `store/sql.rs` states it as a `WHERE`).
pub fn is_recipient(uid: &str, joined: i64, left: Option<i64>, seq: i64, sender: &str) -> bool {
    joined < seq && left.is_none_or(|left| left >= seq) && uid != sender
}

/// How many new readers each message gets from a batch's moves (current
/// members): a member counts for message `seq` when how far others see they
/// have read passed it (before < seq <= after) and they are one of its
/// recipients.
/// `messages` are (seq, sender); messages with no new reader are left out.
pub fn read_increments(moves: &[&Move], messages: &[(i64, String)]) -> Vec<(i64, i64)> {
    messages
        .iter()
        .filter_map(|(seq, sender)| {
            let readers = moves
                .iter()
                .filter(|m| {
                    m.shown.0 < *seq
                        && *seq <= m.shown.1
                        && is_recipient(&m.uid, m.joined, None, *seq, sender)
                })
                .count();
            let readers = i64::try_from(readers).ok().filter(|n| *n > 0)?;
            Some((*seq, readers))
        })
        .collect()
}

/// Whether a message is in the ledger tier, where each reader's read time is
/// kept beside who read it: it wants receipts and its group is within the
/// ledger size. Who read is answered from the cursors in either tier.
pub fn keeps_read_times(need_receipt: bool, recipient_count: i64, ledger_max: i64) -> bool {
    need_receipt && recipient_count > 0 && recipient_count <= ledger_max
}

/// Unread messages for a member: never negative.
pub fn unread(last_seq: i64, read_seq: i64) -> u64 {
    u64::try_from(last_seq.saturating_sub(read_seq)).unwrap_or(0)
}

/// Encodes a PullReceipts position (change time, msgid), in the one codec
/// of page tokens.
pub fn encode_pull_cursor(changed_at_ms: i64, msgid: i64) -> String {
    parley_server::page::encode_keys(&[changed_at_ms, msgid])
}

/// Decodes a PullReceipts position; empty means the beginning. A cursor in
/// the form services before 0.2 gave (`time.msgid`, unencoded) is still
/// taken: an app keeps its cursor across logins and an upgrade.
pub fn decode_pull_cursor(raw: &str) -> Result<(i64, i64), ReceiptError> {
    if raw.is_empty() || parley_server::page::is_token(raw) {
        let keys = parley_server::page::decode_keys::<2>(raw, "cursor")?;
        return Ok(keys.map_or((i64::MIN, 0), |[at, msgid]| (at, msgid)));
    }
    let invalid = || ReceiptError::invalid("cursor", "not a cursor this service gave");
    let (at, msgid) = raw.split_once('.').ok_or_else(invalid)?;
    let at = at.parse().map_err(|_| invalid())?;
    let msgid = msgid.parse().map_err(|_| invalid())?;
    Ok((at, msgid))
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

    fn standing(members: &[(&str, i64, i64, i64)]) -> BTreeMap<String, Standing> {
        members
            .iter()
            .map(|&(uid, joined, delivered, read)| {
                let cursors = Cursors { delivered, read };
                let standing = Standing {
                    joined,
                    cursors,
                    shown: read,
                    private: false,
                };
                (uid.to_owned(), standing)
            })
            .collect()
    }

    #[test]
    fn a_batch_applies_each_ack_in_order_and_moves_each_member_once() {
        let members = standing(&[("a", 0, 12, 10), ("b", 5, 5, 5)]);
        let plan = plan_acks(
            [
                ("a", 11, AckKind::Read),
                ("x", 3, AckKind::Read),
                ("b", 30, AckKind::Read),
                ("a", 9, AckKind::Read),
                ("a", 15, AckKind::Delivered),
                ("b", 4, AckKind::Delivered),
            ],
            20,
            &members,
        );
        let at = |delivered, read| Cursors { delivered, read };
        assert_eq!(
            plan.outcomes,
            vec![
                Planned::Moved {
                    previous: at(12, 10),
                    cursors: at(12, 11),
                    shown_from: Some(10),
                },
                Planned::NotMember,
                Planned::Past,
                Planned::Moved {
                    previous: at(12, 11),
                    cursors: at(12, 11),
                    shown_from: Some(11),
                },
                Planned::Moved {
                    previous: at(12, 11),
                    cursors: at(15, 11),
                    shown_from: Some(11),
                },
                Planned::Moved {
                    previous: at(5, 5),
                    cursors: at(5, 5),
                    shown_from: Some(5),
                },
            ]
        );
        assert_eq!(
            plan.moves,
            vec![Move {
                uid: "a".into(),
                joined: 0,
                previous: at(12, 10),
                next: at(15, 11),
                shown: (10, 11),
            }]
        );
    }

    #[test]
    fn a_private_reader_moves_their_cursors_but_shows_no_read_until_sharing_and_reading_on() {
        let at = |delivered, read| Cursors { delivered, read };
        let private = Standing {
            joined: 0,
            cursors: at(5, 5),
            shown: 5,
            private: true,
        };
        let members = BTreeMap::from([("p".to_owned(), private)]);
        let plan = plan_acks([("p", 8, AckKind::Read)], 10, &members);
        assert_eq!(
            plan.outcomes,
            vec![Planned::Moved {
                previous: at(5, 5),
                cursors: at(8, 8),
                shown_from: None,
            }]
        );
        assert_eq!(plan.moves[0].next, at(8, 8));
        assert_eq!(plan.moves[0].shown, (5, 5));
        let messages: Vec<(i64, String)> = (1..=10).map(|seq| (seq, "s".to_owned())).collect();
        assert!(read_increments(&plan.moves.iter().collect::<Vec<_>>(), &messages).is_empty());

        // Sharing again shows nothing by itself; the next read shows it all.
        let shared = BTreeMap::from([(
            "p".to_owned(),
            Standing {
                cursors: at(8, 8),
                private: false,
                ..private
            },
        )]);
        let plan = plan_acks([("p", 8, AckKind::Read)], 10, &shared);
        assert!(plan.moves.is_empty());
        let plan = plan_acks(
            [("p", 9, AckKind::Delivered), ("p", 9, AckKind::Read)],
            10,
            &shared,
        );
        assert_eq!(plan.moves[0].shown, (5, 9));
        let from: Vec<Option<i64>> = plan
            .outcomes
            .iter()
            .map(|o| match o {
                Planned::Moved { shown_from, .. } => *shown_from,
                _ => None,
            })
            .collect();
        assert_eq!(from, [Some(5), Some(5)]);
        assert_eq!(
            read_increments(&plan.moves.iter().collect::<Vec<_>>(), &messages),
            vec![(6, 1), (7, 1), (8, 1), (9, 1)]
        );
    }

    #[test]
    fn a_viewer_who_hides_their_reads_sees_no_one_s() {
        let sight = |policy, viewer_private| Sight {
            policy,
            viewer_private,
        };
        assert!(sight(Policy::Full, false).shows_counts());
        assert!(sight(Policy::Full, false).shows_lists().is_ok());
        assert!(sight(Policy::Counts, false).shows_counts());
        assert!(sight(Policy::Counts, false).shows_lists().is_err());
        assert!(!sight(Policy::Off, false).shows_counts());
        for policy in [Policy::Full, Policy::Counts, Policy::Off] {
            assert!(!sight(policy, true).shows_counts());
            assert!(sight(policy, true).shows_lists().is_err());
        }
    }

    #[test]
    fn a_message_counts_each_new_reader_once_but_not_its_sender_or_later_joiners() {
        let mover = |uid: &str, joined, from, to| Move {
            uid: uid.into(),
            joined,
            previous: Cursors {
                delivered: from,
                read: from,
            },
            next: Cursors {
                delivered: to,
                read: to,
            },
            shown: (from, to),
        };
        let moves = [
            mover("a", 0, 0, 4),
            mover("b", 2, 1, 3),
            mover("c", 0, 3, 4),
        ];
        let messages: Vec<(i64, String)> = (1..=5)
            .map(|seq| (seq, if seq == 4 { "c" } else { "z" }.to_owned()))
            .collect();
        assert_eq!(
            read_increments(&moves.iter().collect::<Vec<_>>(), &messages),
            vec![(1, 1), (2, 1), (3, 2), (4, 1)]
        );
    }

    #[test]
    fn a_reader_s_time_is_the_ledger_s_when_kept_and_else_bounded_by_the_cursor() {
        let readers = ["a", "b", "c"].map(String::from);
        let ledger = [("a".to_owned(), 10)];
        let cursors = [("a".to_owned(), 30), ("b".to_owned(), 20)];
        assert_eq!(
            read_times(&readers, &ledger, &cursors),
            [
                ("a".to_owned(), 10, Precision::Exact),
                ("b".to_owned(), 20, Precision::NoLaterThan),
            ]
        );
        assert!(read_times(&readers, &[], &[]).is_empty());
    }

    #[test]
    fn read_times_only_for_messages_that_want_receipts_in_small_groups() {
        assert!(keeps_read_times(true, 3, 200));
        assert!(keeps_read_times(true, 200, 200));
        assert!(!keeps_read_times(false, 3, 200));
        assert!(!keeps_read_times(true, 201, 200));
        assert!(!keeps_read_times(true, 0, 200));
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
        assert!(
            encode_pull_cursor(1_700_000, 42).starts_with("p1"),
            "an opaque token"
        );
        assert_eq!(
            decode_pull_cursor("1700000.42").ok(),
            Some((1_700_000, 42)),
            "a cursor an older service gave is still taken"
        );
        assert!(parley_server::ids::positive(0, "gid").is_err());
        assert!(parley_server::ids::positive(u64::MAX, "gid").is_err());
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

            /// A batch moves each member's cursors exactly as the same acks
            /// sent one by one would, and counts each reader once per message.
            #[test]
            fn a_batch_is_its_acks_one_by_one(
                acks in proptest::collection::vec((0..4usize, 0i64..40, proptest::bool::ANY), 0..24),
                starts in proptest::collection::vec((0i64..10, 0i64..20, 0i64..20, 0i64..5, proptest::bool::ANY), 3),
            ) {
                let uids = ["a", "b", "c", "stranger"];
                let members: BTreeMap<String, Standing> = starts
                    .iter()
                    .zip(uids)
                    .map(|(&(joined, delivered, read, lag, private), uid)| {
                        let cursors = Cursors { delivered: delivered.max(read), read };
                        let shown = read.saturating_sub(lag);
                        (uid.to_owned(), Standing { joined, cursors, shown, private })
                    })
                    .collect();
                let kind = |read| if read { AckKind::Read } else { AckKind::Delivered };
                let plan = plan_acks(acks.iter().map(|&(who, up_to, read)| (uids[who], up_to, kind(read))), 30, &members);
                let mut alone = members.clone();
                for (&(who, up_to, read), outcome) in acks.iter().zip(&plan.outcomes) {
                    match alone.get_mut(uids[who]) {
                        None => proptest::prop_assert_eq!(*outcome, Planned::NotMember),
                        Some(_) if up_to > 30 => proptest::prop_assert_eq!(*outcome, Planned::Past),
                        Some(member) => {
                            let previous = member.cursors;
                            let shown_from = (!member.private).then_some(member.shown);
                            member.cursors = advance(previous, up_to, kind(read)).unwrap_or(previous);
                            member.shown = shown_after(member.private, member.shown, previous.read, member.cursors.read);
                            proptest::prop_assert_eq!(*outcome, Planned::Moved { previous, cursors: member.cursors, shown_from });
                        }
                    }
                }
                for (uid, member) in &members {
                    let moved = plan.moves.iter().find(|m| m.uid == *uid);
                    let after = alone.get(uid).map(|m| m.cursors);
                    proptest::prop_assert_eq!(moved.map(|m| m.next).or(Some(member.cursors)), after);
                    proptest::prop_assert_eq!(moved.map_or(member.shown, |m| m.shown.1), alone[uid].shown);
                }
                let messages: Vec<(i64, String)> = (1..=30).map(|seq| (seq, uids[usize::try_from(seq).unwrap_or(0) % 4].to_owned())).collect();
                let counted: BTreeMap<i64, i64> = read_increments(&plan.moves.iter().collect::<Vec<_>>(), &messages).into_iter().collect();
                for (seq, sender) in &messages {
                    let seq = *seq;
                    let readers = counted.get(&seq).copied().unwrap_or(0);
                    let expected = members
                        .iter()
                        .filter(|(uid, m)| {
                            let after = alone[*uid].shown;
                            m.shown < seq && seq <= after && seq > m.joined && *uid != sender
                        })
                        .count();
                    proptest::prop_assert_eq!(usize::try_from(readers).ok(), Some(expected));
                }
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
