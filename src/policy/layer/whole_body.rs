//! A request body read whole for the policy, up to a limit.
//!
//! A body that came with its head is there as one frame
//! (`body::take_ready`) and is taken as it is: `http_body_util`'s
//! `collect` would put it in a queue of buffers and take it out again (a
//! queue allocated and grown, and a boxed future for the collection: 900
//! instructions a request, callgrind). The rest of a body still arriving is
//! collected.

use axum::body::{Body, Bytes};
use bytes::BytesMut;
use http_body_util::{BodyExt, Limited};

use crate::body::take_ready;
use crate::error::{BodyTimeout, ProxyError};

/// The whole body, or the error the client is answered with: 413 past
/// `max` bytes, 408 past the body's deadline, 400 for a body that failed.
pub(super) async fn read_whole(mut body: Body, max: usize) -> Result<Bytes, ProxyError> {
    let (first, rest) = take_ready(&mut body).map_err(unreadable)?;
    if first.len() > max {
        return Err(ProxyError::PayloadTooLarge(max));
    }
    let Some(rest) = rest else {
        return Ok(first);
    };
    let rest = Limited::new(rest, max - first.len())
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                ProxyError::PayloadTooLarge(max)
            } else {
                unreadable(e)
            }
        })?
        .to_bytes();
    if rest.is_empty() {
        return Ok(first);
    }
    if first.is_empty() {
        return Ok(rest);
    }
    let mut whole = BytesMut::with_capacity(first.len() + rest.len());
    whole.extend_from_slice(&first);
    whole.extend_from_slice(&rest);
    Ok(whole.freeze())
}

fn unreadable(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> ProxyError {
    let error = error.into();
    if let Some(timeout) = BodyTimeout::in_chain(error.as_ref()) {
        ProxyError::BodyTimeout(timeout)
    } else {
        ProxyError::BadRequest(format!("the request body could not be read: {error}"))
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::time::Duration;

    use super::*;

    fn in_parts(parts: &[&'static str]) -> Body {
        let frames: Vec<Result<Bytes, Infallible>> = parts
            .iter()
            .map(|p| Ok(Bytes::from_static(p.as_bytes())))
            .collect();
        Body::from_stream(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn a_body_in_one_frame_is_that_frame() {
        let frame = Bytes::from_static(br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#);
        let whole = read_whole(Body::from(frame.clone()), 1024).await.unwrap();
        assert_eq!(whole, frame);
        // The same buffer, not a copy of it.
        assert_eq!(whole.as_ptr(), frame.as_ptr());
        assert_eq!(read_whole(Body::empty(), 1024).await.unwrap(), "");
    }

    #[tokio::test]
    async fn a_body_in_several_frames_is_all_of_them_in_order() {
        let whole = read_whole(in_parts(&["{\"a\":", "1,", "\"b\":2}"]), 1024)
            .await
            .unwrap();
        assert_eq!(whole, "{\"a\":1,\"b\":2}");
    }

    #[tokio::test]
    async fn a_body_still_arriving_is_waited_for() {
        let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(2);
        let body = Body::from_stream(tokio_stream_of(receiver));
        let reading = tokio::spawn(read_whole(body, 1024));
        tokio::time::sleep(Duration::from_millis(20)).await;
        sender.send(Ok(Bytes::from_static(b"[1,"))).await.unwrap();
        sender.send(Ok(Bytes::from_static(b"2]"))).await.unwrap();
        drop(sender);
        assert_eq!(reading.await.unwrap().unwrap(), "[1,2]");
    }

    #[tokio::test]
    async fn a_body_past_the_limit_is_413_however_it_arrives() {
        let limit = |r: Result<Bytes, ProxyError>| matches!(r, Err(ProxyError::PayloadTooLarge(8)));
        assert!(limit(read_whole(Body::from("123456789"), 8).await));
        assert!(limit(read_whole(in_parts(&["123456789"]), 8).await));
        assert!(limit(read_whole(in_parts(&["1234", "56789"]), 8).await));
        assert!(limit(
            read_whole(in_parts(&["12", "34", "56", "789"]), 8).await
        ));
        // At the limit is within it.
        assert_eq!(
            read_whole(in_parts(&["1234", "5678"]), 8).await.unwrap(),
            "12345678"
        );
        assert_eq!(
            read_whole(Body::from("12345678"), 8).await.unwrap(),
            "12345678"
        );
    }

    #[tokio::test]
    async fn a_body_that_fails_is_400_and_a_late_one_408() {
        let failing = |first: Option<&'static str>| {
            let mut frames: Vec<Result<Bytes, std::io::Error>> = Vec::new();
            if let Some(first) = first {
                frames.push(Ok(Bytes::from_static(first.as_bytes())));
            }
            frames.push(Err(std::io::Error::other("connection reset")));
            Body::from_stream(futures_util::stream::iter(frames))
        };
        for body in [failing(None), failing(Some("{\"a\":"))] {
            let refused = read_whole(body, 1024).await;
            assert!(
                matches!(&refused, Err(ProxyError::BadRequest(m)) if m.contains("connection reset")),
                "{refused:?}"
            );
        }
        let late = std::iter::once(Err::<Bytes, _>(BodyTimeout(Duration::from_secs(3))));
        let refused = read_whole(Body::from_stream(futures_util::stream::iter(late)), 1024).await;
        assert!(
            matches!(refused, Err(ProxyError::BodyTimeout(BodyTimeout(t))) if t == Duration::from_secs(3)),
            "{refused:?}"
        );
    }

    fn tokio_stream_of<T>(
        mut receiver: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> {
        futures_util::stream::poll_fn(move |cx| receiver.poll_recv(cx))
    }
}
