//! Storage for groups, membership, messages and the outbox, behind one narrow
//! trait with a MySQL-compatible and an SQLite implementation. Both run the same
//! SQL (see `sql.rs`) except where the dialects differ.

use std::future::Future;

use parley_server::{MsgId, Seq, Uid};

use crate::{
    domain::{Gid, NewGroup, Role},
    error::MessageError,
};

mod mysql;
mod send;
mod sql;
mod sqlite;

pub use mysql::MySqlMessageStore;
pub use sqlite::SqliteMessageStore;

/// A stored group.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct GroupRecord {
    /// Group id.
    #[sqlx(try_from = "i64")]
    pub gid: Gid,
    /// Stored [`crate::domain::GroupKind`] code.
    pub kind: i64,
    /// Display name.
    pub name: String,
    /// Creator.
    pub creator_uid: String,
    /// Latest seq.
    #[sqlx(try_from = "i64")]
    pub last_seq: Seq,
    /// Current members.
    pub member_count: i64,
    /// Creation time.
    pub created_at_ms: i64,
    /// Stored [`crate::domain::ReceiptPolicy`] code.
    pub receipt_policy: i64,
}

/// A current member.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct MemberRecord {
    /// The member.
    pub uid: String,
    /// Stored [`Role`] code.
    pub role: i64,
    /// Group seq when they joined.
    #[sqlx(try_from = "i64")]
    pub joined_seq: Seq,
    /// Group seq when they left, if they did.
    pub left_seq: Option<i64>,
    /// Join time.
    pub joined_at_ms: i64,
}

/// A stored message.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct MessageRecord {
    /// Message id.
    #[sqlx(try_from = "i64")]
    pub msgid: MsgId,
    /// Group.
    #[sqlx(try_from = "i64")]
    pub gid: Gid,
    /// Position in the group.
    #[sqlx(try_from = "i64")]
    pub seq: Seq,
    /// Sender.
    pub sender_uid: String,
    /// Sender's idempotency key.
    pub client_msg_id: String,
    /// Body (empty where only the header was read).
    #[sqlx(default)]
    pub content: Vec<u8>,
    /// Receipts wanted.
    pub need_receipt: bool,
    /// Members other than the sender at send time.
    pub recipient_count: i64,
    /// Commit time.
    pub created_at_ms: i64,
    /// Stored [`crate::domain::ReceiptPolicy`] code it was sent under.
    pub receipt_policy: i64,
}

/// Who a message is for: the members at its seq, sender included.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Audience {
    /// The group's display name.
    pub group_name: String,
    /// Members when the message was sent, in uid order.
    pub members: Vec<String>,
}

/// A message to store.
#[derive(Clone, Debug)]
pub struct NewMessage {
    /// Group.
    pub gid: Gid,
    /// Sender, a current member.
    pub sender: Uid,
    /// Sender's idempotency key.
    pub client_msg_id: String,
    /// Body, already checked against the size limit.
    pub content: Vec<u8>,
    /// Receipts wanted.
    pub need_receipt: bool,
    /// W3C `traceparent` of the send, stored with its outbox entry so the
    /// delivery continues the same trace; empty when not traced.
    pub trace_context: String,
}

/// The result of a send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendOutcome {
    /// Stored now.
    Sent(MessageRecord),
    /// Stored before under the same idempotency key: the original.
    Duplicate(MessageRecord),
}

/// What a user may see of a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// The group's latest seq.
    pub last_seq: i64,
    /// The user joined after this seq.
    pub joined_seq: i64,
    /// The user's role.
    pub role: Role,
}

/// A membership change to apply.
#[derive(Clone, Debug)]
pub struct MembershipChange<'a> {
    /// Group.
    pub gid: Gid,
    /// Who asks.
    pub actor: &'a Uid,
    /// Whom it concerns: deduplicated.
    pub uids: &'a [Uid],
    /// Membership cap (adds only).
    pub max_members: i64,
    /// Time of the change.
    pub now_ms: i64,
}

