//! Which headers cross the proxy (DESIGN.md invariant 6).
//!
//! Identity headers are set by the policy or stripped, never merged: the
//! client's Authorization header and every client header that normalises
//! (case-folded, `_`→`-`) to a header the policy may set are removed, and so
//! are hop-by-hop headers and those named in `Connection`. Headers that claim
//! something about the connection (`Forwarded`, `X-Forwarded-*`, `X-Real-IP`,
//! ...) are the proxy's to write, and cookies pass only by name.

use std::cell::Cell;
use std::net::IpAddr;

use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Version};

use crate::client_address::{
    has_forwarding_prefix, has_underscore, lenient_header_name, lenient_name, TrustedProxies,
    FORWARDING, X_FORWARDED_FOR,
};
use crate::config::is_own_cookie;
use crate::policy::header_rules::NamesByLength;

/// RFC 9110 §7.6.1 hop-by-hop headers, plus the non-standard ones proxies
/// still meet.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The client lines no request passes on, by their exact names (as a
/// lenient server reads them): hop-by-hop, the forwarding family
/// (`client_address`), and four the proxy writes or drops itself —
/// `Host`, `Authorization`, `Cookie` (passed only by name, rewritten) and
/// `Accept-Encoding` (the downstream answers uncompressed, so events are
/// never held back in a compressor's buffer). One table grouped by length,
/// asked once per client line: the three lists compared one name after
/// another cost ~100 instructions a line (callgrind).
static NEVER_CROSSING: std::sync::LazyLock<NamesByLength> = std::sync::LazyLock::new(|| {
    NamesByLength::new(
        HOP_BY_HOP
            .into_iter()
            .chain(FORWARDING)
            .chain(["host", "authorization", "cookie", "accept-encoding"])
            .map(String::from),
    )
});

/// The proxy's own `Via` entry (RFC 9110 §7.6.3; a pseudonym, no version).
const VIA: &str = "1.1 mcp-oauth-proxy";

/// Names listed in `Connection` headers, as a lenient server reads them.
fn connection_named(headers: &HeaderMap) -> Vec<String> {
    // Names that are hop-by-hop anyway are left out: `Connection:
    // keep-alive`, which most answers carry, then costs no allocation.
    connection_options(headers)
        .map(lenient_header_name)
        .filter(|name| !HOP_BY_HOP.contains(&name.as_ref()))
        .map(std::borrow::Cow::into_owned)
        .collect()
}

/// The options of every `Connection` header, trimmed, empty ones skipped
/// (header names, `close`, `keep-alive`). A value with a byte outside
/// visible ASCII is skipped whole.
pub(crate) fn connection_options(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(list_items)
        .filter(|t| !t.is_empty())
}

/// The items of a comma-separated header value (RFC 9110 §5.6.1), each
/// trimmed of ASCII whitespace, empty ones included.
///
/// Split at the comma's byte: `str::split(',')` sets up a char search for
/// each value, which made reading an answer's `Connection: keep-alive`
/// about 450 instructions in callgrind. For a value `to_str` accepted
/// (visible ASCII, spaces and tabs), trimming ASCII whitespace is what
/// `str::trim` does.
pub(crate) fn list_items(value: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(value);
    std::iter::from_fn(move || {
        let text = rest?;
        let (item, after) = match text.bytes().position(|b| b == b',') {
            // The comma is ASCII: both sides are on char boundaries.
            Some(comma) => (text.get(..comma)?, text.get(comma + 1..)),
            None => (text, None),
        };
        rest = after;
        Some(item.trim_ascii())
    })
}

/// Whether a `Connection` header lists `option`.
pub(crate) fn connection_has(headers: &HeaderMap, option: &str) -> bool {
    connection_options(headers).any(|o| o.eq_ignore_ascii_case(option))
}

/// The lines of a head that decide how its message is read, noted by the
/// HTTP/1.1 parsers (the client's requests, the downstream's answers) as
/// they file each line: the map is searched for one only when it is there
/// (a lookup is ~180 instructions, and most heads have few of them), and
/// what a `Connection` line says is read as it is noted, so persistence
/// needs no lookup at all (it was ~340 instructions an answer, for the
/// `Connection: keep-alive` most downstreams send).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct NotedLines {
    pub(crate) expect: bool,
    pub(crate) transfer_encoding: bool,
    pub(crate) content_length: bool,
    /// A `Connection` line lists `close`.
    close: bool,
    /// A `Connection` line lists `keep-alive`.
    keep_alive: bool,
}

