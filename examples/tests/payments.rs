//! Runs the payments example end to end against an embedded broker and
//! checks its accounting: every copy delivered where the subscriptions say,
//! handled once, and the failing email copies dead-lettered.

use examples::EmbeddedBroker;
use examples::payments::{self, WorkerReport};

#[tokio::test(flavor = "multi_thread")]
async fn payments_example_fans_out_filters_and_dead_letters() {
    let broker = EmbeddedBroker::start().await.expect("start a broker");
    let summary = payments::run(&broker.addr())
        .await
        .unwrap_or_else(|e| panic!("the payments example failed: {e:#}"));
    println!("{summary}");

    assert_eq!(summary.published, 20);
    assert_eq!(summary.publish_calls, 2);
    // Every payment to email and notifications, IN/BR/MX ones (12) to sms.
    assert_eq!(summary.copies, 20 + 12 + 20);
    assert_eq!(
        summary.email,
        WorkerReport {
            delivered: 20,
            handled: 18,
            // Two failing payments, each received twice before it moved.
            failed_attempts: 4,
        }
    );
    assert_eq!(
        summary.sms,
        WorkerReport {
            delivered: 12,
            handled: 12,
            failed_attempts: 0,
        }
    );
    assert_eq!(
        summary.notifications,
        WorkerReport {
            delivered: 20,
            handled: 20,
            failed_attempts: 0,
        }
    );
    assert_eq!(summary.dead_lettered, ["pay-0019", "pay-0020"]);
}

/// Against a broker that already ran it: the example starts from empty
/// queues and the same subscriptions, so the numbers are the same.
#[tokio::test(flavor = "multi_thread")]
async fn payments_example_runs_again_on_the_same_broker() {
    let broker = EmbeddedBroker::start().await.expect("start a broker");
    let first = payments::run(&broker.addr()).await.expect("first run");
    let second = payments::run(&broker.addr()).await.expect("second run");
    assert_eq!(first, second);
}
