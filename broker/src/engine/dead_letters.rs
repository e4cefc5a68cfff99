//! Dead letters and redrive, and the one message move both use.
//!
//! A receive that finds a message already received `max_receive_count`
//! times moves it to the queue's dead-letter queue instead of returning it
//! (decided in `messages`, carried by the `Receive` command); a redrive
//! moves visible messages out of a dead-letter queue, to a given queue or
//! each back to the queue it died in. Both are the same move ([`read_moves`]
//! then [`place_moves`]): in one batch, the message's body and state are
//! deleted in the source queue and written under a new seq in the target.
//! A dead letter keeps its receive count and remembers its source queue; a
//! redriven message starts again from receive 0 and forgets it. A message
//! whose body is already gone is only deleted.

use prost::Message;

use super::command::{self, Move, Op, delete_message};
use super::error::{Error, Result};
use super::ids::{QueueId, Seq};
use super::records::{self, BodyRecord, StateRecord};
use super::replication::Kind;
use super::room;
use super::state::State;
use super::{CHUNK, Engine};
use crate::storage::{Batch, Store, keys};

impl Engine {
    /// Moves up to `max` (0: all) visible messages out of the dead-letter
    /// queue `source`: to `destination`, or each to the queue it died in.
    /// Receive counts start again from 0. Returns how many moved.
    ///
    /// Works in chunks of [`CHUNK`], one command each. Without a
    /// destination, the bodies (which name each message's source queue)
    /// are read with the lock released, and the chunk is checked again
    /// under it: a message received or deleted meanwhile stays.
    pub async fn redrive(&self, source: &str, destination: &str, max: u32) -> Result<u64> {
        self.disk.check()?;
        let now = self.now_ms();
        if source == destination {
            return Err(Error::invalid(
                "destination_queue",
                "must differ from source_queue",
            ));
        }
        let mut moved = 0u64;
        let mut after = Seq(0);
        loop {
            let want = if max == 0 {
                CHUNK
            } else {
                CHUNK.min((u64::from(max) - moved) as usize)
            };
            let (src, seqs) = {
                let mut st = self.lock();
                st.promote_due(now);
                let src = st.queue_id("source_queue", source)?;
                if !destination.is_empty() {
                    st.queue_id("destination_queue", destination)?;
                }
                let seqs: Vec<Seq> = st.queues[&src]
                    .index
                    .ready
                    .range(after..)
                    .take(want)
                    .copied()
                    .collect();
                (src, seqs)
            };
            let Some(&last) = seqs.last() else { break };
            after = Seq(last.0 + 1);
            // Each message goes back where it died, unless told where.
            let died_in = match destination {
                "" => Some(self.dead_letter_sources(src, &seqs)?),
                _ => None,
            };
            let done = {
                let mut st = self.decide(Kind::Barrier).await?;
                let now = self.now_ms();
                if st.queue_id("source_queue", source)? != src {
                    // Deleted and created again meanwhile: nothing of it is left.
                    break;
                }
                let dest = match destination {
                    "" => None,
                    d => Some(st.queue_id("destination_queue", d)?),
                };
                let ready = &st.queues[&src].index.ready;
                let targets: Vec<(Seq, QueueId)> = match (dest, died_in) {
                    (Some(d), _) => seqs
                        .into_iter()
                        .filter(|seq| ready.contains(seq))
                        .map(|seq| (seq, d))
                        .collect(),
                    (None, died_in) => died_in
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|(seq, _)| ready.contains(seq))
                        .filter_map(|(seq, queue)| match st.names.get(&queue) {
                            Some(&d) if d != src => Some((seq, d)),
                            // Its source queue is gone: it stays here.
                            _ => None,
                        })
                        .collect(),
                };
                if targets.is_empty() {
                    continue;
                }
                room::check(&st, &self.cap, targets.iter().map(|&(_, q)| (q, 1)), 0)?;
                let first = st.alloc_seqs(targets.len() as u64);
                let moves: Vec<command::Move> = (first..)
                    .zip(targets)
                    .map(|(to_seq, (seq, to_queue))| command::Move {
                        seq: seq.0,
                        to_queue_id: to_queue.0,
                        to_seq,
                    })
                    .collect();
                moved += moves.len() as u64;
                let redrive = command::Redrive {
                    source_queue_id: src.0,
                    moves,
                };
                let cmd = st.command(now, Op::Redrive(redrive));
                self.apply(&mut st, &cmd)?
            };
            // Each chunk durable before the next is decided.
            self.durable(done).await?;
            if max != 0 && moved >= u64::from(max) {
                break;
            }
        }
        Ok(moved)
    }

    /// The queue each message died in, from its body (read without the
    /// lock); messages whose body is gone are left out.
    fn dead_letter_sources(&self, queue: QueueId, seqs: &[Seq]) -> Result<Vec<(Seq, String)>> {
        let keys: Vec<Vec<u8>> = seqs
            .iter()
            .map(|s| keys::body(queue.0, s.0).to_vec())
            .collect();
        let bodies = self.store.multi_get(&keys)?;
        let mut sources = Vec::with_capacity(seqs.len());
        for (&seq, raw) in seqs.iter().zip(bodies) {
            let Some(raw) = raw else { continue };
            let body: BodyRecord = records::decode(&keys::body(queue.0, seq.0), &raw)?;
            sources.push((seq, body.dead_letter_source));
        }
        Ok(sources)
    }
}

