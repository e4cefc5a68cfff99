//! Rust client for the broker's gRPC API (`broker.v1.QueueService` and
//! `broker.v1.TopicService`).
//!
//! - [`Client`]: one async method per RPC, taking and returning the generated
//!   [`pb`] types, plus the conveniences [`Client::send`], [`Client::receive`],
//!   [`Client::delete`] and [`Client::publish`] for the common case. The RPC
//!   methods are named after the RPC in snake case (`CreateTopic` is
//!   [`Client::create_topic`]), except `Publish`, which is
//!   [`Client::publish_message`] (as `SendMessage` is
//!   [`Client::send_message`]), leaving the short name to the convenience.
//!   [`Client::list_all_queues`], [`Client::list_all_topics`] and
//!   [`Client::list_all_subscriptions`] (module `paging`) follow the pages
//!   of a listing to the last.
//! - [`Error`]: the gRPC status codes the broker uses, as an enum, so callers
//!   match on `Error::NotFound(_)` instead of inspecting raw `tonic::Status`es.
//! - [`Consumer`] (module `consumer`): a queue worker — receive, run an
//!   async handler on a few tasks, delete on success, retry with backoff on
//!   failure, heartbeat slow jobs, rate-limit, shut down gracefully; or a
//!   [`ConsumerStream`] of [`Delivery`]s for a hand-written loop.
//! - [`Publisher`] (module `publisher`): sends to a queue or publishes to a
//!   topic on one publishing stream (`SendStream`), with a future per
//!   message that resolves once the broker acknowledged it.
//! - [`limits`]: the API's limits (batch sizes, name lengths, attribute
//!   ranges, ...), the constants the broker enforces, for sizing requests.
//!
//! A `Client` is a cheap handle over one HTTP/2 connection: clone it freely
//! and use the clones from many tasks at once; requests are multiplexed.
//!
//! [`Client::connect_with`] takes [`ConnectOptions`]: a token for a broker
//! with authentication (sent as `authorization: Bearer <token>` on every
//! call, streams included) and TLS (the CA certificate that signed the
//! broker's certificate, and a client certificate for brokers that require
//! one). Consumers and publishers built on such a client inherit both.
//!
//! ```no_run
//! # async fn demo() -> Result<(), broker_client::Error> {
//! use broker_client::{Client, ConnectOptions};
//!
//! let ca = std::fs::read("ca.pem").expect("the CA certificate");
//! let options = ConnectOptions::new().token("s3cr3t").tls_ca_pem(ca);
//! let client = Client::connect_with("https://broker.internal:50051", options).await?;
//! # Ok(())
//! # }
//! ```
//!
//! ```no_run
//! # async fn demo() -> Result<(), broker_client::Error> {
//! use broker_client::{Client, pb};
//!
//! let client = Client::connect("127.0.0.1:50051").await?;
//! client
//!     .create_queue(pb::CreateQueueRequest { name: "orders".into(), ..Default::default() })
//!     .await?;
//! client.send("orders", "hello").await?;
//! for message in client.receive("orders", 10, 20).await? {
//!     println!("{}", String::from_utf8_lossy(&message.body));
//!     client.delete("orders", &message.receipt_handle).await?;
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Topics fan a published message out to every subscribed queue:
//!
//! ```no_run
//! # async fn demo(client: broker_client::Client) -> Result<(), broker_client::Error> {
//! use std::collections::HashMap;
//! use broker_client::pb;
//!
//! client.create_topic(pb::CreateTopicRequest { name: "payments".into() }).await?;
//! client
//!     .subscribe(pb::SubscribeRequest {
//!         topic: "payments".into(),
//!         queue: "orders".into(),
//!         ..Default::default()
//!     })
//!     .await?;
//! let attributes = HashMap::from([("country".to_owned(), "IN".to_owned())]);
//! let published = client.publish("payments", "paid", attributes).await?;
//! println!("{} copies of {}", published.delivered, published.message_id);
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

pub use broker_proto::{limits, pb};

mod consumer;
mod lookahead;
mod paging;
mod publisher;
mod route;
pub use consumer::{Consumer, ConsumerBuilder, ConsumerStream, ConsumerSummary, Delivery, Message};
/// The request body of the client's transport (see its module): public
/// so that `broker-bench --mode echo` holds its bare tonic client to the
/// same writes a call; not part of the client's API.
#[doc(hidden)]
pub use lookahead::Lookahead;
pub use publisher::{AckFuture, OutgoingMessage, Publisher, PublisherBuilder};

use pb::cluster_service_client::ClusterServiceClient;
use pb::queue_service_client::QueueServiceClient;
use pb::topic_service_client::TopicServiceClient;

