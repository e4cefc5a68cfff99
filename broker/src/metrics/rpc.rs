//! Per-RPC metrics: a tower layer around the gRPC services that counts each
//! call by method and status code (`broker_rpc_requests_total`) and observes
//! its duration (`broker_rpc_duration_seconds`).
//!
//! # Where the status code is
//! A gRPC call's status travels in the `grpc-status` field. A call that
//! fails before any message is a *trailers-only* response: the status is in
//! the response headers, and is recorded when the response comes out of the
//! service. Otherwise (every successful call, and a stream that fails
//! later) the status is in the trailers, after the body: the response body
//! is wrapped and the call is recorded when the trailers frame passes.
//! A call whose future or body is dropped before its status (the client
//! went away, or the connection closed) is recorded as `CANCELLED`; a body
//! that fails or ends without a status is recorded as `UNKNOWN`. Each call
//! is recorded exactly once.
//!
//! # Cardinality
//! The `method` label is one of the methods the broker's services declare
//! (read from their descriptor sets at startup: every RPC of `broker.v1`,
//! health and reflection), so a client calling random paths cannot grow the
//! number of series: any other path counts as `method="other"`. Recording
//! takes one hash lookup of the path in a map that never changes, and no lock
//! but the histogram's.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use hyper::body::{Body, Frame, SizeHint};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Unit;
use tonic::Code;

use crate::service::grpc_status;

/// Upper bounds of the duration buckets, in seconds: from sub-millisecond
/// unary calls up to the 20 s of the longest long poll.
const DURATION_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0,
    30.0,
];

/// The `method` label of a path the server does not serve.
pub const OTHER_METHOD: &str = "other";

/// The descriptor sets whose services the broker may serve.
fn descriptor_sets() -> [&'static [u8]; 4] {
    [
        broker_proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ]
}

/// The counts and durations of the calls of every method.
#[derive(Debug)]
pub struct RpcMetrics {
    /// Path (`/broker.v1.QueueService/SendMessage`) to index in `methods`.
    by_path: HashMap<String, usize>,
    /// One per known method, then the one for other paths.
    methods: Vec<MethodMetrics>,
}

#[derive(Debug)]
struct MethodMetrics {
    /// The `method` label: the path without its leading `/`, or `other`.
    label: String,
    /// Finished calls, indexed by gRPC code (0..=16).
    codes: [AtomicU64; 17],
    duration: Histogram,
}

impl MethodMetrics {
    fn new(label: String) -> MethodMetrics {
        MethodMetrics {
            label,
            codes: Default::default(),
            duration: Histogram::new(DURATION_BUCKETS),
        }
    }
}

impl MethodMetrics {
    /// Calls finished, whatever their code.
    fn calls(&self) -> u64 {
        self.codes.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

impl Default for RpcMetrics {
    fn default() -> Self {
        RpcMetrics::new()
    }
}

impl RpcMetrics {
    pub fn new() -> RpcMetrics {
        let mut methods: Vec<MethodMetrics> = Vec::new();
        let mut by_path = HashMap::new();
        for set in descriptor_sets() {
            for method in method_names(set) {
                by_path.insert(format!("/{method}"), methods.len());
                methods.push(MethodMetrics::new(method));
            }
        }
        methods.push(MethodMetrics::new(OTHER_METHOD.to_string()));
        RpcMetrics { by_path, methods }
    }

    /// The index of the method a request path calls.
    fn method(&self, path: &str) -> usize {
        self.by_path
            .get(path)
            .copied()
            .unwrap_or(self.methods.len() - 1)
    }

    /// The `method` label of a request path.
    pub fn method_label(&self, path: &str) -> &str {
        &self.methods[self.method(path)].label
    }

    fn record(&self, method: usize, code: Code, seconds: f64) {
        let m = &self.methods[method];
        m.codes[code as usize].fetch_add(1, Ordering::Relaxed);
        m.duration.observe(seconds);
    }
}

impl Collector for RpcMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let called: Vec<&MethodMetrics> = self.methods.iter().filter(|m| m.calls() > 0).collect();
        if called.is_empty() {
            return Ok(());
        }
        let mut requests = encoder.encode_descriptor(
            "broker_rpc_requests",
            "Finished gRPC calls by method and status code.",
            None,
            MetricType::Counter,
        )?;
        for m in &called {
            for (code, count) in m.codes.iter().enumerate() {
                let count = count.load(Ordering::Relaxed);
                if count > 0 {
                    let labels = [
                        ("method", m.label.as_str()),
                        (
                            "code",
                            crate::service::grpc_name(Code::from_i32(code as i32)),
                        ),
                    ];
                    requests
                        .encode_family(&labels)?
                        .encode_counter::<NoLabelSet, _, u64>(&count, None)?;
                }
            }
        }
        let mut durations = encoder.encode_descriptor(
            "broker_rpc_duration",
            "Time from a gRPC request to its status; for a stream, its life.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for m in &called {
            m.duration
                .encode(durations.encode_family(&[("method", m.label.as_str())])?)?;
        }
        Ok(())
    }
}

