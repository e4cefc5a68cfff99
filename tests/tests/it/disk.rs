//! A full disk, on a small tmpfs of the test's own (skipped, saying so,
//! where the test may not mount one): below `--min-free-disk` sends and
//! publishes are refused with RESOURCE_EXHAUSTED naming the floor and the
//! free space, receives and deletes go on, and sends resume by themselves
//! once space is freed; a disk filled between two readings of its free
//! space is RESOURCE_EXHAUSTED too, never INTERNAL, and sends resume once
//! space is freed (RocksDB recovers by itself), without a restart.

use std::path::{Path, PathBuf};
use std::time::Duration;

use broker_tests::*;

/// A tmpfs mounted on a temp dir, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// A tmpfs of `bytes`, or why it could not be mounted.
    fn mount(bytes: u64) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

/// Bytes free on the file system of `dir`, as `df` reports them.
fn free(dir: &Path) -> u64 {
    let out = std::process::Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(dir)
        .output()
        .expect("df");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df's figure")
}

/// Writes a file of zeros at `path` until the file system has about
/// `leave` bytes free (or none: a write that fails for space ends it).
fn fill(path: &PathBuf, leave: u64) {
    use std::io::Write as _;
    let dir = path.parent().expect("a parent");
    let mut file = std::fs::File::create(path).expect("the filler");
    let chunk = vec![0u8; 1 << 20];
    while free(dir) > leave {
        let n = (free(dir) - leave).min(chunk.len() as u64) as usize;
        if file.write_all(&chunk[..n]).is_err() {
            break;
        }
        let _ = file.flush();
    }
}

const MIB: u64 = 1 << 20;

/// A broker whose data dir is on a tmpfs of `bytes`, with `min_free_disk`;
/// `None` (saying why) where the test may not mount one.
async fn broker_on_tmpfs(bytes: u64, min_free_disk: u64) -> Option<(Tmpfs, TestServer)> {
    let fs = match Tmpfs::mount(bytes) {
        Ok(fs) => fs,
        Err(why) => {
            println!("skipped: cannot mount a tmpfs for a small disk ({why})");
            return None;
        }
    };
    let data = fs.path().join("data");
    let server = TestServer::start_with(move |c| {
        c.data_dir = data.clone();
        c.limits.min_free_disk = min_free_disk;
    })
    .await;
    Some((fs, server))
}

/// Sends `body` to `q` until a send fails; returns that error.
async fn first_refusal(client: &Client, body: &[u8], what: &str) -> Error {
    poll_until(Duration::from_secs(10), || async {
        match client
            .send_message(send_request("q", body.to_vec(), &[], None))
            .await
        {
            Err(e) => Ok(e),
            Ok(sent) => Err(format!("accepted: {sent:?}")),
        }
    })
    .await
    .unwrap_or_else(|last| panic!("{what}: {last}"))
}

/// Sends to `q` until a send succeeds (space was freed), within `within`.
async fn sends_resume(client: &Client, within: Duration) {
    poll_until(within, || async {
        client
            .send_message(send_request("q", "after", &[], None))
            .await
            .map_err(|e| format!("{e:?}"))
    })
    .await
    .unwrap_or_else(|last| panic!("sends resume once space is freed: {last}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn below_the_disk_floor_sends_are_refused_while_receives_and_deletes_go_on() {
    let Some((fs, server)) = broker_on_tmpfs(96 * MIB, 32 * MIB).await else {
        return;
    };
    let client = server.client().await;
    create_queue(&client, "q", attributes()).await;
    client
        .create_topic(pb::CreateTopicRequest { name: "t".into() })
        .await
        .expect("create topic");
    client
        .subscribe(pb::SubscribeRequest {
            topic: "t".into(),
            queue: "q".into(),
            ..Default::default()
        })
        .await
        .expect("subscribe");
    for body in ["a", "b"] {
        send_message(&client, "q", body, &[], None).await;
    }

    // Another writer fills the disk to 16 MiB free, below the floor.
    let filler = fs.path().join("filler");
    fill(&filler, 16 * MIB);
    let refused = first_refusal(&client, b"c", "a send is refused below the floor").await;
    assert_error::<()>(
        Err(refused),
        Code::ResourceExhausted,
        &["min_free_disk = 33554432", "bytes free", "receives"],
    );
    assert_error(
        client
            .publish("t", "p", std::collections::HashMap::new())
            .await,
        Code::ResourceExhausted,
        &["min_free_disk"],
    );
    let scrape = server.scrape().await;
    assert_eq!(metric_value(&scrape, "broker_disk_low"), Some(1.0));
    // Health stays SERVING: the broker can still be drained.
    let status = tonic_health::pb::health_client::HealthClient::new(
        super::operations::channel(&server).await,
    )
    .check(super::operations::check(""))
    .await
    .expect("Check")
    .into_inner()
    .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    assert_eq!(
        metric_value(&scrape, "broker_disk_min_free_bytes"),
        Some((32 * MIB) as f64)
    );

    // Consumers drain: receives and deletes go on.
    // (The two sent, the copy published before the floor, and the tries
    // the poll made before the floor was read.)
    let received = drain(&client, "q").await;
    assert!(received.len() >= 2, "{received:?}");
    for m in &received {
        delete_message(&client, "q", &m.receipt_handle)
            .await
            .expect("a delete below the floor");
    }

    // Space freed: sends resume by themselves, without a restart.
    std::fs::remove_file(&filler).expect("remove the filler");
    sends_resume(&client, Duration::from_secs(10)).await;
    let scrape = server.scrape().await;
    assert_eq!(metric_value(&scrape, "broker_disk_low"), Some(0.0));
    drop(client);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_disk_filled_between_two_readings_is_resource_exhausted_not_internal() {
    // No floor: nothing refuses before the disk is full.
    let Some((fs, server)) = broker_on_tmpfs(64 * MIB, 0).await else {
        return;
    };
    let client = server.client().await;
    create_queue(&client, "q", attributes()).await;
    send_message(&client, "q", "before", &[], None).await;

    let filler = fs.path().join("filler");
    fill(&filler, 0);
    // Sends of 256 KiB until the write-ahead log has no room left.
    let full = first_refusal(
        &client,
        &[b'x'; 256 * 1024],
        "a send fails once the disk is full",
    )
    .await;
    assert_error::<()>(Err(full), Code::ResourceExhausted, &["disk is full"]);

    std::fs::remove_file(&filler).expect("remove the filler");
    // RocksDB recovers from a full disk by itself once there is room.
    sends_resume(&client, Duration::from_secs(15)).await;
    drop(client);
    server.shutdown().await;
}
