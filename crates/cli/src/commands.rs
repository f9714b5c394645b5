//! Client commands: one function per noun, printing for people or `--json`.

use std::io::BufRead as _;

use clap::{Args, Subcommand};
use custody_api::{CreatedUser, DisableOutcome, EventView, GrantView, GroupView, NewToken, TokenView, UserView};
use custody_domain::{Email, GrantStatus, GroupName, Scopes, Timestamp, UserName};
use reqwest::Method;
use serde_json::json;

use crate::client::Client;
use crate::config::{credentials_path, Credentials};
use crate::Failure;

/// How results are printed.
#[derive(Clone, Copy, Debug)]
pub struct Output {
    /// JSON for scripts instead of text for people.
    pub json: bool,
}

impl Output {
    /// Prints a value as JSON on one line.
    pub fn print_json(&self, value: &impl serde::Serialize) {
        say(&serde_json::to_string(value).unwrap_or_else(|_| "null".into()));
    }

    /// Prints `value` as JSON, or `text(value)` for people.
    pub fn show<T: serde::Serialize>(&self, value: &T, text: impl FnOnce(&T) -> String) {
        if self.json {
            self.print_json(value);
        } else {
            say(&text(value));
        }
    }

    /// Prints a list as a JSON array, or one line per item.
    pub fn list<T: serde::Serialize>(&self, items: &[T], line: impl Fn(&T) -> String, empty: &str) {
        if self.json {
            self.print_json(&items);
        } else if items.is_empty() {
            say(empty);
        } else {
            for item in items {
                // One line an item: a newline someone wrote into a title
                // never starts a line of its own that looks like another item.
                say(&one_line(&line(item)));
            }
        }
    }
}

/// Prints a line on standard output. When the reader has gone (`| head`),
/// there is nobody left to tell: stop quietly instead of panicking.
pub fn say(line: &str) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = writeln!(stdout, "{}", for_terminal(line)) {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
    }
}

/// Scopes as people read them: `read, write`.
fn scope_list(scopes: Scopes) -> String {
    scopes.to_vec().iter().map(|scope| scope.as_str()).collect::<Vec<_>>().join(", ")
}

/// Reads one line from standard input, without its line ending.
pub(crate) fn read_line(what: &str) -> Result<String, Failure> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| Failure::input(format!("cannot read the {what} from standard input: {e}")))?;
    let line = line.trim_end_matches(['\r', '\n']).to_owned();
    if line.is_empty() {
        return Err(Failure::input(format!("no {what} on standard input")));
    }
    Ok(line)
}

#[derive(Args, Debug)]
pub struct LoginArgs {
    /// Read the token from standard input (the default when CUSTODY_TOKEN is unset).
    #[arg(long, conflicts_with = "user")]
    token_stdin: bool,
    /// Log in with this user's password (read from standard input) instead
    /// of a token; gets a token valid for a day.
    #[arg(long, value_name = "NAME")]
    user: Option<String>,
    /// With --user: the scopes of that token. Admins ask for `read,write,admin`.
    #[arg(long, requires = "user", default_value = "read,write")]
    scope: String,
}

pub async fn login(server: Option<String>, args: LoginArgs, out: Output) -> Result<(), Failure> {
    let mut stored = Credentials::load()?;
    let server = server
        .or(stored.server.clone())
        .ok_or_else(|| Failure::input("name the server: `custody login --server URL`"))?;
    let from_env = std::env::var("CUSTODY_TOKEN").ok().filter(|t| !t.is_empty());
    let token = if let Some(user) = &args.user {
        let user = UserName::parse(user)?;
        let scopes = Scopes::parse_list(&args.scope)?;
        if !out.json {
            eprintln!("password for {user}, then Enter:");
        }
        let password = read_line("password")?;
        let anonymous = Client::new(&server, None)?;
        let made: NewToken = anonymous
            .submit(
                "/api/v1/auth/token",
                &custody_api::LoginRequest { name: user.to_string(), password, scopes: Some(scopes) },
            )
            .await?;
        made.token
    } else {
        match from_env {
            Some(token) if !args.token_stdin => token,
            _ => {
                if !out.json {
                    eprintln!("paste the token and press Enter:");
                }
                read_line("token")?.trim().to_owned()
            }
        }
    };
    let client = Client::new(&server, Some(token.clone()))?;
    let me: UserView = client.get("/api/v1/me").await?;
    stored.server = Some(client.base().to_owned());
    stored.token = Some(token);
    let path = stored.save()?;
    out.show(&json!({ "server": client.base(), "user": &me.name }), |_| {
        format!("logged in to {} as {} (saved in {})", client.base(), me.name, path.display())
    });
    Ok(())
}

