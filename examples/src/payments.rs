//! The payments example: one publish, three independent workers.
//!
//! Checkout completes a payment and publishes one `payment.completed` event
//! to the topic `payments`. It does not wait for anybody: the broker writes a
//! copy into each subscribed queue, atomically, and each worker takes its
//! copies at its own pace, with its own retries and dead letters:
//!
//! | queue           | subscription                                  | worker                         |
//! |-----------------|-----------------------------------------------|--------------------------------|
//! | `email`         | every event, JSON envelope                    | emails a receipt; fails for amounts above 900, so those end in `email-dlq` after 2 receives |
//! | `sms`           | `{"country": ["IN", "BR", "MX"]}`, raw        | sends a WhatsApp message       |
//! | `notifications` | every event, JSON envelope                    | shows an in-app notification   |
//!
//! [`run`] sets this up on a broker, publishes [`PAYMENTS`] events in
//! batches, runs the three long-polling workers as tokio tasks, and returns
//! once every expected copy is accounted for (handled, or dead-lettered),
//! or fails after [`TIMEOUT`] saying what is missing. It purges the example's
//! queues first, so it can run again on the same broker.
//!
//! Envelope delivery (the default) wraps the published body in JSON:
//! `{"Type": "Notification", "MessageId", "Topic", "Message" (the body as a
//! string), "Timestamp", "MessageAttributes": {"k": {"Type": "String",
//! "Value": "v"}}}`; raw delivery copies body and attributes as they are.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use broker_client::{Client, limits, pb};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The topic checkout publishes to.
pub const TOPIC: &str = "payments";
/// The email worker's queue: every event, in an envelope.
pub const EMAIL: &str = "email";
/// Where email copies go after [`EMAIL_MAX_RECEIVES`] failed receives.
pub const EMAIL_DLQ: &str = "email-dlq";
/// The SMS (WhatsApp) worker's queue: only [`SMS_COUNTRIES`], raw.
pub const SMS: &str = "sms";
/// The in-app notification worker's queue: every event, in an envelope.
pub const NOTIFICATIONS: &str = "notifications";
/// The countries where customers get a WhatsApp message.
pub const SMS_COUNTRIES: [&str; 3] = ["IN", "BR", "MX"];
/// The SMS subscription's filter policy (SNS syntax over attributes).
pub const SMS_FILTER_POLICY: &str = r#"{"country": ["IN", "BR", "MX"]}"#;
/// Receipts for amounts above this (in cents) fail to send, every time.
pub const EMAIL_FAILS_ABOVE_CENTS: u64 = 90_000;
/// Receives of an email copy before it moves to [`EMAIL_DLQ`].
pub const EMAIL_MAX_RECEIVES: u32 = 2;
/// How many payments checkout completes.
pub const PAYMENTS: usize = 20;
/// Events per PublishBatch call.
const PUBLISH_BATCH: usize = 10;
const _: () = assert!(PUBLISH_BATCH <= limits::BATCH_ENTRIES_MAX);
/// The whole run must finish within this, or [`run`] fails.
pub const TIMEOUT: Duration = Duration::from_secs(20);
/// How long one receive of a worker waits for a message.
const LONG_POLL_SECONDS: u32 = 2;

/// A completed payment: the body of a `payment.completed` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    /// "pay-0001"; also the PublishBatch entry id.
    pub id: String,
    /// Who paid: whom to email, text and notify.
    pub customer: String,
    /// ISO country code; an attribute, so that filter policies can see it.
    pub country: String,
    /// Amount in cents, so that the body has no floating point.
    pub amount_cents: u64,
}

impl Payment {
    /// "946.99": the form of the `amount` attribute.
    pub fn amount(&self) -> String {
        format!("{}.{:02}", self.amount_cents / 100, self.amount_cents % 100)
    }

    /// The event's attributes: what subscriptions filter on.
    fn attributes(&self) -> HashMap<String, String> {
        HashMap::from([
            ("event".to_owned(), "payment.completed".to_owned()),
            ("country".to_owned(), self.country.clone()),
            ("amount".to_owned(), self.amount()),
        ])
    }