/// The outbox's backlog, for the operators' gauges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct OutboxStats {
    /// Entries waiting for delivery.
    pub pending: i64,
    /// Entries set aside after a permanent failure.
    pub dead: i64,
    /// When the oldest waiting entry was written (ms since the epoch).
    pub oldest_ms: Option<i64>,
}

/// One lane of the outbox: the groups whose gid is `index` modulo `count`.
/// A group's entries are all in one lane, so lanes may drain side by side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lane {
    /// Which lane, below `count`.
    pub index: u32,
    /// How many lanes there are.
    pub count: u32,
}

impl Lane {
    /// The whole outbox as one lane.
    pub const ALL: Lane = Lane { index: 0, count: 1 };
}

/// An outbox entry still to deliver.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct OutboxEvent {
    /// Outbox id: delivery order and version of membership changes.
    pub id: i64,
    /// 1 = message sent, 2 = membership changed.
    pub kind: i64,
    /// Group.
    #[sqlx(try_from = "i64")]
    pub gid: Gid,
    /// Message seq (kind 1).
    pub seq: i64,
    /// Member (kind 2).
    pub uid: String,
    /// Delivery attempts so far.
    pub attempts: i64,
    /// W3C `traceparent` of the request that wrote it, or empty.
    pub trace_context: String,
}

/// Outbox kind of a sent message.
pub const OUTBOX_MESSAGE: i64 = 1;
/// Outbox kind of a membership change.
pub const OUTBOX_MEMBERSHIP: i64 = 2;

/// One member's stay in a group, left members included.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct MemberSpan {
    /// The member.
    pub uid: String,
    /// Group seq when they joined.
    #[sqlx(try_from = "i64")]
    pub joined_seq: Seq,
    /// Group seq when they left, if they did.
    pub left_seq: Option<i64>,
}

/// What the outbox passes on about committed messages of one group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    /// The group's display name.
    pub group_name: String,
    /// Every stay in the group, current and closed, left members included,
    /// in uid order.
    pub spans: Vec<MemberSpan>,
    /// The messages asked for that exist, in seq order, without their
    /// content: the outbox does not pass it on.
    pub messages: Vec<MessageRecord>,
}

impl Committed {
    /// The stored message at `seq`, if it was asked for and exists.
    pub fn message(&self, seq: i64) -> Option<&MessageRecord> {
        self.messages
            .binary_search_by_key(&seq, |m| m.seq.stored())
            .ok()
            .and_then(|i| self.messages.get(i))
    }

    /// Who the message at `seq` is for: the members at that seq, sender
    /// included, in uid order (what [`MessageStore::members_at`] reads).
    pub fn audience(&self, seq: i64) -> Audience {
        Audience {
            group_name: self.group_name.clone(),
            members: self
                .spans
                .iter()
                .filter(|s| crate::domain::member_at(s.joined_seq.stored(), s.left_seq, seq))
                .map(|s| s.uid.clone())
                .collect(),
        }
    }
}

/// Storage of the message service. Every method is one transaction.
pub trait MessageStore: parley_server::db::Pooled {
    /// Creates a group; for a direct conversation that exists, returns it with `true`.
    fn create_group(
        &self,
        group: &NewGroup,
        now_ms: i64,
    ) -> impl Future<Output = Result<(GroupRecord, bool), MessageError>> + Send;

    /// Adds members; returns those who were not members and the join seq.
    fn add_members(
        &self,
        change: MembershipChange<'_>,
    ) -> impl Future<Output = Result<(Vec<String>, i64), MessageError>> + Send;

    /// Removes members; returns those who were members.
    fn remove_members(
        &self,
        change: MembershipChange<'_>,
    ) -> impl Future<Output = Result<Vec<String>, MessageError>> + Send;

    /// The user's access to a group: NOT_FOUND or PERMISSION_DENIED otherwise.
    fn access(
        &self,
        gid: Gid,
        uid: &Uid,
    ) -> impl Future<Output = Result<Access, MessageError>> + Send;