pub fn logout(out: Output) -> Result<(), Failure> {
    let mut stored = Credentials::load()?;
    let had = stored.token.take().is_some();
    if had {
        stored.save()?;
    }
    let path = credentials_path().map(|p| p.display().to_string()).unwrap_or_default();
    out.show(&json!({ "logged_out": had }), |_| {
        if had {
            format!("forgot the token stored in {path} (it still works until revoked: `custody token revoke ID`)")
        } else {
            "no token was stored".into()
        }
    });
    Ok(())
}

fn user_line(user: &UserView) -> String {
    let mut flags = Vec::new();
    if user.admin {
        flags.push("admin");
    }
    if user.state == "pending" {
        flags.push("pending approval");
    }
    if user.disabled {
        flags.push("disabled");
    }
    let flags = if flags.is_empty() { String::new() } else { format!(" [{}]", flags.join(", ")) };
    format!("{:<20} {:<30} {}{}", user.name, user.display_name, user.emails.join(", "), flags)
}

fn user_text(user: &UserView) -> String {
    let groups = if user.groups.is_empty() { "(none)".to_owned() } else { user.groups.join(", ") };
    format!("{}\ngroups: {groups}\ncreated: {}", user_line(user), user.created_at)
}

pub async fn whoami(client: &Client, out: Output) -> Result<(), Failure> {
    let me: UserView = client.get("/api/v1/me").await?;
    out.show(&me, user_text);
    Ok(())
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Ask for a new user (a grant); prints their one-time invite code.
    Add {
        /// Lowercase letters, digits, '-', '_' and '.'.
        name: String,
        /// Their e-mail address, used to recognise their commits.
        #[arg(long)]
        email: String,
        /// How they are shown.
        #[arg(long)]
        display_name: Option<String>,
    },
    /// Every user.
    List,
    /// One user.
    Show { name: String },
    /// Disable a user and revoke their tokens (a grant for admins and group members).
    Disable { name: String },
    /// Enable a disabled user again (a grant), with a fresh invite code for them.
    Enable { name: String },
    /// Set your own password for the web, read from standard input.
    SetPassword,
}

pub async fn user(client: &Client, command: UserCommand, out: Output) -> Result<(), Failure> {
    match command {
        UserCommand::Add { name, email, display_name } => {
            UserName::parse(&name)?;
            Email::parse(&email)?;
            let created: CreatedUser =
                client.submit("/api/v1/users", &custody_api::CreateUserRequest { name, email, display_name }).await?;
            out.show(&created, created_user_text);
        }
        UserCommand::List => {
            let users: Vec<UserView> = client.list("/api/v1/users").await?;
            out.list(&users, user_line, "no users");
        }
        UserCommand::Show { name } => {
            let user: UserView = client.get(&format!("/api/v1/users/{}", UserName::parse(&name)?)).await?;
            out.show(&user, user_text);
        }
        UserCommand::Disable { name } => {
            let outcome: DisableOutcome =
                client.post(&format!("/api/v1/users/{}/disable", UserName::parse(&name)?)).await?;
            out.show(&outcome, |outcome| disabled_text(&name, outcome));
        }
        UserCommand::Enable { name } => {
            let created: CreatedUser =
                client.post(&format!("/api/v1/users/{}/enable", UserName::parse(&name)?)).await?;
            out.show(&created, created_user_text);
        }
        UserCommand::SetPassword => {
            if !out.json {
                eprintln!("new password (at least 12 characters), then Enter:");
            }
            let password = read_line("password")?;
            client
                .submit_as::<()>(Method::PUT, "/api/v1/me/password", &custody_api::PasswordRequest { password })
                .await?;
            out.show(&json!({ "password_set": true }), |_| "password set".into());
        }
    }
    Ok(())
}

