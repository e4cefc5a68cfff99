//! Thin gRPC adapters over the engine: protobuf in, one engine call,
//! protobuf or a status out. Every error reaches the client through the one
//! table in [`mod@status`], which maps the errors of every layer (engine, auth,
//! limits, stream, health) to codes, messages and BadRequest details.

pub mod cluster;
pub mod deadline;
pub mod health;
pub mod queue;
pub mod send_stream;
pub mod status;
pub mod stream;
pub mod topic;
pub mod trace;

use broker_proto::pb;
use tonic::Status;

use crate::auth::Authenticator;
use crate::engine::error::Error;
pub use status::{Kind, ToStatus, code_name, grpc_name, grpc_status, status};

/// The token check in front of `QueueService` and `TopicService`
/// ([`Authenticator::authenticate`]), its refusals through the status table.
#[derive(Debug, Clone)]
pub struct Authenticate(pub Authenticator);

impl tonic::service::Interceptor for Authenticate {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        self.0.authenticate(&mut request).map_err(status)?;
        Ok(request)
    }
}

/// A failed batch entry: its id, its code name and the error's message.
pub fn failed(id: String, e: &Error) -> pb::BatchResultError {
    pb::BatchResultError {
        id,
        code: code_name(e).to_string(),
        message: e.to_string(),
    }
}

/// Runs a batch RPC: checks its size and that entry ids are distinct (else
/// the whole request fails), fails entries with a malformed id alone, runs
/// `run` on the others and splits its per-entry results into successes
/// (with the entry id) and failures.
pub async fn run_batch<E, T>(
    entries: Vec<E>,
    id: impl Fn(&E) -> &String,
    run: impl AsyncFnOnce(&[E]) -> crate::Result<Vec<crate::Result<T>>>,
) -> Result<(Vec<(String, T)>, Vec<pb::BatchResultError>), Status> {
    crate::engine::validate::batch(entries.len(), entries.iter().map(|e| id(e).as_str()))
        .map_err(status)?;
    let mut failures = Vec::new();
    let mut good = Vec::with_capacity(entries.len());
    for e in entries {
        match crate::engine::validate::entry_id(id(&e)) {
            Ok(()) => good.push(e),
            Err(err) => failures.push(failed(id(&e).clone(), &err)),
        }
    }
    let results = if good.is_empty() {
        Vec::new()
    } else {
        run(&good).await.map_err(status)?
    };
    let mut successes = Vec::with_capacity(good.len());
    for (e, result) in good.iter().zip(results) {
        match result {
            Ok(value) => successes.push((id(e).clone(), value)),
            Err(err) => failures.push(failed(id(e).clone(), &err)),
        }
    }
    Ok((successes, failures))
}
