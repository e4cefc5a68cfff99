//! Messages: send, receive (long polling, the receive rate limit, moving
//! messages due for the dead-letter queue), change visibility and delete
//! by receipt handle.
//!
//! A receive claims under the lock (one `Receive` command), then reads the
//! claimed bodies after it; a long poll waits on its queue's [`Notify`]
//! between claims, registered before each claim looks.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use broker_proto::limits::{
    DELAY_SECONDS_MAX, RECEIVE_MESSAGES_MAX, VISIBILITY_TIMEOUT_SECONDS_MAX, WAIT_TIME_SECONDS_MAX,
};
use bytes::Bytes;
use tokio::sync::Notify;

use super::command::{self, Op};
use super::error::{Error, Result};
use super::ids::{QueueId, Seq};
use super::receipt::ReceiptHandle;
use super::records::{self, BodyRecord, StateRecord};
use super::replication::{Done, Kind};
use super::state::State;
use super::{CHUNK, Engine, Written, attributes, room, validate};
use crate::storage::keys;

/// A message to send.
#[derive(Debug, Clone, Default)]
pub struct NewMessage {
    pub body: Bytes,
    pub attributes: HashMap<String, String>,
    /// Absent: the queue's delay.
    pub delay_seconds: Option<u32>,
}

/// A message handed to a receiver.
#[derive(Debug, Clone)]
pub struct Received {
    pub message_id: String,
    pub receipt_handle: String,
    pub body: Bytes,
    pub attributes: HashMap<String, String>,
    pub receive_count: u32,
    pub sent_at_ms: u64,
    pub first_received_at_ms: u64,
}

/// Options of a receive; `None` takes the queue's value.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReceiveOptions {
    pub max_messages: u32,
    pub visibility_timeout_seconds: Option<u32>,
    pub wait_time_seconds: Option<u32>,
    /// The longest the caller can wait, whatever the wait time says: a
    /// long poll whose client gives up at a deadline must stop waiting
    /// before it, or it could claim a message for a caller that is gone
    /// (`service::deadline` derives it from `grpc-timeout`).
    pub wait_limit: Option<Duration>,
}

/// What one claim under the lock found.
struct Claim {
    /// The queue the messages were taken from.
    queue_id: QueueId,
    /// The messages taken, with their new states (the command's claims).
    taken: Vec<command::NewState>,
    /// The queue's notify, to wait on when nothing was taken.
    notify: Arc<Notify>,
    /// The wait time of the receive (request, else the queue's).
    wait: u32,
    /// Set when messages are visible but the rate limit holds them back:
    /// when the next token comes.
    tokens_at: Option<u64>,
    /// The receive's command, to await before answering (in cluster mode,
    /// its commit).
    done: Option<Done>,
    /// Cluster mode: dead letters are due, and moving them is a barrier
    /// (`replication`): claim again as one.
    barrier: bool,
}

/// A receipt handle that matched its queue and the message's latest receive.
pub(super) struct Held {
    pub(super) seq: Seq,
    /// `None`: the message is gone (deleted, moved, expired).
    pub(super) state: Option<StateRecord>,
}

/// A new message of a send or a publish: its seq, body and when it is
/// visible, for a `Send` command.
pub(super) fn enqueue(
    st: &mut State,
    queue_id: QueueId,
    body: BodyRecord,
    delay: u32,
    now: u64,
) -> command::Enqueue {
    command::Enqueue {
        queue_id: queue_id.0,
        seq: st.alloc_seqs(1),
        body,
        visible_at_ms: now + u64::from(delay) * 1000,
    }
}

