// Calls the broker's gRPC API from Node (20 or later), with the .proto files
// loaded at run time: no code generation, no compile step.
//
//   cd examples/node && npm ci && node client.mjs 127.0.0.1:50051
//
// Creates a queue, sends a message with an attribute, receives it with long
// polling, deletes it, shows the queue's counts, and deletes the queue.
// Prints each step; exits 1 (with the gRPC status) if any call fails.
import { fileURLToPath } from "node:url";
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

const address = process.argv[2] || "127.0.0.1:50051";
const protoDir = fileURLToPath(new URL("../../proto", import.meta.url));

const definition = protoLoader.loadSync(["broker/v1/queue.proto", "broker/v1/topic.proto"], {
  includeDirs: [protoDir],
  keepCase: true, // field names as in the .proto files: max_messages, receipt_handle
  longs: String, // uint64 fields (counts, timestamps) as decimal strings
  enums: String,
  defaults: true,
  oneofs: true,
});
const { broker } = grpc.loadPackageDefinition(definition);
const queues = new broker.v1.QueueService(address, grpc.credentials.createInsecure());

// One unary call as a promise, with a deadline.
function call(method, request, seconds = 10) {
  return new Promise((resolve, reject) => {
    queues[method](request, { deadline: Date.now() + seconds * 1000 }, (err, response) =>
      err ? reject(err) : resolve(response),
    );
  });
}

const queue = `node-example-${Date.now()}`;
try {
  const created = await call("CreateQueue", { name: queue });
  console.log(`created queue ${created.queue.name} (visibility timeout ${created.queue.attributes.visibility_timeout_seconds} s)`);

  const body = JSON.stringify({ order: 42 });
  const sent = await call("SendMessage", { queue, body: Buffer.from(body), attributes: { kind: "created" } });
  console.log(`sent message ${sent.message_id}: ${body}`);

  // Long polling: waits up to 5 s for a message.
  const { messages } = await call("ReceiveMessages", { queue, max_messages: 10, wait_time_seconds: 5 }, 15);
  if (messages.length !== 1) throw new Error(`received ${messages.length} messages, expected 1`);
  const [m] = messages;
  console.log(`received message ${m.message_id}: ${m.body.toString()} attributes=${JSON.stringify(m.attributes)} receive_count=${m.receive_count}`);
  if (m.message_id !== sent.message_id || m.body.toString() !== body) {
    throw new Error("the received message is not the one sent");
  }

  await call("DeleteMessage", { queue, receipt_handle: m.receipt_handle });
  console.log(`deleted message ${m.message_id} (receipt handle ${m.receipt_handle})`);

  const { stats } = await call("GetQueue", { name: queue });
  console.log(`queue ${queue}: visible=${stats.visible} in_flight=${stats.in_flight} delayed=${stats.delayed}`);
  if (stats.visible !== "0" || stats.in_flight !== "0") throw new Error("the queue is not empty after the delete");

  await call("DeleteQueue", { name: queue });
  console.log(`deleted queue ${queue}`);
  console.log("node client: ok");
} catch (err) {
  const code = err.code !== undefined ? `${grpc.status[err.code]}: ` : "";
  console.error(`node client: FAILED: ${code}${err.details || err.message}`);
  process.exitCode = 1;
} finally {
  queues.close();
}