impl NotedLines {
    /// Notes a line named `name` with `value` as it is filed. True for a
    /// `Connection` line that is just `keep-alive` or just `close`: all it
    /// says is about this hop, and it is noted now.
    // Inlined into both parsers' loops: out of line, a call for each
    // line cost ~40 instructions (callgrind), more than the comparisons.
    #[inline(always)]
    pub(crate) fn note(&mut self, name: &HeaderName, value: &[u8]) -> bool {
        self.expect |= name == header::EXPECT;
        self.transfer_encoding |= name == header::TRANSFER_ENCODING;
        self.content_length |= name == header::CONTENT_LENGTH;
        name == header::CONNECTION && self.read_connection(value)
    }

    /// What a `Connection` line says about persistence; true when the line
    /// is just one option (see `note`).
    fn read_connection(&mut self, value: &[u8]) -> bool {
        // What nearly every line says, compared whole: splitting a list
        // costs more than the rest of noting a head.
        if value.eq_ignore_ascii_case(b"keep-alive") {
            self.keep_alive = true;
            return true;
        }
        if value.eq_ignore_ascii_case(b"close") {
            self.close = true;
            return true;
        }
        // A list, read as `connection_options` reads the filed line (a
        // value `to_str` refuses says nothing); rare enough for the copy
        // `HeaderValue::from_bytes` makes.
        if let Ok(line) = HeaderValue::from_bytes(value) {
            for option in line.to_str().into_iter().flat_map(list_items) {
                self.close |= option.eq_ignore_ascii_case("close");
                self.keep_alive |= option.eq_ignore_ascii_case("keep-alive");
            }
        }
        false
    }

    /// Whether the message lets its connection carry another (RFC 9112
    /// §9.3): HTTP/1.1 unless it says `close`, HTTP/1.0 only when it says
    /// `keep-alive` (and not `close`). The same rule for the client's
    /// requests and the downstream's answers.
    pub(crate) fn persistent(&self, version: Version) -> bool {
        !self.close && (version != Version::HTTP_10 || self.keep_alive)
    }
}

fn is_hop_by_hop(name: &HeaderName, connection: &[String]) -> bool {
    is_hop_by_hop_name(&lenient_name(name), connection)
}

/// [`is_hop_by_hop`] for a name already as a lenient server reads it.
fn is_hop_by_hop_name(lenient: &str, connection: &[String]) -> bool {
    HOP_BY_HOP.contains(&lenient) || connection.iter().any(|c| c == lenient)
}

/// What the proxy adds about the client connection.
pub(crate) struct Forwarding<'a> {
    /// The TCP peer (a load balancer, or the client itself).
    pub peer: Option<IpAddr>,
    /// Peers whose `X-Forwarded-For` and `Via` are kept and appended to.
    pub trusted_proxies: &'a TrustedProxies,
    /// The proxy's public host, sent as `X-Forwarded-Host`.
    pub public_host: &'a HeaderValue,
    /// The proxy's public scheme, sent as `X-Forwarded-Proto`.
    pub public_proto: &'a HeaderValue,
}

impl Forwarding<'_> {
    fn peer_is_trusted(&self) -> bool {
        self.peer.is_some_and(|p| self.trusted_proxies.contains(p))
    }
}

/// The header lines of a request to the downstream, in the order they are
/// written, each name once except a client header the client repeated.
/// A list, not a map: nothing is looked up in it, and building a map (the
/// client's with lines removed, the policy's and the proxy's inserted,
/// `Host` and `Content-Length` set) hashed every line and regrew the table
/// once a request: 4,500 instructions a request in callgrind.
pub(crate) type HeaderLines = Vec<(HeaderName, HeaderValue)>;

/// The client's header lines as they are: for a request made as a map.
pub(crate) fn lines_of(headers: HeaderMap) -> HeaderLines {
    crossing(headers, |_| false, 0)
}