/// How long [`Client::connect`] waits for the TCP connection.
///
/// Without it, an address that silently drops packets would hang the caller
/// for the operating system's TCP timeout (minutes).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a call waits to connect to a cluster's leader (an address a
/// node gave) before it fails and calls go back to the entry address.
const LEADER_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// What the stubs send through: the channel, with the token added to
/// every call.
type Transport = InterceptedService<route::Route, Credentials>;

/// Adds `authorization: Bearer <token>` to every call, when there is a token.
#[derive(Clone)]
struct Credentials {
    authorization: Option<AsciiMetadataValue>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token itself.
        f.debug_struct("Credentials")
            .field("token", &self.authorization.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl tonic::service::Interceptor for Credentials {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// How [`Client::connect_with`] connects: a token and TLS settings. The
/// default is plaintext without a token, as [`Client::connect`].
#[derive(Clone)]
pub struct ConnectOptions {
    /// Sent as `authorization: Bearer <token>`.
    token: Option<String>,
    /// PEM of the CA certificate(s) the broker's certificate must chain to.
    tls_ca_pem: Option<Vec<u8>>,
    /// PEM of the client's certificate chain and private key.
    tls_identity_pem: Option<(Vec<u8>, Vec<u8>)>,
    /// The name the broker's certificate must carry, if not the host of
    /// the address.
    tls_domain: Option<String>,
    /// Send calls straight to a cluster's leader once a node names it.
    follow_leader: bool,
}

impl Default for ConnectOptions {
    fn default() -> ConnectOptions {
        ConnectOptions {
            token: None,
            tls_ca_pem: None,
            tls_identity_pem: None,
            tls_domain: None,
            follow_leader: true,
        }
    }
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("tls_ca", &self.tls_ca_pem.is_some())
            .field("tls_identity", &self.tls_identity_pem.is_some())
            .field("tls_domain", &self.tls_domain)
            .field("follow_leader", &self.follow_leader)
            .finish()
    }
}

impl ConnectOptions {
    /// Plaintext, no token.
    pub fn new() -> ConnectOptions {
        ConnectOptions::default()
    }

    /// The token to authenticate with (`--auth-tokens` on the broker);
    /// printable ASCII.
    pub fn token(mut self, token: impl Into<String>) -> ConnectOptions {
        self.token = Some(token.into());
        self
    }

    /// Connect with TLS, trusting the CA certificate(s) in `pem` (the
    /// contents of a PEM file). An address without a scheme then means
    /// `https://`.
    pub fn tls_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> ConnectOptions {
        self.tls_ca_pem = Some(pem.into());
        self
    }

    /// Present this client certificate (PEM chain and PEM private key), for
    /// a broker started with `--tls-client-ca`.
    pub fn tls_identity_pem(
        mut self,
        cert: impl Into<Vec<u8>>,
        key: impl Into<Vec<u8>>,
    ) -> ConnectOptions {
        self.tls_identity_pem = Some((cert.into(), key.into()));
        self
    }

    /// Check the broker's certificate for `domain` instead of the host of
    /// the address (e.g. when connecting by IP address).
    pub fn tls_domain(mut self, domain: impl Into<String>) -> ConnectOptions {
        self.tls_domain = Some(domain.into());
        self
    }

    /// Whether calls go straight to a cluster's leader once a node has
    /// named it (default: true). A cluster node that passes a call on to
    /// the leader answers with the leader's client address; the client then
    /// sends its next calls there, saving a hop, and goes back to the
    /// address it connected to when the leader fails to answer. Turn it off
    /// when the nodes' client addresses cannot be reached from here (a load
    /// balancer in front of nodes on a private network): each try then
    /// costs a failed call every few seconds.
    pub fn follow_leader(mut self, follow: bool) -> ConnectOptions {
        self.follow_leader = follow;
        self
    }

    fn uses_tls(&self) -> bool {
        self.tls_ca_pem.is_some() || self.tls_identity_pem.is_some()
    }
}

/// An endpoint for `uri` with the TLS settings of `options`, or why not.
fn endpoint(uri: &str, options: &ConnectOptions) -> Result<Endpoint, String> {
    let endpoint = Endpoint::from_shared(uri.to_owned())
        .map_err(|e| format!("invalid address: {}", error_chain(&e)))?;
    match (uri.starts_with("https://"), &options.tls_ca_pem) {
        (true, None) => Err(
            "an https:// address needs the CA certificate of the broker's certificate \
             (ConnectOptions::tls_ca_pem; the CLI's --tls-ca)"
                .into(),
        ),
        (false, _) if options.uses_tls() => {
            Err("TLS settings were given for a plaintext address; use https://".into())
        }
        (true, Some(ca)) => {
            let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
            if let Some((cert, key)) = &options.tls_identity_pem {
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            if let Some(domain) = &options.tls_domain {
                tls = tls.domain_name(domain.clone());
            }
            endpoint
                .tls_config(tls)
                .map_err(|e| format!("TLS settings: {}", error_chain(&e)))
        }
        (false, _) => Ok(endpoint),
    }
}

/// A connection to a broker.
///
/// Cloning is cheap (the clones share the connection), and every method
/// takes `&self`, so one `Client` can serve many tasks concurrently.
#[derive(Clone, Debug)]
pub struct Client {
    /// The generated stub of `QueueService`; its methods take `&mut self`, so
    /// each call works on a clone, which shares the underlying channel.
    queues: QueueServiceClient<Transport>,
    /// The generated stub of `TopicService`, on the same channel.
    topics: TopicServiceClient<Transport>,
    /// The generated stub of `ClusterService`, on the same channel.
    cluster: ClusterServiceClient<Transport>,
    /// Where the stubs' calls go (shared with their transport).
    route: route::Route,
}

impl Client {
    /// Connects to the broker at `addr`, either `"host:port"` or
    /// `"http://host:port"`.
    ///
    /// The connection is made eagerly, so a wrong address fails here with
    /// [`Error::Connect`] naming the address, rather than at the first call.
    /// The connection attempt gives up after 10 seconds.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), broker_client::Error> {
    /// let client = broker_client::Client::connect("127.0.0.1:50051").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect(addr: impl AsRef<str>) -> Result<Client, Error> {
        Client::connect_with(addr, ConnectOptions::new()).await
    }

    /// Connects to the broker at `addr` with a token and/or TLS: `addr` is
    /// `"host:port"` (`https` when the options have TLS settings, `http`
    /// otherwise), `"http://host:port"` or `"https://host:port"`.
    ///
    /// Fails with [`Error::Connect`] when the address and the options
    /// disagree (`https://` without a CA certificate, TLS settings with
    /// `http://`), when a PEM or the token is unusable, or when the
    /// connection or the TLS handshake fails. A wrong token is only noticed
    /// by the first call ([`Error::Other`] with code `Unauthenticated`).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), broker_client::Error> {
    /// use broker_client::{Client, ConnectOptions};
    ///
    /// let client = Client::connect_with(
    ///     "127.0.0.1:50051",
    ///     ConnectOptions::new().token(std::env::var("BROKER_TOKEN").unwrap_or_default()),
    /// )
    /// .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect_with(
        addr: impl AsRef<str>,
        options: ConnectOptions,
    ) -> Result<Client, Error> {
        let addr = addr.as_ref();
        let connect_error = |reason: String| Error::Connect {
            addr: addr.to_owned(),
            reason,
        };
        let uri = if addr.contains("://") {
            addr.to_owned()
        } else if options.uses_tls() {
            format!("https://{addr}")
        } else {
            format!("http://{addr}")
        };
        let https = uri.starts_with("https://");
        let entry = endpoint(&uri, &options).map_err(connect_error)?;
        let authorization = match &options.token {
            None => None,
            Some(token) => Some(
                MetadataValue::try_from(format!("Bearer {token}"))
                    .ok()
                    .filter(|_| token.bytes().all(|b| b.is_ascii_graphic()))
                    .ok_or_else(|| {
                        connect_error("the token must be printable ASCII without spaces".into())
                    })?,
            ),
        };
        let channel = entry
            .connect_timeout(CONNECT_TIMEOUT)
            .connect()
            .await
            .map_err(|e| connect_error(error_chain(&e)))?;
        // Another node's address: the entry's scheme and TLS settings.
        let connect: Option<route::Connect> = options.follow_leader.then(|| {
            let (options, scheme) = (options.clone(), if https { "https" } else { "http" });
            Box::new(move |addr: &str| {
                endpoint(&format!("{scheme}://{addr}"), &options)
                    .ok()
                    .map(|e| e.connect_timeout(LEADER_CONNECT_TIMEOUT).connect_lazy())
            }) as route::Connect
        });
        let route = route::Route::new(channel, connect);
        let channel = InterceptedService::new(route.clone(), Credentials { authorization });
        let queues = QueueServiceClient::new(channel.clone())
            .max_decoding_message_size(broker_proto::limits::MAX_GRPC_MESSAGE_BYTES)
            .max_encoding_message_size(broker_proto::limits::MAX_GRPC_MESSAGE_BYTES);
        let topics = TopicServiceClient::new(channel.clone())
            .max_decoding_message_size(broker_proto::limits::MAX_GRPC_MESSAGE_BYTES)
            .max_encoding_message_size(broker_proto::limits::MAX_GRPC_MESSAGE_BYTES);
        let cluster = ClusterServiceClient::new(channel);
        Ok(Client {
            queues,
            topics,
            cluster,
            route,
        })
    }

    /// The client address of the cluster leader calls go to, once a node
    /// has named it (see [`ConnectOptions::follow_leader`]); `None` while
    /// they go to the address connected to.
    pub fn leader_address(&self) -> Option<String> {
        self.route.leader()
    }

    /// A queue-service handle for one call: the generated methods need `&mut self`.
    fn rpc(&self) -> QueueServiceClient<Transport> {
        self.queues.clone()
    }

    /// A topic-service handle for one call.
    fn topic_rpc(&self) -> TopicServiceClient<Transport> {
        self.topics.clone()
    }

    /// Creates a queue; returns the existing one when the attributes are equal.
    pub async fn create_queue(
        &self,
        req: pb::CreateQueueRequest,
    ) -> Result<pb::CreateQueueResponse, Error> {
        Ok(self.rpc().create_queue(req).await?.into_inner())
    }

    /// A queue's effective attributes and its exact message counts.
    pub async fn get_queue(&self, req: pb::GetQueueRequest) -> Result<pb::GetQueueResponse, Error> {
        Ok(self.rpc().get_queue(req).await?.into_inner())
    }

    /// The broker's own state: its messages over all queues against its
    /// `max_messages` cap, and its data dir's disk against `min_free_disk`.
    pub async fn get_broker_stats(&self) -> Result<pb::GetBrokerStatsResponse, Error> {
        Ok(self
            .rpc()
            .get_broker_stats(pb::GetBrokerStatsRequest {})
            .await?
            .into_inner())
    }

    /// One page of queues in name order; follow `next_page_token` for more.
    pub async fn list_queues(
        &self,
        req: pb::ListQueuesRequest,
    ) -> Result<pb::ListQueuesResponse, Error> {
        Ok(self.rpc().list_queues(req).await?.into_inner())
    }

    /// Changes the attributes set in the request; the others keep their value.
    pub async fn update_queue(
        &self,
        req: pb::UpdateQueueRequest,
    ) -> Result<pb::UpdateQueueResponse, Error> {
        Ok(self.rpc().update_queue(req).await?.into_inner())
    }

    /// Deletes a queue and all of its messages.
    pub async fn delete_queue(
        &self,
        req: pb::DeleteQueueRequest,
    ) -> Result<pb::DeleteQueueResponse, Error> {
        Ok(self.rpc().delete_queue(req).await?.into_inner())
    }

    /// Deletes every message of a queue, in-flight ones too.
    pub async fn purge_queue(
        &self,
        req: pb::PurgeQueueRequest,
    ) -> Result<pb::PurgeQueueResponse, Error> {
        Ok(self.rpc().purge_queue(req).await?.into_inner())
    }

    /// Sends one message; returns once it is durable on the broker's disk.
    pub async fn send_message(
        &self,
        req: pb::SendMessageRequest,
    ) -> Result<pb::SendMessageResponse, Error> {
        Ok(self.rpc().send_message(req).await?.into_inner())
    }

    /// Sends up to 100 messages; a bad entry fails alone, in `failed`.
    pub async fn send_message_batch(
        &self,
        req: pb::SendMessageBatchRequest,
    ) -> Result<pb::SendMessageBatchResponse, Error> {
        Ok(self.rpc().send_message_batch(req).await?.into_inner())
    }

    /// Receives up to `max_messages` messages, hiding them for the visibility
    /// timeout; with a wait time, waits for the first one (long polling).
    pub async fn receive_messages(
        &self,
        req: pb::ReceiveMessagesRequest,
    ) -> Result<pb::ReceiveMessagesResponse, Error> {
        Ok(self.rpc().receive_messages(req).await?.into_inner())
    }

    /// Deletes a received message by its latest receipt handle.
    pub async fn delete_message(
        &self,
        req: pb::DeleteMessageRequest,
    ) -> Result<pb::DeleteMessageResponse, Error> {
        Ok(self.rpc().delete_message(req).await?.into_inner())
    }

    /// Deletes up to 100 received messages; a bad entry fails alone.
    pub async fn delete_message_batch(
        &self,
        req: pb::DeleteMessageBatchRequest,
    ) -> Result<pb::DeleteMessageBatchResponse, Error> {
        Ok(self.rpc().delete_message_batch(req).await?.into_inner())
    }

    /// Extends or shortens the visibility timeout of an in-flight message;
    /// 0 makes it visible now.
    pub async fn change_message_visibility(
        &self,
        req: pb::ChangeMessageVisibilityRequest,
    ) -> Result<pb::ChangeMessageVisibilityResponse, Error> {
        Ok(self
            .rpc()
            .change_message_visibility(req)
            .await?
            .into_inner())
    }

    /// [`Client::change_message_visibility`] for up to 100 messages; a bad
    /// entry fails alone.
    pub async fn change_message_visibility_batch(
        &self,
        req: pb::ChangeMessageVisibilityBatchRequest,
    ) -> Result<pb::ChangeMessageVisibilityBatchResponse, Error> {
        Ok(self
            .rpc()
            .change_message_visibility_batch(req)
            .await?
            .into_inner())
    }

    /// Moves messages out of a dead-letter queue, back to the queue each one
    /// died in, or to `destination_queue`.
    pub async fn redrive_messages(
        &self,
        req: pb::RedriveMessagesRequest,
    ) -> Result<pb::RedriveMessagesResponse, Error> {
        Ok(self.rpc().redrive_messages(req).await?.into_inner())
    }

    /// Looks at up to `max_messages` (0: 10, at most 100) messages of a
    /// queue, oldest first, without receiving them: receive counts,
    /// visibility and receipt handles stay as they are. Each message says
    /// whether it is visible, in flight or delayed; follow
    /// `next_page_token` for more.
    ///
    /// ```no_run
    /// # async fn demo(client: broker_client::Client) -> Result<(), broker_client::Error> {
    /// use broker_client::pb;
    ///
    /// let page = client
    ///     .peek_messages(pb::PeekMessagesRequest {
    ///         queue: "orders-dlq".into(),
    ///         max_messages: 100,
    ///         page_token: String::new(),
    ///     })
    ///     .await?;
    /// for m in &page.messages {
    ///     println!("{} {:?} from {}", m.message_id, m.state(), m.dead_letter_source);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn peek_messages(
        &self,
        req: pb::PeekMessagesRequest,
    ) -> Result<pb::PeekMessagesResponse, Error> {
        Ok(self.rpc().peek_messages(req).await?.into_inner())
    }

