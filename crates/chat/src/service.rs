//! The chat's rules over the store: who may do what, what input is accepted,
//! and what is pushed to whom. The HTTP API and the socket ops are thin layers
//! over [`Chat`]; every call that names a shop, a conversation or a user checks
//! that the caller's session may touch it.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

use crate::auth::{self, AuthError, Session, Tokens};
use crate::blobs::{sniff_image, BlobStore};
use crate::{
    Canned, ChatStore, Conversation, Id, Message, Millis, NewAgent, NewMessage, Page, Purged, Role,
    Shop, StoreError, Summary, Upload, User, VisitorQuery,
};
use herald_limits::TokenBucket;

/// Where chat users' member ids start on the goim side: 2^52 (every id stays a
/// safe integer for JavaScript, below 2^53).
pub const CHAT_MID_BASE: i64 = 1 << 52;

/// The member id a chat user's connections have on the goim side: its user id
/// above [`CHAT_MID_BASE`]. Member ids from there up belong to the chat while it
/// runs (its authenticator refuses them to every other client), so no goim
/// client can claim a chat user's id and receive its events.
pub fn chat_mid(user: Id) -> i64 {
    CHAT_MID_BASE + user
}

/// The op chat events are pushed with (a goim push op, as golang-im's
/// downstream messages).
pub const EVENT_OP: i32 = 5;

/// Delivers an event to every connection of some members (logic's `push/mids`).
#[async_trait]
pub trait Publisher: Send + Sync {
    /// Pushes `body` with op `op` to the connections of `mids`.
    async fn push_mids(&self, op: i32, mids: &[Id], body: Vec<u8>) -> Result<(), String>;

    /// Which of `mids` have a connection now.
    async fn online(&self, mids: &[Id]) -> Result<Vec<Id>, String>;
}

/// Bounds on what callers send.
#[derive(Debug, Clone)]
pub struct Limits {
    /// How long a session token lasts.
    pub token_ttl: Duration,
    /// Longest message body, bytes.
    pub max_message: usize,
    /// Most messages or conversations per page.
    pub max_page: u32,
    /// Largest upload, bytes.
    pub max_upload: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            token_ttl: Duration::from_secs(7 * 24 * 3600),
            max_message: 4000,
            max_page: 100,
            max_upload: 5 * 1024 * 1024,
        }
    }
}

/// Why a chat call failed; each maps to one HTTP status.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ChatError {
    /// Malformed or out-of-bounds input (400).
    #[error("{0}")]
    BadRequest(String),
    /// No valid session (401).
    #[error("{0}")]
    Unauthorized(String),
    /// The session may not touch what the call names (403).
    #[error("{0}")]
    Forbidden(&'static str),
    /// What the call names does not exist (404).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A unique name is taken (409).
    #[error("{0} already exists")]
    Conflict(&'static str),
    /// The upload is over the size limit (413).
    #[error("{0}")]
    TooLarge(String),
    /// The upload is not an accepted kind of file (415).
    #[error("{0}")]
    Unsupported(String),
    /// Too many attempts from one address (429).
    #[error("{0}")]
    TooMany(String),
    /// The database is unreachable (503); nothing was done.
    #[error("the chat store is unavailable: {0}")]
    Unavailable(String),
}

impl ChatError {
    /// The HTTP status code.
    pub fn status(&self) -> u16 {
        match self {
            ChatError::BadRequest(_) => 400,
            ChatError::Unauthorized(_) => 401,
            ChatError::Forbidden(_) => 403,
            ChatError::NotFound(_) => 404,
            ChatError::Conflict(_) => 409,
            ChatError::TooLarge(_) => 413,
            ChatError::Unsupported(_) => 415,
            ChatError::TooMany(_) => 429,
            ChatError::Unavailable(_) => 503,
        }
    }

    /// The error's name in answers (`code` of the HTTP API's errors and of the
    /// socket ops' error replies).
    pub fn code(&self) -> &'static str {
        match self {
            ChatError::BadRequest(_) => "bad_request",
            ChatError::Unauthorized(_) => "unauthorized",
            ChatError::Forbidden(_) => "forbidden",
            ChatError::NotFound(_) => "not_found",
            ChatError::Conflict(_) => "conflict",
            ChatError::TooLarge(_) => "payload_too_large",
            ChatError::Unsupported(_) => "unsupported_media_type",
            ChatError::TooMany(_) => "too_many_requests",
            ChatError::Unavailable(_) => "unavailable",
        }
    }
}

impl From<StoreError> for ChatError {
    fn from(e: StoreError) -> ChatError {
        match e {
            StoreError::Conflict(what) => ChatError::Conflict(what),
            StoreError::NotFound(what) => ChatError::NotFound(what),
            StoreError::Invalid(why) => ChatError::BadRequest(why.into()),
            StoreError::Corrupt(why) => ChatError::Unavailable(why),
            StoreError::Unavailable(e) => ChatError::Unavailable(e.to_string()),
        }
    }
}

impl From<AuthError> for ChatError {
    fn from(e: AuthError) -> ChatError {
        ChatError::Unauthorized(e.to_string())
    }
}

/// A verified caller: the session and the user it names, as stored now.
#[derive(Debug, Clone)]
pub struct Caller {
    pub session: Session,
    pub user: User,
}