/// A user asked for, or asked to be enabled again: the grant, and their
/// invite code.
fn created_user_text(created: &CreatedUser) -> String {
    let grant = &created.grant;
    let status = match grant.status {
        GrantStatus::Pending => format!(
            "grant {} is pending: another admin must run `custody grant approve {}` before the code works",
            grant.id, grant.id
        ),
        _ => format!("grant {} applied at once (bootstrap: this instance has a single admin)", grant.id),
    };
    format!(
        "user {} asked for ({}); {status}\ninvite code (shown once, valid until {}): {}\nthe user runs: custody token redeem CODE",
        created.name,
        grant.description,
        created.invite_expires_at,
        created.invite_code
    )
}

/// Whether `name` is disabled now, or waits for a second admin.
fn disabled_text(name: &str, outcome: &DisableOutcome) -> String {
    match &outcome.grant {
        Some(grant) if grant.status == GrantStatus::Pending => {
            format!("disabling {name} is grant {}, pending a second admin", grant.id)
        }
        _ => format!("{name} is disabled and their tokens are revoked"),
    }
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Redeem an invite code for your own token (needs no token).
    Redeem {
        code: String,
        /// Also store the token and server, as `custody login` does.
        #[arg(long)]
        save: bool,
    },
    /// Create a token for yourself.
    Create {
        /// What it is for.
        #[arg(long, default_value = "cli")]
        name: String,
        /// Comma-separated: read, write, admin.
        #[arg(long, default_value = "read,write")]
        scope: String,
        /// When it expires, as a duration such as 30d or 12h; never by default.
        #[arg(long)]
        expires: Option<humantime::Duration>,
    },
    /// Your tokens (never their secrets).
    List,
    /// Revoke a token by id.
    Revoke { id: String },
}

pub async fn token(server: Option<String>, command: TokenCommand, out: Output) -> Result<(), Failure> {
    if let TokenCommand::Redeem { code, save } = command {
        let stored = Credentials::load()?;
        let server = server
            .or(stored.server)
            .ok_or_else(|| Failure::input("name the server: --server URL or CUSTODY_SERVER"))?;
        let client = Client::new(&server, None)?;
        let token: NewToken = client
            .submit("/api/v1/invites/redeem", &custody_api::RedeemRequest { code: code.trim().to_owned() })
            .await?;
        if save {
            let mut stored = Credentials::load()?;
            stored.server = Some(client.base().to_owned());
            stored.token = Some(token.token.clone());
            stored.save()?;
        }
        out.show(&json!({ "token": &token.token, "id": &token.id }), |_| {
            format!("your token (shown once; keep it secret): {}", token.token)
        });
        return Ok(());
    }
    let client = Client::from_env(server)?;
    match command {
        TokenCommand::Redeem { .. } => unreachable!("handled above"),
        TokenCommand::Create { name, scope, expires } => {
            let scopes = Scopes::parse_list(&scope)?;
            let body =
                custody_api::CreateTokenRequest { name, scopes, expires_in: expires.map(|d| d.as_secs().max(1)) };
            let made: NewToken = client.submit("/api/v1/tokens", &body).await?;
            out.show(&made, |t| format!("token {} ({}): {}", t.id, scope_list(t.scopes), t.token));
        }
        TokenCommand::List => {
            let tokens: Vec<TokenView> = client.list("/api/v1/tokens").await?;
            out.list(&tokens, token_line, "no tokens");
        }
        TokenCommand::Revoke { id } => {
            client.call::<()>(Method::DELETE, &format!("/api/v1/tokens/{id}"), None).await?;
            out.show(&json!({ "revoked": id }), |_| format!("token {id} revoked"));
        }
    }
    Ok(())
}

fn token_line(token: &TokenView) -> String {
    let state = match (&token.revoked_at, &token.expires_at) {
        (Some(_), _) => "revoked".to_owned(),
        (None, Some(expiry)) => format!("expires {expiry}"),
        (None, None) => "no expiry".to_owned(),
    };
    let used = token.last_used_at.map_or_else(|| "never".to_owned(), |at| at.to_string());
    format!("{}  {:<16} {:<18} {state}, last used {used}", token.id, token.name, scope_list(token.scopes))
}

fn grant_line(grant: &GrantView) -> String {
    let decided = match grant.decided_by.as_deref() {
        Some(by) if !by.is_empty() => format!(" by {by}"),
        _ => String::new(),
    };
    format!(
        "#{} {:<9} {}  (asked by {}{decided})",
        grant.id,
        grant.status.as_str(),
        grant.description,
        grant.requested_by
    )
}

