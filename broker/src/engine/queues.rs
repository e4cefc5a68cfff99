//! Queues: create (idempotent for equal attributes), update, get, list,
//! delete and purge; and the name-ordered paging that topics use too.

use std::collections::BTreeMap;

use broker_proto::limits::{PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX};

use super::command::{self, Op};
use super::error::{Error, Result};
use super::records::QueueRecord;
use super::replication::Kind;
use super::state::{QueueInfo, QueueStats, State};
use super::{AttributeChanges, Engine, QueueAttributes, validate};

/// Entries of a name-ordered map whose name starts with `prefix`, after
/// `page_token` (the last name of the previous page).
pub(super) fn by_name<'a, V>(
    map: &'a BTreeMap<String, V>,
    prefix: &'a str,
    page_token: &'a str,
) -> impl Iterator<Item = (&'a String, &'a V)> + 'a {
    let start = if page_token.is_empty() {
        prefix
    } else {
        page_token
    };
    map.range::<str, _>((std::ops::Bound::Included(start), std::ops::Bound::Unbounded))
        .filter(move |(n, _)| n.as_str() != page_token)
        .take_while(move |(n, _)| n.starts_with(prefix))
}

/// One page of `items` (already positioned after the page token), keyed
/// by what the next page token would be: the page, and the token of the
/// next page (empty on the last one).
pub(super) fn paginate<T>(
    mut items: impl Iterator<Item = (String, T)>,
    page_size: u32,
) -> Result<(Vec<T>, String)> {
    let page_size = match page_size {
        0 => PAGE_SIZE_DEFAULT as usize,
        n if n > PAGE_SIZE_MAX => {
            return Err(Error::out_of_range("page_size", 0, PAGE_SIZE_MAX, n));
        }
        n => n as usize,
    };
    let mut page = Vec::new();
    let mut last = String::new();
    for (key, item) in items.by_ref().take(page_size) {
        last = key;
        page.push(item);
    }
    let next = if items.next().is_some() {
        last
    } else {
        String::new()
    };
    Ok((page, next))
}

impl Engine {
    /// Creates a queue; idempotent for equal attributes.
    pub async fn create_queue(&self, name: &str, changes: &AttributeChanges) -> Result<QueueInfo> {
        validate::queue_name("name", name)?;
        let attributes = changes.apply_to(&QueueAttributes::default())?;
        let (info, ticket) = {
            let mut st = self.decide(Kind::Barrier).await?;
            if let Ok(q) = st.queue("name", name) {
                if let Some((attribute, have, want)) = q.attributes.first_difference(&attributes) {
                    return Err(Error::QueueExists {
                        queue: name.to_string(),
                        attribute,
                        have,
                        want,
                    });
                }
                return Ok(q.info());
            }
            self.check_redrive(&st, name, &attributes)?;
            let id = st.alloc_seqs(1);
            let now = self.now_ms();
            let put = command::PutQueue {
                name: name.to_string(),
                record: QueueRecord::new(id, now, &attributes),
            };
            let cmd = st.command(now, Op::PutQueue(put));
            let ticket = self.apply(&mut st, &cmd)?;
            let info = QueueInfo {
                name: name.to_string(),
                attributes,
                created_at_ms: now,
            };
            (info, ticket)
        };
        self.durable(ticket).await?;
        Ok(info)
    }

    fn check_redrive(&self, st: &State, name: &str, a: &QueueAttributes) -> Result<()> {
        if let Some(p) = &a.redrive_policy {
            if p.dead_letter_queue == name {
                return Err(Error::invalid(
                    "attributes.redrive_policy.dead_letter_queue",
                    "must name another queue; a queue cannot be its own dead-letter queue",
                ));
            }
            if !st.names.contains_key(&p.dead_letter_queue) {
                return Err(Error::DeadLetterQueueNotFound {
                    queue: p.dead_letter_queue.clone(),
                });
            }
        }
        Ok(())
    }

    pub fn get_queue(&self, name: &str) -> Result<(QueueInfo, QueueStats)> {
        let now = self.now_ms();
        let mut st = self.lock();
        st.promote_due(now);
        let q = st.queue("name", name)?;
        Ok((q.info(), q.stats(now)))
    }

    /// How long a receive on `queue` that gives no wait time waits: the
    /// queue's `receive_wait_time_seconds`.
    pub fn receive_wait_seconds(&self, queue: &str) -> Result<u32> {
        Ok(self
            .lock()
            .queue("queue", queue)?
            .attributes
            .receive_wait_time_seconds)
    }

    /// Up to `page_size` queues whose name starts with `prefix`, after
    /// `page_token` (the last name of the previous page); and the next token.
    pub fn list_queues(
        &self,
        prefix: &str,
        page_size: u32,
        page_token: &str,
    ) -> Result<(Vec<QueueInfo>, String)> {
        let st = self.lock();
        let items = by_name(&st.names, prefix, page_token)
            .map(|(name, id)| (name.clone(), st.queues[id].info()));
        paginate(items, page_size)
    }

    pub async fn update_queue(&self, name: &str, changes: &AttributeChanges) -> Result<QueueInfo> {
        let (info, ticket) = {
            let mut st = self.decide(Kind::Barrier).await?;
            let q = st.queue("name", name)?;
            let attributes = changes.apply_to(&q.attributes)?;
            let (id, created_at_ms) = (q.id, q.created_at_ms);
            self.check_redrive(&st, name, &attributes)?;
            let put = command::PutQueue {
                name: name.to_string(),
                record: QueueRecord::new(id.0, created_at_ms, &attributes),
            };
            let cmd = st.command(self.now_ms(), Op::PutQueue(put));
            let ticket = self.apply(&mut st, &cmd)?;
            let info = QueueInfo {
                name: name.to_string(),
                attributes,
                created_at_ms,
            };
            (info, ticket)
        };
        self.durable(ticket).await?;
        Ok(info)
    }

    pub async fn delete_queue(&self, name: &str) -> Result<()> {
        let ticket = {
            let mut st = self.decide(Kind::Barrier).await?;
            st.queue_id("name", name)?;
            let mut sources: Vec<String> = st
                .queues
                .values()
                .filter(|q| {
                    q.attributes
                        .redrive_policy
                        .as_ref()
                        .is_some_and(|p| p.dead_letter_queue == name)
                })
                .map(|q| q.name.clone())
                .collect();
            if !sources.is_empty() {
                sources.sort();
                return Err(Error::QueueIsDeadLetterTarget {
                    queue: name.to_string(),
                    used_by: sources,
                });
            }
            let cmd = st.command(
                self.now_ms(),
                Op::DeleteQueue(command::DeleteQueue {
                    name: name.to_string(),
                }),
            );
            self.apply(&mut st, &cmd)?
        };
        self.durable(ticket).await
    }

    /// Deletes every message of the queue, in flight ones too.
    pub async fn purge_queue(&self, name: &str) -> Result<()> {
        let ticket = {
            let mut st = self.decide(Kind::Barrier).await?;
            let queue_id = st.queue_id("name", name)?;
            let cmd = st.command(
                self.now_ms(),
                Op::PurgeQueue(command::PurgeQueue {
                    queue_id: queue_id.0,
                }),
            );
            self.apply(&mut st, &cmd)?
        };
        self.durable(ticket).await
    }
}