    /// Creates a topic; returns the existing one when it exists.
    ///
    /// Topic names follow the queue-name rules: 1..=80 of `A-Z a-z 0-9 _ -`.
    pub async fn create_topic(
        &self,
        req: pb::CreateTopicRequest,
    ) -> Result<pb::CreateTopicResponse, Error> {
        Ok(self.topic_rpc().create_topic(req).await?.into_inner())
    }

    /// The cluster as the node this client is connected to sees it
    /// (cluster mode; a single node answers FAILED_PRECONDITION).
    pub async fn get_cluster_status(&self) -> Result<pb::GetClusterStatusResponse, Error> {
        let request = pb::GetClusterStatusRequest {};
        Ok(self
            .cluster
            .clone()
            .get_cluster_status(request)
            .await?
            .into_inner())
    }

    /// Removes node `node_id` from the cluster; returns the voters that
    /// remain.
    pub async fn remove_node(&self, node_id: u64) -> Result<pb::RemoveNodeResponse, Error> {
        let request = pb::RemoveNodeRequest { node_id };
        Ok(self
            .cluster
            .clone()
            .remove_node(request)
            .await?
            .into_inner())
    }

    /// A topic and its number of subscriptions.
    pub async fn get_topic(&self, req: pb::GetTopicRequest) -> Result<pb::GetTopicResponse, Error> {
        Ok(self.topic_rpc().get_topic(req).await?.into_inner())
    }