fn group_line(group: &GroupView) -> String {
    let members: Vec<&str> = group.members.iter().map(|member| member.user.as_str()).collect();
    format!("{:<24} {}", group.name, if members.is_empty() { "(no members)".into() } else { members.join(", ") })
}

pub fn grant_outcome(grant: &GrantView) -> String {
    match grant.status {
        GrantStatus::Pending => format!(
            "grant {} asked for: {}; another admin must approve it (`custody grant approve {}`)",
            grant.id, grant.description, grant.id
        ),
        GrantStatus::Bootstrap => format!(
            "{} (applied at once as bootstrap grant {}: this instance has a single admin)",
            grant.description, grant.id
        ),
        status => format!("grant {} {}: {}", grant.id, status.as_str(), grant.description),
    }
}

#[derive(Subcommand, Debug)]
pub enum GroupCommand {
    /// Create an empty group.
    Create { name: String },
    /// Ask to add a user to a group (a grant). `admins` makes them an admin.
    Add { group: String, user: String },
    /// Ask to remove a user from a group (a grant).
    Remove { group: String, user: String },
    /// Every group with its members.
    List,
    /// One group.
    Show { name: String },
}

pub async fn group(client: &Client, command: GroupCommand, out: Output) -> Result<(), Failure> {
    match command {
        GroupCommand::Create { name } => {
            GroupName::parse(&name)?;
            let group: GroupView = client.submit("/api/v1/groups", &custody_api::CreateGroupRequest { name }).await?;
            out.show(&group, |g| format!("group {} created", g.name));
        }
        GroupCommand::Add { group, user } => {
            let (group, user) = (GroupName::parse(&group)?, UserName::parse(&user)?);
            let grant: GrantView = client
                .submit(
                    &format!("/api/v1/groups/{group}/members"),
                    &custody_api::MemberRequest { user: user.to_string() },
                )
                .await?;
            out.show(&grant, grant_outcome);
        }
        GroupCommand::Remove { group, user } => {
            let (group, user) = (GroupName::parse(&group)?, UserName::parse(&user)?);
            let grant: GrantView =
                client.call(Method::DELETE, &format!("/api/v1/groups/{group}/members/{user}"), None).await?;
            out.show(&grant, grant_outcome);
        }
        GroupCommand::List => {
            let groups: Vec<GroupView> = client.list("/api/v1/groups").await?;
            out.list(&groups, group_line, "no groups");
        }
        GroupCommand::Show { name } => {
            let group: GroupView = client.get(&format!("/api/v1/groups/{}", GroupName::parse(&name)?)).await?;
            out.show(&group, group_line);
        }
    }
    Ok(())
}

#[derive(Subcommand, Debug)]
pub enum GrantCommand {
    /// Grants: pending ones by default.
    List {
        /// pending, approved, rejected, bootstrap or all.
        #[arg(long, default_value = "pending")]
        status: String,
    },
    /// One grant.
    Show { id: i64 },
    /// Approve a grant another admin asked for; it applies at once.
    Approve { id: i64 },
    /// Reject a grant (or withdraw your own).
    Reject {
        id: i64,
        /// Why.
        #[arg(short = 'm', long = "message")]
        message: Option<String>,
    },
}

