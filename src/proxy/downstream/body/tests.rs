//! Decoding the answer's body from what the connection has read.

use bytes::BytesMut;
use proptest::prelude::*;

use super::{chunk_size, Chunk, Decoder, Gathered};
use crate::proxy::downstream::http1::{ExchangeError, Framing};

/// The body's data, `Some(trailers)` once it ended, and the bytes after it.
type Decoded = (Vec<u8>, Option<Option<axum::http::HeaderMap>>, Vec<u8>);

/// Feeds `wire` to a decoder in pieces of `step` bytes: the body's data,
/// its trailers once it ended, and what is left in the buffer after it.
fn decode_in_steps(framing: Framing, wire: &[u8], step: usize) -> Result<Decoded, ExchangeError> {
    let mut decoder = Decoder::new(framing);
    let mut buf = BytesMut::new();
    let mut data = Vec::new();
    let mut ended = None;
    for piece in wire.chunks(step.max(1)) {
        buf.extend_from_slice(piece);
        let mut gathered = Gathered::default();
        let result = decoder.decode(&mut buf, &mut gathered);
        data.extend_from_slice(&gathered.into_bytes());
        if let Some(trailers) = result? {
            ended = Some(trailers);
            break;
        }
    }
    Ok((data, ended, buf.to_vec()))
}

#[test]
fn a_chunked_body_is_its_chunks_data_with_extensions_and_trailers() {
    let wire =
        b"5;name=value\r\nhello\r\n1 ; x\r\n \r\n6\r\nworld!\r\n0\r\nx-checksum: abc\r\n\r\nNEXT";
    for step in 1..wire.len() {
        let (data, ended, left) = decode_in_steps(Framing::Chunked, wire, step).unwrap();
        assert_eq!(data, b"hello world!", "step {step}");
        let trailers = ended.expect("ended").expect("trailers");
        assert_eq!(trailers["x-checksum"], "abc");
        assert!(b"NEXT".starts_with(&left), "step {step}: {left:?}");
    }
}

#[test]
fn a_chunked_body_without_trailers_ends_at_the_empty_line() {
    let (data, ended, left) =
        decode_in_steps(Framing::Chunked, b"3\r\nabc\r\n0\r\n\r\n", 64).unwrap();
    assert_eq!(data, b"abc");
    assert_eq!(ended, Some(None));
    assert!(left.is_empty());
}

#[test]
fn malformed_chunking_fails_the_body() {
    for wire in [
        &b"\r\nabc\r\n"[..],         // no size
        b"3 \r\nabc\r\n",            // whitespace without an extension
        b"g\r\n",                    // not hex
        b"+3\r\nabc\r\n",            // sign
        b"3\r\nabcX\r\n",            // no CRLF after the data
        b"3\r\nabc\n0\r\n\r\n",      // LF alone after the data
        b"3\nabc\r\n",               // LF alone after the size
        b"3;a\0b\r\nabc\r\n",        // control character in an extension
        b"10000000000000000\r\n",    // 17 digits
        b"0\r\nbad trailer\r\n\r\n", // malformed trailer
    ] {
        let failed = decode_in_steps(Framing::Chunked, wire, wire.len());
        assert!(
            matches!(failed, Err(ExchangeError::Malformed(_))),
            "{:?}: {failed:?}",
            String::from_utf8_lossy(wire)
        );
    }
    let endless = vec![b'1'; super::MAX_CHUNK_LINE + 2];
    assert!(decode_in_steps(Framing::Chunked, &endless, 100).is_err());
}

#[test]
fn a_length_ends_the_body_and_leaves_what_follows() {
    let wire = b"helloHTTP/1.1";
    for step in [2, wire.len()] {
        let (data, ended, left) = decode_in_steps(Framing::Length(5), wire, step).unwrap();
        assert_eq!(data, b"hello");
        assert_eq!(ended, Some(None));
        assert!(b"HTTP/1.1".starts_with(&left), "{left:?}");
    }
    let (_, _, left) = decode_in_steps(Framing::Length(5), wire, wire.len()).unwrap();
    assert_eq!(left, b"HTTP/1.1");
    for empty in [Framing::Empty, Framing::Length(0)] {
        let mut decoder = Decoder::new(empty);
        assert_eq!(decoder, Decoder::Done);
        let mut buf = BytesMut::from(&b"HTTP/1.1"[..]);
        let ended = decoder.decode(&mut buf, &mut Gathered::default()).unwrap();
        assert_eq!(ended, Some(None));
        assert_eq!(buf.len(), 8, "nothing of the next answer is taken");
    }
}

