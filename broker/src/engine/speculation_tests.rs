//! A leader's speculation under a fake log that the test drives: a
//! proposal that fails may still be committed later, or never; either
//! way the leader ends exactly where a replica that only applied the log
//! does (see `replication`'s module docs, "When speculation fails").

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::replication::{BoxFuture, CommandId, Leading, Log, NotLeading, Proposal};
use super::*;

type Proposed = (Proposal, oneshot::Sender<Result<bool>>);

/// Always leads, in term 1; hands each proposal to the test.
struct FakeLog {
    last_index: AtomicU64,
    proposals: mpsc::UnboundedSender<Proposed>,
}

impl Log for FakeLog {
    fn leading(&self) -> std::result::Result<Leading, NotLeading> {
        Ok(Leading {
            last_index: self.last_index.load(Ordering::SeqCst),
            term: 1,
        })
    }

    fn changed(&self) -> BoxFuture<'static, ()> {
        Box::pin(std::future::pending())
    }

    fn propose(&self, proposal: Proposal) -> BoxFuture<'static, Result<bool>> {
        // Appended to the log, whatever its proposer hears of it.
        self.last_index.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = oneshot::channel();
        let _ = self.proposals.send((proposal, tx));
        Box::pin(async move {
            rx.await.unwrap_or_else(|_| {
                Err(Error::Unavailable {
                    reason: "the test dropped the proposal".into(),
                })
            })
        })
    }
}

/// A leader over a fake log, and a replica that only applies entries.
struct Cluster {
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    leader: Arc<Engine>,
    replica: Engine,
    proposals: mpsc::UnboundedReceiver<Proposed>,
    index: u64,
}

impl Cluster {
    fn new() -> Cluster {
        let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let leader = Arc::new(Engine::open(dirs.0.path(), SyncMode::None).unwrap());
        let replica = Engine::open(dirs.1.path(), SyncMode::None).unwrap();
        let (tx, proposals) = mpsc::unbounded_channel();
        leader.replicate_through(Arc::new(FakeLog {
            last_index: AtomicU64::new(0),
            proposals: tx,
        }));
        Cluster {
            _dirs: dirs,
            leader,
            replica,
            proposals,
            index: 0,
        }
    }

    async fn next_proposal(&mut self) -> Proposed {
        self.proposals.recv().await.expect("a proposal")
    }

    /// The log commits `proposal` as its next entry: both engines apply
    /// it, alike.
    fn commit(&mut self, proposal: &Proposal) -> bool {
        self.index += 1;
        let record = self.index.to_be_bytes();
        let on_leader = self
            .leader
            .apply_entry(self.index, Some(proposal), keys::RAFT_APPLIED, &record)
            .unwrap();
        let on_replica = self
            .replica
            .apply_entry(self.index, Some(proposal), keys::RAFT_APPLIED, &record)
            .unwrap();
        assert_eq!(
            on_leader, on_replica,
            "the replicas disagree on entry {}",
            self.index
        );
        on_leader
    }

    /// Runs `call` on the leader while the log commits each proposal it
    /// makes, until the call returns.
    async fn committed<T: Send + 'static>(
        &mut self,
        call: impl Future<Output = T> + Send + 'static,
    ) -> T {
        let call = tokio::spawn(call);
        tokio::pin!(call);
        loop {
            tokio::select! {
                done = &mut call => return done.unwrap(),
                Some((proposal, reply)) = self.proposals.recv() => {
                    let applied = self.commit(&proposal);
                    let _ = reply.send(Ok(applied));
                }
            }
        }
    }

    async fn create_queue(&mut self) {
        let leader = self.leader.clone();
        self.committed(async move {
            leader
                .create_queue("q", &AttributeChanges::default())
                .await
                .unwrap()
        })
        .await;
    }

    fn send(&self, body: &'static str) -> tokio::task::JoinHandle<Result<Vec<Result<String>>>> {
        let leader = self.leader.clone();
        tokio::spawn(async move {
            let m = NewMessage {
                body: Bytes::from_static(body.as_bytes()),
                ..Default::default()
            };
            leader.send("q", vec![m]).await
        })
    }

    fn visible(&self) -> (u64, u64) {
        let on = |e: &Engine| e.get_queue("q").unwrap().1.visible;
        (on(&self.leader), on(&self.replica))
    }

    fn assert_alike(&self) {
        let now = self.leader.now_ms().max(self.replica.now_ms());
        assert_eq!(
            self.leader.dump(now),
            self.replica.dump(now),
            "the leader differs from the replica"
        );
    }
}