pub async fn grant(client: &Client, command: GrantCommand, out: Output) -> Result<(), Failure> {
    match command {
        GrantCommand::List { status } => {
            let path = match status.as_str() {
                "all" => "/api/v1/grants".to_owned(),
                "pending" | "approved" | "rejected" | "bootstrap" => format!("/api/v1/grants?status={status}"),
                other => {
                    return Err(Failure::input(format!(
                        "--status {other:?}: use pending, approved, rejected, bootstrap or all"
                    )))
                }
            };
            let grants: Vec<GrantView> = client.list(&path).await?;
            out.list(&grants, grant_line, &format!("no {status} grants"));
        }
        GrantCommand::Show { id } => {
            let grant: GrantView = client.get(&format!("/api/v1/grants/{id}")).await?;
            out.show(&grant, grant_line);
        }
        GrantCommand::Approve { id } => {
            let grant: GrantView = client.post(&format!("/api/v1/grants/{id}/approve")).await?;
            out.show(&grant, |g| format!("approved and applied grant {}: {}", g.id, g.description));
        }
        GrantCommand::Reject { id, message } => {
            let grant: GrantView = client
                .submit(&format!("/api/v1/grants/{id}/reject"), &custody_api::RejectRequest { note: message })
                .await?;
            out.show(&grant, |g| format!("rejected grant {}: {}", g.id, g.description));
        }
    }
    Ok(())
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Audit events in order.
    Log {
        /// Only events since this time: RFC 3339, or a duration ago such as 2h.
        #[arg(long)]
        since: Option<String>,
        /// Only events before this time: RFC 3339, or a duration ago.
        #[arg(long)]
        until: Option<String>,
        /// Only events by this actor.
        #[arg(long)]
        actor: Option<String>,
        /// Only events with this action, such as grant.approve.
        #[arg(long)]
        action: Option<String>,
    },
    /// The newest signed checkpoint of the audit ledger.
    Checkpoint {
        /// Check its signature with this verifier key file (`name+keyid+key`).
        #[arg(long, value_name = "FILE")]
        key: Option<std::path::PathBuf>,
    },
    /// The inclusion proof of one event, checked against its checkpoint.
    Proof {
        /// The event's sequence number.
        seq: i64,
        /// Prove against the tree of this many events [default: the newest checkpoint].
        #[arg(long)]
        size: Option<u64>,
    },
    /// The consistency proof between two tree sizes.
    Consistency {
        /// The older tree size.
        old: u64,
        /// The newer tree size.
        new: u64,
    },
    /// Recompute the ledger from the database and check it against the newest signed checkpoint.
    Verify(crate::ledger::VerifyArgs),
    /// Prove the newest checkpoint consistent with the one kept in FILE, then keep it.
    Watch {
        /// Where the last checkpoint seen is kept between runs.
        #[arg(long, value_name = "FILE")]
        state: std::path::PathBuf,
        /// The ledger's verifier key file (`name+keyid+key`) [default: pinned in FILE on the first run].
        #[arg(long, value_name = "FILE")]
        key: Option<std::path::PathBuf>,
        /// Accept a restore the server records (`instance.restored`, proved in
        /// its newest checkpoint) that lost events this watcher saw.
        #[arg(long)]
        accept_restore: bool,
    },
    /// Every event as a JSON line with its inclusion proof and the checkpoint.
    Export {
        /// Only events since this time: RFC 3339, or a duration ago such as 2h.
        #[arg(long)]
        since: Option<String>,
        /// Only events before this time: RFC 3339, or a duration ago.
        #[arg(long)]
        until: Option<String>,
    },
}

/// Reads RFC 3339, or a duration meaning that long ago.
pub(crate) fn point_in_time(value: &str) -> Result<Timestamp, Failure> {
    if let Ok(t) = Timestamp::parse_rfc3339(value) {
        return Ok(t);
    }
    let ago = humantime::parse_duration(value).map_err(|_| {
        Failure::input(format!("{value:?} is neither an RFC 3339 time (2026-11-28T19:00:00Z) nor a duration (2h)"))
    })?;
    Ok(Timestamp::from_millis(custody_store::now_ms() - ago.as_millis() as i64))
}

pub async fn audit(server: Option<String>, command: AuditCommand, out: Output) -> Result<(), Failure> {
    use crate::ledger;
    let (since, until, actor, action) = match command {
        AuditCommand::Log { since, until, actor, action } => (since, until, actor, action),
        AuditCommand::Verify(args) => return ledger::verify(args, out).await,
        AuditCommand::Checkpoint { key } => return ledger::checkpoint(&Client::from_env(server)?, key, out).await,
        AuditCommand::Proof { seq, size } => return ledger::proof(&Client::from_env(server)?, seq, size, out).await,
        AuditCommand::Consistency { old, new } => {
            return ledger::consistency(&Client::from_env(server)?, old, new, out).await
        }
        AuditCommand::Watch { state, key, accept_restore } => {
            return ledger::watch(&Client::from_env(server)?, &state, key, accept_restore, out).await
        }
        AuditCommand::Export { since, until } => return ledger::export(&Client::from_env(server)?, since, until).await,
    };
    let client = &Client::from_env(server)?;
    let mut query = Vec::new();
    if let Some(since) = since {
        query.push(format!("since={}", point_in_time(&since)?));
    }
    if let Some(until) = until {
        query.push(format!("until={}", point_in_time(&until)?));
    }
    if let Some(actor) = actor {
        query.push(format!("actor={}", encode(&actor)));
    }
    if let Some(action) = action {
        query.push(format!("action={}", encode(&action)));
    }
    let path = if query.is_empty() {
        "/api/v1/audit/events".to_owned()
    } else {
        format!("/api/v1/audit/events?{}", query.join("&"))
    };
    let events: Vec<EventView> = client.list(&path).await?;
    out.list(&events, event_line, "no events");
    Ok(())
}