    /// One page of topics in name order; follow `next_page_token` for more.
    pub async fn list_topics(
        &self,
        req: pb::ListTopicsRequest,
    ) -> Result<pb::ListTopicsResponse, Error> {
        Ok(self.topic_rpc().list_topics(req).await?.into_inner())
    }

    /// Deletes a topic and its subscriptions; the subscribed queues and the
    /// copies already in them stay.
    pub async fn delete_topic(
        &self,
        req: pb::DeleteTopicRequest,
    ) -> Result<pb::DeleteTopicResponse, Error> {
        Ok(self.topic_rpc().delete_topic(req).await?.into_inner())
    }

    /// Subscribes a queue to a topic, with an optional filter policy (SNS
    /// syntax over message attributes) and raw or envelope delivery.
    ///
    /// Idempotent for equal settings: the existing subscription is returned.
    /// [`Error::AlreadyExists`] when the queue is subscribed to the topic
    /// with other settings; [`Error::NotFound`] when the topic or the queue
    /// does not exist; [`Error::InvalidArgument`] for an invalid policy.
    ///
    /// ```no_run
    /// # async fn demo(client: broker_client::Client) -> Result<(), broker_client::Error> {
    /// use broker_client::pb;
    ///
    /// let subscription = client
    ///     .subscribe(pb::SubscribeRequest {
    ///         topic: "payments".into(),
    ///         queue: "sms".into(),
    ///         filter_policy: r#"{"country": ["IN", "BR"]}"#.into(),
    ///         raw_delivery: true,
    ///     })
    ///     .await?
    ///     .subscription;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn subscribe(
        &self,
        req: pb::SubscribeRequest,
    ) -> Result<pb::SubscribeResponse, Error> {
        Ok(self.topic_rpc().subscribe(req).await?.into_inner())
    }

    /// Removes a subscription by id; the queue and its messages stay.
    pub async fn unsubscribe(
        &self,
        req: pb::UnsubscribeRequest,
    ) -> Result<pb::UnsubscribeResponse, Error> {
        Ok(self.topic_rpc().unsubscribe(req).await?.into_inner())
    }

    /// One page of subscriptions, optionally only those of one topic and/or
    /// one queue; follow `next_page_token` for more.
    pub async fn list_subscriptions(
        &self,
        req: pb::ListSubscriptionsRequest,
    ) -> Result<pb::ListSubscriptionsResponse, Error> {
        Ok(self.topic_rpc().list_subscriptions(req).await?.into_inner())
    }

    /// Publishes one message to a topic: a copy goes into every subscribed
    /// queue whose filter policy matches, all copies or none. Returns the
    /// message id (each copy has it too) and the number of copies written.
    ///
    /// The RPC `Publish`; see [`Client::publish`] for the short form.
    pub async fn publish_message(
        &self,
        req: pb::PublishRequest,
    ) -> Result<pb::PublishResponse, Error> {
        Ok(self.topic_rpc().publish(req).await?.into_inner())
    }

    /// Publishes up to 100 messages to a topic; a bad entry fails alone, in
    /// `failed`.
    pub async fn publish_batch(
        &self,
        req: pb::PublishBatchRequest,
    ) -> Result<pb::PublishBatchResponse, Error> {
        Ok(self.topic_rpc().publish_batch(req).await?.into_inner())
    }

    /// Sends `body` to `queue` with no attributes and the queue's delay;
    /// returns the new message's id.
    ///
    /// ```no_run
    /// # async fn demo(client: broker_client::Client) -> Result<(), broker_client::Error> {
    /// let id = client.send("orders", "hello").await?;
    /// let id = client.send("orders", vec![0u8, 1, 2]).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn send(&self, queue: &str, body: impl Into<Bytes>) -> Result<String, Error> {
        let resp = self
            .send_message(pb::SendMessageRequest {
                queue: queue.to_owned(),
                body: body.into(),
                ..Default::default()
            })
            .await?;
        Ok(resp.message_id)
    }

    /// Receives up to `max_messages` (1..=100) from `queue` with the queue's
    /// visibility timeout, waiting up to `wait_time_seconds` (0..=20) for the
    /// first one. An empty vector means the wait ended with no message.
    ///
    /// ```no_run
    /// # async fn demo(client: broker_client::Client) -> Result<(), broker_client::Error> {
    /// for message in client.receive("orders", 10, 20).await? {
    ///     // ... process message.body, then:
    ///     client.delete("orders", &message.receipt_handle).await?;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn receive(
        &self,
        queue: &str,
        max_messages: u32,
        wait_time_seconds: u32,
    ) -> Result<Vec<pb::ReceivedMessage>, Error> {
        let resp = self
            .receive_messages(pb::ReceiveMessagesRequest {
                queue: queue.to_owned(),
                max_messages,
                visibility_timeout_seconds: None,
                wait_time_seconds: Some(wait_time_seconds),
            })
            .await?;
        Ok(resp.messages)
    }

    /// Deletes a received message from `queue` by its latest receipt handle.
    ///
    /// ```no_run
    /// # async fn demo(client: broker_client::Client, handle: String) -> Result<(), broker_client::Error> {
    /// client.delete("orders", &handle).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn delete(&self, queue: &str, receipt_handle: &str) -> Result<(), Error> {
        self.delete_message(pb::DeleteMessageRequest {
            queue: queue.to_owned(),
            receipt_handle: receipt_handle.to_owned(),
        })
        .await?;
        Ok(())
    }

    /// Publishes `body` with `attributes` to `topic`; returns the message id
    /// and the number of copies delivered (0 when no subscription matched).
    ///
    /// ```no_run
    /// # async fn demo(client: broker_client::Client) -> Result<(), broker_client::Error> {
    /// use std::collections::HashMap;
    ///
    /// let published = client.publish("payments", "paid", HashMap::new()).await?;
    /// let attributes = HashMap::from([("country".to_owned(), "BR".to_owned())]);
    /// let published = client.publish("payments", vec![0u8, 1, 2], attributes).await?;
    /// println!("{} copies of {}", published.delivered, published.message_id);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn publish(
        &self,
        topic: &str,
        body: impl Into<Bytes>,
        attributes: HashMap<String, String>,
    ) -> Result<pb::PublishResponse, Error> {
        self.publish_message(pb::PublishRequest {
            topic: topic.to_owned(),
            body: body.into(),
            attributes,
        })
        .await
    }
}

