//! Opaque page tokens and cursors: the one codec for every position a client
//! hands back (a list's page token, the receipt service's pull cursor). A
//! token carries the last key of the previous page, or several keys
//! ([`encode_keys`]); it is hex-encoded with a version prefix so clients treat
//! it as opaque, and a malformed token is refused with INVALID_ARGUMENT naming
//! its field. Tokens are not signed: a
//! made-up but well-formed token only moves the caller to another position
//! in a list it may read anyway (every list checks the caller itself), so it
//! reveals and changes nothing a first page would not.

use crate::Error;

const PREFIX: &str = "p1";
const MAX_TOKEN_LEN: usize = 512;

/// Encodes the last key of a page.
pub fn encode(key: &str) -> String {
    let mut token = String::with_capacity(PREFIX.len() + key.len() * 2);
    token.push_str(PREFIX);
    for byte in key.as_bytes() {
        token.push_str(&format!("{byte:02x}"));
    }
    token
}

/// Decodes a page token: `None` for the first page (empty token).
pub fn decode(token: &str) -> Result<Option<String>, Error> {
    decode_field(token, "page_token")
}

/// Whether `token` is one this codec made (or could have): a client's older
/// position in another form fails this before it is refused.
pub fn is_token(token: &str) -> bool {
    token.starts_with(PREFIX)
}

/// Encodes a position of several stored keys (a change time and a message
/// id, say) as one token.
pub fn encode_keys(keys: &[i64]) -> String {
    let joined: Vec<String> = keys.iter().map(i64::to_string).collect();
    encode(&joined.join("."))
}

/// Decodes a token of exactly `N` keys made by [`encode_keys`]: `None` for an
/// empty one; `field` names it in the refusal of anything else.
pub fn decode_keys<const N: usize>(
    token: &str,
    field: &'static str,
) -> Result<Option<[i64; N]>, Error> {
    let Some(joined) = decode_field(token, field)? else {
        return Ok(None);
    };
    let keys: Vec<i64> = joined
        .split('.')
        .map(|key| key.parse::<i64>().ok())
        .collect::<Option<_>>()
        .ok_or_else(|| not_ours(field))?;
    <[i64; N]>::try_from(keys)
        .map(Some)
        .map_err(|_| not_ours(field))
}

fn not_ours(field: &'static str) -> Error {
    Error::invalid(field, "not a token this service gave")
}

fn decode_field(token: &str, field: &'static str) -> Result<Option<String>, Error> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || not_ours(field);
    if token.len() > MAX_TOKEN_LEN {
        return Err(invalid());
    }
    let hex = token.strip_prefix(PREFIX).ok_or_else(invalid)?;
    if hex.len() % 2 != 0 || hex.is_empty() {
        return Err(invalid());
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(invalid)?;
    String::from_utf8(bytes).map(Some).map_err(|_| invalid())
}

/// Decodes a token whose key is a stored id (a non-negative `i64`).
pub fn decode_id(token: &str) -> Result<Option<i64>, Error> {
    match decode_keys::<1>(token, "page_token")? {
        Some([id]) if id < 0 => Err(not_ours("page_token")),
        keys => Ok(keys.map(|[id]| id)),
    }
}

/// The token of the page after `items`: the key of the last item when the page
/// came back full, empty when it was the last page.
pub fn next_token<T>(items: &[T], limit: u32, key: impl Fn(&T) -> String) -> String {
    match items.last() {
        Some(last) if items.len() >= limit as usize => encode(&key(last)),
        _ => String::new(),
    }
}

/// Resolves a requested page size: 0 means `default`, above `max` is invalid.
pub fn page_size(requested: u32, default: u32, max: u32) -> Result<u32, Error> {
    match requested {
        0 => Ok(default),
        n if n <= max => Ok(n),
        _ => Err(Error::invalid("page_size", format!("at most {max}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_malformed_ones_are_refused() {
        assert_eq!(decode(&encode("uid42")).ok(), Some(Some("uid42".into())));
        assert_eq!(decode_id(&encode("17")).ok(), Some(Some(17)));
        assert_eq!(decode("").ok(), Some(None));
        for bad in ["uid42", "p1zz", "p1abc", "p1", "p2aa", "p1ff"] {
            assert!(decode(bad).is_err(), "{bad} should be refused");
        }
        assert!(decode_id(&encode("x")).is_err());
        assert!(decode_id(&encode("-1")).is_err());
        assert!(decode(&"p1".repeat(300)).is_err());
    }

    #[test]
    fn several_keys_travel_as_one_token_and_only_as_many_as_asked() {
        let token = encode_keys(&[1_700_000_000_000, 42]);
        assert!(is_token(&token));
        assert_eq!(
            decode_keys::<2>(&token, "cursor").ok(),
            Some(Some([1_700_000_000_000, 42]))
        );
        assert_eq!(decode_keys::<2>("", "cursor").ok(), Some(None));
        assert!(decode_keys::<3>(&token, "cursor").is_err());
        assert!(decode_keys::<2>(&encode("1.x"), "cursor").is_err());
        let refused: tonic::Status = decode_keys::<2>("p1zz", "cursor")
            .expect_err("malformed")
            .into();
        assert_eq!(
            crate::error::field_violations(&refused)[0].0,
            "cursor",
            "the refusal names the field it came in"
        );
    }

    #[test]
    fn page_size_defaults_and_caps() {
        assert_eq!(page_size(0, 100, 500).ok(), Some(100));
        assert_eq!(page_size(500, 100, 500).ok(), Some(500));
        assert!(page_size(501, 100, 500).is_err());
    }

    /// Properties over any input; `make fuzz` runs them with many more cases.
    mod properties {
        use super::*;

        proptest::proptest! {
            /// Whatever a client sends as a page token is refused or decoded,
            /// never a panic, and a key decoded from one encodes back to a
            /// token that decodes to the same key.
            #[test]
            fn any_token_is_refused_or_decoded(token in "\\PC{0,600}") {
                if let Ok(Some(key)) = decode(&token) {
                    proptest::prop_assert_eq!(decode(&encode(&key)).ok(), Some(Some(key)));
                }
                let _ = decode_id(&token);
            }

            /// Every key of up to 255 bytes survives the round trip.
            #[test]
            fn keys_round_trip(key in "\\PC{1,63}") {
                proptest::prop_assert_eq!(decode(&encode(&key)).ok(), Some(Some(key)));
            }

            #[test]
            fn keys_of_any_value_round_trip(a: i64, b: i64) {
                proptest::prop_assert_eq!(decode_keys::<2>(&encode_keys(&[a, b]), "cursor").ok(), Some(Some([a, b])));
            }

            #[test]
            fn ids_round_trip(id in 0i64..) {
                proptest::prop_assert_eq!(decode_id(&encode(&id.to_string())).ok(), Some(Some(id)));
            }
        }
    }
}