/// A session handed out: the token and who it is for.
#[derive(Debug, Clone, Serialize)]
pub struct Issued {
    pub token: String,
    /// Unix seconds.
    pub expires_at: i64,
    pub user: User,
    pub shop: Shop,
}

/// What a send did.
#[derive(Debug, Clone, Serialize)]
pub struct Sent {
    pub message: Message,
    /// False when the same client id had been stored before (nothing added).
    pub created: bool,
    /// Whether the event reached logic's push path (when false, the message is
    /// stored and arrives with the next sync).
    pub pushed: bool,
}

/// A message as its sender gives it.
#[derive(Debug, Clone, Copy)]
pub struct Draft<'a> {
    pub conversation: Id,
    /// `text`, `image` (the body: an upload's id) or `emoji`.
    pub kind: &'a str,
    pub body: &'a str,
    /// Makes a retried send idempotent.
    pub client_id: Option<&'a str>,
}

/// A message checked by [`Chat::outgoing`], for [`Chat::send_all`].
#[derive(Debug)]
pub struct Outgoing {
    conversation: Conversation,
    message: NewMessage,
}

/// An event pushed to a conversation's members.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event<'a> {
    /// A new message.
    Message { message: &'a Message },
    /// A member's read position moved.
    Read {
        conversation_id: Id,
        user_id: Id,
        position: Id,
    },
    /// A member is typing.
    Typing { conversation_id: Id, user_id: Id },
}

/// A member's read position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReadPosition {
    pub user_id: Id,
    pub position: Id,
}

/// A page of a conversation's history with its read state: what the HTTP
/// history and a socket sync (op 18) answer.
#[derive(Debug, Clone, Serialize)]
pub struct Synced {
    pub conversation_id: Id,
    /// Oldest first.
    pub messages: Vec<Message>,
    /// The conversation's newest message id (0: none yet).
    pub last_message_id: Id,
    /// The caller's read position (0: never read).
    pub position: Id,
    /// Messages after the caller's position that others sent.
    pub unread: i64,
    /// Every member's stored read position, for read receipts (a member that
    /// never read is not listed).
    pub reads: Vec<ReadPosition>,
}

/// A user of a visitor list, with whether it is connected now.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    #[serde(flatten)]
    pub user: User,
    pub online: bool,
}

/// What an address is limited in, without a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Attempt {
    /// A login or a registration (password guessing): 10 at once, then one
    /// every 6 s.
    Login,
    /// A new visitor: 20 at once, then one a second.
    Visitor,
}

impl Attempt {
    fn bucket(self, now: std::time::Instant) -> TokenBucket {
        match self {
            Attempt::Login => TokenBucket::new(1.0 / 6.0, 10, now),
            Attempt::Visitor => TokenBucket::new(1.0, 20, now),
        }
    }
}

/// How often a user's last-seen time is written, at most.
const SEEN_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a session's check (its user, whether it ended, whether its address
/// is blocked) is used before the store is read again. A logout, a password
/// change or a blocking through this process takes effect at once; through
/// another logic process of the cluster, within this long.
const SESSION_CHECK_FOR: std::time::Duration = std::time::Duration::from_secs(1);
/// A session check's key: the token's id and the client's address.
type SessionKey = (String, Option<String>);

/// The session checks kept ([`SESSION_CHECK_FOR`]), and how many times they were
/// forgotten: a check that read the store before a forgetting is not kept
/// after it (it may have read what the logout or blocking just changed).
#[derive(Default)]
struct SessionChecks {
    kept: std::collections::HashMap<SessionKey, Read<User>>,
    forgotten: u64,
}
/// Session checks kept before all are dropped (each is read again once).
const SESSION_CHECKS_KEPT: usize = 100_000;

/// How often one member's typing is told to the others, at most.
const TYPING_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// The chat application.
pub struct Chat {
    store: Arc<dyn ChatStore>,
    blobs: Arc<dyn BlobStore>,
    /// Password hashing at a time (argon2 takes memory and CPU; at most as many
    /// as there are cores, off the async threads).
    hashing: Arc<tokio::sync::Semaphore>,
    /// Logins, registrations and new visitors per client address.
    attempts: std::sync::Mutex<std::collections::HashMap<(Attempt, String), TokenBucket>>,
    /// When each (member, conversation) last had its typing told.
    typing: std::sync::Mutex<std::collections::HashMap<(Id, Id), std::time::Instant>>,
    /// When this process last wrote each user's last-seen time.
    seen: std::sync::Mutex<std::collections::HashMap<Id, std::time::Instant>>,
    /// Sessions found valid, by (token id, client address), and their users,
    /// for [`SESSION_CHECK_FOR`]: a chatting client costs no read per frame.
    checked: std::sync::Mutex<SessionChecks>,
    /// What sends need to know of the conversations they go to, by id, and the
    /// visitors' own conversations, as first read: who is in a conversation
    /// never changes (one purged is refused by the store when written to).
    members: Members,
    tokens: Tokens,
    publisher: Arc<dyn Publisher>,
    limits: Limits,
}

/// `c` if the caller takes part in it; else not found, as a missing one (ids
/// of other shops stay unknown).
fn admitted(caller: &Caller, c: Conversation) -> Result<Conversation, ChatError> {
    if c.admits(&caller.user) {
        Ok(c)
    } else {
        Err(ChatError::NotFound("conversation"))
    }
}