// The names of the lines the proxy writes about the client, after the
// policy's (and `client_address::X_FORWARDED_FOR`). Made at compile time:
// `HeaderName::from_static` called at run time checks the name again on
// every request.
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Whether the proxy writes a line of this name itself: a policy's line
/// of the name is left out, so each is written once and the proxy's
/// stands. `header_rules` reserves every one of them, so a decision never
/// holds one; the forwarder keeps the rule for any list.
fn is_proxys_own(name: &HeaderName) -> bool {
    *name == header::VIA
        || *name == header::COOKIE
        || *name == X_FORWARDED_FOR
        || *name == X_FORWARDED_HOST
        || *name == X_FORWARDED_PROTO
}

/// The client's lines that are not `refused`, in their order, with room
/// for `more`.
fn crossing(headers: HeaderMap, refused: impl Fn(&HeaderName) -> bool, more: usize) -> HeaderLines {
    let mut lines: HeaderLines = Vec::with_capacity(headers.len() + more);
    let mut crossing = false;
    for (name, value) in headers {
        // A map yields a name with its first value only; the next values
        // of that name follow it (and cross if the first did).
        match name {
            Some(name) => {
                crossing = !refused(&name);
                if crossing {
                    lines.push((name, value));
                }
            }
            None if crossing => {
                if let Some((name, _)) = lines.last() {
                    lines.push((name.clone(), value));
                }
            }
            None => {}
        }
    }
    lines
}

/// The headers the downstream receives: the client's that may cross, in
/// their order, then the policy's and the proxy's own, each set once.
pub(crate) fn downstream_request_headers(
    headers: HeaderMap,
    is_identity_header: impl Fn(&HeaderName) -> bool,
    policy_headers: &[(HeaderName, HeaderValue)],
    forwarding: &Forwarding<'_>,
    pass_cookies: &[String],
) -> HeaderLines {
    // Read from the client's headers before they are moved.
    let connection = connection_named(&headers);
    let cookies = passed_cookies(&headers, pass_cookies);
    let trusted = forwarding.peer_is_trusted();
    let forwarded_for = forwarding.peer.and_then(|peer| {
        let peer = peer.to_canonical();
        if trusted {
            HeaderValue::from_str(&appended(&headers, &X_FORWARDED_FOR, &peer.to_string())).ok()
        } else {
            address_value(peer)
        }
    });
    let via = if trusted {
        HeaderValue::from_str(&appended(&headers, &header::VIA, VIA)).ok()
    } else {
        Some(HeaderValue::from_static(VIA))
    };
    let refused = |name: &HeaderName| {
        let n = name.as_str();
        // A `HeaderName` is lowercase, so without `_` it is already as
        // a lenient server reads it: the checks below compare it as it
        // is instead of normalising it once each.
        has_underscore(n)
            || NEVER_CROSSING.contains(n)
            || has_forwarding_prefix(n)
            || connection.iter().any(|c| c == n)
            || is_identity_header(name)
            // Set below: the client's line would be a second one.
            || policy_headers.iter().any(|(policy, _)| policy == name)
    };
    let mut lines = crossing(headers, refused, policy_headers.len() + 5);
    if let Some(cookies) = cookies {
        lines.push((header::COOKIE, cookies));
    }
    let policys_from = lines.len();
    for (name, value) in policy_headers {
        if is_proxys_own(name) {
            continue;
        }
        // A name listed twice is written once, with its last value, as a
        // map's insert would: decisions list each name once
        // (`header_rules`), and the forwarder keeps it so for any list.
        match lines[policys_from..].iter_mut().find(|(n, _)| n == name) {
            Some(line) => line.1 = value.clone(),
            None => lines.push((name.clone(), value.clone())),
        }
    }
    // The proxy's own names are distinct constants: pushed as they are.
    if let Some(chain) = forwarded_for {
        lines.push((X_FORWARDED_FOR, chain));
    }
    if let Some(via) = via {
        lines.push((header::VIA, via));
    }
    lines.push((X_FORWARDED_HOST, forwarding.public_host.clone()));
    lines.push((X_FORWARDED_PROTO, forwarding.public_proto.clone()));
    lines
}