    /// Whether the SMS subscription's filter policy matches this payment.
    pub fn gets_sms(&self) -> bool {
        SMS_COUNTRIES.contains(&self.country.as_str())
    }

    /// Whether the email worker fails on this payment every time.
    pub fn email_fails(&self) -> bool {
        self.amount_cents > EMAIL_FAILS_ABOVE_CENTS
    }
}

/// The payments checkout completes: [`PAYMENTS`] of them, in five countries,
/// from 100.99 up to 993.99 (the last two are above 900).
pub fn payments() -> Vec<Payment> {
    const COUNTRIES: [&str; 5] = ["IN", "BR", "US", "MX", "DE"];
    (0..PAYMENTS)
        .map(|i| Payment {
            id: format!("pay-{:04}", i + 1),
            customer: format!("customer-{}", 100 + i),
            country: COUNTRIES[i % COUNTRIES.len()].to_owned(),
            amount_cents: 10_099 + 4_700 * i as u64,
        })
        .collect()
}

/// What one worker saw and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerReport {
    /// Distinct copies it received (a retried copy counts once).
    pub delivered: u64,
    /// Copies it handled and deleted.
    pub handled: u64,
    /// Receives it failed and released for a retry.
    pub failed_attempts: u64,
}

/// The outcome of [`run`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Events published.
    pub published: u64,
    /// PublishBatch calls made.
    pub publish_calls: u64,
    /// Copies written, summed over the publishes' `delivered`.
    pub copies: u64,
    /// The email worker (queue [`EMAIL`]).
    pub email: WorkerReport,
    /// The SMS worker (queue [`SMS`]).
    pub sms: WorkerReport,
    /// The notification worker (queue [`NOTIFICATIONS`]).
    pub notifications: WorkerReport,
    /// Payment ids whose email copy ended in [`EMAIL_DLQ`], sorted.
    pub dead_lettered: Vec<String>,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "published      {} events in {} PublishBatch calls: {} copies",
            self.published, self.publish_calls, self.copies
        )?;
        writeln!(f, "queue          delivered  handled  failed receives")?;
        for (queue, r) in [
            (EMAIL, &self.email),
            (SMS, &self.sms),
            (NOTIFICATIONS, &self.notifications),
        ] {
            writeln!(
                f,
                "{queue:<14} {:>9}  {:>7}  {:>15}",
                r.delivered, r.handled, r.failed_attempts
            )?;
        }
        write!(
            f,
            "dead-lettered  {} in {EMAIL_DLQ}: {}",
            self.dead_lettered.len(),
            if self.dead_lettered.is_empty() {
                "-".to_owned()
            } else {
                self.dead_lettered.join(", ")
            }
        )
    }
}