/// `m` locked, even after a panic elsewhere (the maps stay consistent: each
/// change is one insert or removal).
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// How long a shop's list of agents is used before it is read again (an agent
/// added through another process gets events after at most this long).
const AGENTS_FOR: std::time::Duration = std::time::Duration::from_secs(2);
/// Conversations kept in [`Members`] before it starts over.
const MEMBERS_KEPT: usize = 100_000;

/// What sends read of their conversations, kept in memory: each conversation
/// as first read (who is in it never changes), each visitor's own
/// conversation, each shop's agents for [`AGENTS_FOR`].
#[derive(Default)]
struct Members {
    conversations: std::sync::Mutex<std::collections::HashMap<Id, Conversation>>,
    own: std::sync::Mutex<std::collections::HashMap<Id, Id>>,
    /// By shop: when they were read, and the agents.
    agents: std::sync::Mutex<std::collections::HashMap<Id, Read<Arc<[Id]>>>>,
}

/// Something read from the store, and when.
type Read<T> = (std::time::Instant, T);

impl Members {
    fn conversation(&self, id: Id) -> Option<Conversation> {
        lock(&self.conversations).get(&id).cloned()
    }

    fn own(&self, visitor: Id) -> Option<Id> {
        lock(&self.own).get(&visitor).copied()
    }

    fn keep(&self, c: &Conversation) {
        let mut all = lock(&self.conversations);
        if all.len() >= MEMBERS_KEPT {
            all.clear();
            lock(&self.own).clear();
        }
        all.insert(c.id, c.clone());
        if let Some(v) = c.visitor_id {
            lock(&self.own).insert(v, c.id);
        }
    }

    fn agents(&self, shop: Id) -> Option<Arc<[Id]>> {
        let all = lock(&self.agents);
        let (at, agents) = all.get(&shop)?;
        (at.elapsed() < AGENTS_FOR).then(|| agents.clone())
    }

    fn keep_agents(&self, shop: Id, agents: Arc<[Id]>) {
        let mut all = lock(&self.agents);
        if all.len() >= MEMBERS_KEPT {
            all.clear();
        }
        all.insert(shop, (std::time::Instant::now(), agents));
    }

    fn forget_agents(&self, shop: Id) {
        lock(&self.agents).remove(&shop);
    }
}

fn check_len(what: &str, s: &str, min: usize, max: usize) -> Result<(), ChatError> {
    let n = s.chars().count();
    if n < min || n > max {
        return Err(ChatError::BadRequest(format!(
            "{what} must be {min} to {max} characters long"
        )));
    }
    Ok(())
}

fn check_name(what: &str, s: &str) -> Result<(), ChatError> {
    check_len(what, s, 2, 64)?;
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
    {
        return Err(ChatError::BadRequest(format!(
            "{what} may hold letters, digits and - _ . @ only"
        )));
    }
    Ok(())
}

fn check_nickname(s: &str) -> Result<(), ChatError> {
    check_len("the nickname", s, 1, 64)?;
    if s.chars().any(char::is_control) {
        return Err(ChatError::BadRequest(
            "the nickname may not hold control characters".into(),
        ));
    }
    Ok(())
}

