//! The client against a real HTTP/2 server that answers from a script: which calls are sent
//! again, how long it waits, that the deadline bounds the retries, and that a rotated token
//! file is used by the next call.

use contactier_client::pb::marketing_status::v1::{
    SetMarketingStatusRequest, set_marketing_status_request::Target,
};
use contactier_client::pb::ops::v1::{AdvanceTimeRequest, GetTimeRequest, GetTimeResponse};
use contactier_client::{Client, Endpoints, Error, RetryPolicy, StaticToken, TokenFile};
use http_body_util::BodyExt;
use prost::Message;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::Code;
use tonic::body::Body;

/// What the server does with the next call.
#[derive(Clone)]
enum Answer {
    Ok,
    Refuse(Code, Option<Duration>),
    Hang,
}

#[derive(Default)]
struct Script {
    answers: Mutex<VecDeque<Answer>>,
    /// Each call's path and authorization header, in order.
    seen: Mutex<Vec<(String, String)>>,
}

impl Script {
    fn then(&self, answers: impl IntoIterator<Item = Answer>) {
        self.answers.lock().unwrap().extend(answers);
    }

    fn calls(&self) -> Vec<(String, String)> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

fn ok_response() -> http::Response<Body> {
    let msg = GetTimeResponse { now: None, manual: true }.encode_to_vec();
    let mut frame = vec![0];
    frame.extend((msg.len() as u32).to_be_bytes());
    frame.extend(msg);
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().unwrap());
    let frames = futures::stream::iter([
        Ok::<_, Infallible>(http_body::Frame::data(bytes::Bytes::from(frame))),
        Ok(http_body::Frame::trailers(trailers)),
    ]);
    let mut r = http::Response::new(Body::new(http_body_util::StreamBody::new(frames)));
    r.headers_mut().insert("content-type", "application/grpc".parse().unwrap());
    r
}

/// Serves every path from the script on a loopback port.
async fn server(script: Arc<Script>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let script = script.clone();
            let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let script = script.clone();
                async move {
                    let auth = req.headers().get("authorization").map(|v| v.to_str().unwrap().to_owned());
                    script.seen.lock().unwrap().push((req.uri().path().to_owned(), auth.unwrap_or_default()));
                    let _ = req.into_body().collect().await;
                    let answer = script.answers.lock().unwrap().pop_front().unwrap_or(Answer::Ok);
                    Ok::<_, Infallible>(match answer {
                        Answer::Ok => ok_response(),
                        Answer::Refuse(code, after) => {
                            let details = tonic_types::ErrorDetails::with_retry_info(after);
                            let status = <tonic::Status as tonic_types::StatusExt>::with_error_details(
                                code, "scripted", details,
                            );
                            status.into_http()
                        }
                        Answer::Hang => {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            ok_response()
                        }
                    })
                }
            });
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    addr
}

fn client(addr: SocketAddr, policy: RetryPolicy, deadline: Duration) -> Client {
    let url = format!("http://{addr}");
    let endpoints = Endpoints {
        contacts: url.clone(),
        marketing_status: url.clone(),
        billing: url.clone(),
        notification: url,
    };
    Client::builder(endpoints)
        .token(StaticToken("t-1".into()))
        .retries(policy)
        .deadline(deadline)
        .build()
        .unwrap()
}

const QUICK: RetryPolicy = RetryPolicy {
    attempts: 4,
    first_wait: Duration::from_millis(20),
    longest_wait: Duration::from_millis(100),
};

fn set_status(request_id: &str) -> SetMarketingStatusRequest {
    SetMarketingStatusRequest {
        request_id: request_id.into(),
        target: Some(Target::ListId("list-1".into())),
        status: 1,
        ..Default::default()
    }
}