impl Engine {
    /// Sends messages to a queue in one atomic, durable write. Each entry
    /// is checked alone: the result holds a message id or that entry's error.
    pub async fn send(
        &self,
        queue: &str,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<Result<String>>> {
        let (results, written) = self.send_written(queue, messages).await?;
        self.acknowledged(written).await?;
        Ok(results)
    }

    /// [`Engine::send`] up to its write: the results are not acknowledged
    /// before [`Engine::acknowledged`] returns for the [`Written`].
    pub async fn send_written(
        &self,
        queue: &str,
        messages: Vec<NewMessage>,
    ) -> Result<(Vec<Result<String>>, Written)> {
        self.disk.check()?;
        let (results, ticket) = {
            let mut st = self.decide(Kind::Pipelined).await?;
            let now = self.now_ms();
            let id = st.queue_id("queue", queue)?;
            let attrs = st.queues[&id].attributes.clone();
            let checked: Vec<Result<(NewMessage, u32)>> = messages
                .into_iter()
                .map(|m| {
                    validate::message(&m.body, &m.attributes, attrs.max_message_bytes)?;
                    let delay = m.delay_seconds.unwrap_or(attrs.delay_seconds);
                    attributes::check_range("delay_seconds", delay, 0, DELAY_SECONDS_MAX)?;
                    Ok((m, delay))
                })
                .collect();
            let adds = checked.iter().filter(|c| c.is_ok()).count() as u64;
            room::check(&st, &self.cap, [(id, adds)], adds)?;
            let mut placed = Vec::new();
            let results: Vec<Result<String>> = checked
                .into_iter()
                .map(|c| {
                    let (m, delay) = c?;
                    let message_id = uuid::Uuid::new_v4().to_string();
                    let body = BodyRecord {
                        message_id: message_id.clone(),
                        body: m.body,
                        attributes: m.attributes,
                        sent_at_ms: now,
                        dead_letter_source: String::new(),
                    };
                    placed.push(enqueue(&mut st, id, body, delay, now));
                    Ok(message_id)
                })
                .collect();
            let ticket = self.send_placed(&mut st, placed, now)?;
            (results, ticket)
        };
        Ok((results, Written(ticket)))
    }

    /// Applies the `Send` of new messages (none: nothing to write; no seq
    /// was handed out, so no reservation waits to be persisted).
    pub(super) fn send_placed(
        &self,
        st: &mut State,
        messages: Vec<command::Enqueue>,
        now: u64,
    ) -> Result<Done> {
        if messages.is_empty() {
            return Ok(Done::Local(None));
        }
        let cmd = st.command(now, Op::Send(command::Send { messages }));
        self.apply(st, &cmd)
    }

    /// Receives up to `max_messages`, waiting up to the wait time for the
    /// first one. Messages received `max_receive_count` times already are
    /// moved to the dead-letter queue instead of being returned. With a
    /// `max_receive_rate`, returns at most what the queue's bucket holds,
    /// and a long poll waits for tokens within its wait time.
    pub async fn receive(&self, queue: &str, opts: ReceiveOptions) -> Result<Vec<Received>> {
        let max = match opts.max_messages {
            0 => 1,
            n if n > RECEIVE_MESSAGES_MAX => {
                return Err(Error::out_of_range(
                    "max_messages",
                    1,
                    RECEIVE_MESSAGES_MAX,
                    n,
                ));
            }
            n => n,
        };
        if let Some(v) = opts.visibility_timeout_seconds {
            attributes::check_range(
                "visibility_timeout_seconds",
                v,
                0,
                VISIBILITY_TIMEOUT_SECONDS_MAX,
            )?;
        }
        if let Some(w) = opts.wait_time_seconds {
            attributes::check_range("wait_time_seconds", w, 0, WAIT_TIME_SECONDS_MAX)?;
        }
        // Through `decide`: a new leader answers once it has applied its log.
        let mut notify = self
            .decide(Kind::Pipelined)
            .await?
            .queue("queue", queue)?
            .notify
            .clone();
        let mut until = None;
        let mut kind = Kind::Pipelined;
        loop {
            // Registered before the claim looks: a message made visible
            // after that look notifies this waiter (or, if it returns with
            // messages, is forwarded to another waiter when it is dropped).
            let waiting_on = notify.clone();
            let notified = waiting_on.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let mut claim = self.claim(queue, max, opts, kind).await?;
            if claim.barrier {
                kind = Kind::Barrier;
                continue;
            }
            kind = Kind::Pipelined;
            if let Some(done) = claim.done.take() {
                self.committed(done).await?;
            }
            if !claim.taken.is_empty() {
                return self.read_bodies(claim.queue_id, claim.taken);
            }
            if !Arc::ptr_eq(&claim.notify, &notify) {
                // The queue was deleted and created again meanwhile.
                notify = claim.notify;
                continue;
            }
            let until = *until.get_or_insert_with(|| {
                let wait = Duration::from_secs(u64::from(claim.wait));
                tokio::time::Instant::now() + opts.wait_limit.map_or(wait, |limit| wait.min(limit))
            });
            if tokio::time::Instant::now() >= until || self.shutdown.is_cancelled() {
                return Ok(Vec::new());
            }
            let wake = claim
                .tokens_at
                .map_or(until, |at| self.clock.instant_at(at).min(until));
            tokio::select! {
                _ = notified, if claim.tokens_at.is_none() => {}
                _ = tokio::time::sleep_until(wake) => {}
                _ = self.shutdown.cancelled() => {}
            }
        }
    }

    /// One synchronous claim under the lock.
    async fn claim(
        &self,
        queue: &str,
        max: u32,
        opts: ReceiveOptions,
        kind: Kind,
    ) -> Result<Claim> {
        let mut st = self.decide(kind).await?;
        let now = self.now_ms();
        st.promote_due(now);
        let id = st.queue_id("queue", queue)?;
        let q = st.queues.get_mut(&id).expect("names and queues agree");
        let mut claim = Claim {
            queue_id: id,
            taken: Vec::new(),
            notify: q.notify.clone(),
            wait: opts
                .wait_time_seconds
                .unwrap_or(q.attributes.receive_wait_time_seconds),
            tokens_at: None,
            done: None,
            barrier: false,
        };
        if q.index.ready.is_empty() {
            return Ok(claim);
        }
        let max = match &mut q.limiter {
            Some(bucket) => match bucket.available(max, now) {
                0 => {
                    claim.tokens_at = Some(bucket.next_token_at());
                    return Ok(claim);
                }
                n => n,
            },
            None => max,
        };
        let visibility = opts
            .visibility_timeout_seconds
            .unwrap_or(q.attributes.visibility_timeout_seconds);
        let q = &st.queues[&id];
        let dead_letter = q.attributes.redrive_policy.as_ref().and_then(|p| {
            Some((
                st.names.get(&p.dead_letter_queue).copied()?,
                p.max_receive_count,
            ))
        });
        let mut claims = Vec::new();
        let mut dead_letters = Vec::new();
        // Messages due for the dead-letter queue do not count against
        // `max`: the receive takes the next ones (at most CHUNK moves per
        // call, so a receive stays O(batch)).
        for &seq in &q.index.ready {
            if claims.len() >= max as usize || dead_letters.len() >= CHUNK {
                break;
            }
            let old = q.index.slots[&seq].state;
            if let Some((dlq, max_count)) = dead_letter
                && old.receive_count >= max_count
            {
                dead_letters.push((seq, dlq));
                continue;
            }
            let state = StateRecord {
                receive_count: old.receive_count + 1,
                visible_at_ms: now + u64::from(visibility) * 1000,
                first_received_at_ms: if old.first_received_at_ms == 0 {
                    now
                } else {
                    old.first_received_at_ms
                },
                sent_at_ms: old.sent_at_ms,
            };
            claims.push(command::NewState::new(seq, state));
        }
        if claims.is_empty() && dead_letters.is_empty() {
            return Ok(claim);
        }
        if !dead_letters.is_empty() && kind == Kind::Pipelined && self.replication.get().is_some() {
            // Nothing decided yet: claim again as a barrier.
            claim.barrier = true;
            return Ok(claim);
        }
        let first = st.alloc_seqs(dead_letters.len() as u64);
        let dead_letters = (first..)
            .zip(dead_letters)
            .map(
                |(to_seq, (seq, to_queue)): (u64, (Seq, QueueId))| command::Move {
                    seq: seq.0,
                    to_queue_id: to_queue.0,
                    to_seq,
                },
            )
            .collect();
        let receive = command::Receive {
            queue_id: id.0,
            claims,
            dead_letters,
        };
        let cmd = st.command(now, Op::Receive(receive));
        claim.done = Some(self.apply(&mut st, &cmd)?);
        if let Some(Op::Receive(receive)) = cmd.op {
            claim.taken = receive.claims;
        }
        let q = st.queues.get_mut(&id).expect("checked above");
        if let Some(bucket) = &mut q.limiter {
            bucket.take(claim.taken.len() as u32);
        }
        Ok(claim)
    }

    /// The bodies of messages claimed from queue `queue_id`, read after
    /// the lock is released.
    fn read_bodies(
        &self,
        queue_id: QueueId,
        claimed: Vec<command::NewState>,
    ) -> Result<Vec<Received>> {
        let keys: Vec<Vec<u8>> = claimed
            .iter()
            .map(|c| keys::body(queue_id.0, c.seq).to_vec())
            .collect();
        let bodies = self.store.multi_get(&keys)?;
        let mut out = Vec::with_capacity(claimed.len());
        for (state, raw) in claimed.into_iter().zip(bodies) {
            // Gone since the claim (purged, expired, queue deleted): skip.
            let Some(raw) = raw else { continue };
            let body: BodyRecord = records::decode(&keys::body(queue_id.0, state.seq), &raw)?;
            out.push(Received {
                message_id: body.message_id,
                receipt_handle: ReceiptHandle {
                    queue_id,
                    seq: Seq(state.seq),
                    receive_count: state.receive_count,
                }
                .encode(),
                body: body.body,
                attributes: body.attributes,
                receive_count: state.receive_count,
                sent_at_ms: body.sent_at_ms,
                first_received_at_ms: state.first_received_at_ms,
            });
        }
        Ok(out)
    }

    /// Checks a receipt handle against the queue (request field `queue`):
    /// the queue id, then (if the message still exists) that no receive
    /// superseded it.
    pub(super) fn check_handle(st: &mut State, queue: &str, handle: &str) -> Result<Held> {
        let h = ReceiptHandle::decode(handle)?;
        let id = st.queue_id("queue", queue)?;
        if h.queue_id != id {
            return Err(Error::invalid(
                "receipt_handle",
                format!("belongs to another queue than {queue:?}"),
            ));
        }
        let state = st.queues[&id].index.slots.get(&h.seq).map(|s| s.state);
        if let Some(s) = state
            && s.receive_count != h.receive_count
        {
            return Err(Error::ReceiptSuperseded {
                current: s.receive_count,
                handle: h.receive_count,
            });
        }
        Ok(Held { seq: h.seq, state })
    }

    /// Deletes messages by receipt handle in one atomic, durable write.
    /// Deleting an already deleted message with its last handle succeeds.
    pub async fn delete(&self, queue: &str, handles: &[&str]) -> Result<Vec<Result<()>>> {
        let (results, ticket) = {
            let mut st = self.decide(Kind::Pipelined).await?;
            let queue_id = st.queue_id("queue", queue)?;
            let mut seqs = Vec::new();
            let results = handles
                .iter()
                .map(|handle| {
                    let Held { seq, state } = Self::check_handle(&mut st, queue, handle)?;
                    // The same message twice in one call is deleted once.
                    if state.is_some() && !seqs.contains(&seq.0) {
                        seqs.push(seq.0);
                    }
                    Ok(())
                })
                .collect();
            let ticket = if seqs.is_empty() {
                // An earlier delete, maybe not yet durable, removed them.
                self.settle()
            } else {
                let cmd = st.command(
                    self.now_ms(),
                    Op::Delete(command::Delete {
                        queue_id: queue_id.0,
                        seqs,
                    }),
                );
                self.apply(&mut st, &cmd)?
            };
            (results, ticket)
        };
        self.durable(ticket).await?;
        Ok(results)
    }

    /// Sets the visibility timeout of in-flight messages, counted from now;
    /// 0 makes a message visible at once.
    pub async fn change_visibility(
        &self,
        queue: &str,
        changes: &[(&str, u32)],
    ) -> Result<Vec<Result<()>>> {
        let (results, done) = {
            let mut st = self.decide(Kind::Pipelined).await?;
            let now = self.now_ms();
            let queue_id = st.queue_id("queue", queue)?;
            let mut updates: Vec<command::NewState> = Vec::new();
            let results = changes
                .iter()
                .map(|&(handle, seconds)| {
                    attributes::check_range(
                        "visibility_timeout_seconds",
                        seconds,
                        0,
                        VISIBILITY_TIMEOUT_SECONDS_MAX,
                    )?;
                    let Held { seq, state } = Self::check_handle(&mut st, queue, handle)?;
                    let state = match state {
                        Some(s) if s.visible_at_ms > now => s,
                        Some(_) => return Err(Error::NotInFlight),
                        None => return Err(Error::MessageDeleted),
                    };
                    let state = StateRecord {
                        visible_at_ms: now + u64::from(seconds) * 1000,
                        ..state
                    };
                    // The same message twice in one call: the last change wins.
                    updates.retain(|u| u.seq != seq.0);
                    updates.push(command::NewState::new(seq, state));
                    Ok(())
                })
                .collect();
            if !updates.is_empty() {
                let change = command::ChangeVisibility {
                    queue_id: queue_id.0,
                    changes: updates,
                };
                let cmd = st.command(now, Op::ChangeVisibility(change));
                (results, self.apply(&mut st, &cmd)?)
            } else {
                // Every answer is an error read from state that earlier
                // changes, maybe not yet committed, made.
                (results, self.settle())
            }
        };
        self.committed(done).await?;
        Ok(results)
    }
}
