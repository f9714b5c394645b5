//! Users, invite codes, tokens and authentication.

use base64::Engine as _;
use custody_api::{CreatedUser, NewToken, TokenView, UserView};
use custody_domain::access;
use custody_domain::audit::NewEvent;
use custody_domain::grant::{self, GrantAction};
use custody_domain::secret::{self, SecretKind};
use custody_domain::{Email, GroupName, InvalidInput, Scope, Scopes, Timestamp, UserName};
use rand::Rng as _;
use serde::Serialize;
use serde_json::json;

use crate::tx::Reads as _;

use crate::bearer::{hash_secret, Bound};
use crate::grants;
use crate::lookups::{in_group, pending_for_user, require_admin, user_id, Authenticated};
use crate::tx::Tx;
use crate::GrantView;
use crate::{col, now_ms, Page, PageRequest, Result, Store, StoreError};

/// How long an invite code stays valid.
pub const INVITE_LIFETIME_MS: i64 = 7 * 24 * 3600 * 1000;
/// How often a token's last use is written back, at most.
const LAST_USE_RESOLUTION_MS: i64 = 60_000;

fn random_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    (0..secret::ID_LEN).map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char).collect()
}

/// 256 random bits in unpadded base64url: the secret part of tokens,
/// invite codes and push capabilities.
pub fn random_secret() -> String {
    let bytes: [u8; 32] = rand::thread_rng().gen();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn ts(ms: Option<i64>) -> Option<Timestamp> {
    ms.map(Timestamp::from_millis)
}

/// Checks the free-text name a person gives a token.
fn check_token_name(name: &str) -> Result<()> {
    if name.trim().is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err(InvalidInput::new("token name", name, "use 1 to 64 characters without control characters").into());
    }
    Ok(())
}

