//! Token authentication and per-name permissions.
//!
//! With `--auth-tokens FILE`, every call to `QueueService` and
//! `TopicService` must carry `authorization: Bearer <token>` metadata with a
//! token listed in FILE; without the flag, authentication is off and every
//! call may do everything. The file is TOML:
//!
//! ```toml
//! [[tokens]]
//! name = "orders-service"           # shown in logs and in PERMISSION_DENIED
//! token = "3f9c1e0b7a..."           # the secret; printable ASCII, no spaces
//! permissions = ["send:orders*", "receive:orders-*", "publish:events"]
//!
//! [[tokens]]
//! name = "operator"
//! token = "c2a8..."
//! permissions = ["admin"]
//! ```
//!
//! A permission is `admin` (everything) or `KIND:PATTERN` with KIND one of
//! `send`, `receive` (queue names) or `publish` (topic names). PATTERN is a
//! name (`orders`: exactly that queue), a prefix ending in `*` (`orders*`:
//! every name that starts with `orders`), or `*` (every name).
//!
//! The permission each RPC needs (see [`Permission`]):
//!
//! | RPC | needs |
//! |-----|-------|
//! | CreateQueue, UpdateQueue, DeleteQueue, PurgeQueue, RedriveMessages | `admin` |
//! | CreateTopic, DeleteTopic, Subscribe, Unsubscribe | `admin` |
//! | SendMessage, SendMessageBatch | `send` on the queue |
//! | ReceiveMessages, StreamMessages, PeekMessages, DeleteMessage(Batch), ChangeMessageVisibility(Batch) | `receive` on the queue |
//! | Publish, PublishBatch | `publish` on the topic |
//! | SendStream | `send` on its queue, or `publish` on its topic |
//! | GetQueue | `send` or `receive` on the queue, or `admin` |
//! | GetTopic | `publish` on the topic, or `admin` |
//! | ListQueues, ListTopics | any token; lists only what GetQueue/GetTopic would allow |
//! | GetBrokerStats | any token |
//! | ListSubscriptions | any token; lists the subscriptions whose topic or queue it may get |
//!
//! (An RPC that only reads a queue's messages, such as a peek, should need
//! `receive` on the queue.)
//!
//! Invariants:
//! - The file is checked whole at startup: an unknown permission kind, an
//!   empty or duplicate token, a duplicate name, a bad pattern, an entry
//!   without permissions are startup errors naming the entry. A file that
//!   group or others may read is logged as a warning (unix).
//! - A presented token is compared with every known token in constant time
//!   (`subtle`), without stopping at a match, so the time taken does not
//!   tell which token matched or how much of one did. Only the length of the
//!   tokens may show.
//! - The [`Authenticator`] interceptor puts a [`Caller`] into every request
//!   it lets through (an unrestricted one when authentication is off); the
//!   handlers check permissions against it with [`require`] and friends. A
//!   request without a `Caller` (a service that was not wrapped) is refused,
//!   so forgetting the interceptor fails closed.
//!
//! Errors: a refused call is an [`AuthError`] (UNAUTHENTICATED or
//! PERMISSION_DENIED through the status table, `service::status`); an
//! unusable token file is a [`TokenFileError`], a startup error.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use subtle::{ConditionallySelectable, ConstantTimeEq};
use tonic::Request;

/// A call the broker refuses: who is calling is unknown, or may not do it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `authorization` metadata (or a request that skipped the
    /// [`Authenticator`]).
    #[error("missing token: send `authorization: Bearer <token>`")]
    MissingToken,
    /// `authorization` metadata that is not `Bearer <token>`.
    #[error("malformed authorization metadata: expected `Bearer <token>`")]
    MalformedAuthorization,
    /// A token that is not in the token file.
    #[error("unknown token")]
    UnknownToken,
    /// The token (named by its name in the file, never the secret) lacks
    /// what the call needs.
    #[error("token '{token}' lacks permission {needs}")]
    Denied { token: String, needs: Needs },
}