/// Why a call failed: the broker's gRPC status, by code, with its message.
///
/// The broker's messages say what to change (they name the field, the limit
/// and the value), so `Display` shows them after a short code label, e.g.
/// `not found: queue 'orders' does not exist`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A name, range or size is invalid (`INVALID_ARGUMENT`).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The queue, topic or subscription named does not exist (`NOT_FOUND`).
    #[error("not found: {0}")]
    NotFound(String),
    /// A queue exists with different attributes, or a queue is subscribed to
    /// the topic with different settings (`ALREADY_EXISTS`).
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// The state does not allow the call, e.g. a superseded receipt handle
    /// (`FAILED_PRECONDITION`).
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// A message or request is too large (`RESOURCE_EXHAUSTED`).
    #[error("resource exhausted: {0}")]
    ResourceExhausted(String),
    /// The broker is unreachable or shutting down (`UNAVAILABLE`); retry.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The call took longer than its deadline (`DEADLINE_EXCEEDED`).
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),
    /// The broker requires a token and got none, or one it does not know
    /// (`UNAUTHENTICATED`); see [`ConnectOptions::token`].
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The token lacks the permission the call needs; the message names it,
    /// e.g. `token 'orders-service' lacks permission send:payments`
    /// (`PERMISSION_DENIED`).
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// [`Client::connect`] could not reach the broker at `addr`.
    #[error("cannot connect to broker at {addr}: {reason}")]
    Connect {
        /// The address as passed to [`Client::connect`].
        addr: String,
        /// The transport's explanation, e.g. "Connection refused (os error 111)".
        reason: String,
    },
    /// Any other status; the broker does not return these for bad input.
    #[error("{}: {message}", code_label(.code))]
    Other {
        /// The gRPC status code.
        code: tonic::Code,
        /// The status message.
        message: String,
    },
}

