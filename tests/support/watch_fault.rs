//! A kube client whose watch responses a test corrupts, as a broken API server or a middlebox
//! would: garbage bytes in the middle of a watch stream, a stream cut off in the middle of an
//! event, and new watches answered with garbage. Everything else passes through to the real
//! API server unchanged; the client counts the lists and watches it made.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use kube::client::{Body, ClientBuilder};
use kube::{Client, Config};
use tokio::sync::watch;

use super::{Env, base64_std, pem_der};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type DynBody = dyn hyper::body::Body<Data = Bytes, Error = BoxError> + Send + Unpin;

/// How a watch response is corrupted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Bytes that are no JSON at all, then the rest of the stream as it comes.
    Garbage,
    /// The start of an event, then the end of the stream.
    Truncate,
}

impl Fault {
    fn bytes(self) -> Bytes {
        match self {
            Fault::Garbage => Bytes::from_static(b"\x00\xff{{not json]] \"type\":\n<html>502</html>\n"),
            Fault::Truncate => Bytes::from_static(
                b"{\"type\":\"MODIFIED\",\"object\":{\"apiVersion\":\"zalando.org/v1\",\"kind\":\"AWSIAMRole\",\"metadata\":{\"name\":\"tru",
            ),
        }
    }
}

/// What the test controls and what it can read back.
pub struct Faults {
    /// A fault for the watches streaming now (each sees every new value once).
    live: watch::Sender<(u64, Option<Fault>)>,
    /// Faults for the next new watch responses, from their first byte.
    next: Mutex<Vec<Fault>>,
    pub lists: AtomicUsize,
    pub watches: AtomicUsize,
    pub corrupted: AtomicUsize,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            live: watch::Sender::new((0, None)),
            next: Mutex::new(Vec::new()),
            lists: AtomicUsize::new(0),
            watches: AtomicUsize::new(0),
            corrupted: AtomicUsize::new(0),
        }
    }
}

impl Faults {
    /// Corrupts every watch streaming now.
    pub fn inject_live(&self, fault: Fault) {
        self.live.send_modify(|(n, f)| {
            *n += 1;
            *f = Some(fault);
        });
    }

    /// Corrupts the next `count` new watch responses.
    pub fn corrupt_next(&self, fault: Fault, count: usize) {
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        next.extend(std::iter::repeat_n(fault, count));
    }

    /// New watch responses still to corrupt.
    pub fn pending(&self) -> usize {
        self.next.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn take_next(&self) -> Option<Fault> {
        self.next.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }
}

pub struct FaultService<S> {
    inner: S,
    faults: Arc<Faults>,
}

impl<S> tower::Service<Request<Body>> for FaultService<S>
where
    S: tower::Service<Request<Body>, Response = Response<Box<DynBody>>, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<Box<DynBody>>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let query = req.uri().query().unwrap_or_default().to_string();
        let is_watch = query
            .split('&')
            .any(|p| p == "watch=true" || p == "watch=1");
        // A list: a GET of a collection (the watcher's lists page with `limit`).
        let is_list = !is_watch && req.method() == Method::GET && query.contains("limit=");
        let faults = self.faults.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await?;
            if is_list {
                faults.lists.fetch_add(1, Ordering::Relaxed);
            }
            if !is_watch {
                return Ok(res);
            }
            faults.watches.fetch_add(1, Ordering::Relaxed);
            let (parts, body) = res.into_parts();
            Ok(Response::from_parts(parts, corrupt(body, faults)))
        })
    }
}

/// The watch body, corrupted as the test asks.
fn corrupt(body: Box<DynBody>, faults: Arc<Faults>) -> Box<DynBody> {
    if let Some(fault) = faults.take_next() {
        faults.corrupted.fetch_add(1, Ordering::Relaxed);
        let once = futures::stream::iter([Ok::<_, BoxError>(Frame::data(fault.bytes()))]);
        return Box::new(StreamBody::new(once));
    }
    let mut live = faults.live.subscribe();
    live.mark_unchanged();
    let data = body.into_data_stream();
    let stream = futures::stream::unfold(
        (data, live, faults, false),
        |(mut data, mut live, faults, ended)| async move {
            if ended {
                return None;
            }
            tokio::select! {
                changed = live.changed() => {
                    let fault = changed.ok().and_then(|()| live.borrow_and_update().1)?;
                    faults.corrupted.fetch_add(1, Ordering::Relaxed);
                    let ended = fault == Fault::Truncate;
                    Some((Ok(Frame::data(fault.bytes())), (data, live, faults, ended)))
                }
                next = data.next() => {
                    let item = next?.map(Frame::data);
                    Some((item, (data, live, faults, false)))
                }
            }
        },
    );
    Box::new(StreamBody::new(Box::pin(stream)))
}

struct FaultLayer(Arc<Faults>);

impl<S> tower::Layer<S> for FaultLayer {
    type Service = FaultService<S>;

    fn layer(&self, inner: S) -> FaultService<S> {
        FaultService {
            inner,
            faults: self.0.clone(),
        }
    }
}

impl Env {
    /// An admin client to the API server whose watches `faults` corrupts.
    pub fn faulty_client(&self, faults: Arc<Faults>) -> Client {
        let mut config = Config::new(self.api_url.parse().expect("url"));
        config.root_cert = Some(vec![pem_der(&self.ca_pem)]);
        config.auth_info.client_certificate_data = Some(base64_std(&self.admin_cert_pem));
        config.auth_info.client_key_data = Some(base64_std(&self.admin_key_pem).into());
        ClientBuilder::try_from(config)
            .expect("client builder")
            .with_layer(&FaultLayer(faults))
            .build()
    }
}
