use super::*;
use axum::http::HeaderValue;

fn with(values: &[&[u8]]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for v in values {
        h.append(MCP_SESSION_ID, HeaderValue::from_bytes(v).unwrap());
    }
    h
}

#[test]
fn a_session_id_is_exactly_one_visible_ascii_value() {
    assert_eq!(session_id(&HeaderMap::new()), Ok(None));
    assert_eq!(session_id(&with(&[b"a-1_B~!"])), Ok(Some("a-1_B~!")));
    assert_eq!(
        session_id(&with(&[b"a", b"b"])),
        Err(SessionIdError::Several)
    );
    assert_eq!(
        session_id(&with(&[b"a", b"a"])),
        Err(SessionIdError::Several)
    );
    for bad in [&b""[..], b"a b", b"a\tb", b"caf\xc3\xa9", b"\x80"] {
        assert_eq!(
            session_id(&with(&[bad])),
            Err(SessionIdError::NotVisibleAscii),
            "{bad:?}"
        );
    }
    assert!(matches!(
        presented_session_id(&with(&[b"a", b"b"])),
        Err(ProxyError::BadRequest(_))
    ));
    assert!(matches!(
        created_session_id(&with(&[b"a b"])),
        Err(ProxyError::BadDownstreamAnswer(_))
    ));
}

// ------------------------------------------------- CheckSessionOwnership

mod ownership {
    use super::*;
    use crate::session::Session;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::body::Body;
    use axum::http::Response;
    use tower::{Layer, ServiceExt};

    use crate::session::{Memo, UpstreamTokens};
    use crate::store::sqlite::SqliteStore;

    /// Bindings over a fresh store: alice owns `mcp-alice` and the legacy
    /// session `sid-alice`; `sid-bare` has no endpoint and `sid-bad` an
    /// endpoint that is no URI.
    async fn bindings(dir: &tempfile::TempDir) -> Arc<SessionBindings> {
        let store = SqliteStore::open(&dir.path().join("s.db")).unwrap();
        let bindings = SessionBindings::new(Records::new(Arc::new(store)), "default");
        let alice = |endpoint: Option<&str>| Binding {
            sub: "alice".into(),
            endpoint: endpoint.map(str::to_string),
        };
        bindings
            .bind(SESSION_KIND, "mcp-alice", alice(None))
            .await
            .unwrap();
        for (sid, endpoint) in [
            (
                "sid-alice",
                Some("http://downstream.test/messages?session=7"),
            ),
            ("sid-bare", None),
            ("sid-bad", Some("http://bad host/")),
        ] {
            bindings
                .bind(LEGACY_KIND, sid, alice(endpoint))
                .await
                .unwrap();
        }
        Arc::new(bindings)
    }

    fn session(sub: &str) -> Arc<Session> {
        Arc::new(Session {
            grant_id: "g".into(),
            token_hash: "t".into(),
            client_id: "c".into(),
            sub: sub.into(),
            email: None,
            claims: Default::default(),
            upstream: UpstreamTokens::default(),
            resource: None,
            scope: None,
            expires_at: i64::MAX,
            client_name: None,
            memo: Memo::default(),
            confirmed: Default::default(),
        })
    }

    fn request(uri: &str, sub: Option<&str>, session_id: Option<&str>) -> Request<Body> {
        let mut request = Request::post(uri).body(Body::empty()).unwrap();
        if let Some(sub) = sub {
            request.extensions_mut().insert(session(sub));
        }
        if let Some(id) = session_id {
            request
                .headers_mut()
                .insert(MCP_SESSION_ID, HeaderValue::from_str(id).unwrap());
        }
        request
    }

    /// Runs one request through the check in front of a stub that counts
    /// its calls and answers with what the check found.
    async fn check(
        bindings: &Arc<SessionBindings>,
        route: Endpoint,
        request: Request<Body>,
    ) -> (Result<OwnedSession, ProxyError>, usize) {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let stub = tower::service_fn(move |request: Request<Body>| {
            counted.fetch_add(1, Ordering::SeqCst);
            let owned = request.extensions().get::<OwnedSession>().cloned();
            async move {
                let mut answer = Response::new(Body::empty());
                answer.extensions_mut().insert(owned);
                Ok::<_, ProxyError>(answer)
            }
        });
        let service = CheckSessionOwnership::layer(bindings.clone(), route).layer(stub);
        let found = service.oneshot(request).await.map(|answer| {
            answer
                .extensions()
                .get::<Option<OwnedSession>>()
                .cloned()
                .flatten()
                .expect("the check puts what it found in the extensions")
        });
        (found, calls.load(Ordering::SeqCst))
    }

