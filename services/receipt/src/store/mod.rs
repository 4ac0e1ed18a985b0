//! Storage for cursors, per-message receipt state and the `msg_acks` ledger
//! (a log of read acks, for read times),
//! behind one narrow trait with a MySQL-compatible and an SQLite implementation
//! sharing one SQL body (`sql.rs`).

use std::future::Future;

use crate::{
    domain::{AckKind, Planned, ReceiptState},
    error::ReceiptError,
};

mod ack;
mod init;
mod ledger;
mod membership;
mod mysql;
mod privacy;
mod sql;
mod sqlite;

pub use mysql::MySqlReceiptStore;
pub use sqlite::SqliteReceiptStore;

/// A sent message as InitReceipts describes it.
#[derive(Clone, Debug)]
pub struct InitMessage {
    /// Group.
    pub gid: i64,
    /// Message id.
    pub msgid: i64,
    /// Seq in the group.
    pub seq: i64,
    /// Sender.
    pub sender_uid: String,
    /// Receipts wanted.
    pub need_receipt: bool,
    /// N: members other than the sender at send time.
    pub recipient_count: i64,
    /// Commit time.
    pub created_at_ms: i64,
    /// The group's receipt policy when it was sent.
    pub policy: crate::domain::Policy,
}

/// What InitReceipts did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitOutcome {
    /// False when the message was recorded before.
    pub created: bool,
    /// True when it keeps read times (the ledger tier).
    pub ledger: bool,
    /// Readers it had when recorded now (acks that came before it); 0 for a
    /// message recorded before.
    pub read_count: i64,
}

/// What one step of retention did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Expired {
    /// Messages that left the ledger tier.
    pub messages: u32,
    /// Read acks dropped from the ledger.
    pub read_acks: u32,
}

/// One member's membership as the message service last described it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberChange {
    /// Member.
    pub uid: String,
    /// Group admin.
    pub admin: bool,
    /// Group seq at join.
    pub joined_seq: i64,
    /// Group seq at leaving, if left.
    pub left_seq: Option<i64>,
    /// Version: newer wins.
    pub version: i64,
    /// Earlier stays in the group, closed: (joined_seq, left_seq).
    pub past_stays: Vec<(i64, i64)>,
}

/// One member's cumulative ack, in a group's batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberAck {
    /// The member.
    pub uid: String,
    /// Every message up to and including this seq.
    pub up_to: i64,
    /// Delivered or read.
    pub kind: AckKind,
}

/// One message's receipt state.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct MsgReceipt {
    /// Group.
    pub gid: i64,
    /// Seq.
    pub seq: i64,
    /// Message id.
    pub msgid: i64,
    /// Sender.
    pub sender_uid: String,
    /// N.
    pub recipient_count: i64,
    /// k.
    pub read_count: i64,
    /// Read times are kept (the ledger tier).
    pub ledger: bool,
    /// When k last changed (or the message was sent).
    pub changed_at_ms: i64,
    /// Stored [`crate::domain::Policy`] code it was sent under.
    pub policy: i64,
    /// 1 when its sender hides their reads in the group (then they see none).
    pub sender_private: i64,
}

impl MsgReceipt {
    /// The receipt policy it was sent under.
    pub fn policy(&self) -> crate::domain::Policy {
        crate::domain::Policy::from_code(self.policy)
    }

    /// What its sender may see of its reads.
    pub fn senders_sight(&self) -> crate::domain::Sight {
        self.sight(self.sender_private != 0)
    }

    /// What a viewer who hides (or shares) their reads may see of its reads.
    pub fn sight(&self, viewer_private: bool) -> crate::domain::Sight {
        crate::domain::Sight {
            policy: self.policy(),
            viewer_private,
        }
    }
}

/// A member's cursor row.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct CursorRecord {
    /// Group admin.
    pub admin: bool,
    /// Group seq at join.
    pub joined_seq: i64,
    /// Group seq at leaving.
    pub left_seq: Option<i64>,
    /// Delivered cursor.
    pub delivered_seq: i64,
    /// Read cursor.
    pub read_seq: i64,
    /// They hide their reads in this group.
    pub private: bool,
}

/// A user's read privacy: their choice for every group, a group's own
/// choice when they made one, and what is in force there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Privacy {
    /// Hidden in every group without a choice of its own.
    pub every_group: bool,
    /// The group's own choice, when asked about a group and there is one.
    pub group: Option<bool>,
    /// In force: the group's choice, else the user's.
    pub private: bool,
}

/// Where a privacy choice applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrivacyScope {
    /// Every group without a choice of its own.
    EveryGroup,
    /// One group.
    Group(i64),
}

/// A member's position in one group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct UnreadRecord {
    /// Group.
    pub gid: i64,
    /// The group's last seq.
    pub last_seq: i64,
    /// The member's read cursor.
    pub read_seq: i64,
    /// The member's delivered cursor.
    pub delivered_seq: i64,
}

/// A user's position in one group, as read for many users at once.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct UserUnread {
    /// The user.
    pub uid: String,
    /// The position.
    #[sqlx(flatten)]
    pub record: UnreadRecord,
}

