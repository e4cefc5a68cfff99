//! A span per RPC: `rpc{method=/broker.v1.QueueService/SendMessage queue=orders code=OK}`.
//!
//! The layer opens the span around the handler, so every event the handler
//! logs carries the method; handlers record the queue or topic they act on
//! ([`record_queue`], [`record_topic`]); the layer records the gRPC status
//! code of the response and logs one event per RPC, at DEBUG whatever the
//! code. A broker fault is logged at ERROR, with its cause, where it is
//! turned into INTERNAL (`service::status`); the other INTERNAL responses
//! come from tonic, when a client goes away in the middle of sending its
//! request, and are no fault of the broker's.
//!
//! The code is read from the response head: errors are trailers-only
//! responses with `grpc-status` in the headers; a head without it is a
//! success (of a unary call, or the opening of a stream).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tracing::Instrument as _;

/// Records the queue an RPC acts on in its span.
pub fn record_queue(queue: &str) {
    tracing::Span::current().record("queue", queue);
}

/// Records the topic an RPC acts on in its span.
pub fn record_topic(topic: &str) {
    tracing::Span::current().record("topic", topic);
}

/// The tower layer; see the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceLayer;

impl<S> tower_layer::Layer<S> for TraceLayer {
    type Service = Trace<S>;

    fn layer(&self, inner: S) -> Trace<S> {
        Trace { inner }
    }
}

/// The service [`TraceLayer`] wraps around the gRPC router.
#[derive(Debug, Clone)]
pub struct Trace<S> {
    inner: S,
}

impl<S, B, RB> tower_service::Service<http::Request<B>> for Trace<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let span = tracing::info_span!(
            "rpc",
            method = request.uri().path(),
            queue = tracing::field::Empty,
            topic = tracing::field::Empty,
            code = tracing::field::Empty,
        );
        let started = Instant::now();
        let response = span.in_scope(|| self.inner.call(request));
        Box::pin(async move {
            let result = response.instrument(span.clone()).await;
            if let Ok(response) = &result {
                let code = super::grpc_status(response.headers()).unwrap_or(tonic::Code::Ok);
                span.record("code", super::grpc_name(code));
                let elapsed_us = started.elapsed().as_micros() as u64;
                let _entered = span.enter();
                tracing::debug!(elapsed_us, "rpc done");
            }
            result
        })
    }
}