    #[tokio::test]
    async fn the_owner_of_an_mcp_session_reaches_the_forwarder() {
        let dir = tempfile::tempdir().unwrap();
        let bindings = bindings(&dir).await;
        let (found, calls) = check(
            &bindings,
            Endpoint::Mcp,
            request("/mcp", Some("alice"), Some("mcp-alice")),
        )
        .await;
        assert_eq!(found.unwrap(), OwnedSession::Mcp(Some("mcp-alice".into())));
        assert_eq!(calls, 1);
        // No session id yet (initialize): nothing to own.
        let (found, calls) =
            check(&bindings, Endpoint::Mcp, request("/mcp", Some("bob"), None)).await;
        assert_eq!(found.unwrap(), OwnedSession::Mcp(None));
        assert_eq!(calls, 1);
    }

    #[tokio::test]
    async fn another_users_mcp_session_is_not_found_and_never_forwarded() {
        let dir = tempfile::tempdir().unwrap();
        let bindings = bindings(&dir).await;
        for (sub, id) in [("bob", "mcp-alice"), ("alice", "mcp-unknown")] {
            let (found, calls) = check(
                &bindings,
                Endpoint::Mcp,
                request("/mcp", Some(sub), Some(id)),
            )
            .await;
            assert!(
                matches!(found, Err(ProxyError::SessionNotFound)),
                "{sub} {id}: {found:?}"
            );
            assert_eq!(calls, 0, "{sub} {id}");
        }
    }

    #[tokio::test]
    async fn a_malformed_session_id_or_no_caller_is_refused_on_every_route() {
        let dir = tempfile::tempdir().unwrap();
        let bindings = bindings(&dir).await;
        for (route, uri) in [
            (Endpoint::Mcp, "/mcp"),
            (Endpoint::SseStream, "/sse"),
            (Endpoint::SseMessage, "/sse/message?sid=sid-alice"),
        ] {
            let (found, calls) =
                check(&bindings, route, request(uri, Some("alice"), Some("a b"))).await;
            assert!(
                matches!(found, Err(ProxyError::BadRequest(_))),
                "{uri}: {found:?}"
            );
            assert_eq!(calls, 0);
            let (found, calls) = check(&bindings, route, request(uri, None, None)).await;
            assert!(
                matches!(found, Err(ProxyError::Forbidden(_))),
                "{uri}: {found:?}"
            );
            assert_eq!(calls, 0);
        }
    }

    #[tokio::test]
    async fn a_legacy_stream_has_no_session_to_own_yet() {
        let dir = tempfile::tempdir().unwrap();
        let bindings = bindings(&dir).await;
        let (found, calls) = check(
            &bindings,
            Endpoint::SseStream,
            request("/sse", Some("bob"), None),
        )
        .await;
        assert_eq!(found.unwrap(), OwnedSession::NewLegacyStream);
        assert_eq!(calls, 1);
    }

    #[tokio::test]
    async fn the_legacy_message_endpoint_takes_one_sid_of_the_caller() {
        let dir = tempfile::tempdir().unwrap();
        let bindings = bindings(&dir).await;
        let (found, calls) = check(
            &bindings,
            Endpoint::SseMessage,
            request("/sse/message?sid=sid-alice", Some("alice"), None),
        )
        .await;
        assert_eq!(
            found.unwrap(),
            OwnedSession::LegacyMessage(
                "http://downstream.test/messages?session=7".parse().unwrap()
            )
        );
        assert_eq!(calls, 1);
        for (uri, sub, refused) in [
            (
                "/sse/message",
                "alice",
                "bad request: the message endpoint needs its sid",
            ),
            (
                "/sse/message?other=1",
                "alice",
                "bad request: the message endpoint needs its sid",
            ),
            (
                "/sse/message?sid=sid-alice&sid=sid-alice",
                "alice",
                "bad request: the message endpoint takes one sid",
            ),
            ("/sse/message?sid=sid-alice", "bob", "session not found"),
            ("/sse/message?sid=sid-unknown", "alice", "session not found"),
            ("/sse/message?sid=sid-bare", "alice", "session not found"),
            ("/sse/message?sid=sid-bad", "alice", "session not found"),
        ] {
            let (found, calls) = check(
                &bindings,
                Endpoint::SseMessage,
                request(uri, Some(sub), None),
            )
            .await;
            assert_eq!(
                found.map_err(|e| e.to_string()),
                Err(refused.to_string()),
                "{uri} as {sub}"
            );
            assert_eq!(calls, 0, "{uri} as {sub}");
        }
    }
}