impl Error {
    /// The gRPC status code; [`Error::Connect`] counts as `Unavailable`.
    pub fn code(&self) -> tonic::Code {
        match self {
            Error::InvalidArgument(_) => tonic::Code::InvalidArgument,
            Error::NotFound(_) => tonic::Code::NotFound,
            Error::AlreadyExists(_) => tonic::Code::AlreadyExists,
            Error::FailedPrecondition(_) => tonic::Code::FailedPrecondition,
            Error::ResourceExhausted(_) => tonic::Code::ResourceExhausted,
            Error::Unavailable(_) | Error::Connect { .. } => tonic::Code::Unavailable,
            Error::DeadlineExceeded(_) => tonic::Code::DeadlineExceeded,
            Error::Unauthenticated(_) => tonic::Code::Unauthenticated,
            Error::PermissionDenied(_) => tonic::Code::PermissionDenied,
            Error::Other { code, .. } => *code,
        }
    }

    /// The broker's message without the code label (for [`Error::Connect`],
    /// the reason the connection failed).
    pub fn message(&self) -> &str {
        match self {
            Error::InvalidArgument(m)
            | Error::NotFound(m)
            | Error::AlreadyExists(m)
            | Error::FailedPrecondition(m)
            | Error::ResourceExhausted(m)
            | Error::Unavailable(m)
            | Error::DeadlineExceeded(m)
            | Error::Unauthenticated(m)
            | Error::PermissionDenied(m)
            | Error::Other { message: m, .. } => m,
            Error::Connect { reason, .. } => reason,
        }
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        let message = status.message().to_owned();
        match status.code() {
            tonic::Code::InvalidArgument => Error::InvalidArgument(message),
            tonic::Code::NotFound => Error::NotFound(message),
            tonic::Code::AlreadyExists => Error::AlreadyExists(message),
            tonic::Code::FailedPrecondition => Error::FailedPrecondition(message),
            tonic::Code::ResourceExhausted => Error::ResourceExhausted(message),
            tonic::Code::Unavailable => Error::Unavailable(message),
            tonic::Code::DeadlineExceeded => Error::DeadlineExceeded(message),
            tonic::Code::Unauthenticated => Error::Unauthenticated(message),
            tonic::Code::PermissionDenied => Error::PermissionDenied(message),
            code => Error::Other { code, message },
        }
    }
}