fn event_line(event: &EventView) -> String {
    format!(
        "{}  {}  {:<12} {:<22} {}  {}",
        event.seq, event.at, event.actor, event.action, event.subject, event.details
    )
}

/// Percent-encodes a query value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `text` with every control character but newline and tab written out as
/// `\uXXXX`, so that nothing a user wrote into a name, title or message
/// (an escape sequence that recolours, moves the cursor or retitles the
/// window) acts on the terminal of whoever reads it. JSON stays valid: the
/// escape is JSON's own.
/// `text` for a log line: every control character written out (`\n`,
/// `\u001b`), so that nothing a request carried starts a line of its own.
pub fn for_log(text: &str) -> std::borrow::Cow<'_, str> {
    // Control characters (C0 and C1, NEL among them) and the Unicode line
    // and paragraph separators, which some viewers break lines at.
    let breaks = |c: char| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}');
    if !text.chars().any(breaks) {
        return std::borrow::Cow::Borrowed(text);
    }
    text.chars()
        .map(|c| match c {
            '\n' => "\\n".to_owned(),
            '\r' => "\\r".to_owned(),
            '\t' => "\\t".to_owned(),
            c if breaks(c) => format!("\\u{:04x}", c as u32),
            c => c.to_string(),
        })
        .collect::<String>()
        .into()
}

/// `text` on one line: line breaks written out as `\n` and `\r`.
pub fn one_line(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains(['\n', '\r']) {
        return std::borrow::Cow::Borrowed(text);
    }
    text.replace('\n', "\\n").replace('\r', "\\r").into()
}

pub fn for_terminal(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return std::borrow::Cow::Borrowed(text);
    }
    text.chars()
        .map(|c| match c {
            '\n' | '\t' => c.to_string(),
            c if c.is_control() => format!("\\u{:04x}", c as u32),
            c => c.to_string(),
        })
        .collect::<String>()
        .into()
}

#[cfg(test)]
mod tests {
    use super::{for_terminal, one_line};

    #[test]
    fn a_log_value_never_breaks_its_line() {
        let forged = "x\n2026-12-03T00:00:00Z  INFO custody: admin signed in\u{1b}[2J";
        let shown = super::for_log(forged);
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert_eq!(shown, "x\\n2026-12-03T00:00:00Z  INFO custody: admin signed in\\u001b[2J");
    }

    #[test]
    fn a_list_item_stays_on_its_line() {
        let forged = "Refunds (feature -> main) by alice\n#2     merged  Approved by everyone";
        assert_eq!(one_line(forged), "Refunds (feature -> main) by alice\\n#2     merged  Approved by everyone");
        assert!(!one_line("a\r\nb").contains(['\n', '\r']));
        assert_eq!(one_line("plain"), "plain");
    }

    #[test]
    fn escape_sequences_do_not_reach_the_terminal() {
        let hostile = "Refunds\u{1b}]0;pwned\u{7}\u{1b}[2J\u{9b}31m\tdone\nnext";
        let shown = for_terminal(hostile);
        assert!(!shown.chars().any(|c| c.is_control() && c != '\n' && c != '\t'), "{shown:?}");
        assert_eq!(shown, "Refunds\\u001b]0;pwned\\u0007\\u001b[2J\\u009b31m\tdone\nnext");
        // JSON stays JSON.
        let json = serde_json::to_string(&serde_json::json!({ "title": "a\u{9b}b" })).unwrap();
        let value: serde_json::Value = serde_json::from_str(&for_terminal(&json)).unwrap();
        assert_eq!(value["title"], "a\u{9b}b");
        assert_eq!(for_terminal("plain"), "plain");
    }
}