/// What a refused call needed, as a [`AuthError::Denied`] message shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Needs {
    /// `admin`.
    Admin,
    /// `KIND:NAME`, e.g. `send:orders`.
    Permission(Permission, String),
    /// Any permission that shows the queue: `send` or `receive` on it.
    SeeQueue(String),
    /// Any permission that shows the topic: `publish` on it.
    SeeTopic(String),
}

impl fmt::Display for Needs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Needs::Admin => f.write_str("admin"),
            Needs::Permission(p, name) => write!(f, "{p}:{name}"),
            Needs::SeeQueue(name) => write!(f, "send:{name} or receive:{name} (or admin)"),
            Needs::SeeTopic(name) => write!(f, "publish:{name} (or admin)"),
        }
    }
}

/// A token file that cannot be used; the server does not start.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read the token file {} (--auth-tokens): {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    /// `reason` names the entry (`tokens[2] (name "x"): ...`).
    #[error("token file {} (--auth-tokens): {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
}

/// What a token may do to a queue or topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// Send messages to matching queues.
    Send,
    /// Receive, delete and change the visibility of messages of matching
    /// queues (and stream them).
    Receive,
    /// Publish to matching topics.
    Publish,
    /// Everything, including creating, changing and deleting queues, topics
    /// and subscriptions.
    Admin,
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Permission::Send => "send",
            Permission::Receive => "receive",
            Permission::Publish => "publish",
            Permission::Admin => "admin",
        })
    }
}

/// The names a permission covers.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    /// Exactly this name.
    Exact(String),
    /// Every name starting with this prefix (`""`: every name).
    Prefix(String),
}

impl Pattern {
    fn parse(text: &str) -> Result<Pattern, String> {
        let (stem, prefix) = match text.strip_suffix('*') {
            Some(stem) => (stem, true),
            None => (text, false),
        };
        if !prefix && stem.is_empty() {
            return Err("the name pattern is empty (use `*` for every name)".into());
        }
        if let Some(bad) = stem
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(if bad == '*' {
                "`*` may only end a name pattern".to_string()
            } else {
                format!("{bad:?} cannot be part of a queue or topic name (A-Z a-z 0-9 _ -)")
            });
        }
        Ok(if prefix {
            Pattern::Prefix(stem.to_string())
        } else {
            Pattern::Exact(stem.to_string())
        })
    }

    fn matches(&self, name: &str) -> bool {
        match self {
            Pattern::Exact(exact) => name == exact,
            Pattern::Prefix(prefix) => name.starts_with(prefix.as_str()),
        }
    }
}

/// One permission of a token: `admin`, or a kind over a name pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Grant {
    permission: Permission,
    /// `None` for `admin`, which covers every name.
    pattern: Option<Pattern>,
}

impl Grant {
    fn parse(text: &str) -> Result<Grant, String> {
        if text == "admin" {
            return Ok(Grant {
                permission: Permission::Admin,
                pattern: None,
            });
        }
        let expected = "expected `admin` or KIND:PATTERN with KIND send, receive or publish";
        let Some((kind, pattern)) = text.split_once(':') else {
            return Err(format!("permission {text:?}: {expected}"));
        };
        let permission = match kind {
            "send" => Permission::Send,
            "receive" => Permission::Receive,
            "publish" => Permission::Publish,
            _ => {
                return Err(format!(
                    "unknown permission kind {kind:?} in {text:?}; {expected}"
                ));
            }
        };
        let pattern = Pattern::parse(pattern).map_err(|e| format!("permission {text:?}: {e}"))?;
        Ok(Grant {
            permission,
            pattern: Some(pattern),
        })
    }
}

/// Who is calling: the name of a token and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's name from the file (never the secret).
    name: String,
    grants: Vec<Grant>,
}