/// A short lower-case label for a status code, matching the labels of the
/// named variants ("invalid argument", "not found", ...).
fn code_label(code: &tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown error",
        Code::InvalidArgument => "invalid argument",
        Code::DeadlineExceeded => "deadline exceeded",
        Code::NotFound => "not found",
        Code::AlreadyExists => "already exists",
        Code::PermissionDenied => "permission denied",
        Code::ResourceExhausted => "resource exhausted",
        Code::FailedPrecondition => "failed precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out of range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal error",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// An error and its sources, joined with ": ".
///
/// tonic's transport error displays only "transport error"; the useful part
/// ("Connection refused") is further down the source chain.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        let text = e.to_string();
        // Wrappers often repeat their source's text; keep each once.
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    if parts.len() > 1 && parts[0] == "transport error" {
        parts.remove(0);
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_map_to_variants() {
        let err = Error::from(tonic::Status::not_found("queue 'x' does not exist"));
        assert!(matches!(&err, Error::NotFound(m) if m == "queue 'x' does not exist"));
        assert_eq!(err.code(), tonic::Code::NotFound);
        assert_eq!(err.message(), "queue 'x' does not exist");

        let err = Error::from(tonic::Status::invalid_argument("bad"));
        assert!(matches!(err, Error::InvalidArgument(_)));
        let err = Error::from(tonic::Status::failed_precondition("stale"));
        assert!(matches!(err, Error::FailedPrecondition(_)));
        let err = Error::from(tonic::Status::unauthenticated("unknown token"));
        assert!(matches!(&err, Error::Unauthenticated(m) if m == "unknown token"));
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        let err = Error::from(tonic::Status::permission_denied("lacks admin"));
        assert!(matches!(err, Error::PermissionDenied(_)));
        assert_eq!(err.code(), tonic::Code::PermissionDenied);

        let err = Error::from(tonic::Status::internal("boom"));
        assert!(matches!(
            err,
            Error::Other {
                code: tonic::Code::Internal,
                ..
            }
        ));
        assert_eq!(err.code(), tonic::Code::Internal);
    }

    #[test]
    fn display_names_code_and_message() {
        let err = Error::from(tonic::Status::invalid_argument(
            "max_messages must be in 1..=100; got 500",
        ));
        assert_eq!(
            err.to_string(),
            "invalid argument: max_messages must be in 1..=100; got 500"
        );
        let err = Error::from(tonic::Status::internal("boom"));
        assert_eq!(err.to_string(), "internal error: boom");
        let err = Error::Connect {
            addr: "127.0.0.1:1".into(),
            reason: "Connection refused".into(),
        };
        assert_eq!(
            err.to_string(),
            "cannot connect to broker at 127.0.0.1:1: Connection refused"
        );
        assert_eq!(err.code(), tonic::Code::Unavailable);
    }

    #[tokio::test]
    async fn connect_to_closed_port_names_the_address() {
        // Bind then drop a listener: the port is then (almost certainly) closed.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);

        let err = Client::connect(&addr).await.unwrap_err();
        match &err {
            Error::Connect { addr: a, reason } => {
                assert_eq!(a, &addr);
                assert!(!reason.is_empty());
                assert_ne!(reason, "transport error", "reason should explain: {err}");
            }
            other => panic!("expected Error::Connect, got {other:?}"),
        }
        assert!(
            err.to_string()
                .starts_with(&format!("cannot connect to broker at {addr}: "))
        );

        // The scheme-qualified form is accepted too and reports the address as given.
        let url = format!("http://{addr}");
        let err = Client::connect(&url).await.unwrap_err();
        assert!(
            matches!(&err, Error::Connect { addr: a, .. } if a == &url),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn options_and_scheme_must_agree() {
        let err = Client::connect_with("https://127.0.0.1:1", ConnectOptions::new())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Connect { reason, .. } if reason.contains("CA certificate")),
            "{err:?}"
        );
        let options = ConnectOptions::new().tls_ca_pem("pem");
        let err = Client::connect_with("http://127.0.0.1:1", options)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Connect { reason, .. } if reason.contains("use https://")),
            "{err:?}"
        );
        let options = ConnectOptions::new().token("has space");
        let err = Client::connect_with("127.0.0.1:1", options)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Connect { reason, .. } if reason.contains("printable ASCII")),
            "{err:?}"
        );
    }

    #[test]
    fn debug_output_hides_the_token() {
        let options = ConnectOptions::new().token("s3cr3t");
        assert!(!format!("{options:?}").contains("s3cr3t"));
        let credentials = Credentials {
            authorization: Some("Bearer s3cr3t".parse().unwrap()),
        };
        assert!(!format!("{credentials:?}").contains("s3cr3t"));
    }

    #[tokio::test]
    async fn malformed_address_is_a_connect_error() {
        let err = Client::connect("not an address").await.unwrap_err();
        assert!(
            matches!(&err, Error::Connect { addr, reason } if addr == "not an address" && reason.starts_with("invalid address")),
            "{err:?}"
        );
    }
}