#[tokio::test]
async fn reads_and_keyed_writes_are_sent_again_after_unavailable_other_writes_are_not() {
    let script = Arc::new(Script::default());
    let c = client(server(script.clone()).await, QUICK, Duration::from_secs(10));

    script.then([Answer::Refuse(Code::Unavailable, None), Answer::Refuse(Code::Unavailable, None)]);
    c.clock().get_time(GetTimeRequest {}).await.expect("the third try answers");
    let calls = script.calls();
    assert_eq!(calls.len(), 3);
    assert!(calls.iter().all(|(p, a)| p.ends_with("/GetTime") && a == "Bearer t-1"), "{calls:?}");

    script.then([Answer::Refuse(Code::Unavailable, None)]);
    c.marketing_status().set_marketing_status(set_status("req-1")).await.expect("a keyed write is repeated");
    assert_eq!(script.calls().len(), 2);

    script.then([Answer::Refuse(Code::Unavailable, None)]);
    let e = Error::from(c.marketing_status().set_marketing_status(set_status("")).await.unwrap_err());
    assert_eq!(e.code(), Code::Unavailable);
    assert_eq!(script.calls().len(), 1, "a write without a request id is sent once");

    script.then([Answer::Refuse(Code::Unavailable, None)]);
    let e = c.clock().advance_time(AdvanceTimeRequest { by: None }).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert_eq!(script.calls().len(), 1);

    script.then([Answer::Refuse(Code::InvalidArgument, None)]);
    let e = c.clock().get_time(GetTimeRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(script.calls().len(), 1, "a refusal of the request itself is final");

    script.then(vec![Answer::Refuse(Code::Unavailable, None); 10]);
    let e = c.clock().get_time(GetTimeRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert_eq!(script.calls().len(), 4, "attempts are bounded");
    script.answers.lock().unwrap().clear();
}

#[tokio::test]
async fn a_rate_limited_call_waits_as_long_as_the_service_asks_even_a_write() {
    let script = Arc::new(Script::default());
    let c = client(server(script.clone()).await, QUICK, Duration::from_secs(10));
    script.then([Answer::Refuse(Code::ResourceExhausted, Some(Duration::from_millis(400)))]);
    let started = Instant::now();
    c.clock().advance_time(AdvanceTimeRequest { by: None }).await.expect("answered after the wait");
    assert!(started.elapsed() >= Duration::from_millis(400), "{:?}", started.elapsed());
    assert_eq!(script.calls().len(), 2);

    // Without RetryInfo it is the caller's decision.
    script.then([Answer::Refuse(Code::ResourceExhausted, None)]);
    let e = Error::from(c.clock().get_time(GetTimeRequest {}).await.unwrap_err());
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert_eq!(script.calls().len(), 1);
}

#[tokio::test]
async fn the_deadline_bounds_every_try_together() {
    let script = Arc::new(Script::default());
    let c = client(server(script.clone()).await, QUICK, Duration::from_millis(600));
    script.then([Answer::Hang]);
    let started = Instant::now();
    let e = c.clock().get_time(GetTimeRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());

    // A wait the service asks for past the deadline is not waited: the refusal comes at once.
    script.then([Answer::Refuse(Code::ResourceExhausted, Some(Duration::from_secs(30)))]);
    let started = Instant::now();
    let e = Error::from(c.clock().get_time(GetTimeRequest {}).await.unwrap_err());
    assert_eq!(e.retry_after(), Some(Duration::from_secs(30)));
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn a_rotated_token_file_is_sent_by_the_next_call() {
    let script = Arc::new(Script::default());
    let addr = server(script.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    std::fs::write(&path, "first-token\n").unwrap();
    let url = format!("http://{addr}");
    let endpoints = Endpoints {
        contacts: url.clone(),
        marketing_status: url.clone(),
        billing: url.clone(),
        notification: url,
    };
    let c = Client::builder(endpoints).token(TokenFile::new(&path)).build().unwrap();
    c.clock().get_time(GetTimeRequest {}).await.unwrap();
    std::fs::write(&path, "second-token-of-another-length\n").unwrap();
    c.clock().get_time(GetTimeRequest {}).await.unwrap();
    let auths: Vec<String> = script.calls().into_iter().map(|(_, a)| a).collect();
    assert_eq!(auths, ["Bearer first-token", "Bearer second-token-of-another-length"]);

    std::fs::remove_file(&path).unwrap();
    let e = c.clock().get_time(GetTimeRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("token file"), "{}", e.message());
    assert!(script.calls().is_empty(), "nothing is sent without a token");
}
