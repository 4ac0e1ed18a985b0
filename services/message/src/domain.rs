//! Validated domain types and the membership rules, as plain functions over
//! plain data. Wire types are converted into these at the handler; storage and
//! rules never see generated protobuf types.

use parley_server::{Reason, Uid, ids::InvalidId};

use crate::error::MessageError;

/// Largest batch of uids in one membership request.
pub const MAX_UIDS_PER_REQUEST: usize = 1000;
/// Longest group name, in characters.
pub const MAX_NAME_CHARS: usize = 128;
/// Longest client message id, in bytes.
pub const MAX_CLIENT_MSG_ID_LEN: usize = 64;
/// Largest number of message ids in one lookup.
pub const MAX_MSGIDS_PER_REQUEST: usize = 100;
/// Most groups one LastSeqs names.
pub const MAX_GIDS_PER_REQUEST: usize = 1000;
/// Largest group whose members are told who is typing.
pub const MAX_TYPING_GROUP: u32 = 1000;

pub use parley_server::Gid;

/// A seq from a request, within the storage range.
pub fn parse_seq(raw: u64) -> Result<i64, MessageError> {
    parley_server::Seq::parse(raw, "seq").map(parley_server::Seq::stored)
}

/// Group or direct conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupKind {
    /// Admin-managed membership.
    Group,
    /// Exactly two users, fixed.
    Direct,
}

impl GroupKind {
    /// Stored representation.
    pub fn code(self) -> i16 {
        match self {
            Self::Group => 1,
            Self::Direct => 2,
        }
    }

    /// From the stored representation (anything unknown reads as a group).
    pub fn from_code(code: i16) -> Self {
        if code == 2 { Self::Direct } else { Self::Group }
    }
}

/// A member's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Reads and sends.
    Member,
    /// Also manages membership and sees everyone's receipts.
    Admin,
}

impl Role {
    /// Stored representation.
    pub fn code(self) -> i16 {
        match self {
            Self::Member => 1,
            Self::Admin => 2,
        }
    }

    /// From the stored representation.
    pub fn from_code(code: i16) -> Self {
        if code == 2 { Self::Admin } else { Self::Member }
    }
}

/// What a group's members see of each other's reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReceiptPolicy {
    /// Counts and who read.
    Full,
    /// "Read by k of N" only.
    Counts,
    /// No receipts at all.
    Off,
}

impl ReceiptPolicy {
    /// Stored representation (and the wire enum's number).
    pub fn code(self) -> i16 {
        match self {
            Self::Full => 1,
            Self::Counts => 2,
            Self::Off => 3,
        }
    }

    /// From the wire: 1 to 3; anything else is refused.
    pub fn parse(raw: i32) -> Result<Self, MessageError> {
        match raw {
            1 => Ok(Self::Full),
            2 => Ok(Self::Counts),
            3 => Ok(Self::Off),
            _ => Err(MessageError::invalid("policy", "FULL, COUNTS or OFF")),
        }
    }
}

/// Who may change a group's receipt policy: its admins, or either member
/// of a direct chat (which has no admins).
pub fn may_set_receipt_policy(kind: GroupKind, role: Option<Role>) -> Result<(), MessageError> {
    match (kind, role) {
        (_, Some(Role::Admin)) | (GroupKind::Direct, Some(Role::Member)) => Ok(()),
        (_, Some(Role::Member)) => Err(MessageError::refused_because(
            Reason::NotAnAdmin,
            "only the group's admins change its receipt policy",
        )),
        (_, None) => Err(MessageError::refused(Reason::NotAMember)),
    }
}

/// Parses a list of 1 to `max` ids of one kind; the refusal names the
/// field, or the item (`gids[3]`) that is not an id.
pub fn parse_ids<T: TryFrom<u64, Error = InvalidId>>(
    raw: &[u64],
    max: usize,
    field: &str,
) -> Result<Vec<T>, MessageError> {
    if raw.is_empty() || raw.len() > max {
        return Err(MessageError::invalid(
            field.to_owned(),
            format!("must hold 1 to {max} ids"),
        ));
    }
    raw.iter()
        .enumerate()
        .map(|(i, &id)| T::try_from(id).map_err(|invalid| invalid.at(format!("{field}[{i}]"))))
        .collect()
}