/// Which of a user's groups to count.
#[derive(Clone, Copy, Debug)]
pub enum GroupSelection<'a> {
    /// These groups (those the user is not in are left out).
    Only(&'a [i64]),
    /// A page of all the user's groups after a gid.
    After { gid: i64, limit: u32 },
}

/// Storage of the receipt service. Every method is one transaction.
pub trait ReceiptStore: parley_server::db::Pooled {
    /// Records sent messages in order, each in a transaction of its own and
    /// idempotent on (gid, seq); one outcome per message. On failure the
    /// messages before the failed one stay recorded.
    fn init_receipts(
        &self,
        messages: &[InitMessage],
        ledger_max: i64,
    ) -> impl Future<Output = Result<Vec<InitOutcome>, ReceiptError>> + Send;

    /// Applies membership changes newer than the stored ones; returns how many.
    fn apply_membership(
        &self,
        gid: i64,
        changes: &[MemberChange],
        now_ms: i64,
    ) -> impl Future<Output = Result<u32, ReceiptError>> + Send;

    /// Cumulative acks by members of `gid`, applied in order in one
    /// transaction: one outcome per ack. An ack past both the group's recorded
    /// last seq and `committed` (the message service's last seq, when the
    /// caller has it) changes nothing ([`Planned::Past`]), nor does one from a
    /// non-member ([`Planned::NotMember`]).
    fn ack_group(
        &self,
        gid: i64,
        acks: &[MemberAck],
        committed: Option<i64>,
        now_ms: i64,
    ) -> impl Future<Output = Result<Vec<Planned>, ReceiptError>> + Send;

    /// Receipt state of the group's messages with seq in `(after_seq,
    /// up_to_seq]`, newest first, at most `limit`.
    fn messages_between(
        &self,
        gid: i64,
        after_seq: i64,
        up_to_seq: i64,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<MsgReceipt>, ReceiptError>> + Send;

    /// Whether the group is known.
    fn group_exists(&self, gid: i64) -> impl Future<Output = Result<bool, ReceiptError>> + Send;

    /// A member's cursor row, current or past.
    fn cursor(
        &self,
        gid: i64,
        uid: &str,
    ) -> impl Future<Output = Result<Option<CursorRecord>, ReceiptError>> + Send;

    /// Receipt state of messages by id (unknown ids are left out).
    fn messages(
        &self,
        gid: i64,
        msgids: &[i64],
    ) -> impl Future<Output = Result<Vec<MsgReceipt>, ReceiptError>> + Send;

    /// One page of a message's readers or non-readers after `after_uid`.
    fn receipt_members(
        &self,
        message: &MsgReceipt,
        state: ReceiptState,
        after_uid: Option<&str>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<String>, ReceiptError>> + Send;

    /// The sender's messages whose state changed after `(changed_at_ms, msgid)`.
    fn pull(
        &self,
        sender_uid: &str,
        after: (i64, i64),
        limit: u32,
    ) -> impl Future<Output = Result<Vec<MsgReceipt>, ReceiptError>> + Send;

    /// A user's positions in their current groups.
    fn unread(
        &self,
        uid: &str,
        selection: GroupSelection<'_>,
    ) -> impl Future<Output = Result<Vec<UnreadRecord>, ReceiptError>> + Send;

    /// The positions of each of `uids` in their current groups: (user, position).
    fn unread_of(
        &self,
        uids: &[String],
    ) -> impl Future<Output = Result<Vec<UserUnread>, ReceiptError>> + Send;

    /// Retention: moves up to `limit` messages sent before `cutoff_ms` to the
    /// cursor tier and drops up to `limit` of the ledger's read acks from
    /// before it (a read ack covers only messages sent before it).
    fn expire_ledger(
        &self,
        cutoff_ms: i64,
        limit: u32,
    ) -> impl Future<Output = Result<Expired, ReceiptError>> + Send;

    /// When each of `uids` first read message `seq` of group `gid`, from the
    /// ledger's read acks: (uid, time) in uid order, for those who read it
    /// while its read times are kept.
    fn read_times(
        &self,
        gid: i64,
        seq: i64,
        uids: &[String],
    ) -> impl Future<Output = Result<Vec<(String, i64)>, ReceiptError>> + Send;

    /// When the shown read position of each of `uids` last moved, in their
    /// stay in `gid` that includes message `seq`: (uid, time) in uid order,
    /// for those with such a stay.
    fn cursor_times(
        &self,
        gid: i64,
        seq: i64,
        uids: &[String],
    ) -> impl Future<Output = Result<Vec<(String, i64)>, ReceiptError>> + Send;

    /// Sets `uid`'s read privacy in `scope` (`None`: a group follows the
    /// user's choice for every group again) and puts it in force on their
    /// cursors; returns the privacy now in force there.
    fn set_privacy(
        &self,
        uid: &str,
        scope: PrivacyScope,
        private: Option<bool>,
        now_ms: i64,
    ) -> impl Future<Output = Result<Privacy, ReceiptError>> + Send;

    /// `uid`'s read privacy in `scope`.
    fn privacy(
        &self,
        uid: &str,
        scope: PrivacyScope,
    ) -> impl Future<Output = Result<Privacy, ReceiptError>> + Send;
}