/// How a move transforms the moved message.
#[derive(Clone, Copy)]
pub(super) enum MoveKind {
    /// Keeps its receive count, remembers its source queue, visible at once.
    DeadLetter,
    /// Starts again from receive 0, forgets its source queue, visible at once.
    Redrive,
}

/// A move whose batch part is written: what the index needs.
pub(super) struct Moved {
    seq: Seq,
    to_queue: QueueId,
    to_seq: Seq,
    /// `None` when the body was already gone: the message is only deleted.
    state: Option<StateRecord>,
}

/// Adds the moves out of queue `from` to `batch`: the one message move of
/// dead-lettering and redrive.
pub(super) fn read_moves(
    st: &State,
    store: &Store,
    batch: &mut Batch,
    from: QueueId,
    moves: &[Move],
    kind: MoveKind,
    now: u64,
) -> Result<Vec<Moved>> {
    if moves.is_empty() {
        return Ok(Vec::new());
    }
    let Some(source) = st.queues.get(&from) else {
        return Ok(Vec::new());
    };
    let body_keys: Vec<Vec<u8>> = moves
        .iter()
        .map(|m| keys::body(from.0, m.seq).to_vec())
        .collect();
    let bodies = store.multi_get(&body_keys)?;
    let mut moved = Vec::with_capacity(moves.len());
    for (m, raw) in moves.iter().zip(bodies) {
        let Some(old) = source.index.slots.get(&Seq(m.seq)).map(|s| s.state) else {
            continue;
        };
        delete_message(batch, from.0, m.seq);
        let mut done = Moved {
            seq: Seq(m.seq),
            to_queue: QueueId(m.to_queue_id),
            to_seq: Seq(m.to_seq),
            state: None,
        };
        let Some(raw) = raw else {
            moved.push(done);
            continue;
        };
        let mut body: BodyRecord = records::decode(&keys::body(from.0, m.seq), &raw)?;
        let state = match kind {
            MoveKind::DeadLetter => {
                body.dead_letter_source = source.name.clone();
                StateRecord {
                    visible_at_ms: now,
                    ..old
                }
            }
            MoveKind::Redrive => {
                body.dead_letter_source.clear();
                StateRecord {
                    receive_count: 0,
                    visible_at_ms: now,
                    first_received_at_ms: 0,
                    sent_at_ms: old.sent_at_ms,
                }
            }
        };
        batch.put(keys::body(m.to_queue_id, m.to_seq), body.encode_to_vec());
        batch.put(keys::state(m.to_queue_id, m.to_seq), state.encode());
        done.state = Some(state);
        moved.push(done);
    }
    Ok(moved)
}

/// The index side of [`read_moves`], once its batch is written.
pub(super) fn place_moves(
    st: &mut State,
    from: QueueId,
    moved: Vec<Moved>,
    kind: MoveKind,
    now: u64,
) {
    for m in moved {
        st.see_seq(m.to_seq.0);
        let State { queues, timers, .. } = &mut *st;
        if let Some(q) = queues.get_mut(&from) {
            q.index.remove(timers, from, m.seq);
            match kind {
                MoveKind::DeadLetter => q.counters.dead_lettered += 1,
                MoveKind::Redrive => q.counters.redriven += 1,
            }
        }
        if let Some(state) = m.state
            && let Some(to) = queues.get_mut(&m.to_queue)
        {
            to.index.insert(timers, m.to_queue, m.to_seq, state, now);
            to.notify.notify_one();
        }
    }
}