pub(crate) async fn insert_token(
    tx: &mut Tx,
    user_id: i64,
    name: &str,
    scopes: Scopes,
    expires_at: Option<i64>,
) -> Result<NewToken> {
    let (id, secret) = (random_id(), random_secret());
    let list = scopes.to_list();
    let bound = Bound { kind: "token", id: &id, user_id, scopes: &list, expires_at };
    let stored = bound.stored(&tx.ledger_state().secrets.key, &hash_secret(&secret));
    let sql = tx.sql(
        "INSERT INTO tokens (id, user_id, name, secret_hash, scopes, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    );
    sqlx::query(&sql)
        .bind(&id)
        .bind(user_id)
        .bind(name)
        .bind(stored)
        .bind(&list)
        .bind(now_ms())
        .bind(expires_at)
        .execute(tx.conn())
        .await?;
    Ok(NewToken {
        token: secret::format_secret(SecretKind::Token, &id, &secret),
        id,
        scopes,
        expires_at: ts(expires_at),
    })
}

fn token_event(actor: &str, user: &str, token: &NewToken, how: &str) -> NewEvent {
    NewEvent {
        actor: actor.to_owned(),
        action: "token.create".into(),
        subject: format!("user:{user}"),
        details: json!({ "token_id": token.id, "scopes": token.scopes, "expires_at": token.expires_at, "how": how }),
    }
}

/// What init made: the first admin's token.
#[derive(Clone, Debug, Serialize)]
pub struct Initialised {
    /// The first admin.
    pub admin: String,
    /// Their token, shown once.
    pub token: String,
}

impl Store {
    /// Whether this database holds an initialised instance, and its name.
    pub async fn instance_name(&self) -> Result<Option<String>> {
        let sql = self.sql("SELECT value FROM instance WHERE key = $1");
        Ok(sqlx::query_scalar(&sql).bind("name").fetch_optional(self.readers()).await?)
    }

    /// Creates the instance: the built-in groups, the first admin and their
    /// token. The admin is granted in the bootstrap era and recorded so.
    pub async fn initialise(&self, instance: &str, admin: UserName, email: Option<Email>) -> Result<Initialised> {
        let instance = instance.to_owned();
        self.write(move |tx| {
            Box::pin(async move {
                let sql = tx.sql("INSERT INTO instance (key, value) VALUES ($1, $2) ON CONFLICT DO NOTHING");
                let created = sqlx::query(&sql).bind("name").bind(&instance).execute(tx.conn()).await?;
                if created.rows_affected() == 0 {
                    return Err(StoreError::Conflict("this database already holds a custody instance".into()));
                }
                sqlx::query(&sql).bind("admin_era").bind("bootstrap").execute(tx.conn()).await?;
                let now = now_ms();
                for group in [GroupName::admins(), GroupName::auditors()] {
                    let sql = tx.sql("INSERT INTO groups (name, builtin, created_at) VALUES ($1, 1, $2)");
                    sqlx::query(&sql).bind(group.as_str()).bind(now).execute(tx.conn()).await?;
                }
                tx.audit(NewEvent {
                    actor: custody_domain::audit::SYSTEM_ACTOR.into(),
                    action: "instance.init".into(),
                    subject: format!("instance:{instance}"),
                    details: json!({ "admin": admin, "builtin_groups": ["admins", "auditors"] }),
                })
                .await?;
                let display_name = admin.to_string();
                let user_id = insert_user(tx, &admin, &display_name, email.as_ref(), "active").await?;
                tx.audit(NewEvent {
                    actor: custody_domain::audit::SYSTEM_ACTOR.into(),
                    action: "user.create".into(),
                    subject: format!("user:{admin}"),
                    details: json!({ "email": email, "bootstrap": true }),
                })
                .await?;
                grants::record_initial_admin(tx, &admin, user_id).await?;
                let token = insert_token(tx, user_id, "init", Scopes::of(&Scope::ALL), None).await?;
                tx.audit(token_event(admin.as_str(), admin.as_str(), &token, "init")).await?;
                Ok(Initialised { admin: admin.to_string(), token: token.token })
            })
        })
        .await
    }

    /// Finds who holds a presented token. Unknown, malformed, revoked and
    /// expired tokens and disabled users all fail the same way, so a caller
    /// learns nothing about which.
    pub async fn authenticate(&self, presented: &str) -> Result<Authenticated> {
        const REFUSED: StoreError = StoreError::Unauthenticated("invalid, expired or revoked token");
        let parts = secret::parse_secret(SecretKind::Token, presented).map_err(|_| REFUSED)?;
        // One query: the token, its owner's sealed rows (whose groups make
        // them admin or auditor) and the owner's seal.
        let sql = self.sql(concat!(
            "SELECT t.secret_hash, t.scopes, t.expires_at, t.revoked_at, t.last_used_at, u.name, \
             (SELECT MAX(seq) FROM audit_events) AS newest_seq, ",
            crate::seals::user_sealed_columns!(),
            ", ",
            crate::seals::seal_columns!(),
            " FROM tokens t JOIN users u ON u.id = t.user_id \
             LEFT JOIN subject_seals s ON s.subject = 'user:' || u.name WHERE t.id = $1"
        ));
        let through = self.ledger().through();
        let row = sqlx::query(&sql).bind(parts.id).fetch_optional(self.readers()).await?.ok_or(REFUSED)?;
        let stored: String = col(&row, "secret_hash")?;
        let scopes: String = col(&row, "scopes")?;
        let expires_at: Option<i64> = col(&row, "expires_at")?;
        let bound = Bound { kind: "token", id: parts.id, user_id: col(&row, "id")?, scopes: &scopes, expires_at };
        if !bound.matches(&self.ledger().secrets.key, &stored, parts.secret) {
            return Err(REFUSED);
        }
        let now = now_ms();
        let revoked_at: Option<i64> = col(&row, "revoked_at")?;
        let disabled_at: Option<i64> = col(&row, "disabled_at")?;
        let state: String = col(&row, "state")?;
        if revoked_at.is_some() || expires_at.is_some_and(|t| t <= now) || disabled_at.is_some() || state != "active" {
            return Err(REFUSED);
        }
        let name: String = col(&row, "name")?;
        // Who they are, whether they may act and the groups that make them
        // admin or auditor: only as custody wrote them.
        let subject = format!("user:{name}");
        let newest = self.ledger().newest_within(&subject, through).unwrap_or(0);
        crate::seals::check_loaded(self.ledger(), &subject, newest, &crate::seals::user_rows(&row)?, &row)?;
        let groups = crate::seals::list(&row, "groups")?;
        let authenticated = Authenticated {
            user_id: col(&row, "id")?,
            name: UserName::parse(&name).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            scopes: Scopes::parse_list(&scopes).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            token_id: parts.id.to_owned(),
            is_admin: groups.iter().any(|g| g == "admins"),
            is_auditor: groups.iter().any(|g| g == "auditors"),
            expires_at,
            as_of: col::<Option<i64>>(&row, "newest_seq")?.unwrap_or(0),
        };
        let last_used: Option<i64> = col(&row, "last_used_at")?;
        if last_used.is_none_or(|t| now - t >= LAST_USE_RESOLUTION_MS) {
            self.touch_token(authenticated.token_id.clone(), now);
        }
        Ok(authenticated)
    }

    /// A user acting on their own earlier request (such as a merge asked to
    /// happen when the gate opens), with the authority they have now: read
    /// and write, never admin. `None` when they are disabled or gone.
    pub async fn acting_user(&self, user_id: i64) -> Result<Option<Authenticated>> {
        let sql = self.sql("SELECT name FROM users WHERE id = $1 AND state = 'active' AND disabled_at IS NULL");
        let name: Option<String> = sqlx::query_scalar(&sql).bind(user_id).fetch_optional(self.readers()).await?;
        let Some(name) = name else { return Ok(None) };
        Ok(Some(Authenticated {
            user_id,
            name: UserName::parse(&name).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            scopes: Scopes::of(&[Scope::Read, Scope::Write]),
            token_id: String::new(),
            is_admin: false,
            is_auditor: false,
            expires_at: None,
            as_of: 0,
        }))
    }

    /// Records a token's last use in the background; a lost update only
    /// makes "last used" a minute staler.
    fn touch_token(&self, token_id: String, now: i64) {
        let store = self.clone();
        tokio::spawn(async move {
            let _ = store
                .write(move |tx| {
                    Box::pin(async move {
                        let sql = tx.sql("UPDATE tokens SET last_used_at = $1 WHERE id = $2");
                        sqlx::query(&sql).bind(now).bind(&token_id).execute(tx.conn()).await?;
                        Ok(())
                    })
                })
                .await;
        });
    }

    /// An admin asks for a new user. The user exists as `pending` until a
    /// second admin approves the grant (at once in the bootstrap era); the
    /// invite code works from then on, for seven days.
    pub async fn request_user(
        &self,
        actor: &Authenticated,
        name: UserName,
        email: Email,
        display_name: Option<String>,
    ) -> Result<CreatedUser> {
        let display_name = display_name.unwrap_or_else(|| name.to_string());
        custody_domain::name::check_display_name(&display_name)?;
        let actor = actor.clone();
        self.write(move |tx| {
            Box::pin(async move {
                require_admin(tx, &actor).await?;
                if user_id(tx, &name).await?.is_some() {
                    return Err(StoreError::Conflict(format!("a user named {name} already exists")));
                }
                let sql = tx.sql("SELECT COUNT(*) FROM user_emails WHERE email = $1");
                let taken: i64 = sqlx::query_scalar(&sql).bind(email.as_str()).fetch_one(tx.conn()).await?;
                if taken > 0 {
                    return Err(StoreError::Conflict(format!("the e-mail address {email} belongs to another user")));
                }
                let user_id = insert_user(tx, &name, &display_name, Some(&email), "pending").await?;
                let (id, secret, expires_at) = insert_invite(tx, user_id, &actor.name).await?;
                let action = GrantAction::CreateUser { user: name.clone(), email, display_name };
                let grant = grants::request(tx, &actor, action).await?;
                if grant.status == custody_domain::GrantStatus::Pending {
                    // An event about the user, so that their rows as a
                    // pending user are sealed at it and cannot be replayed.
                    tx.audit(NewEvent {
                        actor: actor.name.to_string(),
                        action: "user.pending".into(),
                        subject: format!("user:{name}"),
                        details: json!({ "grant": grant.id, "invite": id, "invite_expires_at": expires_at }),
                    })
                    .await?;
                }
                Ok(invited(&name, &id, &secret, expires_at, grant))
            })
        })
        .await
    }

    /// Redeems an invite code for the invited user's first token. Needs no
    /// authentication: the code is the credential, once.
    pub async fn redeem_invite(&self, code: &str) -> Result<NewToken> {
        const REFUSED: StoreError = StoreError::Unauthenticated("invalid, expired or already redeemed invite code");
        let parts = secret::parse_secret(SecretKind::Invite, code).map_err(|_| REFUSED)?;
        let (id, presented) = (parts.id.to_owned(), parts.secret.to_owned());
        self.write(move |tx| {
            Box::pin(async move {
                let sql = tx.sql(
                    "SELECT i.secret_hash, i.expires_at, i.redeemed_at, u.id, u.name, u.state, u.disabled_at \
                     FROM invites i JOIN users u ON u.id = i.user_id WHERE i.id = $1",
                );
                let row = sqlx::query(&sql).bind(&id).fetch_optional(tx.conn()).await?.ok_or(REFUSED)?;
                let stored: String = col(&row, "secret_hash")?;
                let expires_at: i64 = col(&row, "expires_at")?;
                let bound = Bound {
                    kind: "invite",
                    id: &id,
                    user_id: col(&row, "id")?,
                    scopes: "",
                    expires_at: Some(expires_at),
                };
                if !bound.matches(&tx.ledger_state().secrets.key, &stored, &presented) {
                    return Err(REFUSED);
                }
                let redeemed_at: Option<i64> = col(&row, "redeemed_at")?;
                let disabled_at: Option<i64> = col(&row, "disabled_at")?;
                if redeemed_at.is_some() || expires_at <= now_ms() || disabled_at.is_some() {
                    return Err(REFUSED);
                }
                let user_id: i64 = col(&row, "id")?;
                let name: String = col(&row, "name")?;
                // Redeeming renews the user's seal: only over rows custody wrote.
                crate::seals::check(tx, &format!("user:{name}")).await?;
                let active = col::<String>(&row, "state")? == "active";
                // The grant still waiting is looked up only to be named.
                let pending = if active { None } else { pending_for_user(tx, &name).await? };
                crate::allowed(custody_domain::grant::decide_redemption(&name, active, pending))?;
                let sql = tx.sql("UPDATE invites SET redeemed_at = $1 WHERE id = $2 AND redeemed_at IS NULL");
                let done = sqlx::query(&sql).bind(now_ms()).bind(&id).execute(tx.conn()).await?;
                if done.rows_affected() != 1 {
                    return Err(REFUSED);
                }
                let token = insert_token(tx, user_id, "invite", Scopes::of(&[Scope::Read, Scope::Write]), None).await?;
                tx.audit(NewEvent {
                    actor: name.clone(),
                    action: "invite.redeem".into(),
                    subject: format!("user:{name}"),
                    details: json!({ "invite_id": id }),
                })
                .await?;
                tx.audit(token_event(&name, &name, &token, "invite")).await?;
                Ok(token)
            })
        })
        .await
    }

    /// The actor makes a token for themselves. Nobody makes one for anyone
    /// else: an admin cannot act as another user.
    pub async fn create_token(
        &self,
        actor: &Authenticated,
        name: String,
        scopes: Scopes,
        expires_at: Option<i64>,
    ) -> Result<NewToken> {
        check_token_name(&name)?;
        if expires_at.is_some_and(|t| t <= now_ms()) {
            return Err(InvalidInput::new("expiry", "(in the past)", "choose a time in the future").into());
        }
        // A token never outlives the token that made it.
        let expires_at = match (expires_at, actor.expires_at) {
            (Some(asked), Some(limit)) => Some(asked.min(limit)),
            (None, limit) => limit,
            (asked, None) => asked,
        };
        let actor = actor.clone();
        self.write(move |tx| {
            Box::pin(async move {
                // Whether they are an admin matters only for the admin scope.
                let is_admin = scopes.contains(Scope::Admin) && in_group(tx, actor.user_id, "admins").await?;
                crate::allowed(access::decide_token_scopes(&actor.name, scopes, is_admin))?;
                let token = insert_token(tx, actor.user_id, &name, scopes, expires_at).await?;
                tx.audit(token_event(actor.name.as_str(), actor.name.as_str(), &token, "create")).await?;
                Ok(token)
            })
        })
        .await
    }

    /// Makes a token, valid for a day, for the named user after they proved
    /// their password (checked by the caller). This is the one way for an
    /// admin to get a token with the admin scope besides `custody init`: a
    /// token can only make tokens with no more scopes than it has.
    pub async fn create_token_after_login(&self, user_id: i64, name: &UserName, scopes: Scopes) -> Result<NewToken> {
        let name = name.clone();
        self.write(move |tx| {
            Box::pin(async move {
                // Whether they are an admin matters only for the admin scope.
                let is_admin = scopes.contains(Scope::Admin) && in_group(tx, user_id, "admins").await?;
                crate::allowed(access::decide_token_scopes(&name, scopes, is_admin))?;
                let token =
                    insert_token(tx, user_id, "password login", scopes, Some(now_ms() + 24 * 3600 * 1000)).await?;
                tx.audit(token_event(name.as_str(), name.as_str(), &token, "password")).await?;
                Ok(token)
            })
        })
        .await
    }

    /// The actor's own tokens.
    pub async fn list_tokens(&self, actor: &Authenticated, page: PageRequest) -> Result<Page<TokenView>> {
        let sql = self.sql(
            "SELECT n, id, name, scopes, created_at, expires_at, revoked_at, last_used_at FROM tokens \
             WHERE user_id = $1 AND n > $2 ORDER BY n LIMIT $3",
        );
        let rows = sqlx::query(&sql)
            .bind(actor.user_id)
            .bind(page.after.unwrap_or(0))
            .bind(page.limit)
            .fetch_all(self.readers())
            .await?;
        let mut items = Vec::with_capacity(rows.len());
        let mut cursors = Vec::with_capacity(rows.len());
        for row in rows {
            let scopes: String = col(&row, "scopes")?;
            cursors.push(col::<i64>(&row, "n")?);
            items.push(TokenView {
                id: col(&row, "id")?,
                name: col(&row, "name")?,
                scopes: Scopes::parse_list(&scopes).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                created_at: Timestamp::from_millis(col(&row, "created_at")?),
                expires_at: ts(col(&row, "expires_at")?),
                revoked_at: ts(col(&row, "revoked_at")?),
                last_used_at: ts(col(&row, "last_used_at")?),
            });
        }
        let next_cursor = (items.len() as i64 == page.limit).then(|| cursors.last().copied()).flatten();
        Ok(Page { items, next_cursor })
    }

    /// Revokes a token. Its owner may revoke it, and so may an admin (to cut
    /// off a leaked token at once); revoking never needs a second admin.
    pub async fn revoke_token(&self, actor: &Authenticated, token_id: &str) -> Result<()> {
        let (actor, token_id) = (actor.clone(), token_id.to_owned());
        self.write(move |tx| {
            Box::pin(async move {
                let sql = tx.sql(
                    "SELECT t.user_id, t.revoked_at, u.name FROM tokens t JOIN users u ON u.id = t.user_id WHERE t.id = $1",
                );
                let row = sqlx::query(&sql)
                    .bind(&token_id)
                    .fetch_optional(tx.conn())
                    .await?
                    .ok_or_else(|| StoreError::not_found("token", &token_id))?;
                let owner: i64 = col(&row, "user_id")?;
                let owner_name: String = col(&row, "name")?;
                if owner != actor.user_id {
                    require_admin(tx, &actor).await.map_err(|_| StoreError::not_found("token", &token_id))?;
                }
                if col::<Option<i64>>(&row, "revoked_at")?.is_some() {
                    return Ok(());
                }
                // Its event renews the owner's seal: only over rows custody wrote.
                crate::seals::check(tx, &format!("user:{owner_name}")).await?;
                let sql = tx.sql("UPDATE tokens SET revoked_at = $1 WHERE id = $2");
                sqlx::query(&sql).bind(now_ms()).bind(&token_id).execute(tx.conn()).await?;
                tx.audit(NewEvent {
                    actor: actor.name.to_string(),
                    action: "token.revoke".into(),
                    subject: format!("user:{owner_name}"),
                    details: json!({ "token_id": token_id }),
                })
                .await?;
                Ok(())
            })
        })
        .await
    }

    /// Sets the actor's own password hash (the caller hashes it).
    pub async fn set_password_hash(&self, actor: &Authenticated, hash: String) -> Result<()> {
        let actor = actor.clone();
        self.write(move |tx| {
            Box::pin(async move {
                let sql = tx.sql("UPDATE users SET password_hash = $1 WHERE id = $2");
                sqlx::query(&sql).bind(hash).bind(actor.user_id).execute(tx.conn()).await?;
                tx.audit(NewEvent {
                    actor: actor.name.to_string(),
                    action: "user.password.set".into(),
                    subject: format!("user:{}", actor.name),
                    details: json!({}),
                })
                .await?;
                Ok(())
            })
        })
        .await
    }

    /// The id and password hash of an active, enabled user, for a login.
    pub async fn password_hash(&self, name: &UserName) -> Result<Option<(i64, String)>> {
        self.check_seal(&format!("user:{name}")).await?;
        let sql = self.sql(
            "SELECT id, password_hash FROM users \
             WHERE name = $1 AND state = 'active' AND disabled_at IS NULL AND password_hash IS NOT NULL",
        );
        let row = sqlx::query(&sql).bind(name.as_str()).fetch_optional(self.readers()).await?;
        row.map(|row| Ok((col(&row, "id")?, col(&row, "password_hash")?))).transpose()
    }

    /// Disables a user and revokes their tokens. For an admin or a member of
    /// any group this is a grant; for anyone else it happens at once.
    ///
    /// Returns the grant when one was needed.
    pub async fn disable_user(&self, actor: &Authenticated, name: UserName) -> Result<Option<GrantView>> {
        let actor = actor.clone();
        self.write(move |tx| {
            Box::pin(async move {
                require_admin(tx, &actor).await?;
                let (id, _, disabled_at) =
                    user_id(tx, &name).await?.ok_or_else(|| StoreError::not_found("user", &name))?;
                if disabled_at.is_some() {
                    return Err(StoreError::Conflict(format!("user {name} is already disabled")));
                }
                let sql = tx.sql("SELECT COUNT(*) FROM group_members WHERE user_id = $1");
                let groups: i64 = sqlx::query_scalar(&sql).bind(id).fetch_one(tx.conn()).await?;
                let action = GrantAction::DisableUser { user: name.clone() };
                if grant::disabling_needs_grant(groups > 0) {
                    return grants::request(tx, &actor, action).await.map(Some);
                }
                crate::applying::apply(tx, 0, &action).await?;
                tx.audit(NewEvent {
                    actor: actor.name.to_string(),
                    action: "user.disable".into(),
                    subject: format!("user:{name}"),
                    details: json!({ "grant": null, "reason": "holds no duty, so no second admin is needed" }),
                })
                .await?;
                Ok(None)
            })
        })
        .await
    }

    /// Asks to enable a disabled user again: a grant, and a fresh invite
    /// code for them, which works only once the grant is applied (a
    /// disabled user redeems nothing). Their password, if they have one,
    /// works again then too.
    pub async fn request_enable_user(&self, actor: &Authenticated, name: UserName) -> Result<CreatedUser> {
        let actor = actor.clone();
        self.write(move |tx| {
            Box::pin(async move {
                require_admin(tx, &actor).await?;
                let (user_id, _, disabled_at) =
                    user_id(tx, &name).await?.ok_or_else(|| StoreError::not_found("user", &name))?;
                if disabled_at.is_none() {
                    return Err(StoreError::Conflict(format!("user {name} is not disabled")));
                }
                let (id, secret, expires_at) = insert_invite(tx, user_id, &actor.name).await?;
                let grant = grants::request(tx, &actor, GrantAction::EnableUser { user: name.clone() }).await?;
                Ok(invited(&name, &id, &secret, expires_at, grant))
            })
        })
        .await
    }

    /// Every user, a page at a time.
    pub async fn list_users(&self, page: PageRequest) -> Result<Page<UserView>> {
        let sql = self.sql(user_query!("WHERE u.id > $1 ORDER BY u.id LIMIT $2"));
        let rows = sqlx::query(&sql).bind(page.after.unwrap_or(0)).bind(page.limit).fetch_all(self.readers()).await?;
        let users = rows.iter().map(user_view).collect::<Result<Vec<_>>>()?;
        Ok(crate::page_of(users, page, |u| u.id))
    }

    /// One user.
    pub async fn get_user(&self, name: &UserName) -> Result<UserView> {
        let sql = self.sql(user_query!("WHERE u.name = $1"));
        let row = sqlx::query(&sql)
            .bind(name.as_str())
            .fetch_optional(self.readers())
            .await?
            .ok_or_else(|| StoreError::not_found("user", name))?;
        user_view(&row)
    }
}

/// What an admin gets back for an invite: the code, shown once.
fn invited(name: &UserName, id: &str, secret: &str, expires_at: i64, grant: GrantView) -> CreatedUser {
    CreatedUser {
        name: name.to_string(),
        invite_code: secret::format_secret(SecretKind::Invite, id, secret),
        invite_expires_at: Timestamp::from_millis(expires_at),
        grant,
    }
}

/// A new invite code for `user_id`, made by `by`: its id, its secret and
/// when it stops working. Only its bound hash is stored.
async fn insert_invite(tx: &mut Tx, user_id: i64, by: &UserName) -> Result<(String, String, i64)> {
    let (id, secret) = (random_id(), random_secret());
    let expires_at = now_ms() + INVITE_LIFETIME_MS;
    let bound = Bound { kind: "invite", id: &id, user_id, scopes: "", expires_at: Some(expires_at) };
    let stored = bound.stored(&tx.ledger_state().secrets.key, &hash_secret(&secret));
    let sql = tx.sql(
        "INSERT INTO invites (id, user_id, secret_hash, created_by, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    );
    sqlx::query(&sql)
        .bind(&id)
        .bind(user_id)
        .bind(stored)
        .bind(by.as_str())
        .bind(now_ms())
        .bind(expires_at)
        .execute(tx.conn())
        .await?;
    Ok((id, secret, expires_at))
}

/// A user with their e-mail addresses and groups, in one query: each list
/// is aggregated with the unit separator, which no name or address holds.
macro_rules! user_query {
    ($tail:literal) => {
        concat!(
            "SELECT u.id, u.name, u.display_name, u.state, u.disabled_at, u.created_at, ",
            "(SELECT group_concat(e.email, char(31)) FROM user_emails e WHERE e.user_id = u.id) AS emails, ",
            "(SELECT group_concat(g.name, char(31)) FROM group_members m JOIN groups g ON g.id = m.group_id ",
            "WHERE m.user_id = u.id) AS groups ",
            "FROM users u ",
            $tail
        )
    };
}
use user_query;

fn user_view(row: &sqlx::any::AnyRow) -> Result<UserView> {
    let groups = crate::seals::list(row, "groups")?;
    Ok(UserView {
        id: col(row, "id")?,
        name: col(row, "name")?,
        display_name: col(row, "display_name")?,
        emails: crate::seals::list(row, "emails")?,
        state: col(row, "state")?,
        disabled: col::<Option<i64>>(row, "disabled_at")?.is_some(),
        admin: groups.iter().any(|g| g == "admins"),
        groups,
        created_at: Timestamp::from_millis(col(row, "created_at")?),
    })
}

async fn insert_user(
    tx: &mut Tx,
    name: &UserName,
    display_name: &str,
    email: Option<&Email>,
    state: &str,
) -> Result<i64> {
    let now = now_ms();
    let sql = tx.sql("INSERT INTO users (name, display_name, state, created_at) VALUES ($1, $2, $3, $4) RETURNING id");
    let id: i64 = sqlx::query_scalar(&sql)
        .bind(name.as_str())
        .bind(display_name)
        .bind(state)
        .bind(now)
        .fetch_one(tx.conn())
        .await?;
    if let Some(email) = email {
        let sql = tx.sql("INSERT INTO user_emails (email, user_id, added_at) VALUES ($1, $2, $3)");
        sqlx::query(&sql).bind(email.as_str()).bind(id).bind(now).execute(tx.conn()).await?;
    }
    tx.touch(&format!("user:{name}"));
    Ok(id)
}
