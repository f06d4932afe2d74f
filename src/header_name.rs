//! Header names as they come off the wire, through a small cache of the
//! names this thread read recently.
//!
//! Every head the proxy reads (a client's request, the downstream's
//! answer) spells the same dozen names; `HeaderName::from_bytes` checks
//! and lowercases each byte and matches the result against the standard
//! names every time, and copies a name it does not know (`MCP-Session-Id`,
//! `MCP-Protocol-Version`) into an allocation of its own: 1,400
//! instructions and one allocation a proxied request (callgrind). Here a
//! name spelled byte for byte as one read before is that name again (a
//! standard one copied, another sharing the first one's bytes).
//!
//! What comes back is exactly what `HeaderName::from_bytes` returns for
//! the same bytes, since it is what that call returned for them the first
//! time; a name that is not valid is never kept.

use std::cell::RefCell;

use axum::http::header::{HeaderName, InvalidHeaderName};

/// How many names a thread keeps: a head has about ten, and the slot a
/// name goes in depends on its length and three of its bytes, so a
/// client's and a downstream's names rarely meet in one slot.
const SLOTS: usize = 64;
/// The longest name kept; a longer one is read each time.
const LONGEST: usize = 32;

/// One name as it was spelled, and what it is.
struct Recent {
    spelled: [u8; LONGEST],
    len: usize,
    name: HeaderName,
}

thread_local! {
    static RECENT: RefCell<[Option<Recent>; SLOTS]> =
        const { RefCell::new([const { None }; SLOTS]) };
}

/// The header name spelled `raw`, as `HeaderName::from_bytes` reads it.
pub(crate) fn from_wire(raw: &[u8]) -> Result<HeaderName, InvalidHeaderName> {
    if raw.is_empty() || raw.len() > LONGEST {
        return HeaderName::from_bytes(raw);
    }
    let slot = slot_of(raw);
    let cached = RECENT.try_with(|recent| {
        // Never borrowed twice: nothing below calls back in here.
        let mut recent = recent.try_borrow_mut().ok()?;
        let entry = &mut recent[slot];
        if let Some(seen) = entry {
            if seen.spelled[..seen.len] == *raw {
                return Some(Ok(seen.name.clone()));
            }
        }
        let name = HeaderName::from_bytes(raw);
        if let Ok(name) = &name {
            let mut spelled = [0; LONGEST];
            spelled[..raw.len()].copy_from_slice(raw);
            *entry = Some(Recent {
                spelled,
                len: raw.len(),
                name: name.clone(),
            });
        }
        Some(name)
    });
    match cached {
        Ok(Some(name)) => name,
        // The thread is being torn down, or the cache is busy.
        _ => HeaderName::from_bytes(raw),
    }
}

/// Where a name spelled `raw` (not empty) is kept: by its length and its
/// first, middle and last bytes.
fn slot_of(raw: &[u8]) -> usize {
    let byte = |i: usize| usize::from(raw.get(i).copied().unwrap_or_default());
    let len = raw.len();
    let mixed = len
        .wrapping_mul(31)
        .wrapping_add(byte(0).wrapping_mul(7))
        .wrapping_add(byte(len / 2).wrapping_mul(3))
        .wrapping_add(byte(len.wrapping_sub(1)));
    mixed % SLOTS
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_name_read_again_is_the_same_name() {
        for raw in [
            &b"Content-Type"[..],
            b"content-type",
            b"MCP-Session-Id",
            b"mcp-session-id",
            b"X_Custom_Name",
        ] {
            let first = from_wire(raw).unwrap();
            let again = from_wire(raw).unwrap();
            assert_eq!(first, again);
            assert_eq!(again, HeaderName::from_bytes(raw).unwrap());
        }
    }

    #[test]
    fn an_invalid_name_is_refused_every_time() {
        for raw in [&b""[..], b"bad name", b"colon:", b"\xff"] {
            assert!(from_wire(raw).is_err());
            assert!(from_wire(raw).is_err());
        }
    }

    #[test]
    fn names_that_share_a_slot_replace_each_other_without_mixing_up() {
        // Same length, same first, middle and last bytes: the same slot.
        let one = b"x-aaaamaaaa-z";
        let other = b"x-bbbbmbbbb-z";
        for _ in 0..3 {
            assert_eq!(from_wire(one).unwrap().as_str(), "x-aaaamaaaa-z");
            assert_eq!(from_wire(other).unwrap().as_str(), "x-bbbbmbbbb-z");
        }
    }

    #[test]
    fn a_name_longer_than_the_cache_keeps_is_read_each_time() {
        let long = "x-".repeat(40);
        assert_eq!(from_wire(long.as_bytes()).unwrap().as_str(), long);
    }

    proptest! {
        // Whatever came before, a name reads as `HeaderName::from_bytes`
        // reads it: the cache never answers for other bytes.
        #[test]
        fn a_name_reads_as_http_reads_it(
            earlier in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..20),
            raw in proptest::collection::vec(any::<u8>(), 0..40),
            spelled in "[A-Za-z0-9_-]{1,36}",
        ) {
            for earlier in &earlier {
                let _ = from_wire(earlier);
            }
            for raw in [&raw[..], spelled.as_bytes()] {
                let expected = HeaderName::from_bytes(raw).ok();
                prop_assert_eq!(from_wire(raw).ok(), expected.clone());
                prop_assert_eq!(from_wire(raw).ok(), expected);
            }
        }
    }
}