#[test]
fn a_body_until_the_close_takes_everything() {
    let (data, ended, _) = decode_in_steps(Framing::UntilClose, b"all of it", 3).unwrap();
    assert_eq!(data, b"all of it");
    assert_eq!(ended, None);
}

#[test]
fn chunk_size_lines() {
    assert_eq!(chunk_size(b"").unwrap(), None);
    assert_eq!(chunk_size(b"1f").unwrap(), None);
    assert_eq!(chunk_size(b"1f\r").unwrap(), None);
    assert_eq!(chunk_size(b"1f ").unwrap(), None);
    assert_eq!(chunk_size(b"1f\r\n").unwrap(), Some((4, 31)));
    assert_eq!(
        chunk_size(b"FFFFFFFFFFFFFFFF\r\n").unwrap(),
        Some((18, u64::MAX))
    );
    assert_eq!(chunk_size(b"a ;x=\"y z\"\r\n").unwrap(), Some((12, 10)));
    assert!(chunk_size(b"\r").is_err());
    assert!(chunk_size(b"1f x").is_err());
}

#[test]
fn the_decoder_state_names_where_it_is() {
    let mut decoder = Decoder::new(Framing::Chunked);
    let mut buf = BytesMut::from(&b"5\r\nhel"[..]);
    let mut gathered = Gathered::default();
    assert!(decoder.decode(&mut buf, &mut gathered).unwrap().is_none());
    assert_eq!(decoder, Decoder::Chunked(Chunk::Data(2)));
    assert_eq!(gathered.into_bytes(), "hel");
}

fn chunked(pieces: &[Vec<u8>]) -> Vec<u8> {
    let mut wire = Vec::new();
    for piece in pieces.iter().filter(|p| !p.is_empty()) {
        wire.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        wire.extend_from_slice(piece);
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"0\r\n\r\n");
    wire
}

proptest! {
    /// However the downstream's writes are split by the network, the
    /// client gets exactly the data of the chunks, and the decoder stops
    /// at the body's end.
    #[test]
    fn chunked_bodies_decode_the_same_whatever_the_reads(
        pieces in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..12),
        step in 1usize..700,
    ) {
        let wire = chunked(&pieces);
        let mut with_next = wire.clone();
        with_next.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        let (data, ended, _) = decode_in_steps(Framing::Chunked, &with_next, step).unwrap();
        prop_assert_eq!(data, pieces.concat());
        prop_assert_eq!(ended, Some(None));
    }
}

#[tokio::test]
async fn a_stream_waiting_for_its_next_event_holds_no_read_buffer() {
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut head = [0u8; 1024];
        let _ = stream.read(&mut head).await;
        let answer = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\nb\r\ndata: one\n\n\r\n";
        stream.write_all(answer.as_bytes()).await.unwrap();
        let _ = done_rx.await;
    });
    let client = crate::proxy::downstream::DownstreamClient::new(std::time::Duration::from_secs(2));
    let request = axum::http::Request::get(url)
        .body(axum::body::Body::empty())
        .unwrap();
    let mut body = client
        .request(request, std::time::Duration::from_secs(5))
        .await
        .unwrap()
        .into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "data: one\n\n");
    let next = tokio::time::timeout(std::time::Duration::from_millis(50), body.frame()).await;
    assert!(next.is_err(), "no second event yet");
    let (_, pooled) = body.connection.as_ref().expect("still connected");
    assert_eq!(
        pooled.conn.buffer_capacity(),
        0,
        "the idle stream keeps no buffer"
    );
    let _ = done_tx.send(());
}
