//! What the push providers' stand-ins share: a real HTTP server on loopback
//! (HTTP/2, and HTTP/1.1 for what asks for it) that hands each request and
//! the stand-in's state to its handler, and stops when dropped.

use std::{
    collections::{HashMap, VecDeque},
    convert::Infallible,
    sync::{Arc, Mutex, MutexGuard},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming, http::request::Parts, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::{net::TcpListener, task::JoinHandle};

/// What a stand-in answers a request (its head and whole body) with.
pub(crate) type Handler<S> = fn(&Mutex<S>, Parts, Bytes) -> Response<Full<Bytes>>;

/// A running stand-in with state `S`.
pub(crate) struct Server<S> {
    /// Where it listens: `http://127.0.0.1:<port>`.
    pub base_url: String,
    /// What its handler keeps and the test reads.
    pub state: Arc<Mutex<S>>,
    task: JoinHandle<()>,
}

impl<S> Drop for Server<S> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<S: Send + 'static> Server<S> {
    /// Starts `name`'s stand-in on a free loopback port, answering each
    /// request with `handle(state, head, body)`.
    pub async fn start(name: &str, state: S, handle: Handler<S>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind the {name} stand-in: {e}"));
        let addr = listener.local_addr().expect("stand-in address");
        let state = Arc::new(Mutex::new(state));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let state = state.clone();
                        async move {
                            let (parts, body) = request.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            Ok::<_, Infallible>(handle(&state, parts, body))
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            base_url: format!("http://{addr}"),
            state,
            task,
        }
    }

    /// Its state, for reading or scripting.
    pub fn lock(&self) -> MutexGuard<'_, S> {
        lock(&self.state)
    }
}

/// What a stand-in was told to answer per device token (`R`), and what it
/// received (`S`).
pub(crate) struct Ledger<R, S> {
    scripts: HashMap<String, VecDeque<R>>,
    sends: Vec<S>,
}

impl<R, S> Default for Ledger<R, S> {
    fn default() -> Self {
        Self {
            scripts: HashMap::new(),
            sends: Vec::new(),
        }
    }
}

impl<R, S: Clone> Ledger<R, S> {
    /// Answers the next requests for `token` with `replies`, in order.
    pub fn script(&mut self, token: &str, replies: impl IntoIterator<Item = R>) {
        self.scripts
            .entry(token.to_owned())
            .or_default()
            .extend(replies);
    }

    /// The next scripted answer for `token`, if any is left.
    pub fn next_reply(&mut self, token: &str) -> Option<R> {
        self.scripts.get_mut(token).and_then(VecDeque::pop_front)
    }

    /// Notes a request received.
    pub fn record(&mut self, send: S) {
        self.sends.push(send);
    }

    /// Every request received, in order.
    pub fn sends(&self) -> &[S] {
        &self.sends
    }
}

/// `state`, even if a handler panicked while holding it.
pub(crate) fn lock<S>(state: &Mutex<S>) -> MutexGuard<'_, S> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