/// Runs the example against the broker at `addr` (see the module docs).
pub async fn run(addr: &str) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let client = Client::connect(addr)
        .await
        .context("connecting to the broker")?;
    set_up(&client).await?;
    let payments = payments();

    // The workers start first and wait (long polling): checkout never waits for them.
    let (stop, stopped) = watch::channel(false);
    let email = Worker::spawn(&client, EMAIL, handle_email, &stopped);
    let sms = Worker::spawn(&client, SMS, handle_sms, &stopped);
    let notifications = Worker::spawn(&client, NOTIFICATIONS, handle_notification, &stopped);

    // Checkout: publish every payment, a batch of events per call.
    let mut summary = Summary::default();
    let mut message_ids = HashMap::new();
    for chunk in payments.chunks(PUBLISH_BATCH) {
        let entries = chunk
            .iter()
            .map(|p| {
                Ok(pb::PublishBatchEntry {
                    id: p.id.clone(),
                    body: serde_json::to_vec(p)?.into(),
                    attributes: p.attributes(),
                })
            })
            .collect::<anyhow::Result<_>>()?;
        let response = client
            .publish_batch(pb::PublishBatchRequest {
                topic: TOPIC.to_owned(),
                entries,
            })
            .await
            .context("PublishBatch")?;
        if let Some(failed) = response.failed.first() {
            bail!(
                "PublishBatch refused {} events, first {}: {} ({})",
                response.failed.len(),
                failed.id,
                failed.message,
                failed.code
            );
        }
        summary.publish_calls += 1;
        for entry in response.successful {
            summary.published += 1;
            summary.copies += u64::from(entry.delivered);
            message_ids.insert(entry.id, entry.message_id);
        }
    }
    println!(
        "checkout: published {} payments in {} calls ({} copies); not waiting for anyone",
        summary.published, summary.publish_calls, summary.copies
    );

    // Every copy must end up handled, or dead-lettered.
    let expected_sms = payments.iter().filter(|p| p.gets_sms()).count() as u64;
    let expected_dead = payments.iter().filter(|p| p.email_fails()).count() as u64;
    let expected = [
        (&email, payments.len() as u64 - expected_dead),
        (&sms, expected_sms),
        (&notifications, payments.len() as u64),
    ];
    let deadline = started + TIMEOUT;
    loop {
        let dead = queue_depth(&client, EMAIL_DLQ).await?;
        if dead == expected_dead && expected.iter().all(|(w, n)| w.handled() == *n) {
            break;
        }
        for (worker, _) in &expected {
            if worker.task.is_finished() {
                bail!("the {} worker stopped early", worker.queue);
            }
        }
        if Instant::now() > deadline {
            let progress: Vec<String> = expected
                .iter()
                .map(|(w, n)| format!("{} handled {} of {n}", w.queue, w.handled()))
                .collect();
            bail!(
                "the payments example did not finish within {TIMEOUT:?}: {}; {EMAIL_DLQ} holds {dead} of {expected_dead}",
                progress.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop.send(true);
    summary.email = email.finish(&message_ids).await?;
    summary.sms = sms.finish(&message_ids).await?;
    summary.notifications = notifications.finish(&message_ids).await?;
    summary.dead_lettered = dead_letters(&client, &message_ids).await?;
    println!("done in {:.1?}", started.elapsed());
    Ok(summary)
}

/// Creates the topic, the queues and the subscriptions (all idempotent), and
/// empties the queues of an earlier run.
async fn set_up(client: &Client) -> anyhow::Result<()> {
    client
        .create_topic(pb::CreateTopicRequest {
            name: TOPIC.to_owned(),
        })
        .await
        .context("CreateTopic")?;
    let email_attributes = pb::QueueAttributes {
        // A worker that dies holding a copy gives it back within a second.
        visibility_timeout_seconds: Some(1),
        redrive_policy: Some(pb::RedrivePolicy {
            dead_letter_queue: EMAIL_DLQ.to_owned(),
            max_receive_count: EMAIL_MAX_RECEIVES,
        }),
        ..Default::default()
    };
    // The dead-letter queue first: a redrive policy must name an existing queue.
    for (queue, attributes) in [
        (EMAIL_DLQ, None),
        (EMAIL, Some(email_attributes)),
        (SMS, None),
        (NOTIFICATIONS, None),
    ] {
        client
            .create_queue(pb::CreateQueueRequest {
                name: queue.to_owned(),
                attributes,
            })
            .await
            .with_context(|| format!("CreateQueue {queue}"))?;
        client
            .purge_queue(pb::PurgeQueueRequest {
                name: queue.to_owned(),
            })
            .await
            .with_context(|| format!("PurgeQueue {queue}"))?;
    }
    for (queue, filter_policy, raw_delivery) in [
        (EMAIL, "", false),
        (SMS, SMS_FILTER_POLICY, true),
        (NOTIFICATIONS, "", false),
    ] {
        let subscription = client
            .subscribe(pb::SubscribeRequest {
                topic: TOPIC.to_owned(),
                queue: queue.to_owned(),
                filter_policy: filter_policy.to_owned(),
                raw_delivery,
            })
            .await
            .with_context(|| format!("Subscribe {queue} to {TOPIC}"))?
            .subscription
            .context("Subscribe returned no subscription")?;
        println!(
            "subscribed {queue:<13} to {TOPIC} ({}{}): {}",
            if raw_delivery { "raw" } else { "envelope" },
            if filter_policy.is_empty() {
                String::new()
            } else {
                format!(", filter {filter_policy}")
            },
            subscription.id
        );
    }
    Ok(())
}

/// Messages in a queue, visible or not.
async fn queue_depth(client: &Client, queue: &str) -> anyhow::Result<u64> {
    let stats = client
        .get_queue(pb::GetQueueRequest {
            name: queue.to_owned(),
        })
        .await
        .with_context(|| format!("GetQueue {queue}"))?
        .stats
        .context("GetQueue returned no stats")?;
    Ok(stats.visible + stats.in_flight + stats.delayed)
}

/// The payment ids of the copies in [`EMAIL_DLQ`], sorted. They are looked
/// at, not consumed: they stay there for someone to redrive.
async fn dead_letters(
    client: &Client,
    message_ids: &HashMap<String, String>,
) -> anyhow::Result<Vec<String>> {
    let messages = client
        .receive_messages(pb::ReceiveMessagesRequest {
            queue: EMAIL_DLQ.to_owned(),
            max_messages: limits::RECEIVE_MESSAGES_MAX,
            // Received without hiding them.
            visibility_timeout_seconds: Some(0),
            wait_time_seconds: Some(0),
        })
        .await
        .context("ReceiveMessages from the dead-letter queue")?
        .messages;
    let mut ids = Vec::with_capacity(messages.len());
    for message in &messages {
        let (payment, _) = read_envelope(message)?;
        check_message_id(message_ids, &payment.id, &message.message_id)?;
        ids.push(payment.id);
    }
    ids.sort();
    Ok(ids)
}

/// What a worker did with one copy.
enum Outcome {
    /// Done: the copy is deleted. The text says what was done.
    Handled(String),
    /// Failed: the copy is released for a retry. The text says why.
    Failed(String),
}

/// A worker's handling of one copy: the payment it is about, and the outcome.
/// An `Err` means the copy is not what the subscription promises (a broker
/// bug), which stops the example.
type Handler = fn(&pb::ReceivedMessage) -> anyhow::Result<(Payment, Outcome)>;

/// Counters a worker task shares with [`run`].
#[derive(Default)]
struct Progress {
    /// Message id to payment id of every copy received.
    seen: Mutex<HashMap<String, String>>,
    handled: AtomicU64,
    failed_attempts: AtomicU64,
}

/// A long-polling worker task on one queue.
struct Worker {
    queue: &'static str,
    progress: Arc<Progress>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Worker {
    fn spawn(
        client: &Client,
        queue: &'static str,
        handler: Handler,
        stop: &watch::Receiver<bool>,
    ) -> Worker {
        let progress = Arc::new(Progress::default());
        let task = tokio::spawn(work(
            client.clone(),
            queue,
            handler,
            progress.clone(),
            stop.clone(),
        ));
        Worker {
            queue,
            progress,
            task,
        }
    }

    fn handled(&self) -> u64 {
        self.progress.handled.load(Ordering::SeqCst)
    }

    /// Waits for the stopped task; checks that every copy it received
    /// carries the message id of the publish of its payment.
    async fn finish(self, message_ids: &HashMap<String, String>) -> anyhow::Result<WorkerReport> {
        self.task
            .await
            .with_context(|| format!("the {} worker panicked", self.queue))??;
        let seen = self.progress.seen.lock().expect("not poisoned").clone();
        for (message_id, payment_id) in &seen {
            check_message_id(message_ids, payment_id, message_id)
                .with_context(|| format!("a copy in {}", self.queue))?;
        }
        Ok(WorkerReport {
            delivered: seen.len() as u64,
            handled: self.progress.handled.load(Ordering::SeqCst),
            failed_attempts: self.progress.failed_attempts.load(Ordering::SeqCst),
        })
    }
}

/// The worker loop: long-poll, handle, delete or release; until `stop`.
async fn work(
    client: Client,
    queue: &'static str,
    handler: Handler,
    progress: Arc<Progress>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    loop {
        let messages = tokio::select! {
            // The receive is dropped mid-poll: the broker gives nothing away for it.
            _ = stop.changed() => return Ok(()),
            received = client.receive(queue, 10, LONG_POLL_SECONDS) => {
                received.with_context(|| format!("the {queue} worker's receive"))?
            }
        };
        for message in messages {
            let (payment, outcome) = handler(&message)
                .with_context(|| format!("{queue} copy {}", message.message_id))?;
            progress
                .seen
                .lock()
                .expect("not poisoned")
                .insert(message.message_id.clone(), payment.id.clone());
            match outcome {
                Outcome::Handled(what) => {
                    client
                        .delete(queue, &message.receipt_handle)
                        .await
                        .with_context(|| format!("{queue}: DeleteMessage"))?;
                    progress.handled.fetch_add(1, Ordering::SeqCst);
                    println!("{queue:>13}: {what}");
                }
                Outcome::Failed(why) => {
                    // Give it back now rather than after the visibility timeout.
                    client
                        .change_message_visibility(pb::ChangeMessageVisibilityRequest {
                            queue: queue.to_owned(),
                            receipt_handle: message.receipt_handle.clone(),
                            visibility_timeout_seconds: 0,
                        })
                        .await
                        .with_context(|| format!("{queue}: ChangeMessageVisibility"))?;
                    progress.failed_attempts.fetch_add(1, Ordering::SeqCst);
                    println!(
                        "{queue:>13}: FAILED {why} (receive {} of {EMAIL_MAX_RECEIVES})",
                        message.receive_count
                    );
                }
            }
        }
    }
}

/// The JSON envelope of a copy delivered without `raw_delivery`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Envelope {
    /// Always "Notification".
    #[serde(rename = "Type")]
    pub kind: String,
    /// The publish's message id, which is also the copy's.
    pub message_id: String,
    /// The topic it was published to.
    pub topic: String,
    /// The published body: UTF-8 text, or base64 when `message_is_base64`.
    pub message: String,
    /// When it was published, RFC 3339.
    pub timestamp: String,
    /// The published attributes.
    #[serde(default)]
    pub message_attributes: HashMap<String, EnvelopeAttribute>,
    /// True when the body was not UTF-8 and `message` is its base64.
    #[serde(default)]
    pub message_is_base64: bool,
}

/// One attribute in an [`Envelope`]: `{"Type": "String", "Value": "IN"}`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EnvelopeAttribute {
    /// Always "String".
    #[serde(rename = "Type")]
    pub kind: String,
    pub value: String,
}

/// The payment in an envelope copy, after checking the envelope.
fn read_envelope(message: &pb::ReceivedMessage) -> anyhow::Result<(Payment, Envelope)> {
    let envelope: Envelope =
        serde_json::from_slice(&message.body).context("the body is not a JSON envelope")?;
    ensure!(
        envelope.kind == "Notification",
        "envelope Type {:?}",
        envelope.kind
    );
    ensure!(
        envelope.topic == TOPIC,
        "envelope Topic {:?}",
        envelope.topic
    );
    ensure!(
        envelope.message_id == message.message_id,
        "envelope MessageId {} is not the copy's {}",
        envelope.message_id,
        message.message_id
    );
    ensure!(!envelope.message_is_base64, "a JSON body came as base64");
    let payment: Payment =
        serde_json::from_str(&envelope.message).context("the envelope's Message")?;
    let amount = envelope
        .message_attributes
        .get("amount")
        .context("the envelope has no amount attribute")?;
    ensure!(
        amount.kind == "String" && amount.value == payment.amount(),
        "amount attribute {amount:?} for {payment:?}"
    );
    Ok((payment, envelope))
}

fn handle_email(message: &pb::ReceivedMessage) -> anyhow::Result<(Payment, Outcome)> {
    let (payment, _) = read_envelope(message)?;
    let outcome = if payment.email_fails() {
        Outcome::Failed(format!(
            "the mail server refused the receipt of {} ({})",
            payment.id,
            payment.amount()
        ))
    } else {
        Outcome::Handled(format!(
            "emailed {} the receipt of {} ({})",
            payment.customer,
            payment.id,
            payment.amount()
        ))
    };
    Ok((payment, outcome))
}

fn handle_sms(message: &pb::ReceivedMessage) -> anyhow::Result<(Payment, Outcome)> {
    // Raw delivery: the body is the published payment, attributes as published.
    let payment: Payment =
        serde_json::from_slice(&message.body).context("the raw body is not a payment")?;
    ensure!(
        message.attributes == payment.attributes(),
        "raw copy attributes {:?} for {payment:?}",
        message.attributes
    );
    ensure!(
        payment.gets_sms(),
        "the filter policy let through a payment from {}",
        payment.country
    );
    let what = format!(
        "WhatsApp to {} ({}): payment {} of {} received",
        payment.customer,
        payment.country,
        payment.id,
        payment.amount()
    );
    Ok((payment, Outcome::Handled(what)))
}

fn handle_notification(message: &pb::ReceivedMessage) -> anyhow::Result<(Payment, Outcome)> {
    let (payment, envelope) = read_envelope(message)?;
    let what = format!(
        "in-app notice to {}: {} paid (published {})",
        payment.customer,
        payment.amount(),
        envelope.timestamp
    );
    Ok((payment, Outcome::Handled(what)))
}

/// Checks that a copy of a payment carries the message id its publish
/// returned: every copy of a publish has the publish's message id.
fn check_message_id(
    message_ids: &HashMap<String, String>,
    payment_id: &str,
    message_id: &str,
) -> anyhow::Result<()> {
    let published = message_ids
        .get(payment_id)
        .with_context(|| format!("a copy of {payment_id}, which was not published"))?;
    ensure!(
        published == message_id,
        "the copy of {payment_id} has message id {message_id}; its publish returned {published}"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payments_cover_every_path() {
        let payments = payments();
        assert_eq!(payments.len(), PAYMENTS);
        assert_eq!(payments.iter().filter(|p| p.gets_sms()).count(), 12);
        let failing: Vec<_> = payments
            .iter()
            .filter(|p| p.email_fails())
            .map(|p| p.id.as_str())
            .collect();
        assert_eq!(failing, ["pay-0019", "pay-0020"]);
        assert_eq!(payments[0].amount(), "100.99");
        assert_eq!(payments[19].amount(), "993.99");
    }

    #[test]
    fn sms_filter_policy_lists_the_sms_countries() {
        let policy: serde_json::Value = serde_json::from_str(SMS_FILTER_POLICY).unwrap();
        assert_eq!(policy["country"], serde_json::json!(SMS_COUNTRIES));
    }

    #[test]
    fn envelope_is_read_and_checked() {
        let payment = payments().remove(0);
        let envelope = serde_json::json!({
            "Type": "Notification",
            "MessageId": "m1",
            "Topic": TOPIC,
            "Message": serde_json::to_string(&payment).unwrap(),
            "Timestamp": "2025-01-02T03:04:05.678Z",
            "MessageAttributes": {
                "amount": {"Type": "String", "Value": payment.amount()},
            },
        });
        let mut message = pb::ReceivedMessage {
            message_id: "m1".into(),
            body: serde_json::to_vec(&envelope).unwrap().into(),
            ..Default::default()
        };
        let (read, _) = read_envelope(&message).unwrap();
        assert_eq!(read, payment);
        message.message_id = "other".into();
        let err = read_envelope(&message).unwrap_err();
        assert!(err.to_string().contains("MessageId"), "{err}");
    }
}