fn proposal_failed() -> Result<bool> {
    Err(Error::Unavailable {
        reason: "the test timed the proposal out".into(),
    })
}

/// The proposer gives up on an entry (a commit timeout), and the client
/// hears UNAVAILABLE, but the log commits it after all: the leader rolls
/// its speculation back and then applies the entry in full.
#[tokio::test]
async fn a_failed_proposal_the_log_commits_later_is_applied_in_full() {
    let mut c = Cluster::new();
    c.create_queue().await;
    let send = c.send("a");
    let (proposal, reply) = c.next_proposal().await;
    reply.send(proposal_failed()).unwrap();
    assert!(
        matches!(send.await.unwrap(), Err(Error::Unavailable { .. })),
        "the client hears the proposal failed"
    );
    assert_eq!(c.visible(), (1, 0), "speculated on the leader only");

    assert!(c.commit(&proposal), "the entry follows the chain");
    assert_eq!(c.visible(), (1, 1));
    c.assert_alike();

    // And the leader decides again, on the log's state.
    let send = c.send("b");
    let sent = c.committed(send).await.unwrap().unwrap();
    assert!(sent[0].is_ok());
    assert_eq!(c.visible(), (2, 2));
    c.assert_alike();
}

/// The proposer gives up on an entry, and another leader's entry is
/// committed first: the failed one is skipped on every replica, and the
/// leader's speculation is undone.
#[tokio::test]
async fn a_failed_proposal_another_leader_overtook_leaves_no_trace() {
    let mut c = Cluster::new();
    c.create_queue().await;
    let send = c.send("a");
    let (proposal, reply) = c.next_proposal().await;
    reply.send(proposal_failed()).unwrap();
    assert!(send.await.unwrap().is_err());

    // The same kind of command, decided by a leader of term 2 on the same
    // state, is committed first.
    let foreign = Proposal {
        first: CommandId { term: 2, n: 1 },
        ..proposal.clone()
    };
    assert!(c.commit(&foreign));
    assert!(!c.commit(&proposal), "decided on a state that is gone");
    assert_eq!(c.visible(), (1, 1), "the foreign send only");
    c.assert_alike();
}

/// Sends queued behind a proposal that fails are never acknowledged
/// unless the log applies them, and the leader ends where the log does.
#[tokio::test]
async fn sends_queued_behind_a_failed_proposal_are_not_acknowledged() {
    let mut c = Cluster::new();
    c.create_queue().await;
    let first = c.send("a");
    let (proposal, reply) = c.next_proposal().await;
    // Decided while the first is in flight: queued behind it.
    let queued: Vec<_> = ["b", "c", "d"].into_iter().map(|b| c.send(b)).collect();
    tokio::task::yield_now().await;
    reply.send(proposal_failed()).unwrap();
    assert!(first.await.unwrap().is_err());
    // The log never commits the failed entry; whatever the proposer
    // still proposes behind it is skipped.
    let skipped = tokio::spawn(async move {
        for q in queued {
            assert!(
                q.await.unwrap().is_err(),
                "a send nobody committed was acknowledged"
            );
        }
    });
    let foreign = Proposal {
        first: CommandId { term: 2, n: 1 },
        ..proposal.clone()
    };
    assert!(c.commit(&foreign));
    assert!(!c.commit(&proposal));
    while !skipped.is_finished() {
        tokio::select! {
            Some((later, reply)) = c.proposals.recv() => {
                let applied = c.commit(&later);
                assert!(!applied, "chained to the skipped entry");
                let _ = reply.send(Ok(applied));
            }
            _ = tokio::time::sleep(std::time::Duration::from_millis(10)) => {}
        }
    }
    skipped.await.unwrap();
    assert_eq!(c.visible(), (1, 1));
    c.assert_alike();
}