/// Parses a list of uids: 1 to `MAX_UIDS_PER_REQUEST`, deduplicated, sorted.
pub fn parse_uids(raw: &[String], field: &str) -> Result<Vec<Uid>, MessageError> {
    if raw.is_empty() || raw.len() > MAX_UIDS_PER_REQUEST {
        return Err(MessageError::invalid(
            field.to_owned(),
            format!("must hold 1 to {MAX_UIDS_PER_REQUEST} uids"),
        ));
    }
    let mut uids = raw
        .iter()
        .enumerate()
        .map(|(i, u)| {
            Uid::parse(u).map_err(|e| MessageError::invalid(format!("{field}[{i}]"), e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    uids.sort();
    uids.dedup();
    Ok(uids)
}

/// Validates a group name.
pub fn parse_name(raw: &str) -> Result<String, MessageError> {
    if raw.chars().count() > MAX_NAME_CHARS || raw.chars().any(char::is_control) {
        return Err(MessageError::invalid(
            "name",
            format!("at most {MAX_NAME_CHARS} characters without control characters"),
        ));
    }
    Ok(raw.to_owned())
}

/// Validates a client message id: 1 to 64 printable ASCII characters.
pub fn parse_client_msg_id(raw: &str) -> Result<String, MessageError> {
    let printable = raw.bytes().all(|b| b.is_ascii_graphic());
    if raw.is_empty() || raw.len() > MAX_CLIENT_MSG_ID_LEN || !printable {
        return Err(MessageError::invalid(
            "client_msg_id",
            "1 to 64 printable ASCII characters",
        ));
    }
    Ok(raw.to_owned())
}

/// Validates message content against the configured limit.
pub fn check_content(content: &[u8], max_bytes: usize) -> Result<(), MessageError> {
    if content.is_empty() || content.len() > max_bytes {
        return Err(MessageError::invalid(
            "content",
            format!("1 to {max_bytes} bytes"),
        ));
    }
    Ok(())
}

/// The unique key of the direct conversation between two users, whichever
/// creates it.
pub fn direct_key(a: &Uid, b: &Uid) -> String {
    let (low, high) = if a <= b { (a, b) } else { (b, a) };
    format!("{low}|{high}")
}

/// A validated CreateGroup.
#[derive(Clone, Debug)]
pub struct NewGroup {
    /// Group or direct.
    pub kind: GroupKind,
    /// Display name.
    pub name: String,
    /// The creator, first member (admin of a group).
    pub creator: Uid,
    /// The other initial members, without the creator, deduplicated.
    pub members: Vec<Uid>,
    /// Set for direct conversations.
    pub direct_key: Option<String>,
}

impl NewGroup {
    /// Applies the creation rules: a direct conversation has exactly one other
    /// member; a group has up to `MAX_UIDS_PER_REQUEST` initial members.
    pub fn new(
        kind: GroupKind,
        name: String,
        creator: Uid,
        raw_members: &[String],
    ) -> Result<Self, MessageError> {
        let mut members = if raw_members.is_empty() {
            Vec::new()
        } else {
            parse_uids(raw_members, "member_uids")?
        };
        members.retain(|m| *m != creator);
        let direct_key = match kind {
            GroupKind::Direct => match members.as_slice() {
                [other] => Some(direct_key(&creator, other)),
                _ => {
                    return Err(MessageError::invalid(
                        "member_uids",
                        "a direct conversation has exactly one other member",
                    ));
                }
            },
            GroupKind::Group => None,
        };
        Ok(Self {
            kind,
            name,
            creator,
            members,
            direct_key,
        })
    }
}

/// Decides whether `actor` may change the membership of a group.
pub fn check_membership_change(
    kind: GroupKind,
    actor: &Uid,
    actor_role: Option<Role>,
    targets: &[Uid],
    removing: bool,
) -> Result<(), MessageError> {
    let Some(role) = actor_role else {
        return Err(MessageError::refused(Reason::NotAMember));
    };
    if kind == GroupKind::Direct {
        return Err(MessageError::refused(Reason::DirectConversation));
    }
    let leaving = removing && targets.len() == 1 && targets[0] == *actor;
    if role != Role::Admin && !leaving {
        return Err(MessageError::refused_because(
            Reason::NotAnAdmin,
            "only group admins may change membership",
        ));
    }
    Ok(())
}

/// Whether a member who joined at `joined_seq` (and left at `left_seq`, if
/// they did) is one of the message at `seq`'s audience: joined before it and
/// not gone before it.
pub fn member_at(joined_seq: i64, left_seq: Option<i64>, seq: i64) -> bool {
    joined_seq < seq && left_seq.is_none_or(|left| left >= seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admins_and_direct_chat_members_set_the_receipt_policy() {
        assert!(may_set_receipt_policy(GroupKind::Group, Some(Role::Admin)).is_ok());
        assert!(may_set_receipt_policy(GroupKind::Direct, Some(Role::Member)).is_ok());
        assert!(matches!(
            may_set_receipt_policy(GroupKind::Group, Some(Role::Member)),
            Err(ref e) if e.reason() == Reason::NotAnAdmin
        ));
        assert!(matches!(
            may_set_receipt_policy(GroupKind::Direct, None),
            Err(ref e) if e.reason() == Reason::NotAMember
        ));
        for raw in [0, 4, -1] {
            assert!(ReceiptPolicy::parse(raw).is_err(), "{raw}");
        }
        for policy in [
            ReceiptPolicy::Full,
            ReceiptPolicy::Counts,
            ReceiptPolicy::Off,
        ] {
            assert_eq!(
                ReceiptPolicy::parse(i32::from(policy.code())).ok(),
                Some(policy)
            );
        }
    }

    #[test]
    fn a_message_is_for_the_members_between_join_and_leave() {
        assert!(!member_at(5, None, 5), "joined at the message's seq");
        assert!(member_at(4, None, 5));
        assert!(member_at(4, Some(5), 5), "left at its seq: still counted");
        assert!(!member_at(4, Some(4), 5), "left before it");
    }

    fn uid(s: &str) -> Uid {
        Uid::parse(s).expect("valid uid")
    }

    #[test]
    fn direct_conversations_have_exactly_two_members_and_one_key() {
        let a = NewGroup::new(
            GroupKind::Direct,
            String::new(),
            uid("a"),
            &["b".into(), "a".into()],
        );
        let b = NewGroup::new(GroupKind::Direct, String::new(), uid("b"), &["a".into()]);
        assert_eq!(a.expect("valid").direct_key, b.expect("valid").direct_key);
        assert!(NewGroup::new(GroupKind::Direct, String::new(), uid("a"), &[]).is_err());
        assert!(
            NewGroup::new(
                GroupKind::Direct,
                String::new(),
                uid("a"),
                &["b".into(), "c".into()]
            )
            .is_err()
        );
    }

    #[test]
    fn uid_lists_are_deduplicated_and_bounded() {
        let uids = parse_uids(&["b".into(), "a".into(), "b".into()], "uids").expect("valid");
        assert_eq!(uids, vec![uid("a"), uid("b")]);
        assert!(parse_uids(&[], "uids").is_err());
        assert!(parse_uids(&vec!["x".to_string(); 1001], "uids").is_err());
        assert!(parse_uids(&["bad uid".into()], "uids").is_err());
    }

    #[test]
    fn only_admins_change_membership_but_anyone_may_leave() {
        let (a, b) = (uid("a"), uid("b"));
        let change = |role, targets: &[Uid], removing| {
            check_membership_change(GroupKind::Group, &a, role, targets, removing)
                .map_err(|e| e.to_string())
        };
        assert!(change(Some(Role::Admin), std::slice::from_ref(&b), false).is_ok());
        assert!(change(Some(Role::Member), std::slice::from_ref(&b), false).is_err());
        assert!(change(Some(Role::Member), std::slice::from_ref(&a), true).is_ok());
        assert!(change(Some(Role::Member), std::slice::from_ref(&b), true).is_err());
        assert!(change(None, std::slice::from_ref(&a), true).is_err());
        assert!(
            check_membership_change(GroupKind::Direct, &a, Some(Role::Admin), &[b], false).is_err()
        );
    }

    #[test]
    fn inputs_are_bounded() {
        assert!(parse_client_msg_id("m-1").is_ok());
        assert!(parse_client_msg_id("").is_err());
        assert!(parse_client_msg_id("has space").is_err());
        assert!(parse_client_msg_id(&"x".repeat(65)).is_err());
        assert!(check_content(b"hi", 4).is_ok());
        assert!(check_content(b"", 4).is_err());
        assert!(check_content(b"hello", 4).is_err());
        assert!(parse_name(&"n".repeat(129)).is_err());
        assert!(parse_name("line\nbreak").is_err());
        assert!(Gid::parse(0, "gid").is_err());
        assert!(Gid::parse(u64::MAX, "gid").is_err());
        assert_eq!(Gid::parse(7, "gid").map(Gid::stored).ok(), Some(7));
    }
}