impl Principal {
    /// The caller when authentication is off: may do everything.
    pub fn unrestricted() -> Principal {
        Principal {
            name: "anonymous".to_string(),
            grants: vec![Grant {
                permission: Permission::Admin,
                pattern: None,
            }],
        }
    }

    /// The token's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn is_admin(&self) -> bool {
        self.grants
            .iter()
            .any(|g| g.permission == Permission::Admin)
    }

    /// Whether the token has `permission` on `name` (or is admin).
    pub fn allows(&self, permission: Permission, name: &str) -> bool {
        self.grants
            .iter()
            .any(|g| match (&g.permission, &g.pattern) {
                (Permission::Admin, _) => true,
                (p, Some(pattern)) => *p == permission && pattern.matches(name),
                (_, None) => false,
            })
    }

    /// Whether the token may see the queue `name`: admin, send or receive.
    pub fn may_see_queue(&self, name: &str) -> bool {
        self.allows(Permission::Send, name) || self.allows(Permission::Receive, name)
    }

    /// Whether the token may see the topic `name`: admin or publish.
    pub fn may_see_topic(&self, name: &str) -> bool {
        self.allows(Permission::Publish, name)
    }

    fn denied(&self, needs: Needs) -> AuthError {
        AuthError::Denied {
            token: self.name.clone(),
            needs,
        }
    }

    /// `Ok` if the token has `permission` on `name`; otherwise
    /// [`AuthError::Denied`] naming the permission. `name` is ignored for
    /// [`Permission::Admin`].
    pub fn require(&self, permission: Permission, name: &str) -> Result<(), AuthError> {
        if self.allows(permission, name) {
            return Ok(());
        }
        Err(self.denied(match permission {
            Permission::Admin => Needs::Admin,
            p => Needs::Permission(p, name.to_string()),
        }))
    }

    /// `Ok` if the token is admin; otherwise [`AuthError::Denied`].
    pub fn require_admin(&self) -> Result<(), AuthError> {
        self.require(Permission::Admin, "")
    }

    /// `Ok` if the token may see the queue `name` (see [`Self::may_see_queue`]).
    pub fn require_queue_visible(&self, name: &str) -> Result<(), AuthError> {
        if self.may_see_queue(name) {
            return Ok(());
        }
        Err(self.denied(Needs::SeeQueue(name.to_string())))
    }

    /// `Ok` if the token may see the topic `name` (see [`Self::may_see_topic`]).
    pub fn require_topic_visible(&self, name: &str) -> Result<(), AuthError> {
        if self.may_see_topic(name) {
            return Ok(());
        }
        Err(self.denied(Needs::SeeTopic(name.to_string())))
    }
}

/// The known tokens, from the token file.
pub struct Tokens {
    /// Each token's secret and who it is. Searched whole on every call.
    entries: Vec<(Vec<u8>, Arc<Principal>)>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secrets.
        f.debug_list()
            .entries(self.entries.iter().map(|(_, p)| p.name()))
            .finish()
    }
}

/// The token file, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    tokens: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    token: String,
    #[serde(default)]
    permissions: Vec<String>,
}

