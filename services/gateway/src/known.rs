//! The messages a stream has seen lately, so a heartbeat's watch list (bare
//! message ids) can be resolved to their groups, with the read count last
//! reported for each. Bounded: two generations of [`GENERATION`] ids; when
//! the young one fills, the old one is forgotten. A stream remembers between
//! [`GENERATION`] and twice that many of its newest messages, so a watch list
//! of up to 100 ids of recent messages always resolves.
//!
//! Every delivery goes through it, so it hashes with foldhash rather than
//! SipHash (3% of the gateway's CPU at 1,000 msg/s in BENCHMARKS.md §23), and
//! a new generation reuses the forgotten one's table. The ids it stores are
//! the server's; a client's ids are only looked up.

use std::collections::HashMap;

use foldhash::fast::RandomState;

/// A map keyed by ids the server assigns, hashed fast: what a session looks up
/// once or more per delivery.
pub type IdMap<V> = HashMap<u64, V, RandomState>;

/// Ids per generation.
pub const GENERATION: usize = 128;

/// What is remembered of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    /// Its group.
    pub gid: u64,
    /// The read count last reported to the client, if any.
    pub reported: Option<u32>,
}

/// A stream's recent messages.
#[derive(Debug, Default)]
pub struct Known {
    young: IdMap<Seen>,
    old: IdMap<Seen>,
}

impl Known {
    /// Remembers that `msgid` is in `gid`.
    pub fn remember(&mut self, msgid: u64, gid: u64) {
        if self.young.contains_key(&msgid) {
            return;
        }
        let seen = self.old.remove(&msgid).unwrap_or(Seen {
            gid,
            reported: None,
        });
        if self.young.len() >= GENERATION {
            std::mem::swap(&mut self.old, &mut self.young);
            self.young.clear();
        }
        self.young.insert(msgid, seen);
    }

    /// The remembered message, if it still is.
    pub fn get_mut(&mut self, msgid: u64) -> Option<&mut Seen> {
        match self.young.get_mut(&msgid) {
            Some(seen) => Some(seen),
            None => self.old.get_mut(&msgid),
        }
    }

    /// Ids remembered.
    pub fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_messages_are_kept_and_the_count_stays_bounded() {
        let mut known = Known::default();
        for msgid in 0..10_000 {
            known.remember(msgid, msgid % 7);
            assert!(known.len() <= 2 * GENERATION);
        }
        for msgid in 10_000 - GENERATION as u64..10_000 {
            assert_eq!(known.get_mut(msgid).map(|s| s.gid), Some(msgid % 7));
        }
        assert!(known.get_mut(0).is_none(), "the oldest are forgotten");
    }

    #[test]
    fn a_reported_count_survives_being_seen_again() {
        let mut known = Known::default();
        known.remember(1, 10);
        if let Some(seen) = known.get_mut(1) {
            seen.reported = Some(3);
        }
        for msgid in 100..100 + GENERATION as u64 {
            known.remember(msgid, 10);
        }
        // Now in the old generation; seen again, it moves to the young one.
        known.remember(1, 10);
        for msgid in 1_000..1_000 + GENERATION as u64 - 1 {
            known.remember(msgid, 10);
        }
        assert_eq!(
            known.get_mut(1),
            Some(&mut Seen {
                gid: 10,
                reported: Some(3)
            })
        );
    }
}