    /// The last committed seq of each group that exists among `gids`.
    fn last_seqs(
        &self,
        gids: &[Gid],
    ) -> impl Future<Output = Result<Vec<(i64, i64)>, MessageError>> + Send;

    /// One page of current members after `after_uid`, in uid order.
    fn list_members(
        &self,
        gid: Gid,
        after_uid: Option<&str>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<MemberRecord>, MessageError>> + Send;

    /// One page of the user's groups after `after_gid`, in gid order.
    fn list_groups(
        &self,
        uid: &Uid,
        after_gid: i64,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<GroupRecord>, MessageError>> + Send;

    /// Sets the receipt policy of group `gid` as `actor` (an admin, or
    /// either member of a direct chat); returns the group's last seq: the
    /// policy holds from the message after it.
    fn set_receipt_policy(
        &self,
        gid: Gid,
        actor: &Uid,
        policy: crate::domain::ReceiptPolicy,
    ) -> impl Future<Output = Result<i64, MessageError>> + Send;

    /// The latest message of each of `gids` that the user is a member of and
    /// may see (sent after they joined); groups without one are left out.
    fn last_messages(
        &self,
        uid: &Uid,
        gids: &[i64],
    ) -> impl Future<Output = Result<Vec<MessageRecord>, MessageError>> + Send;

    /// Stores messages of one sender to one group in one transaction, in
    /// order, each with the next seq under the group's lock, so seqs stay
    /// dense; a retried one (even within the batch) returns its original. Every message must name the same group and
    /// sender; an empty batch stores nothing.
    fn send_batch(
        &self,
        messages: &[NewMessage],
        now_ms: i64,
    ) -> impl Future<Output = Result<Vec<SendOutcome>, MessageError>> + Send;

    /// Messages with seq above `after_seq`, in seq order.
    fn messages_after(
        &self,
        gid: Gid,
        after_seq: i64,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<MessageRecord>, MessageError>> + Send;

    /// Messages by id with seq above `after_seq`, in seq order.
    fn messages_by_id(
        &self,
        gid: Gid,
        msgids: &[i64],
        after_seq: i64,
    ) -> impl Future<Output = Result<Vec<MessageRecord>, MessageError>> + Send;

    /// The oldest undelivered outbox entries of a lane's groups, in id order.
    fn outbox_batch(
        &self,
        lane: Lane,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<OutboxEvent>, MessageError>> + Send;

    /// What the outbox passes on for the messages at `seqs` of one group
    /// (see [`Committed`]); `None` when the group does not exist.
    fn committed(
        &self,
        gid: i64,
        seqs: &[i64],
    ) -> impl Future<Output = Result<Option<Committed>, MessageError>> + Send;

    /// The members at `seq`, sender included, in uid order: the fast path's
    /// fan-out needs no more than this.
    fn members_at(
        &self,
        gid: i64,
        seq: i64,
    ) -> impl Future<Output = Result<Vec<String>, MessageError>> + Send;

    /// The earlier, closed stays of some users in a group, in uid order and
    /// then oldest first.
    fn past_stays(
        &self,
        gid: i64,
        uids: &[String],
    ) -> impl Future<Output = Result<Vec<MemberSpan>, MessageError>> + Send;

    /// Current membership rows (including left members) of some users.
    fn member_states(
        &self,
        gid: i64,
        uids: &[String],
    ) -> impl Future<Output = Result<Vec<MemberRecord>, MessageError>> + Send;

    /// Deletes delivered outbox entries.
    fn outbox_done(&self, ids: &[i64]) -> impl Future<Output = Result<(), MessageError>> + Send;

    /// How far behind the outbox is: entries waiting, entries set aside, and
    /// when the oldest waiting one was written.
    fn outbox_stats(&self) -> impl Future<Output = Result<OutboxStats, MessageError>> + Send;

    /// Records a failed attempt; `dead` sets the entry aside for good.
    fn outbox_failed(
        &self,
        id: i64,
        error: &str,
        dead: bool,
    ) -> impl Future<Output = Result<(), MessageError>> + Send;
}