thread_local! {
    /// The last address [`address_value`] wrote on this thread, and its
    /// value: a connection's requests all come from one peer (behind a
    /// load balancer, nearly every connection does), so the value is
    /// shared (a reference count) rather than allocated and written again
    /// for each request.
    static LAST_ADDRESS: Cell<Option<(IpAddr, HeaderValue)>> = const { Cell::new(None) };
}

/// An address as a header value.
fn address_value(address: IpAddr) -> Option<HeaderValue> {
    LAST_ADDRESS.with(|last| {
        let cached = last.take();
        let value = match cached {
            Some((at, value)) if at == address => value,
            _ => written_address(address)?,
        };
        last.set(Some((address, value.clone())));
        Some(value)
    })
}

/// An address written as a header value. IPv4, the common case, is
/// written digit by digit: `to_string` and a copy into the value took
/// 1,300 instructions a request (callgrind), a tenth of all the header
/// rewriting.
fn written_address(address: IpAddr) -> Option<HeaderValue> {
    let IpAddr::V4(v4) = address else {
        return HeaderValue::from_str(&address.to_string()).ok();
    };
    let mut text = [0u8; 15];
    let mut len = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text[len] = b'.';
            len += 1;
        }
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(octet).as_bytes();
        text[len..len + digits.len()].copy_from_slice(digits);
        len += digits.len();
    }
    HeaderValue::from_bytes(&text[..len]).ok()
}

/// The values of a list header (all its lines), with `last` appended.
fn appended(headers: &HeaderMap, name: &HeaderName, last: &str) -> String {
    let mut items: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    items.push(last);
    items.join(", ")
}

/// The client's cookies the operator lets through (`downstream.pass_cookies`),
/// as one `Cookie` header; the proxy's own never pass.
fn passed_cookies(incoming: &HeaderMap, pass: &[String]) -> Option<HeaderValue> {
    if pass.is_empty() {
        return None;
    }
    let kept: Vec<&str> = incoming
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| {
            let name = pair.split_once('=').map_or(*pair, |(n, _)| n).trim();
            !pair.is_empty() && pass.iter().any(|p| p == name) && !is_own_cookie(name)
        })
        .collect();
    if kept.is_empty() {
        None
    } else {
        HeaderValue::from_str(&kept.join("; ")).ok()
    }
}

/// Response headers that speak for the proxy's origin rather than the
/// downstream's answer: CORS is the proxy's decision, and a downstream must
/// not wipe the origin's storage.
fn is_origin_wide(name: &HeaderName) -> bool {
    let n = name.as_str();
    n.starts_with("access-control-") || n == "clear-site-data" || n == "set-cookie2"
}

/// Whether a downstream `Set-Cookie` may reach the client: only for a cookie
/// the operator passes, and never one named like the proxy's own.
fn may_set_cookie(value: &HeaderValue, pass: &[String]) -> bool {
    let Ok(text) = value.to_str() else {
        return false;
    };
    let pair = text.split(';').next().unwrap_or_default();
    let Some((name, _)) = pair.split_once('=') else {
        return false;
    };
    let name = name.trim();
    pass.iter().any(|p| p == name) && !is_own_cookie(name)
}

/// The downstream's response headers, minus hop-by-hop ones, minus those that
/// would act on the proxy's origin; removed in place.
pub(crate) fn client_response_headers(
    mut headers: HeaderMap,
    pass_cookies: &[String],
) -> HeaderMap {
    let connection = connection_named(&headers);
    // On the stack: nearly every answer refuses one or two names (its
    // `Connection`, `Keep-Alive`), and a `Vec` was an allocation an answer.
    let refused: smallvec::SmallVec<[HeaderName; 4]> = headers
        .keys()
        .filter(|name| is_hop_by_hop(name, &connection) || is_origin_wide(name))
        .cloned()
        .collect();
    for name in &refused {
        headers.remove(name);
    }
    if let header::Entry::Occupied(cookies) = headers.entry(header::SET_COOKIE) {
        let (_, values) = cookies.remove_entry_mult();
        let kept: Vec<HeaderValue> = values
            .filter(|value| may_set_cookie(value, pass_cookies))
            .collect();
        for value in kept {
            headers.append(header::SET_COOKIE, value);
        }
    }
    headers
}

#[cfg(test)]
mod tests;