/// The subset of `google.protobuf.FileDescriptorSet` that names methods
/// (prost skips the other fields).
mod descriptor {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct FileDescriptorSet {
        #[prost(message, repeated, tag = "1")]
        pub file: Vec<FileDescriptorProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct FileDescriptorProto {
        #[prost(string, optional, tag = "2")]
        pub package: Option<String>,
        #[prost(message, repeated, tag = "6")]
        pub service: Vec<ServiceDescriptorProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ServiceDescriptorProto {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        #[prost(message, repeated, tag = "2")]
        pub method: Vec<MethodDescriptorProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct MethodDescriptorProto {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
    }
}

/// `package.Service/Method` of every method in an encoded descriptor set.
fn method_names(encoded: &[u8]) -> Vec<String> {
    let set = match <descriptor::FileDescriptorSet as prost::Message>::decode(encoded) {
        Ok(set) => set,
        Err(e) => {
            // Only a broken build could get here: calls then count as "other".
            tracing::error!(error = %e, "a gRPC descriptor set does not decode");
            return Vec::new();
        }
    };
    let mut names = Vec::new();
    for file in set.file {
        let package = file.package.unwrap_or_default();
        for service in file.service {
            let name = service.name.unwrap_or_default();
            let qualified = match package.as_str() {
                "" => name,
                package => format!("{package}.{name}"),
            };
            for method in service.method {
                names.push(format!("{qualified}/{}", method.name.unwrap_or_default()));
            }
        }
    }
    names
}

/// One call, recorded once: by [`Call::finish`], or as `CANCELLED` when
/// dropped unfinished.
struct Call {
    metrics: Arc<RpcMetrics>,
    method: usize,
    start: Instant,
    done: bool,
}

impl Call {
    fn finish(&mut self, code: Code) {
        if !self.done {
            self.done = true;
            self.metrics
                .record(self.method, code, self.start.elapsed().as_secs_f64());
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}

/// Wraps every gRPC service of a server; see the module docs.
#[derive(Clone)]
pub struct RpcMetricsLayer {
    metrics: Arc<RpcMetrics>,
}

impl RpcMetricsLayer {
    pub fn new(metrics: Arc<RpcMetrics>) -> RpcMetricsLayer {
        RpcMetricsLayer { metrics }
    }
}

impl<S> tower_layer::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service of [`RpcMetricsLayer`].
#[derive(Clone)]
pub struct RpcMetricsService<S> {
    inner: S,
    metrics: Arc<RpcMetrics>,
}

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for RpcMetricsService<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    ResBody: Body + Send + 'static,
{
    type Response = http::Response<RpcBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let mut call = Call {
            method: self.metrics.method(request.uri().path()),
            metrics: self.metrics.clone(),
            start: Instant::now(),
            done: false,
        };
        let response = self.inner.call(request);
        // `call` moves into the future: dropping the future unfinished (the
        // client went away during a long poll) records CANCELLED.
        Box::pin(async move {
            match response.await {
                Ok(response) => {
                    if let Some(code) = grpc_status(response.headers()) {
                        // Trailers-only: the status is already final.
                        call.finish(code);
                    }
                    Ok(response.map(|body| RpcBody {
                        inner: Box::pin(body),
                        call,
                    }))
                }
                Err(e) => {
                    // The stream is reset without a status.
                    call.finish(Code::Unknown);
                    Err(e)
                }
            }
        })
    }
}

/// A response body that records its call when the trailers pass.
pub struct RpcBody<B> {
    /// Boxed so that the wrapper is `Unpin` whatever the inner body is.
    inner: Pin<Box<B>>,
    call: Call,
}

impl<B: Body> Body for RpcBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        let polled = this.inner.as_mut().poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                    this.call.finish(code);
                }
            }
            // The client gets no status: a reset stream or a missing status.
            Poll::Ready(Some(Err(_)) | None) => this.call.finish(Code::Unknown),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_methods_come_from_the_descriptor_sets() {
        let m = RpcMetrics::new();
        for (path, label) in [
            (
                "/broker.v1.QueueService/SendMessage",
                "broker.v1.QueueService/SendMessage",
            ),
            (
                "/broker.v1.TopicService/Publish",
                "broker.v1.TopicService/Publish",
            ),
            (
                "/grpc.health.v1.Health/Check",
                "grpc.health.v1.Health/Check",
            ),
            ("/broker.v1.QueueService/NoSuchMethod", OTHER_METHOD),
            ("/anything/else", OTHER_METHOD),
        ] {
            assert_eq!(m.method_label(path), label, "{path}");
        }
    }

    #[test]
    fn every_code_has_its_grpc_name() {
        assert_eq!(crate::service::grpc_name(Code::from_i32(5)), "NOT_FOUND");
        assert_eq!(
            crate::service::grpc_name(Code::from_i32(16)),
            "UNAUTHENTICATED"
        );
        let mut headers = http::HeaderMap::new();
        assert_eq!(grpc_status(&headers), None);
        headers.insert("grpc-status", http::HeaderValue::from_static("9"));
        assert_eq!(grpc_status(&headers), Some(Code::FailedPrecondition));
    }

    #[test]
    fn a_dropped_call_is_recorded_as_cancelled_once() {
        let metrics = Arc::new(RpcMetrics::new());
        let method = metrics.method("/broker.v1.QueueService/ReceiveMessages");
        let mut call = Call {
            metrics: metrics.clone(),
            method,
            start: Instant::now(),
            done: false,
        };
        call.finish(Code::Ok);
        drop(call);
        drop(Call {
            metrics: metrics.clone(),
            method,
            start: Instant::now(),
            done: false,
        });
        let counts = &metrics.methods[method].codes;
        assert_eq!(counts[Code::Ok as usize].load(Ordering::Relaxed), 1);
        assert_eq!(counts[Code::Cancelled as usize].load(Ordering::Relaxed), 1);
        assert_eq!(metrics.methods[method].calls(), 2);
        let mut text = String::new();
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(metrics));
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let method = "method=\"broker.v1.QueueService/ReceiveMessages\"";
        for line in [
            format!("broker_rpc_requests_total{{{method},code=\"OK\"}} 1"),
            format!("broker_rpc_requests_total{{{method},code=\"CANCELLED\"}} 1"),
            format!("broker_rpc_duration_seconds_count{{{method}}} 2"),
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
    }
}