impl Cluster {
    /// Sends one message and receives it, both committed: its handle.
    async fn in_flight(&mut self) -> String {
        let sent = self.committed(self.send("a")).await.unwrap().unwrap();
        assert!(sent[0].is_ok());
        let leader = self.leader.clone();
        let received = self
            .committed(async move {
                let opts = ReceiveOptions {
                    max_messages: 1,
                    ..Default::default()
                };
                leader.receive("q", opts).await.unwrap()
            })
            .await;
        received[0].receipt_handle.clone()
    }

    fn delete(&self, handle: &str) -> tokio::task::JoinHandle<Result<Vec<Result<()>>>> {
        let leader = self.leader.clone();
        let handle = handle.to_string();
        tokio::spawn(async move { leader.delete("q", &[&handle]).await })
    }
}

/// A second delete with the same handle finds the message gone from
/// memory while the first delete is only speculated: it is not answered
/// before that delete commits, and hears UNAVAILABLE when it fails (the
/// message is still there).
#[tokio::test]
async fn an_answer_read_from_a_speculated_change_waits_for_its_commit() {
    let mut c = Cluster::new();
    c.create_queue().await;
    let handle = c.in_flight().await;

    // Fails: the duplicate must not be acknowledged.
    let first = c.delete(&handle);
    let (proposal, reply) = c.next_proposal().await;
    let second = c.delete(&handle);
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(
        !second.is_finished(),
        "answered before the delete it read committed"
    );
    reply.send(proposal_failed()).unwrap();
    assert!(first.await.unwrap().is_err());
    assert!(
        matches!(second.await.unwrap(), Err(Error::Unavailable { .. })),
        "a duplicate delete acknowledged though no delete committed"
    );
    // The log never commits it: the message is still in flight.
    let foreign = Proposal {
        first: CommandId { term: 2, n: 1 },
        commands: Vec::new(),
        ..proposal.clone()
    };
    assert!(c.commit(&foreign));
    assert!(!c.commit(&proposal));
    c.assert_alike();
    let in_flight = |e: &Engine| e.get_queue("q").unwrap().1.in_flight;
    assert_eq!((in_flight(&c.leader), in_flight(&c.replica)), (1, 1));

    // Commits: both deletes succeed once it has.
    let handle = c.in_flight().await;
    let first = c.delete(&handle);
    let (proposal, reply) = c.next_proposal().await;
    let second = c.delete(&handle);
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(!second.is_finished());
    let applied = c.commit(&proposal);
    reply.send(Ok(applied)).unwrap();
    assert!(first.await.unwrap().unwrap()[0].is_ok());
    assert!(second.await.unwrap().unwrap()[0].is_ok());
    c.assert_alike();
}

#[test]
fn a_proposal_is_bounded_in_commands_and_bytes() {
    use super::replication::proposal_len;
    const MB: usize = 1 << 20;
    assert_eq!(proposal_len(std::iter::repeat_n(100, 5_000)), 1_000);
    assert_eq!(proposal_len(std::iter::repeat_n(300_000, 10)), 3);
    assert_eq!(proposal_len(std::iter::repeat_n(3 * MB, 10)), 1);
    assert_eq!(proposal_len([100 * MB, 1].into_iter()), 1, "at least one");
    assert_eq!(proposal_len([MB, 100 * MB].into_iter()), 1);
    assert_eq!(proposal_len(std::iter::empty()), 0);
}
