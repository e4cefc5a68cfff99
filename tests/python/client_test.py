#!/usr/bin/env python3
"""The broker's gRPC API from Python: stubs generated from proto/ by
grpcio-tools, against a real `broker serve` on 127.0.0.1.

Usage (from the repository root, with the tools venv; see tools/requirements.txt):

    python3 -m venv tools/.venv && tools/.venv/bin/pip install -q -r tools/requirements.txt
    tools/.venv/bin/python tests/python/client_test.py target/release/broker

Starts the broker on a free loopback port with a temporary data directory,
runs queue, topic and error checks over gRPC (every call with a deadline),
stops the broker whatever happens and prints `python client: ok (N checks)`.
On failure it prints what failed and the broker's log, and exits 1.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROTO_DIR = REPO / "proto"
PROTOS = ["broker/v1/queue.proto", "broker/v1/topic.proto"]

START_TIMEOUT_S = 30  # until the broker's port accepts connections
CALL_TIMEOUT_S = 10  # deadline of every unary call without a wait
WAIT_S = 5  # wait_time_seconds of the long polls
TOTAL_TIMEOUT_S = 180  # the whole script, whatever hangs

# google.rpc.Status and google.rpc.BadRequest, the error details the broker
# sends with INVALID_ARGUMENT (trailer `grpc-status-details-bin`), compiled
# with the API's stubs so that no googleapis package is needed.
RPC_STATUS_PROTO = """\
syntax = "proto3";
package google.rpc;
import "google/protobuf/any.proto";
message Status {
  int32 code = 1;
  string message = 2;
  repeated google.protobuf.Any details = 3;
}
message BadRequest {
  message FieldViolation {
    string field = 1;
    string description = 2;
  }
  repeated FieldViolation field_violations = 1;
}
"""


class Failure(Exception):
    pass


class Timeout(BaseException):
    """The whole script ran over TOTAL_TIMEOUT_S (raised by SIGALRM)."""


checks = 0


def check(condition: bool, what: str) -> None:
    global checks
    if not condition:
        raise Failure(what)
    checks += 1


def generate_stubs(out: Path) -> None:
    (out / "rpc_status.proto").write_text(RPC_STATUS_PROTO)
    for args in (
        ["-I", str(PROTO_DIR), f"--python_out={out}", f"--grpc_python_out={out}", *PROTOS],
        ["-I", str(out), f"--python_out={out}", "rpc_status.proto"],
    ):
        cmd = [sys.executable, "-m", "grpc_tools.protoc", *args]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if run.returncode != 0:
            raise Failure(f"grpc_tools.protoc failed ({' '.join(cmd)}):\n{run.stderr}")
    sys.path.insert(0, str(out))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, broker: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if broker.poll() is not None:
            raise Failure(f"the broker exited with status {broker.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)  # the next try
    raise Failure(f"the broker did not accept connections on 127.0.0.1:{port} within {START_TIMEOUT_S} s")


def wait_for_metric(metrics_port: int, series: str, want: float) -> None:
    """Scrapes /metrics until `series` has the value `want`: for what the
    broker does in the background, such as a receive parking."""
    import urllib.request

    deadline = time.monotonic() + CALL_TIMEOUT_S
    last = "no scrape"
    while True:
        try:
            url = f"http://127.0.0.1:{metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=CALL_TIMEOUT_S) as response:
                text = response.read().decode()
            values = [line.rpartition(" ")[2] for line in text.splitlines() if line.rpartition(" ")[0] == series]
            last = f"{series} {values[0] if values else 'missing'}"
            if values and float(values[0]) == want:
                return
        except OSError as e:  # the broker binds its metrics port as it starts
            last = f"GET /metrics: {e}"
        if time.monotonic() > deadline:
            raise Failure(f"{series} not {want} within {CALL_TIMEOUT_S} s; last: {last}")
        time.sleep(0.01)  # the next scrape


def stop(broker: subprocess.Popen) -> None:
    if broker.poll() is not None:
        return
    broker.send_signal(signal.SIGTERM)
    try:
        broker.wait(timeout=15)
    except subprocess.TimeoutExpired:
        broker.kill()
        broker.wait(timeout=10)


def run_checks(port: int, metrics_port: int) -> None:
    import grpc
    from broker.v1 import queue_pb2 as q
    from broker.v1 import queue_pb2_grpc
    from broker.v1 import topic_pb2 as t
    from broker.v1 import topic_pb2_grpc
    import rpc_status_pb2

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=CALL_TIMEOUT_S)
        queues = queue_pb2_grpc.QueueServiceStub(channel)
        topics = topic_pb2_grpc.TopicServiceStub(channel)

        # A queue: create, long-poll receive, send with an attribute, delete.
        created = queues.CreateQueue(q.CreateQueueRequest(name="py-orders"), timeout=CALL_TIMEOUT_S)
        check(created.queue.name == "py-orders", f"CreateQueue returned {created.queue.name!r}")
        check(
            created.queue.attributes.visibility_timeout_seconds == 30,
            f"default visibility timeout: {created.queue.attributes.visibility_timeout_seconds}",
        )

        # The receive starts first and waits (long polling) for the send.
        started = time.monotonic()
        receive = queues.ReceiveMessages.future(
            q.ReceiveMessagesRequest(queue="py-orders", max_messages=10, wait_time_seconds=WAIT_S),
            timeout=WAIT_S + CALL_TIMEOUT_S,
        )
        wait_for_metric(metrics_port, "broker_long_polls_open", 1)
        sent = queues.SendMessage(
            q.SendMessageRequest(queue="py-orders", body=b'{"order": 42}', attributes={"kind": "created"}),
            timeout=CALL_TIMEOUT_S,
        )
        check(len(sent.message_id) > 0, "SendMessage returned no message id")
        received = receive.result()
        elapsed = time.monotonic() - started
        check(len(received.messages) == 1, f"the long poll received {len(received.messages)} messages, not 1")
        msg = received.messages[0]
        check(msg.message_id == sent.message_id, f"received id {msg.message_id}, sent {sent.message_id}")
        check(msg.body == b'{"order": 42}', f"received body {msg.body!r}")
        check(dict(msg.attributes) == {"kind": "created"}, f"received attributes {dict(msg.attributes)}")
        check(msg.receive_count == 1, f"receive_count {msg.receive_count}")
        check(elapsed < WAIT_S, f"the long poll returned after {elapsed:.1f} s, not when the message came")

        stats = queues.GetQueue(q.GetQueueRequest(name="py-orders"), timeout=CALL_TIMEOUT_S).stats
        check(stats.in_flight == 1, f"in flight after the receive: {stats.in_flight}")
        queues.DeleteMessage(
            q.DeleteMessageRequest(queue="py-orders", receipt_handle=msg.receipt_handle), timeout=CALL_TIMEOUT_S
        )
        stats = queues.GetQueue(q.GetQueueRequest(name="py-orders"), timeout=CALL_TIMEOUT_S).stats
        check(
            (stats.visible, stats.in_flight, stats.delayed) == (0, 0, 0),
            f"after the delete: visible {stats.visible}, in flight {stats.in_flight}, delayed {stats.delayed}",
        )

        # A topic: a queue subscribed gets a copy of a publish (JSON envelope).
        topics.CreateTopic(t.CreateTopicRequest(name="py-payments"), timeout=CALL_TIMEOUT_S)
        queues.CreateQueue(q.CreateQueueRequest(name="py-email"), timeout=CALL_TIMEOUT_S)
        sub = topics.Subscribe(t.SubscribeRequest(topic="py-payments", queue="py-email"), timeout=CALL_TIMEOUT_S)
        check(len(sub.subscription.id) == 16, f"subscription id {sub.subscription.id!r}")
        published = topics.Publish(
            t.PublishRequest(topic="py-payments", body=b"paid", attributes={"country": "IN"}),
            timeout=CALL_TIMEOUT_S,
        )
        check(published.delivered == 1, f"Publish delivered {published.delivered} copies, not 1")
        copies = queues.ReceiveMessages(
            q.ReceiveMessagesRequest(queue="py-email", max_messages=10, wait_time_seconds=WAIT_S),
            timeout=WAIT_S + CALL_TIMEOUT_S,
        ).messages
        check(len(copies) == 1, f"py-email received {len(copies)} copies, not 1")
        check(copies[0].message_id == published.message_id, "the copy's id is not the publish's")
        envelope = json.loads(copies[0].body)
        check(
            (envelope.get("Type"), envelope.get("Topic"), envelope.get("Message"))
            == ("Notification", "py-payments", "paid"),
            f"envelope {envelope}",
        )
        check(
            envelope.get("MessageAttributes") == {"country": {"Type": "String", "Value": "IN"}},
            f"envelope attributes {envelope.get('MessageAttributes')}",
        )
        queues.DeleteMessage(
            q.DeleteMessageRequest(queue="py-email", receipt_handle=copies[0].receipt_handle),
            timeout=CALL_TIMEOUT_S,
        )

        # Errors: status codes, and the field named in the details.
        try:
            queues.ReceiveMessages(q.ReceiveMessagesRequest(queue="py-missing"), timeout=CALL_TIMEOUT_S)
            check(False, "ReceiveMessages on a missing queue succeeded")
        except grpc.RpcError as e:
            check(e.code() == grpc.StatusCode.NOT_FOUND, f"missing queue: {e.code()} {e.details()!r}")
        try:
            queues.ReceiveMessages(
                q.ReceiveMessagesRequest(queue="py-orders", max_messages=101), timeout=CALL_TIMEOUT_S
            )
            check(False, "ReceiveMessages with max_messages 101 succeeded")
        except grpc.RpcError as e:
            check(e.code() == grpc.StatusCode.INVALID_ARGUMENT, f"max_messages 101: {e.code()}")
            check("max_messages" in (e.details() or ""), f"the message does not name the field: {e.details()!r}")
            raw = dict(e.trailing_metadata() or ()).get("grpc-status-details-bin")
            check(raw is not None, "INVALID_ARGUMENT without grpc-status-details-bin")
            status = rpc_status_pb2.Status.FromString(raw)
            fields = []
            for any_detail in status.details:
                if any_detail.type_url.endswith("/google.rpc.BadRequest"):
                    bad = rpc_status_pb2.BadRequest.FromString(any_detail.value)
                    fields += [v.field for v in bad.field_violations]
            check(fields == ["max_messages"], f"BadRequest field violations {fields}")


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[1] in ("-h", "--help"):
        print("usage: client_test.py PATH_OF_BROKER_BINARY", file=sys.stderr)
        return 2
    broker_bin = Path(argv[1]).resolve()
    if not (broker_bin.is_file() and os.access(broker_bin, os.X_OK)):
        print(f"python client: FAILED: {argv[1]} is not an executable file", file=sys.stderr)
        return 1
    try:
        import grpc  # noqa: F401
        import grpc_tools  # noqa: F401
    except ImportError as e:
        print(
            f"python client: FAILED: {e}; run with the tools venv: python3 -m venv tools/.venv && "
            "tools/.venv/bin/pip install -q -r tools/requirements.txt",
            file=sys.stderr,
        )
        return 1

    def on_alarm(signum, frame):
        raise Timeout(f"the test ran over {TOTAL_TIMEOUT_S} s")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(TOTAL_TIMEOUT_S)

    with tempfile.TemporaryDirectory(prefix="broker-pytest-") as tmp:
        tmp = Path(tmp)
        stubs, data_dir, log_path = tmp / "stubs", tmp / "data", tmp / "broker.log"
        stubs.mkdir()
        broker = None
        try:
            generate_stubs(stubs)
            port, metrics_port = free_port(), free_port()
            while metrics_port == port:
                metrics_port = free_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
            with open(log_path, "wb") as log:
                broker = subprocess.Popen(
                    [
                        str(broker_bin), "serve",
                        "--listen", f"127.0.0.1:{port}",
                        "--metrics-listen", f"127.0.0.1:{metrics_port}",
                        "--data-dir", str(data_dir),
                        "--shutdown-timeout", "2",
                        # Not dependent on this machine's free space.
                        "--min-free-disk", "0",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
            wait_for_port(port, broker)
            run_checks(port, metrics_port)
        except (Failure, Timeout, Exception) as e:  # noqa: BLE001 - report anything, then the log
            import traceback

            kind = "" if isinstance(e, (Failure, Timeout)) else f"{type(e).__name__}: "
            print(f"python client: FAILED: {kind}{e}", file=sys.stderr)
            if not isinstance(e, (Failure, Timeout)):
                traceback.print_exc()
            if broker is not None:
                stop(broker)
                log = log_path.read_text(errors="replace")
                print(f"--- broker log ({log_path.name}, last 50 lines) ---", file=sys.stderr)
                print("\n".join(log.splitlines()[-50:]), file=sys.stderr)
            return 1
        finally:
            if broker is not None:
                stop(broker)
            signal.alarm(0)

    print(f"python client: ok ({checks} checks)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