impl Tokens {
    /// Reads and checks the token file at `path`; warns if group or others
    /// may read it.
    pub fn load(path: &Path) -> Result<Tokens, TokenFileError> {
        let text = std::fs::read_to_string(path).map_err(|error| TokenFileError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        warn_if_readable_by_others(path);
        Tokens::parse(&text).map_err(|reason| TokenFileError::Invalid {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Parses and checks a token file's text; the error names the entry.
    pub fn parse(text: &str) -> Result<Tokens, String> {
        let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
        if file.tokens.is_empty() {
            return Err(
                "no tokens: add at least one [[tokens]] entry with name, token and permissions"
                    .into(),
            );
        }
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut secrets: HashMap<&str, usize> = HashMap::new();
        let mut entries = Vec::with_capacity(file.tokens.len());
        for (i, entry) in file.tokens.iter().enumerate() {
            let label = format!("tokens[{i}] (name {:?})", entry.name);
            if entry.name.is_empty() {
                return Err(format!("tokens[{i}]: name is empty"));
            }
            if let Some(first) = names.insert(&entry.name, i) {
                return Err(format!(
                    "{label}: the name is also used by tokens[{first}]; names must be unique"
                ));
            }
            if entry.token.is_empty() {
                return Err(format!("{label}: token is empty"));
            }
            if !entry.token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(format!(
                    "{label}: token must be printable ASCII without spaces (it travels in an \
                     HTTP header)"
                ));
            }
            if let Some(first) = secrets.insert(&entry.token, i) {
                return Err(format!(
                    "{label}: the same token as tokens[{first}]; every token must be distinct"
                ));
            }
            if entry.permissions.is_empty() {
                return Err(format!(
                    "{label}: no permissions; give `admin` or KIND:PATTERN entries"
                ));
            }
            let grants = entry
                .permissions
                .iter()
                .map(|p| Grant::parse(p).map_err(|e| format!("{label}: {e}")))
                .collect::<Result<Vec<_>, _>>()?;
            entries.push((
                entry.token.as_bytes().to_vec(),
                Arc::new(Principal {
                    name: entry.name.clone(),
                    grants,
                }),
            ));
        }
        Ok(Tokens { entries })
    }

    /// Who holds `presented`, if anyone. Compares with every token in
    /// constant time and does not stop at a match.
    pub fn authenticate(&self, presented: &[u8]) -> Option<Arc<Principal>> {
        // `u32::MAX`: no match. The index is chosen with a constant-time
        // select, so the loop does the same work whichever entry matches.
        let mut found = u32::MAX;
        for (i, (token, _)) in self.entries.iter().enumerate() {
            let index = u32::try_from(i).unwrap_or(u32::MAX);
            found = u32::conditional_select(&found, &index, token.as_slice().ct_eq(presented));
        }
        self.entries
            .get(found as usize)
            .map(|(_, principal)| principal.clone())
    }

    /// The number of tokens.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            file = %path.display(),
            mode = format!("{:o}", meta.permissions().mode() & 0o777),
            "the token file may be read by group or others; restrict it with `chmod 600`"
        );
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

/// The caller of a request, as the [`Authenticator`] found it; a request
/// extension.
#[derive(Debug, Clone)]
pub struct Caller(pub Arc<Principal>);

/// The token check in front of `QueueService` and `TopicService`: checks
/// the bearer token and records the [`Caller`] ([`Authenticator::authenticate`]).
#[derive(Clone)]
pub struct Authenticator {
    /// `None`: authentication is off.
    tokens: Option<Arc<Tokens>>,
    /// The caller of every request when authentication is off.
    anonymous: Arc<Principal>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("tokens", &self.tokens)
            .finish()
    }
}

/// The message for a request without a token ([`AuthError::MissingToken`]).
pub const MISSING_TOKEN: &str = "missing token: send `authorization: Bearer <token>`";

impl Authenticator {
    /// Authentication off: every request may do everything.
    pub fn off() -> Authenticator {
        Authenticator {
            tokens: None,
            anonymous: Arc::new(Principal::unrestricted()),
        }
    }

    /// Authentication on, with these tokens.
    pub fn new(tokens: Tokens) -> Authenticator {
        Authenticator {
            tokens: Some(Arc::new(tokens)),
            ..Authenticator::off()
        }
    }

    /// Whether requests need a token.
    pub fn is_on(&self) -> bool {
        self.tokens.is_some()
    }

    /// Checks `request`'s bearer token and records its [`Caller`] in the
    /// request's extensions (`service::Authenticate` runs this in front of
    /// the services and turns a refusal into a status).
    pub fn authenticate(&self, request: &mut Request<()>) -> Result<(), AuthError> {
        let caller = self.identify(request)?;
        request.extensions_mut().insert(Caller(caller));
        Ok(())
    }

    fn identify<T>(&self, request: &Request<T>) -> Result<Arc<Principal>, AuthError> {
        let Some(tokens) = &self.tokens else {
            return Ok(self.anonymous.clone());
        };
        let value = request
            .metadata()
            .get("authorization")
            .ok_or(AuthError::MissingToken)?
            .as_bytes();
        // The scheme is case-insensitive (RFC 9110 §11.1).
        let token = match value.split_at_checked(7) {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case(b"bearer ") => token,
            _ => return Err(AuthError::MalformedAuthorization),
        };
        tokens.authenticate(token).ok_or_else(|| {
            tracing::debug!(remote = ?request.remote_addr(), "request with an unknown token");
            AuthError::UnknownToken
        })
    }
}

/// The caller of `request`. [`AuthError::MissingToken`] if the request did
/// not pass an [`Authenticator`] (fail closed).
pub fn caller<T>(request: &Request<T>) -> Result<Arc<Principal>, AuthError> {
    request
        .extensions()
        .get::<Caller>()
        .map(|c| c.0.clone())
        .ok_or(AuthError::MissingToken)
}

/// `Ok` if the caller has `permission` on `name`; [`AuthError::Denied`]
/// naming the permission otherwise.
pub fn require<T>(
    request: &Request<T>,
    permission: Permission,
    name: &str,
) -> Result<(), AuthError> {
    caller(request)?.require(permission, name)
}

/// `Ok` if the caller is admin.
pub fn require_admin<T>(request: &Request<T>) -> Result<(), AuthError> {
    caller(request)?.require_admin()
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Operator-supplied: any token file text loads or is refused with
        /// a reason, never a panic.
        #[test]
        fn any_token_file_text_loads_or_is_refused(
            junk in "\\PC{0,200}",
            name in "\\PC{0,12}",
            token in "\\PC{0,20}",
            permissions in proptest::collection::vec("\\PC{0,16}|(send|receive|publish|admin|x):[a-z*-]{0,6}\\*?", 0..4),
        ) {
            let _ = Tokens::parse(&junk);
            let text = format!(
                "[[tokens]]\nname = {name:?}\ntoken = {token:?}\npermissions = {permissions:?}\n"
            );
            let _ = Tokens::parse(&text);
        }
    }

    const FILE: &str = r#"
        [[tokens]]
        name = "orders-service"
        token = "orders-secret"
        permissions = ["send:orders*", "receive:orders-in", "publish:events"]

        [[tokens]]
        name = "operator"
        token = "operator-secret"
        permissions = ["admin"]

        [[tokens]]
        name = "everything-reader"
        token = "reader-secret"
        permissions = ["receive:*"]
    "#;

    fn principal(tokens: &Tokens, secret: &str) -> Arc<Principal> {
        tokens.authenticate(secret.as_bytes()).expect("known token")
    }

    #[test]
    fn tokens_authenticate_to_their_entry() {
        let tokens = Tokens::parse(FILE).unwrap();
        assert_eq!(tokens.len(), 3);
        assert_eq!(principal(&tokens, "orders-secret").name(), "orders-service");
        assert_eq!(principal(&tokens, "operator-secret").name(), "operator");
        assert_eq!(
            principal(&tokens, "reader-secret").name(),
            "everything-reader"
        );
        assert!(tokens.authenticate(b"orders-secre").is_none());
        assert!(tokens.authenticate(b"orders-secret2").is_none());
        assert!(tokens.authenticate(b"").is_none());
    }

    #[test]
    fn patterns_match_exact_names_and_prefixes() {
        let tokens = Tokens::parse(FILE).unwrap();
        let orders = principal(&tokens, "orders-secret");
        assert!(orders.allows(Permission::Send, "orders"));
        assert!(orders.allows(Permission::Send, "orders-eu"));
        assert!(!orders.allows(Permission::Send, "payments"));
        assert!(!orders.allows(Permission::Send, "my-orders"));
        assert!(orders.allows(Permission::Receive, "orders-in"));
        assert!(!orders.allows(Permission::Receive, "orders-in-2"));
        assert!(!orders.allows(Permission::Receive, "orders"));
        assert!(orders.allows(Permission::Publish, "events"));
        assert!(!orders.allows(Permission::Publish, "orders"));
        assert!(!orders.is_admin());
        assert!(!orders.allows(Permission::Admin, ""));

        let reader = principal(&tokens, "reader-secret");
        assert!(reader.allows(Permission::Receive, "anything"));
        assert!(!reader.allows(Permission::Send, "anything"));

        let operator = principal(&tokens, "operator-secret");
        for p in [
            Permission::Send,
            Permission::Receive,
            Permission::Publish,
            Permission::Admin,
        ] {
            assert!(operator.allows(p, "whatever"));
        }
    }

    #[test]
    fn visibility_follows_the_permissions() {
        let tokens = Tokens::parse(FILE).unwrap();
        let orders = principal(&tokens, "orders-secret");
        assert!(orders.may_see_queue("orders-x"));
        assert!(orders.may_see_queue("orders-in"));
        assert!(!orders.may_see_queue("payments"));
        assert!(orders.may_see_topic("events"));
        assert!(!orders.may_see_topic("orders"));
    }

    #[test]
    fn denial_names_the_token_and_the_permission() {
        let tokens = Tokens::parse(FILE).unwrap();
        let orders = principal(&tokens, "orders-secret");
        let e = orders.require(Permission::Send, "payments").unwrap_err();
        assert_eq!(
            e,
            AuthError::Denied {
                token: "orders-service".into(),
                needs: Needs::Permission(Permission::Send, "payments".into()),
            }
        );
        assert_eq!(
            e.to_string(),
            "token 'orders-service' lacks permission send:payments"
        );
        let e = orders.require_admin().unwrap_err();
        assert_eq!(
            e.to_string(),
            "token 'orders-service' lacks permission admin"
        );
        let e = orders.require_queue_visible("payments").unwrap_err();
        assert_eq!(
            e.to_string(),
            "token 'orders-service' lacks permission send:payments or receive:payments (or admin)"
        );
        let e = orders.require_topic_visible("audit").unwrap_err();
        assert_eq!(
            e.to_string(),
            "token 'orders-service' lacks permission publish:audit (or admin)"
        );
        orders.require(Permission::Send, "orders-1").unwrap();
    }

    #[track_caller]
    fn parse_error(text: &str) -> String {
        match Tokens::parse(text) {
            Ok(t) => panic!("expected an error, got {t:?}"),
            Err(e) => e,
        }
    }

    fn one(name: &str, token: &str, permissions: &str) -> String {
        format!("[[tokens]]\nname = {name:?}\ntoken = {token:?}\npermissions = {permissions}\n")
    }

    #[test]
    fn bad_entries_are_startup_errors_naming_the_entry() {
        let e = parse_error(&one("a", "s", r#"["sned:orders"]"#));
        assert!(e.contains("tokens[0]") && e.contains("\"a\""), "{e}");
        assert!(e.contains("unknown permission kind \"sned\""), "{e}");

        let e = parse_error(&one("a", "", r#"["admin"]"#));
        assert!(
            e.contains("tokens[0]") && e.contains("token is empty"),
            "{e}"
        );

        let e = parse_error(&format!(
            "{}{}",
            one("a", "same", r#"["admin"]"#),
            one("b", "same", r#"["admin"]"#)
        ));
        assert!(e.contains("tokens[1]") && e.contains("tokens[0]"), "{e}");
        assert!(e.contains("same token"), "{e}");
        assert!(!e.contains("\"same\""), "the secret must not be shown: {e}");

        let e = parse_error(&format!(
            "{}{}",
            one("a", "s1", r#"["admin"]"#),
            one("a", "s2", r#"["admin"]"#)
        ));
        assert!(e.contains("names must be unique"), "{e}");

        let e = parse_error(&one("a", "s", "[]"));
        assert!(e.contains("no permissions"), "{e}");
        let e = parse_error(&one("a", "s", r#"["send"]"#));
        assert!(e.contains("\"send\""), "{e}");
        let e = parse_error(&one("a", "s", r#"["send:or*ders"]"#));
        assert!(e.contains("`*` may only end"), "{e}");
        let e = parse_error(&one("a", "s", r#"["send:"]"#));
        assert!(e.contains("empty"), "{e}");
        let e = parse_error(&one("a", "s", r#"["send:a.b"]"#));
        assert!(e.contains("'.'"), "{e}");
        let e = parse_error(&one("a", "with space", r#"["admin"]"#));
        assert!(e.contains("printable ASCII"), "{e}");
        let e = parse_error(&one("", "s", r#"["admin"]"#));
        assert!(e.contains("name is empty"), "{e}");

        let e = parse_error("");
        assert!(e.contains("no tokens"), "{e}");
        let e = parse_error("[[tokens]]\nname = \"a\"\ntoken = \"s\"\npermission = [\"admin\"]\n");
        assert!(e.contains("permission"), "unknown field: {e}");
    }

    #[cfg(unix)]
    #[test]
    fn load_reads_the_file_and_names_it_on_error() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        std::fs::write(&path, FILE).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(Tokens::load(&path).unwrap().len(), 3);

        let missing = dir.path().join("missing.toml");
        let e = Tokens::load(&missing).unwrap_err().to_string();
        assert!(
            e.contains("missing.toml") && e.contains("--auth-tokens"),
            "{e}"
        );

        std::fs::write(&path, one("a", "s", r#"["nope:x"]"#)).unwrap();
        let e = Tokens::load(&path).unwrap_err().to_string();
        assert!(e.contains("tokens.toml") && e.contains("nope"), "{e}");
    }

    fn request(authorization: Option<&str>) -> Request<()> {
        let mut request = Request::new(());
        if let Some(value) = authorization {
            request
                .metadata_mut()
                .insert("authorization", value.parse().unwrap());
        }
        request
    }

    fn authenticate(auth: &Authenticator, header: Option<&str>) -> Result<Request<()>, AuthError> {
        let mut request = request(header);
        auth.authenticate(&mut request)?;
        Ok(request)
    }

    #[test]
    fn authenticate_checks_the_bearer_token() {
        let auth = Authenticator::new(Tokens::parse(FILE).unwrap());
        let e = authenticate(&auth, None).unwrap_err();
        assert_eq!(e, AuthError::MissingToken);
        assert_eq!(e.to_string(), MISSING_TOKEN);

        let e = authenticate(&auth, Some("Bearer nope")).unwrap_err();
        assert_eq!(e, AuthError::UnknownToken);
        assert_eq!(e.to_string(), "unknown token");

        let e = authenticate(&auth, Some("Basic b3BlcmF0b3I=")).unwrap_err();
        assert_eq!(e, AuthError::MalformedAuthorization);
        assert!(e.to_string().contains("Bearer"), "{e}");

        let passed = authenticate(&auth, Some("bearer operator-secret")).unwrap();
        assert_eq!(caller(&passed).unwrap().name(), "operator");
        require_admin(&passed).unwrap();
    }

    #[test]
    fn without_tokens_every_request_may_do_everything() {
        let auth = Authenticator::off();
        assert!(!auth.is_on());
        let passed = authenticate(&auth, Some("Bearer whatever")).unwrap();
        require(&passed, Permission::Send, "q").unwrap();
        require_admin(&passed).unwrap();
    }

    #[test]
    fn a_request_that_skipped_the_interceptor_is_refused() {
        let e = require(&request(None), Permission::Send, "q").unwrap_err();
        assert_eq!(e, AuthError::MissingToken);
    }
}
