//! Ports for servers a test starts itself, chosen before the server binds.
//!
//! A port found free by binding port 0 and letting go of it is in the
//! range the kernel hands out for port 0, so any socket another test binds
//! meanwhile (a stub, a provider, a client's connection) may be given the
//! same port before the server binds it: `Address already in use`, now and
//! then. These ports come from just below that range instead, where the
//! kernel never hands any out by itself; each is checked free when given,
//! and a process walks the range from a start of its own, so test processes
//! running side by side (nextest) do not ask for the same ones.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// How many ports below the kernel's own range are used.
const SPAN: u32 = 10_000;

/// A port no socket listens on now, outside the kernel's range for port 0.
pub fn free_port() -> u16 {
    // How many ports this process has asked about; it starts at a place
    // of its own in the span.
    static ASKED: AtomicU32 = AtomicU32::new(0);
    let low = u32::from(ephemeral_low()).max(SPAN + 1024);
    let first = low - SPAN;
    let start = std::process::id().wrapping_mul(2_654_435_761);
    for _ in 0..SPAN {
        let offset = start.wrapping_add(ASKED.fetch_add(1, Ordering::Relaxed)) % SPAN;
        let Ok(port) = u16::try_from(first + offset) else {
            continue;
        };
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {first}..{low}");
}

/// The first port the kernel hands out for port 0 (Linux's
/// `ip_local_port_range`; its default elsewhere).
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}
