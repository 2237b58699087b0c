use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::*;

fn head_of(wire: &[u8]) -> Result<ResponseHead, String> {
    let end = find_head_end(wire, 0).ok_or("no whole head")?;
    parse_response_head(Bytes::copy_from_slice(&wire[..end]), &wire[end..])
}

#[test]
fn ambiguous_responses_are_refused() {
    for bad in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3, 4\r\n\r\nabcd",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"garbage\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
    ] {
        assert!(head_of(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
    }
    for good in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc"[..],
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 200\r\n\r\n",
    ] {
        assert!(head_of(good).is_ok(), "{:?}", String::from_utf8_lossy(good));
    }
}

#[test]
fn heads_give_framing_case_reason_and_keep_alive() {
    let h = head_of(
        b"HTTP/1.1 201 Made\r\nContent-Length: 3\r\nSet-Cookie: a=1\r\nset-cookie: b=2\r\n\r\n",
    )
    .unwrap();
    assert_eq!(h.parts.status, StatusCode::CREATED);
    assert_eq!(h.framing, Framing::Length(3));
    assert!(h.keep_alive);
    assert_eq!(h.parts.headers.get_all("set-cookie").iter().count(), 2);
    let reason = h
        .parts
        .extensions
        .get::<hyper::ext::ReasonPhrase>()
        .unwrap();
    assert_eq!(reason.as_bytes(), b"Made");
    let case = h.parts.extensions.get::<OriginalCase>().unwrap();
    let names: Vec<_> = case.0.get_all("set-cookie").iter().collect();
    assert_eq!(names, [&b"Set-Cookie"[..], b"set-cookie"]);

    let h = head_of(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n").unwrap();
    assert!(
        h.parts.extensions.get::<OriginalCase>().is_none(),
        "Title-Case needs no note"
    );
    assert!(h
        .parts
        .extensions
        .get::<hyper::ext::ReasonPhrase>()
        .is_none());
    assert_eq!(h.framing, Framing::UntilClose);

    let h = head_of(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n").unwrap();
    assert!(!h.keep_alive);
    let h = head_of(
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
    )
    .unwrap();
    assert!(!h.keep_alive);
    assert_eq!(h.framing, Framing::ChunkSize);
    // uWSGI echoes an h2 client's SERVER_PROTOCOL
    let h = head_of(b"HTTP/2.0 204\r\n\r\n").unwrap();
    assert_eq!(h.parts.status, StatusCode::NO_CONTENT);
}

/// An upstream over a pipe: what Portico sent, and the answer written back.
async fn exchange(
    method: Method,
    body: HttpBody,
    answer: &'static [u8],
) -> (Result<(ResponseHead, Vec<u8>), Error>, Vec<u8>, Conn) {
    let mut req = http::Request::new(());
    *req.method_mut() = method;
    *req.uri_mut() = "/p?q=1".parse().unwrap();
    req.headers_mut()
        .insert("host", HeaderValue::from_static("up"));
    let (parts, ()) = req.into_parts();
    exchange_with(&parts, &Forwarded::default(), body, answer).await
}

/// [`exchange`] of a given head, with the fields a proxy adds.
async fn exchange_with(
    parts: &http::request::Parts,
    added: &Forwarded,
    body: HttpBody,
    answer: &'static [u8],
) -> (Result<(ResponseHead, Vec<u8>), Error>, Vec<u8>, Conn) {
    let (ours, mut theirs): (DuplexStream, DuplexStream) = tokio::io::duplex(64 * 1024);
    let mut conn = Conn::new(Box::new(ours));
    let server = tokio::spawn(async move {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        // read the request head (and any body sent with it), then answer
        while find_head_end(&got, 0).is_none() {
            let n = theirs.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before the head");
            got.extend_from_slice(&buf[..n]);
        }
        theirs.write_all(answer).await.unwrap();
        // then take whatever else comes, until Portico is done
        while let Ok(Ok(n)) =
            tokio::time::timeout(std::time::Duration::from_millis(200), theirs.read(&mut buf)).await
        {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        got
    });
    let result = async {
        let mut head = conn.send(parts, added, body).await?;
        let mut data = Vec::new();
        if let Some(whole) = conn.take_whole(&mut head.framing) {
            data.extend_from_slice(&whole);
        } else {
            while let Some(piece) = poll_fn(|cx| conn.poll_body(&mut head.framing, cx)).await {
                data.extend_from_slice(&piece?);
            }
        }
        Ok((head, data))
    }
    .await;
    let sent = server.await.unwrap();
    (result, sent, conn)
}

#[tokio::test]
async fn a_get_and_its_chunked_answer() {
    let (r, sent, conn) = exchange(
        Method::GET,
        crate::body::empty(),
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
    )
    .await;
    let (head, data) = r.unwrap();
    assert_eq!(head.parts.status, StatusCode::OK);
    assert_eq!(data, b"hello");
    assert!(head.keep_alive && conn.is_clean());
    assert_eq!(sent, b"GET /p?q=1 HTTP/1.1\r\nhost: up\r\n\r\n");
}

#[tokio::test]
async fn bodies_go_with_their_length_or_chunked() {
    let (r, sent, _) = exchange(
        Method::POST,
        crate::body::full("abc"),
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    )
    .await;
    assert_eq!(r.unwrap().1, b"ok");
    assert_eq!(
        sent,
        b"POST /p?q=1 HTTP/1.1\r\nhost: up\r\ncontent-length: 3\r\n\r\nabc"
    );

    let stream = futures_util::stream::iter([Ok::<_, BoxError>(http_body::Frame::data(
        Bytes::from_static(b"xyz"),
    ))]);
    let unknown = http_body_util::StreamBody::new(stream).boxed();
    let (r, sent, _) = exchange(Method::PUT, unknown, b"HTTP/1.1 204 No Content\r\n\r\n").await;
    assert_eq!(r.unwrap().0.parts.status, StatusCode::NO_CONTENT);
    let sent = String::from_utf8(sent).unwrap();
    assert!(
        sent.ends_with("transfer-encoding: chunked\r\n\r\n3\r\nxyz\r\n0\r\n\r\n"),
        "{sent}"
    );

    let (r, sent, _) = exchange(
        Method::POST,
        crate::body::empty(),
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert!(r.is_ok());
    assert!(String::from_utf8(sent)
        .unwrap()
        .contains("content-length: 0\r\n"));
}

#[tokio::test]
async fn an_early_answer_wins_over_a_body_the_upstream_does_not_take() {
    // a body that never ends: the upstream answers 413 without reading it
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, BoxError>>(1);
    let _keep = tx.clone();
    tx.send(Ok(http_body::Frame::data(Bytes::from_static(b"part"))))
        .await
        .unwrap();
    let body = http_body_util::StreamBody::new(tokio_stream_of(rx)).boxed();
    let (r, _, _) = exchange(
        Method::POST,
        body,
        b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    let (head, _) = r.unwrap();
    assert_eq!(head.parts.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(!head.keep_alive);
}

fn tokio_stream_of<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + Sync {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
}

#[tokio::test]
async fn framing_faults_are_errors() {
    let (r, _, _) = exchange(
        Method::GET,
        crate::body::empty(),
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    assert!(matches!(r, Err(Error::Invalid(_))));
    let (r, _, _) = exchange(
        Method::GET,
        crate::body::empty(),
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
    )
    .await;
    assert!(matches!(r, Err(Error::Invalid(_))));
    // HEAD: no body whatever the length says
    let (r, _, conn) = exchange(
        Method::HEAD,
        crate::body::empty(),
        b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n",
    )
    .await;
    assert_eq!(r.unwrap().1, b"");
    assert!(conn.is_clean());
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Whatever an upstream sends, the head parser and the body decoder answer
        /// with a value or an error, never a panic, and never yield more body bytes
        /// than they were given.
        #[test]
        fn arbitrary_answers_never_panic(wire in proptest::collection::vec(any::<u8>(), 0..2048), cut in 0usize..2048) {
            let mut wire = wire;
            if let Some(end) = find_head_end(&wire, 0) {
                let rest = wire.split_off(end);
                if let Ok(head) = parse_response_head(Bytes::from(wire), &rest) {
                    let mut f = head.framing;
                    let cut = cut.min(rest.len());
                    let mut buf = BytesMut::from(&rest[..cut]);
                    let mut out = 0;
                    let mut fed = false;
                    for _ in 0..4096 {
                        match f.step(&mut buf, 1024) {
                            Ok(Step::Data(d)) => out += d.len(),
                            Ok(Step::NeedMore) if !fed => {
                                buf.extend_from_slice(&rest[cut..]);
                                fed = true;
                            }
                            Ok(_) | Err(_) => break,
                        }
                    }
                    prop_assert!(out <= rest.len());
                }
            }
        }

        /// Any chunking of any body, cut anywhere, decodes back to the body.
        #[test]
        fn chunked_bodies_round_trip(body in proptest::collection::vec(any::<u8>(), 0..4096),
                                     sizes in proptest::collection::vec(1usize..700, 1..20),
                                     cut in 0usize..8192) {
            let mut wire = Vec::new();
            let mut rest = &body[..];
            let mut i = 0;
            while !rest.is_empty() {
                let n = sizes[i % sizes.len()].min(rest.len());
                wire.extend_from_slice(format!("{n:x}\r\n").as_bytes());
                wire.extend_from_slice(&rest[..n]);
                wire.extend_from_slice(b"\r\n");
                rest = &rest[n..];
                i += 1;
            }
            wire.extend_from_slice(b"0\r\n\r\n");
            let cut = cut.min(wire.len());
            let mut f = Framing::ChunkSize;
            let mut buf = BytesMut::from(&wire[..cut]);
            let mut got = Vec::new();
            let mut fed = false;
            loop {
                match f.step(&mut buf, 1024).unwrap() {
                    Step::Data(d) => got.extend_from_slice(&d),
                    Step::End => break,
                    Step::NeedMore => {
                        prop_assert!(!fed, "ran out of input");
                        buf.extend_from_slice(&wire[cut..]);
                        fed = true;
                    }
                }
            }
            prop_assert_eq!(got, body);
        }
    }
}

#[tokio::test]
async fn added_fields_replace_the_clients_with_host_first_and_the_rest_last() {
    let mut req = http::Request::new(());
    *req.uri_mut() = "/".parse().unwrap();
    let h = req.headers_mut();
    h.insert("host", HeaderValue::from_static("client.example"));
    h.insert("x-forwarded-proto", HeaderValue::from_static("spoofed"));
    h.append("x-forwarded-proto", HeaderValue::from_static("twice"));
    h.insert("accept", HeaderValue::from_static("*/*"));
    let (parts, ()) = req.into_parts();
    let added = Forwarded {
        host: Some(HeaderValue::from_static("site.example")),
        x_forwarded_for: Some(HeaderValue::from_static("10.0.0.1")),
        x_forwarded_proto: Some(HeaderValue::from_static("https")),
    };
    let (r, sent, _) = exchange_with(
        &parts,
        &added,
        crate::body::empty(),
        b"HTTP/1.1 204 No Content\r\n\r\n",
    )
    .await;
    let (head, _) = r.unwrap();
    assert_eq!(head.parts.status, StatusCode::NO_CONTENT);
    assert_eq!(
        String::from_utf8(sent).unwrap(),
        "GET / HTTP/1.1\r\nhost: site.example\r\naccept: */*\r\n\
         x-forwarded-for: 10.0.0.1\r\nx-forwarded-proto: https\r\n\
         x-forwarded-host: site.example\r\n\r\n"
    );
    // the same fields in a map, for the heads not written here (h2, upgrades)
    let mut map = parts.headers.clone();
    added.insert_into(&mut map);
    assert_eq!(map["host"], "site.example");
    assert_eq!(map.get_all("x-forwarded-proto").iter().count(), 1);
    assert_eq!(map["x-forwarded-proto"], "https");
    assert_eq!(map["x-forwarded-for"], "10.0.0.1");
    assert_eq!(map["x-forwarded-host"], "site.example");
}