impl Chat {
    /// The chat over `store`, signing sessions with `secret`, pushing events
    /// through `publisher`.
    pub fn new(
        store: Arc<dyn ChatStore>,
        blobs: Arc<dyn BlobStore>,
        secret: &[u8],
        publisher: Arc<dyn Publisher>,
        limits: Limits,
    ) -> Result<Chat, AuthError> {
        Ok(Chat {
            store,
            blobs,
            typing: Default::default(),
            seen: Default::default(),
            checked: Default::default(),
            members: Members::default(),
            attempts: Default::default(),
            hashing: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            )),
            tokens: Tokens::new(secret)?,
            publisher,
            limits,
        })
    }

    /// Records that a user was seen now: written at most once every
    /// [`SEEN_EVERY`] per user (a chatting user would otherwise cost a write per
    /// message; the visitor lists need no finer time).
    pub async fn seen(&self, user: Id, now: Millis) -> Result<(), ChatError> {
        let at = std::time::Instant::now();
        {
            let mut seen = lock(&self.seen);
            if seen
                .get(&user)
                .is_some_and(|t| at.duration_since(*t) < SEEN_EVERY)
            {
                return Ok(());
            }
            if seen.len() > 100_000 {
                seen.retain(|_, t| at.duration_since(*t) < SEEN_EVERY);
            }
        }
        self.store.touch(user, now).await?;
        lock(&self.seen).insert(user, at);
        Ok(())
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn ChatStore> {
        &self.store
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The argon2id hash of `password`, computed on a blocking thread.
    async fn hash(&self, password: &str) -> Result<String, ChatError> {
        let _turn = self
            .hashing
            .acquire()
            .await
            .map_err(|e| ChatError::Unavailable(e.to_string()))?;
        let password = password.to_string();
        tokio::task::spawn_blocking(move || auth::hash_password(&password))
            .await
            .map_err(|e| ChatError::Unavailable(e.to_string()))?
            .map_err(|e| ChatError::Unavailable(e.to_string()))
    }

    /// Whether `password` matches `hash` (`None`: a hash nobody's password
    /// matches, checked for the time it takes), on a blocking thread.
    async fn verify(&self, password: &str, hash: Option<String>) -> bool {
        let Ok(_turn) = self.hashing.acquire().await else {
            return false;
        };
        let password = password.to_string();
        tokio::task::spawn_blocking(move || {
            let hash = hash.as_deref().unwrap_or_else(|| dummy_hash());
            auth::verify_password(&password, hash)
        })
        .await
        .unwrap_or(false)
    }

    fn issue(&self, user: User, shop: Shop, now: Millis) -> Issued {
        // Never dated before the user's sessions were last ended (a password
        // change ends every token up to its second and the next): a login in
        // that second must not make a token that is already over.
        let iat = (now / 1000).max(user.sessions_after);
        let exp = iat + self.limits.token_ttl.as_secs() as i64;
        let token = self.tokens.issue(&Session {
            sub: user.id.to_string(),
            shop: shop.id,
            role: user.role,
            iat,
            exp,
            jti: auth::new_jti(),
        });
        Issued {
            token,
            expires_at: exp,
            user,
            shop,
        }
    }

    /// Whether address `ip` may make another attempt of this kind now (no
    /// address: the call came some other way than the HTTP listener, allowed).
    pub fn admit(&self, kind: Attempt, ip: Option<&str>) -> Result<(), ChatError> {
        let Some(ip) = ip else {
            return Ok(());
        };
        let now = std::time::Instant::now();
        let mut all = lock(&self.attempts);
        if all.len() > 100_000 {
            // Bounded memory: a flood of addresses forgets the quiet ones' history.
            all.clear();
        }
        let bucket = all
            .entry((kind, ip.to_string()))
            .or_insert_with(|| kind.bucket(now));
        if bucket.try_take(now) {
            Ok(())
        } else {
            Err(ChatError::TooMany(format!(
                "too many attempts from {ip}; try again in {} s",
                bucket.wait_time().as_secs().max(1)
            )))
        }
    }

    /// Creates a shop with its first agent and logs the agent in.
    pub async fn register(
        &self,
        shop: &str,
        username: &str,
        password: &str,
        nickname: &str,
        now: Millis,
    ) -> Result<Issued, ChatError> {
        check_name("the shop name", shop)?;
        check_name("the user name", username)?;
        check_len("the password", password, 8, 256)?;
        check_nickname(nickname)?;
        let hash = self.hash(password).await?;
        let (shop, user) = self
            .store
            .create_shop(
                shop,
                &NewAgent {
                    username,
                    nickname,
                    password_hash: &hash,
                },
                now,
            )
            .await?;
        Ok(self.issue(user, shop, now))
    }

    /// Adds an agent to the caller's shop (agents only).
    pub async fn add_agent(
        &self,
        caller: &Caller,
        username: &str,
        password: &str,
        nickname: &str,
        now: Millis,
    ) -> Result<User, ChatError> {
        self.agent_only(caller)?;
        check_name("the user name", username)?;
        check_len("the password", password, 8, 256)?;
        check_nickname(nickname)?;
        let hash = self.hash(password).await?;
        let agent = self
            .store
            .create_agent(
                caller.user.shop_id,
                &NewAgent {
                    username,
                    nickname,
                    password_hash: &hash,
                },
                now,
            )
            .await?;
        // The shop's events reach the new agent at once from this process
        // (from the others within AGENTS_FOR).
        self.members.forget_agents(caller.user.shop_id);
        Ok(agent)
    }

    /// Logs an agent in. A wrong name and a wrong password get the same answer.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        now: Millis,
    ) -> Result<Issued, ChatError> {
        let wrong = || ChatError::Unauthorized("wrong user name or password".into());
        let Some((user, hash)) = self.store.agent_login(username).await? else {
            // Spend the time a check takes, so a missing name is not faster.
            let _ = self.verify(password, None).await;
            return Err(wrong());
        };
        if !self.verify(password, Some(hash)).await {
            return Err(wrong());
        }
        let shop = self
            .store
            .shop(user.shop_id)
            .await?
            .ok_or(ChatError::NotFound("shop"))?;
        self.store.touch(user.id, now).await?;
        Ok(self.issue(user, shop, now))
    }

    /// Ends the caller's session: its token is refused from now on.
    pub async fn logout(&self, caller: &Caller) -> Result<(), ChatError> {
        self.store
            .revoke(&caller.session.jti, caller.session.exp)
            .await?;
        self.forget_sessions();
        Ok(())
    }

    /// Changes the caller's password after checking the current one. Every
    /// session of the agent ends; the answer is a new one.
    pub async fn change_password(
        &self,
        caller: &Caller,
        current: &str,
        new: &str,
        now: Millis,
    ) -> Result<Issued, ChatError> {
        self.agent_only(caller)?;
        check_len("the new password", new, 8, 256)?;
        let username = caller.user.username.as_deref().unwrap_or_default();
        let Some((_, hash)) = self.store.agent_login(username).await? else {
            return Err(ChatError::NotFound("agent"));
        };
        if !self.verify(current, Some(hash)).await {
            return Err(ChatError::Forbidden("the current password is wrong"));
        }
        let hash = self.hash(new).await?;
        self.store.set_password(caller.user.id, &hash).await?;
        // Sessions count in whole seconds: every token issued up to now ends,
        // and the new one is dated the next second.
        let after = now / 1000 + 1;
        self.store.end_sessions(caller.user.id, after).await?;
        self.forget_sessions();
        let shop = self
            .store
            .shop(caller.user.shop_id)
            .await?
            .ok_or(ChatError::NotFound("shop"))?;
        Ok(self.issue(caller.user.clone(), shop, after * 1000))
    }

    /// Creates a visitor of the shop named `shop` and its kefu conversation,
    /// unless the visitor's address is on the shop's blacklist.
    pub async fn create_visitor(
        &self,
        shop: &str,
        nickname: Option<&str>,
        ip: Option<&str>,
        now: Millis,
    ) -> Result<(Issued, Conversation), ChatError> {
        let shop = self
            .store
            .shop_by_name(shop)
            .await?
            .ok_or(ChatError::NotFound("shop"))?;
        if let Some(ip) = ip {
            if self.store.is_blacklisted(shop.id, ip).await? {
                return Err(ChatError::Forbidden("this address is blocked by the shop"));
            }
        }
        let nickname = match nickname {
            Some(n) => {
                check_nickname(n)?;
                n.to_string()
            }
            None => format!("visitor-{}", &auth::new_jti()[..6]),
        };
        let user = self
            .store
            .create_visitor(shop.id, &nickname, ip, now)
            .await?;
        let conversation = self.store.kefu_conversation(&user, now).await?;
        Ok((self.issue(user, shop, now), conversation))
    }

    /// The caller of a request carrying `token` from address `ip`: the session
    /// must verify and not have ended, its user must still exist in the shop
    /// and role the token names, and a visitor's address must not be on its
    /// shop's blacklist (one read of the store).
    pub async fn caller(
        &self,
        token: &str,
        ip: Option<&str>,
        now: Millis,
    ) -> Result<Caller, ChatError> {
        let session = self.tokens.verify(token, now / 1000)?;
        let key = (session.jti.clone(), ip.map(String::from));
        let at = std::time::Instant::now();
        let forgotten = {
            let checked = lock(&self.checked);
            if let Some((_, user)) = checked.kept.get(&key).filter(|(t, u)| {
                at.duration_since(*t) < SESSION_CHECK_FOR && session.user_id().ok() == Some(u.id)
            }) {
                return Ok(Caller {
                    session,
                    user: user.clone(),
                });
            }
            checked.forgotten
        };
        let (user, revoked, blocked) = self
            .store
            .session_user(session.user_id()?, &session.jti, ip)
            .await?
            .ok_or_else(|| ChatError::Unauthorized("the session's user no longer exists".into()))?;
        if user.shop_id != session.shop || user.role != session.role {
            return Err(ChatError::Unauthorized(
                "the session does not match its user".into(),
            ));
        }
        if session.iat < user.sessions_after || revoked {
            return Err(ChatError::Unauthorized("the session has ended".into()));
        }
        if user.role == Role::Visitor && blocked {
            return Err(ChatError::Forbidden("this address is blocked by the shop"));
        }
        {
            let mut checked = lock(&self.checked);
            if checked.forgotten == forgotten {
                if checked.kept.len() >= SESSION_CHECKS_KEPT {
                    checked.kept.clear();
                }
                checked.kept.insert(key, (at, user.clone()));
            }
        }
        Ok(Caller { session, user })
    }

    /// Drops every kept session check: the next call of each session reads the
    /// store (after a logout, a password change, a blocking or a purge).
    fn forget_sessions(&self) {
        let mut checked = lock(&self.checked);
        checked.kept.clear();
        checked.forgotten += 1;
    }

    fn agent_only(&self, caller: &Caller) -> Result<(), ChatError> {
        match caller.user.role {
            Role::Agent => Ok(()),
            Role::Visitor => Err(ChatError::Forbidden("only agents may do this")),
        }
    }

    /// A conversation the caller takes part in.
    pub async fn conversation(&self, caller: &Caller, id: Id) -> Result<Conversation, ChatError> {
        let c = self
            .store
            .conversation(id)
            .await?
            .ok_or(ChatError::NotFound("conversation"))?;
        admitted(caller, c)
    }

    /// [`Chat::conversation`] as a send needs it: who is in it (kept after the
    /// first read; its other fields may be out of date).
    async fn member_of(&self, caller: &Caller, id: Id) -> Result<Conversation, ChatError> {
        if let Some(c) = self.members.conversation(id) {
            return admitted(caller, c);
        }
        let c = self.conversation(caller, id).await?;
        self.members.keep(&c);
        Ok(c)
    }

    /// The caller's conversations with the last message and unread counts.
    pub async fn conversations(
        &self,
        caller: &Caller,
        offset: u32,
        limit: u32,
    ) -> Result<Vec<Summary>, ChatError> {
        let limit = self.page(limit)?;
        Ok(self.store.summaries(&caller.user, offset, limit).await?)
    }

    fn page(&self, limit: u32) -> Result<u32, ChatError> {
        if limit == 0 || limit > self.limits.max_page {
            return Err(ChatError::BadRequest(format!(
                "limit must be 1 to {}",
                self.limits.max_page
            )));
        }
        Ok(limit)
    }

    /// The direct conversation of the caller and another user of its shop.
    pub async fn direct(
        &self,
        caller: &Caller,
        other: Id,
        now: Millis,
    ) -> Result<Conversation, ChatError> {
        let other = self
            .store
            .user(other)
            .await?
            .filter(|u| u.shop_id == caller.user.shop_id)
            .ok_or(ChatError::NotFound("user"))?;
        if caller.user.role == Role::Visitor && other.role == Role::Visitor {
            return Err(ChatError::Forbidden(
                "a visitor talks 1:1 with the shop's agents only",
            ));
        }
        Ok(self
            .store
            .direct_conversation(&caller.user, &other, now)
            .await?)
    }

    /// A page of a conversation's history (oldest first) with the caller's
    /// unread count and the members' read positions. Paging after the last id a
    /// client holds returns every message stored since, pushed or not.
    pub async fn history(
        &self,
        caller: &Caller,
        conversation: Id,
        page: Page,
    ) -> Result<Synced, ChatError> {
        let limit = match page {
            Page::Newest { limit } | Page::Before { limit, .. } | Page::After { limit, .. } => {
                limit
            }
        };
        self.page(limit)?;
        // Two reads at once: the page, and the newest id with the read state
        // (who is in the conversation is known after its first read).
        let c = self.member_of(caller, conversation).await?;
        let me = caller.user.id;
        let (messages, state) = tokio::try_join!(
            self.store.messages(c.id, page),
            self.store.read_state(c.id, me),
        )?;
        let state = state.ok_or(ChatError::NotFound("conversation"))?;
        let position = state
            .positions
            .iter()
            .find(|(user, _)| *user == me)
            .map_or(0, |(_, p)| *p);
        // (A message stored after the state was read is in the page.)
        let last_message_id = messages
            .last()
            .map_or(state.last_message_id, |m| m.id.max(state.last_message_id));
        Ok(Synced {
            conversation_id: c.id,
            messages,
            last_message_id,
            position,
            unread: state.unread,
            reads: state
                .positions
                .into_iter()
                .map(|(user_id, position)| ReadPosition { user_id, position })
                .collect(),
        })
    }

    /// The conversation a socket op names, or, when it names none, a visitor's
    /// own conversation with the shop (an agent must name one).
    pub async fn conversation_or_own(
        &self,
        caller: &Caller,
        id: Option<Id>,
        now: Millis,
    ) -> Result<Id, ChatError> {
        match (id, caller.user.role) {
            (Some(id), _) => Ok(id),
            (None, Role::Visitor) => {
                if let Some(id) = self.members.own(caller.user.id) {
                    return Ok(id);
                }
                let c = self.store.kefu_conversation(&caller.user, now).await?;
                self.members.keep(&c);
                Ok(c.id)
            }
            (None, Role::Agent) => Err(ChatError::BadRequest("conversation_id is required".into())),
        }
    }

    /// The members an event of conversation `c` goes to: the visitor and the
    /// shop's agents, or the two users.
    async fn members(&self, c: &Conversation) -> Result<Vec<Id>, ChatError> {
        Ok(match (c.visitor_id, c.pair) {
            (Some(v), _) => {
                let agents = match self.members.agents(c.shop_id) {
                    Some(a) => a,
                    None => {
                        let a: Arc<[Id]> = self
                            .store
                            .agents(c.shop_id)
                            .await?
                            .iter()
                            .map(|a| a.id)
                            .collect();
                        self.members.keep_agents(c.shop_id, a.clone());
                        a
                    }
                };
                let mut m = agents.to_vec();
                m.push(v);
                m
            }
            (None, Some((a, b))) => vec![a, b],
            (None, None) => Vec::new(),
        })
    }

    async fn publish(&self, c: &Conversation, event: &Event<'_>) -> bool {
        let Ok(members) = self.members(c).await else {
            return false;
        };
        let Ok(body) = serde_json::to_vec(event) else {
            return false;
        };
        self.publisher
            .push_mids(
                EVENT_OP,
                &members.iter().map(|m| chat_mid(*m)).collect::<Vec<_>>(),
                body,
            )
            .await
            .is_ok()
    }

    /// Stores a message, then pushes it to the conversation's members. A retry
    /// with the same client id returns the stored message (and pushes it again,
    /// in case the first push was lost).
    pub async fn send(
        &self,
        caller: &Caller,
        draft: Draft<'_>,
        now: Millis,
    ) -> Result<Sent, ChatError> {
        let message = self.outgoing(caller, draft, now).await?;
        self.send_all(caller, vec![message], now)
            .await
            .pop()
            .unwrap_or_else(|| Err(ChatError::Unavailable("a send without an outcome".into())))
    }

    /// A message the caller may send, checked (its kind and size, the caller's
    /// membership, an image's upload) and ready for [`send_all`](Chat::send_all).
    pub async fn outgoing(
        &self,
        caller: &Caller,
        draft: Draft<'_>,
        now: Millis,
    ) -> Result<Outgoing, ChatError> {
        let Draft {
            conversation,
            kind,
            body,
            client_id,
        } = draft;
        if !matches!(kind, "text" | "image" | "emoji") {
            return Err(ChatError::BadRequest(
                "kind must be text, image or emoji".into(),
            ));
        }
        if body.trim().is_empty() || body.len() > self.limits.max_message {
            return Err(ChatError::BadRequest(format!(
                "the body must hold 1 to {} bytes",
                self.limits.max_message
            )));
        }
        if let Some(id) = client_id {
            check_len("client_id", id, 1, 64)?;
        }
        let c = self.member_of(caller, conversation).await?;
        if kind == "image" {
            let upload = self.store.upload(body).await?;
            if upload.is_none_or(|u| u.conversation_id != c.id) {
                return Err(ChatError::BadRequest(
                    "an image message's body is the id of an upload into its conversation".into(),
                ));
            }
        }
        let message = NewMessage {
            conversation_id: c.id,
            sender_id: caller.user.id,
            kind: kind.into(),
            body: body.into(),
            client_id: client_id.map(String::from),
            at: now,
        };
        Ok(Outgoing {
            conversation: c,
            message,
        })
    }

    /// Stores the caller's messages in the order given (one batch of the store
    /// when they come together, so a client's several sends wait for one
    /// commit), then pushes each in that order. One outcome per message.
    pub async fn send_all(
        &self,
        caller: &Caller,
        messages: Vec<Outgoing>,
        now: Millis,
    ) -> Vec<Result<Sent, ChatError>> {
        if messages.is_empty() {
            return Vec::new();
        }
        // The sender's last-seen time is written with the messages (on SQLite
        // usually in the same batch), not before them: a send waits for one
        // commit, not one for each. The outcome is the messages'; a last-seen
        // time that could not be written is counted and tried again on the
        // next call.
        let writes = std::time::Instant::now();
        let (conversations, rows): (Vec<Conversation>, Vec<NewMessage>) = messages
            .into_iter()
            .map(|o| (o.conversation, o.message))
            .unzip();
        let (seen, stored) =
            tokio::join!(self.seen(caller.user.id, now), self.store.append_all(&rows));
        if seen.is_err() {
            metrics::counter!("herald_chat_seen_failures_total").increment(1);
        }
        let took = writes.elapsed();
        let mut out = Vec::with_capacity(stored.len());
        for (c, stored) in conversations.iter().zip(stored) {
            metrics::histogram!("herald_chat_store_seconds", "op" => "send").record(took);
            out.push(match stored {
                Ok((message, created)) => {
                    let pushed = self.publish(c, &Event::Message { message: &message }).await;
                    Ok(Sent {
                        message,
                        created,
                        pushed,
                    })
                }
                Err(e) => Err(e.into()),
            });
        }
        out
    }

    /// Keeps an image uploaded into a conversation; its id is what an image
    /// message carries. The type is read from the bytes (PNG, JPEG, GIF, WebP),
    /// never from a name or a declared type.
    pub async fn upload(
        &self,
        caller: &Caller,
        conversation: Id,
        data: &[u8],
        now: Millis,
    ) -> Result<Upload, ChatError> {
        let c = self.conversation(caller, conversation).await?;
        if data.is_empty() {
            return Err(ChatError::BadRequest("the file is empty".into()));
        }
        if data.len() > self.limits.max_upload {
            return Err(ChatError::TooLarge(format!(
                "uploads are at most {} bytes",
                self.limits.max_upload
            )));
        }
        let content_type = sniff_image(data).ok_or_else(|| {
            ChatError::Unsupported("only PNG, JPEG, GIF and WebP images are accepted".into())
        })?;
        let upload = Upload {
            id: format!("u{}", auth::new_jti().replace(['-', '_'], "")),
            conversation_id: c.id,
            uploader_id: caller.user.id,
            content_type: content_type.into(),
            size: data.len() as i64,
            created_at: now,
        };
        // The bytes first: a record never names bytes that are not there.
        self.blobs.put(&upload.id, data).await?;
        if let Err(e) = self.store.add_upload(&upload).await {
            let _ = self.blobs.remove(&upload.id).await;
            return Err(e.into());
        }
        Ok(upload)
    }

    /// An upload and its bytes, for a member of its conversation.
    pub async fn download(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<(Upload, Vec<u8>), ChatError> {
        let upload = self
            .store
            .upload(id)
            .await?
            .ok_or(ChatError::NotFound("upload"))?;
        self.conversation(caller, upload.conversation_id)
            .await
            .map_err(|_| ChatError::NotFound("upload"))?;
        let data = self
            .blobs
            .get(id)
            .await?
            .ok_or(ChatError::NotFound("upload"))?;
        Ok((upload, data))
    }

    /// The retention purge: the store's, then the bytes of the uploads it
    /// removed.
    pub async fn purge(&self, before: Millis) -> Result<Purged, ChatError> {
        let purged = self.store.purge(before).await?;
        self.forget_sessions();
        for id in &purged.uploads {
            self.blobs.remove(id).await?;
        }
        Ok(purged)
    }

    /// Moves the caller's read position and tells the other members.
    pub async fn mark_read(
        &self,
        caller: &Caller,
        conversation: Id,
        position: Id,
    ) -> Result<Id, ChatError> {
        let c = self.conversation(caller, conversation).await?;
        let position = self.store.mark_read(c.id, caller.user.id, position).await?;
        self.publish(
            &c,
            &Event::Read {
                conversation_id: c.id,
                user_id: caller.user.id,
                position,
            },
        )
        .await;
        Ok(position)
    }

    /// The caller's unread count in a conversation.
    pub async fn unread(&self, caller: &Caller, conversation: Id) -> Result<i64, ChatError> {
        let c = self.conversation(caller, conversation).await?;
        Ok(self.store.unread(c.id, caller.user.id).await?)
    }

    /// Assigns one of the caller's shop's kefu conversations (agents only).
    pub async fn assign(
        &self,
        caller: &Caller,
        conversation: Id,
        agent: Option<Id>,
    ) -> Result<(), ChatError> {
        self.agent_only(caller)?;
        let c = self.conversation(caller, conversation).await?;
        Ok(self.store.assign(c.id, agent).await?)
    }

    /// The caller's shop's visitors, each with whether it is connected now
    /// (agents only). With `online_only`, the page's connected ones.
    pub async fn visitors(
        &self,
        caller: &Caller,
        q: &VisitorQuery,
        online_only: bool,
    ) -> Result<Vec<Listed>, ChatError> {
        self.agent_only(caller)?;
        self.page(q.limit)?;
        let users = self.store.visitors(caller.user.shop_id, q).await?;
        let ids: Vec<Id> = users.iter().map(|u| chat_mid(u.id)).collect();
        let online = self
            .publisher
            .online(&ids)
            .await
            .map_err(ChatError::Unavailable)?;
        Ok(users
            .into_iter()
            .map(|user| Listed {
                online: online.contains(&chat_mid(user.id)),
                user,
            })
            .filter(|l| l.online || !online_only)
            .collect())
    }

    /// Tells the conversation's members that the caller is typing (at most once
    /// every two seconds per member and conversation; more often is dropped).
    /// Returns whether it was told.
    pub async fn typing(&self, caller: &Caller, conversation: Id) -> Result<bool, ChatError> {
        let c = self.conversation(caller, conversation).await?;
        let now = std::time::Instant::now();
        {
            let mut seen = lock(&self.typing);
            if seen.len() > 10_000 {
                seen.retain(|_, t| now.duration_since(*t) < TYPING_EVERY);
            }
            match seen.get(&(caller.user.id, c.id)) {
                Some(t) if now.duration_since(*t) < TYPING_EVERY => return Ok(false),
                _ => {
                    seen.insert((caller.user.id, c.id), now);
                }
            }
        }
        Ok(self
            .publish(
                &c,
                &Event::Typing {
                    conversation_id: c.id,
                    user_id: caller.user.id,
                },
            )
            .await)
    }

    /// Blocks an address for the caller's shop (agents only).
    pub async fn block(&self, caller: &Caller, ip: &str, now: Millis) -> Result<(), ChatError> {
        self.agent_only(caller)?;
        let ip: std::net::IpAddr = ip
            .parse()
            .map_err(|_| ChatError::BadRequest("ip must be an IPv4 or IPv6 address".into()))?;
        Ok(self
            .store
            .blacklist_add(caller.user.shop_id, &ip.to_canonical().to_string(), now)
            .await
            .map(|()| self.forget_sessions())?)
    }

    /// Unblocks an address; returns whether it was blocked (agents only).
    pub async fn unblock(&self, caller: &Caller, ip: &str) -> Result<bool, ChatError> {
        self.agent_only(caller)?;
        // As stored: the address in its canonical form.
        let ip = ip
            .parse::<std::net::IpAddr>()
            .map(|a| a.to_canonical().to_string())
            .map_err(|_| ChatError::BadRequest("ip must be an IPv4 or IPv6 address".into()))?;
        Ok(self
            .store
            .blacklist_remove(caller.user.shop_id, &ip)
            .await?)
    }

    /// The caller's shop's blocked addresses (agents only).
    pub async fn blocked(&self, caller: &Caller) -> Result<Vec<String>, ChatError> {
        self.agent_only(caller)?;
        Ok(self.store.blacklist(caller.user.shop_id).await?)
    }

    /// Adds a canned reply (agents only).
    pub async fn add_canned(
        &self,
        caller: &Caller,
        title: &str,
        body: &str,
        now: Millis,
    ) -> Result<Canned, ChatError> {
        self.agent_only(caller)?;
        check_len("the title", title, 1, 100)?;
        check_len("the body", body, 1, self.limits.max_message)?;
        Ok(self
            .store
            .canned_add(caller.user.shop_id, title, body, now)
            .await?)
    }

    /// The caller's shop's canned replies (agents only).
    pub async fn canned(&self, caller: &Caller) -> Result<Vec<Canned>, ChatError> {
        self.agent_only(caller)?;
        Ok(self.store.canned(caller.user.shop_id).await?)
    }

    /// Removes a canned reply; returns whether it was there (agents only).
    pub async fn remove_canned(&self, caller: &Caller, id: Id) -> Result<bool, ChatError> {
        self.agent_only(caller)?;
        Ok(self.store.canned_remove(caller.user.shop_id, id).await?)
    }
}

/// An argon2id hash of a password nobody has, checked when a login names no
/// agent so that it takes as long as a real check.
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| auth::hash_password(&auth::new_jti()).unwrap_or_default())
}
