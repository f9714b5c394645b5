//! One conformance suite, run against both backends.
//!
//! Every scenario below is an `async fn` taking a fresh, empty [`Store`]
//! (and, when it needs to go around the store, the database URL). The
//! `on_both_backends!` macro at the bottom turns each into two tests,
//! `sqlite::NAME` and `postgres::NAME`, so SQLite and PostgreSQL are held to
//! exactly the same behaviour.
//!
//! PostgreSQL is skipped only when `CUSTODY_TEST_SKIP_POSTGRES=1`; an
//! unreachable server fails the tests (see `custody_store::testing`).

#[macro_use]
mod support;

use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;

use custody_domain::audit::{AuditEvent, NewEvent, SYSTEM_ACTOR};
use custody_domain::{AdminEra, Email, GrantStatus, GroupName, Scope, Scopes, UserName};
use custody_store::testing::{execute_raw, TestDatabase};
use custody_store::{
    now_ms, AuditFilter, Authenticated, CreatedUser, Dialect, PageRequest, Store, StoreError, UserView,
};

// ---------------------------------------------------------------------------
// Running a scenario on a backend
// ---------------------------------------------------------------------------

/// A scenario: `async fn(Store)`, or `async fn(Store, String)` for one that
/// also needs the database URL. The marker type keeps the two impls apart.
trait Scenario<Marker> {
    fn call(self, store: Store, url: String) -> impl Future<Output = ()>;
}

struct StoreOnly;
struct StoreAndUrl;

impl<F, Fut> Scenario<StoreOnly> for F
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = ()>,
{
    fn call(self, store: Store, _url: String) -> impl Future<Output = ()> {
        self(store)
    }
}

impl<F, Fut> Scenario<StoreAndUrl> for F
where
    F: FnOnce(Store, String) -> Fut,
    Fut: Future<Output = ()>,
{
    fn call(self, store: Store, url: String) -> impl Future<Output = ()> {
        self(store, url)
    }
}

/// Runs `scenario` on a fresh database of `dialect`, then closes the store
/// and drops the database.
async fn run<M>(dialect: Dialect, scenario: impl Scenario<M>) {
    let Some(db) = TestDatabase::new(dialect).await else {
        // Only when PostgreSQL was deliberately skipped.
        return;
    };
    let store = Store::open(&db.url, custody_store::testing::secrets_for(&db.url))
        .await
        .expect("the store opens on a fresh database");
    assert_eq!(store.dialect(), dialect);
    scenario.call(store.clone(), db.url.clone()).await;
    store.close().await;
    drop(db);
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn user(name: &str) -> UserName {
    UserName::parse(name).expect("a valid user name")
}

fn email(address: &str) -> Email {
    Email::parse(address).expect("a valid e-mail address")
}

fn group(name: &str) -> GroupName {
    GroupName::parse(name).expect("a valid group name")
}

/// The rule names of a refusal, or a panic naming what came instead.
fn refused_rules<T: std::fmt::Debug>(result: Result<T, StoreError>) -> Vec<String> {
    match result {
        Err(StoreError::Refused(decision)) => {
            assert!(!decision.allowed, "a refusal is never allowed: {decision:?}");
            decision.reasons.into_iter().map(|r| r.rule).collect()
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Initialises the instance with admin `root` and returns root, acting.
async fn init_root(store: &Store) -> Authenticated {
    let init = store.initialise("test", user("root"), Some(email("root@example.com"))).await.expect("initialise");
    store.authenticate(&init.token).await.expect("root's init token authenticates")
}

/// Asks for user `name` <name@example.com>.
async fn ask_for_user(store: &Store, actor: &Authenticated, name: &str) -> CreatedUser {
    store
        .request_user(actor, user(name), email(&format!("{name}@example.com")), None)
        .await
        .unwrap_or_else(|e| panic!("request user {name}: {e:?}"))
}

/// Redeems an approved user's invite and returns them, acting with the
/// read/write token it gives.
async fn join(store: &Store, created: &CreatedUser) -> Authenticated {
    let token = store.redeem_invite(&created.invite_code).await.expect("the invite redeems");
    store.authenticate(&token.token).await.expect("the invite token authenticates")
}

/// The same user, acting with a fresh token carrying the admin scope.
async fn with_admin_scope(store: &Store, who: &Authenticated) -> Authenticated {
    let token = store
        .create_token(who, "admin work".into(), Scopes::of(&[Scope::Admin]), None)
        .await
        .expect("an admin may make an admin token");
    store.authenticate(&token.token).await.expect("the admin token authenticates")
}

/// During bootstrap: makes `name` a user and an admin (ending bootstrap) and
/// returns them acting with an admin-scoped token.
async fn second_admin(store: &Store, root: &Authenticated, name: &str) -> Authenticated {
    assert_eq!(store.admin_era().await.unwrap(), AdminEra::Bootstrap, "second_admin runs during bootstrap");
    let created = ask_for_user(store, root, name).await;
    let joined = join(store, &created).await;
    let grant = store.request_membership(root, GroupName::admins(), user(name)).await.expect("make admin");
    assert_eq!(grant.status, GrantStatus::Bootstrap);
    with_admin_scope(store, &joined).await
}

/// Root and bob, both admins: the instance is governed.
async fn governed(store: &Store) -> (Authenticated, Authenticated) {
    let root = init_root(store).await;
    let bob = second_admin(store, &root, "bob").await;
    assert_eq!(store.admin_era().await.unwrap(), AdminEra::Governed);
    (root, bob)
}

/// The whole audit log, read a page at a time.
async fn all_events(store: &Store) -> Vec<AuditEvent> {
    let mut events = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .audit_events(&AuditFilter::default(), PageRequest::new(after, Some(PageRequest::MAX)))
            .await
            .expect("read the audit log");
        events.extend(page.items);
        match page.next_cursor {
            Some(cursor) => after = Some(cursor),
            None => return events,
        }
    }
}

/// Every user, read a page at a time.
async fn all_users(store: &Store) -> Vec<UserView> {
    let mut users = Vec::new();
    let mut after = None;
    loop {
        let page = store.list_users(PageRequest::new(after, Some(PageRequest::MAX))).await.expect("list users");
        users.extend(page.items);
        match page.next_cursor {
            Some(cursor) => after = Some(cursor),
            None => return users,
        }
    }
}

fn assert_gapless(events: &[AuditEvent]) {
    let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    let expected: Vec<i64> = (1..=events.len() as i64).collect();
    assert_eq!(seqs, expected, "audit sequence numbers run from 1 without gaps");
}

fn test_event(action: &str) -> NewEvent {
    NewEvent {
        actor: "tester".into(),
        action: action.into(),
        subject: "test:conformance".into(),
        details: serde_json::json!({}),
    }
}

// ---------------------------------------------------------------------------
// 1. Initialisation
// ---------------------------------------------------------------------------

async fn initialise_makes_an_admin_with_every_scope(store: Store) {
    assert_eq!(store.instance_name().await.unwrap(), None);
    let init = store.initialise("test", user("root"), None).await.expect("initialise");
    assert_eq!(init.admin, "root");
    let root = store.authenticate(&init.token).await.expect("the init token authenticates");
    assert_eq!(root.name.as_str(), "root");
    assert!(root.is_admin, "the first user is an admin");
    assert_eq!(root.scopes.to_vec(), vec![Scope::Read, Scope::Write, Scope::Admin]);
    assert_eq!(store.instance_name().await.unwrap().as_deref(), Some("test"));
    let view = store.get_user(&user("root")).await.unwrap();
    assert_eq!((view.state.as_str(), view.admin, view.disabled), ("active", true, false));
    assert_eq!(store.admin_era().await.unwrap(), AdminEra::Bootstrap);
}

async fn initialising_twice_is_a_conflict_that_writes_nothing(store: Store) {
    init_root(&store).await;
    let events_before = all_events(&store).await;
    let users_before = all_users(&store).await.len();

    let err = store.initialise("other", user("mallory"), None).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");

    assert_eq!(all_events(&store).await, events_before, "no audit event was written");
    assert_eq!(all_users(&store).await.len(), users_before, "no user was made");
    assert_eq!(store.instance_name().await.unwrap().as_deref(), Some("test"));
    assert!(matches!(store.get_user(&user("mallory")).await, Err(StoreError::NotFound { .. })));
}

// ---------------------------------------------------------------------------
// 2. Bootstrap
// ---------------------------------------------------------------------------

async fn bootstrap_grants_apply_at_once_until_a_second_admin_exists(store: Store) {
    let root = init_root(&store).await;

    // A lone admin's request applies at once, marked as bootstrap.
    let alice = ask_for_user(&store, &root, "alice").await;
    assert_eq!(alice.grant.status, GrantStatus::Bootstrap);
    assert_eq!(store.get_user(&user("alice")).await.unwrap().state, "active");
    assert_eq!(store.admin_era().await.unwrap(), AdminEra::Bootstrap, "an ordinary user does not end bootstrap");

    // Making a second admin applies at once too, and ends bootstrap.
    let grant = store.request_membership(&root, GroupName::admins(), user("alice")).await.unwrap();
    assert_eq!(grant.status, GrantStatus::Bootstrap);
    assert!(store.get_user(&user("alice")).await.unwrap().admin);
    assert_eq!(store.admin_era().await.unwrap(), AdminEra::Governed);

    // From now on a request waits for a second admin.
    let carol = ask_for_user(&store, &root, "carol").await;
    assert_eq!(carol.grant.status, GrantStatus::Pending);
    assert_eq!(store.get_user(&user("carol")).await.unwrap().state, "pending");
    let grant = store.request_membership(&root, group("auditors"), user("alice")).await.unwrap();
    assert_eq!(grant.status, GrantStatus::Pending);
    assert!(store.get_user(&user("alice")).await.unwrap().groups.iter().all(|g| g != "auditors"));

    let ends: Vec<_> = all_events(&store).await.into_iter().filter(|e| e.action == "instance.bootstrap.end").collect();
    assert_eq!(ends.len(), 1, "the end of bootstrap is recorded once");
    assert_eq!(ends[0].actor, SYSTEM_ACTOR);
}

async fn removing_the_second_admin_does_not_reopen_bootstrap(store: Store) {
    let (root, bob) = governed(&store).await;

    let removal = store.request_removal(&bob, GroupName::admins(), user("bob")).await.unwrap();
    assert_eq!(removal.status, GrantStatus::Pending, "bob's own removal waits for another admin");
    let approved = store.approve_grant(&root, removal.id).await.expect("root approves bob's removal");
    assert_eq!(approved.status, GrantStatus::Approved);
    assert!(!store.get_user(&user("bob")).await.unwrap().admin, "bob is no longer an admin");

    assert_eq!(store.admin_era().await.unwrap(), AdminEra::Governed, "bootstrap never returns");
    let carol = ask_for_user(&store, &root, "carol").await;
    assert_eq!(carol.grant.status, GrantStatus::Pending, "a lone admin's request still waits");
    assert_eq!(store.get_user(&user("carol")).await.unwrap().state, "pending");
    let rules = refused_rules(store.approve_grant(&root, carol.grant.id).await);
    assert_eq!(rules, ["grant.requester_cannot_approve"]);
}

// ---------------------------------------------------------------------------
// 3. Approval
// ---------------------------------------------------------------------------

async fn requester_cannot_approve_own_grant(store: Store) {
    let (root, _bob) = governed(&store).await;
    let carol = ask_for_user(&store, &root, "carol").await;
    let err = store.approve_grant(&root, carol.grant.id).await.unwrap_err();
    assert!(matches!(&err, StoreError::Refused(d) if d.reasons[0].rule == "grant.requester_cannot_approve"), "{err:?}");
    let grant = store.get_grant(carol.grant.id).await.unwrap();
    assert_eq!(grant.status, GrantStatus::Pending, "a refused approval changes nothing");
    assert_eq!(grant.decided_by, None);
    assert_eq!(store.get_user(&user("carol")).await.unwrap().state, "pending");
}

async fn a_user_still_awaiting_approval_cannot_be_made_an_admin(store: Store) {
    let (root, _bob) = governed(&store).await;
    let carol = ask_for_user(&store, &root, "carol").await;
    // Were this allowed, carol would count as an admin before anyone approved
    // her existence, and rejecting her creation would leave a dangling member.
    let err = store.request_membership(&root, GroupName::admins(), user("carol")).await.unwrap_err();
    assert!(matches!(&err, StoreError::Conflict(m) if m.contains(&format!("grant {}", carol.grant.id))), "{err:?}");
    assert!(!store.get_group(&GroupName::admins()).await.unwrap().members.iter().any(|m| m.user == "carol"));
}

async fn a_push_records_its_pusher_and_the_people_its_commits_name(store: Store) {
    use custody_domain::project::{Identity, PushedCommit, RefUpdate, ZERO_ID};
    let root = init_root(&store).await;
    let alice = join(&store, &ask_for_user(&store, &root, "alice").await).await;
    join(&store, &ask_for_user(&store, &root, "bob").await).await;
    let project = custody_domain::ProjectName::parse("payments").unwrap();
    store.create_project(&root, project.clone(), "main".into()).await.unwrap();
    store.request_project_member(&root, project.clone(), user("alice"), custody_domain::Role::Write).await.unwrap();
    let access = store.project_access(&alice, &project).await.unwrap();
    assert_eq!(access.role, Some(custody_domain::Role::Write));

    let who = |name: &str, address: &str| Identity { name: name.into(), email: address.into(), user: None };
    let commit = |sha: &str| PushedCommit {
        sha: sha.into(),
        author: who("Bob", "BOB@example.com"),
        committer: who("Alice", "alice@example.com"),
        co_authors: vec![who("Carol", "carol@elsewhere.example")],
    };
    let (first, second) = ("a".repeat(40), "b".repeat(40));
    let update = RefUpdate { name: "refs/heads/feature".into(), old: ZERO_ID.into(), new: second.clone() };
    let push = store.record_push(&access, &alice, vec![update], vec![commit(&first), commit(&second)]).await.unwrap();

    let seen = store.commit(&project, &first).await.unwrap();
    assert_eq!(seen.pusher.as_deref(), Some("alice"), "the pusher comes from authentication");
    assert_eq!(seen.first_push, Some(push));
    assert_eq!(seen.author.user.as_deref(), Some("bob"), "addresses are matched without case");
    assert_eq!(seen.committer.user.as_deref(), Some("alice"));
    assert_eq!(seen.co_authors[0].user, None, "an unknown address is kept as written");
    assert_eq!(seen.co_authors[0].email, "carol@elsewhere.example");

    // Pushing the same commit again keeps its first pusher.
    let again = RefUpdate { name: "refs/heads/other".into(), old: ZERO_ID.into(), new: first.clone() };
    store.record_push(&access, &root, vec![again], vec![commit(&first)]).await.unwrap();
    assert_eq!(store.commit(&project, &first).await.unwrap().first_push, Some(push));

    let pushes = store.pushes(&project, PageRequest::default()).await.unwrap().items;
    assert_eq!(pushes.len(), 2);
    assert_eq!((pushes[0].pusher.as_str(), pushes[0].commits.len()), ("alice", 2));
    assert!(pushes[1].commits.is_empty());
    let events = all_events(&store).await;
    let logged = events.iter().find(|e| e.action == "git.push").expect("a push event");
    assert_eq!(logged.actor, "alice");
    assert_eq!(logged.details["users_named_by_commits"], serde_json::json!(["alice", "bob"]));
}

async fn changing_the_default_branch_is_a_grant_and_keeps_the_old_one_protected(store: Store) {
    use custody_domain::grant::GrantAction;
    let (root, bob) = governed(&store).await;
    let project = custody_domain::ProjectName::parse("payments").unwrap();
    store.create_project(&root, project.clone(), "main".into()).await.unwrap();
    let action = GrantAction::SetDefaultBranch { project: project.clone(), branch: "trunk".into() };
    let grant = store.request(&root, action).await.unwrap();
    assert_eq!(grant.status, GrantStatus::Pending);
    assert_eq!(store.get_project(&project).await.unwrap().default_branch, "main", "nothing changes before approval");
    assert_eq!(refused_rules(store.approve_grant(&root, grant.id).await), ["grant.requester_cannot_approve"]);
    store.approve_grant(&bob, grant.id).await.unwrap();
    let view = store.get_project(&project).await.unwrap();
    assert_eq!(view.default_branch, "trunk");
    assert_eq!(view.protected_branches, ["trunk", "main"], "the old mainline stays protected");
}

async fn a_token_cannot_outlive_the_token_that_made_it(store: Store) {
    let root = init_root(&store).await;
    let alice = join(&store, &ask_for_user(&store, &root, "alice").await).await;
    let soon = now_ms() + 60_000;
    let short = store.create_token(&alice, "short".into(), Scopes::of(&[Scope::Write]), Some(soon)).await.unwrap();
    let short = store.authenticate(&short.token).await.unwrap();
    // Asking for no expiry, or a later one, still ends with the maker's.
    for asked in [None, Some(soon + 3_600_000)] {
        let made = store.create_token(&short, "longer".into(), Scopes::of(&[Scope::Read]), asked).await.unwrap();
        assert_eq!(made.expires_at.map(|t| t.millis()), Some(soon), "{asked:?}");
    }
    let earlier =
        store.create_token(&short, "earlier".into(), Scopes::of(&[Scope::Read]), Some(soon - 1000)).await.unwrap();
    assert_eq!(earlier.expires_at.map(|t| t.millis()), Some(soon - 1000));
}

async fn an_admin_named_by_a_grant_cannot_approve_it(store: Store) {
    let (root, bob) = governed(&store).await;
    store.create_group(&root, group("qa")).await.unwrap();
    let grant = store.request_membership(&root, group("qa"), user("bob")).await.unwrap();
    assert_eq!(grant.status, GrantStatus::Pending);
    let rules = refused_rules(store.approve_grant(&bob, grant.id).await);
    assert_eq!(rules, ["grant.named_cannot_approve"]);
    assert_eq!(store.get_grant(grant.id).await.unwrap().status, GrantStatus::Pending);
    assert!(store.get_group(&group("qa")).await.unwrap().members.is_empty());
}

async fn a_second_admin_approves_and_the_grant_applies(store: Store) {
    let (root, bob) = governed(&store).await;
    let carol = ask_for_user(&store, &root, "carol").await;
    let approved = store.approve_grant(&bob, carol.grant.id).await.expect("bob approves root's grant");
    assert_eq!(approved.status, GrantStatus::Approved);
    assert_eq!(approved.decided_by.as_deref(), Some("bob"));
    assert!(approved.decided_at.is_some());
    assert_eq!(store.get_user(&user("carol")).await.unwrap().state, "active");

    // Deciding again is refused: it is no longer pending.
    assert_eq!(refused_rules(store.approve_grant(&bob, carol.grant.id).await), ["grant.not_pending"]);
    assert_eq!(refused_rules(store.reject_grant(&bob, carol.grant.id, None).await), ["grant.not_pending"]);
}

async fn pending_users_invite_waits_for_approval_then_redeems_once(store: Store) {
    let (root, bob) = governed(&store).await;
    let carol = ask_for_user(&store, &root, "carol").await;

    let err = store.redeem_invite(&carol.invite_code).await.unwrap_err();
    assert!(matches!(&err, StoreError::Refused(d) if d.reasons[0].rule == "grant.awaiting_approval"), "{err:?}");

    store.approve_grant(&bob, carol.grant.id).await.unwrap();
    let token = store.redeem_invite(&carol.invite_code).await.expect("the approved invite redeems");
    assert_eq!(token.scopes.to_vec(), vec![Scope::Read, Scope::Write], "an invite token carries no admin scope");
    let carol_acting = store.authenticate(&token.token).await.unwrap();
    assert_eq!(carol_acting.name.as_str(), "carol");
    assert!(!carol_acting.is_admin);

    let again = store.redeem_invite(&carol.invite_code).await.unwrap_err();
    assert!(matches!(again, StoreError::Unauthenticated(_)), "{again:?}");
    let forged = store.redeem_invite("cin_nothing").await.unwrap_err();
    assert!(matches!(forged, StoreError::Unauthenticated(_)), "{forged:?}");
}

// ---------------------------------------------------------------------------
// 5. The last admin
// ---------------------------------------------------------------------------

async fn the_last_admin_cannot_be_removed_or_disabled(store: Store) {
    let root = init_root(&store).await;
    let events_before = all_events(&store).await.len();

    let rules = refused_rules(store.request_removal(&root, GroupName::admins(), user("root")).await);
    assert_eq!(rules, ["admin.last_admin"]);
    let rules = refused_rules(store.disable_user(&root, user("root")).await);
    assert_eq!(rules, ["admin.last_admin"]);

    assert_eq!(all_events(&store).await.len(), events_before, "refusals write nothing");
    let view = store.get_user(&user("root")).await.unwrap();
    assert!(view.admin && !view.disabled);
    assert_can_act(&store, &root).await;
}

async fn the_last_admin_left_after_governance_cannot_be_removed(store: Store) {
    let (root, bob) = governed(&store).await;
    let removal = store.request_removal(&root, GroupName::admins(), user("bob")).await.unwrap();
    assert_eq!(removal.status, GrantStatus::Pending);
    // Bob is named by it, root asked for it: neither may approve.
    assert_eq!(refused_rules(store.approve_grant(&bob, removal.id).await), ["grant.named_cannot_approve"]);
    assert_eq!(refused_rules(store.approve_grant(&root, removal.id).await), ["grant.requester_cannot_approve"]);

    // Bob removes himself, root approves: root is the last admin.
    store.reject_grant(&root, removal.id, Some("withdrawn".into())).await.unwrap();
    let removal = store.request_removal(&bob, GroupName::admins(), user("bob")).await.unwrap();
    store.approve_grant(&root, removal.id).await.unwrap();

    let rules = refused_rules(store.request_removal(&root, GroupName::admins(), user("root")).await);
    assert_eq!(rules, ["admin.last_admin"]);
    let rules = refused_rules(store.disable_user(&root, user("root")).await);
    assert_eq!(rules, ["admin.last_admin"]);
}

// ---------------------------------------------------------------------------
// 6 and 7. Names and addresses
// ---------------------------------------------------------------------------

async fn rejecting_a_new_user_frees_the_name_and_email(store: Store) {
    let (root, bob) = governed(&store).await;
    let carol = ask_for_user(&store, &root, "carol").await;
    let rejected = store.reject_grant(&bob, carol.grant.id, Some("wrong team".into())).await.unwrap();
    assert_eq!(rejected.status, GrantStatus::Rejected);
    assert_eq!(rejected.note.as_deref(), Some("wrong team"));
    assert!(matches!(store.get_user(&user("carol")).await, Err(StoreError::NotFound { .. })));
    let old = store.redeem_invite(&carol.invite_code).await.unwrap_err();
    assert!(matches!(old, StoreError::Unauthenticated(_)), "the rejected invite is void: {old:?}");

    let again = store
        .request_user(&root, user("carol"), email("CAROL@example.com"), Some("Carol".into()))
        .await
        .expect("the same name and address can be asked for again");
    assert_eq!(again.grant.status, GrantStatus::Pending);
    assert_ne!(again.grant.id, carol.grant.id);
    store.approve_grant(&bob, again.grant.id).await.unwrap();
    let view = store.get_user(&user("carol")).await.unwrap();
    assert_eq!((view.state.as_str(), view.display_name.as_str()), ("active", "Carol"));
    assert_eq!(view.emails, ["carol@example.com"]);
}

async fn duplicate_names_and_emails_are_conflicts_that_write_nothing(store: Store) {
    let root = init_root(&store).await;
    ask_for_user(&store, &root, "alice").await;
    let users_before = all_users(&store).await.len();
    let events_before = all_events(&store).await;

    let same_name = store.request_user(&root, user("alice"), email("other@example.com"), None).await.unwrap_err();
    assert!(matches!(same_name, StoreError::Conflict(_)), "{same_name:?}");
    let same_as_root = store.request_user(&root, user("root"), email("root2@example.com"), None).await.unwrap_err();
    assert!(matches!(same_as_root, StoreError::Conflict(_)), "{same_as_root:?}");
    let same_email = store.request_user(&root, user("alicia"), email("ALICE@Example.com"), None).await.unwrap_err();
    assert!(matches!(same_email, StoreError::Conflict(_)), "e-mail is case-insensitive: {same_email:?}");

    assert_eq!(all_users(&store).await.len(), users_before, "no user was made");
    assert_eq!(all_events(&store).await, events_before, "no audit event was written");
    assert!(matches!(store.get_user(&user("alicia")).await, Err(StoreError::NotFound { .. })));
}

// ---------------------------------------------------------------------------
// 8. Tokens
// ---------------------------------------------------------------------------

/// Checks that `who` can still act: makes one more token with their token
/// and authenticates with it.
async fn assert_can_act(store: &Store, who: &Authenticated) {
    let token = store
        .create_token(who, "check".into(), Scopes::of(&[Scope::Read]), None)
        .await
        .expect("the actor can still act");
    store.authenticate(&token.token).await.expect("and authenticate");
}

async fn a_revoked_token_no_longer_authenticates(store: Store) {
    let root = init_root(&store).await;
    let token = store.create_token(&root, "laptop".into(), Scopes::of(&[Scope::Read]), None).await.unwrap();
    let acting = store.authenticate(&token.token).await.expect("a fresh token works");
    assert_eq!(acting.scopes.to_vec(), vec![Scope::Read]);
    assert!(!acting.has_scope(Scope::Write));

    store.revoke_token(&root, &token.id).await.expect("the owner revokes it");
    let err = store.authenticate(&token.token).await.unwrap_err();
    assert!(matches!(err, StoreError::Unauthenticated(_)), "{err:?}");
    let listed = store.list_tokens(&root, PageRequest::default()).await.unwrap();
    let view = listed.items.iter().find(|t| t.id == token.id).expect("the revoked token is listed");
    assert!(view.revoked_at.is_some());

    // Any other token still works, and a forged one does not.
    assert_can_act(&store, &root).await;
    let tampered = format!("{}x", &token.token[..token.token.len() - 1]);
    assert!(matches!(store.authenticate(&tampered).await, Err(StoreError::Unauthenticated(_))));
}

async fn a_token_cannot_expire_in_the_past(store: Store) {
    let root = init_root(&store).await;
    let events_before = all_events(&store).await.len();
    let err = store
        .create_token(&root, "stale".into(), Scopes::of(&[Scope::Read]), Some(now_ms() - 1_000))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
    assert_eq!(all_events(&store).await.len(), events_before);
    assert_eq!(store.list_tokens(&root, PageRequest::default()).await.unwrap().items.len(), 1, "only init's");
}

async fn a_token_stops_authenticating_when_it_expires(store: Store) {
    let root = init_root(&store).await;
    let token =
        store.create_token(&root, "brief".into(), Scopes::of(&[Scope::Read]), Some(now_ms() + 1_500)).await.unwrap();
    assert!(token.expires_at.is_some());
    store.authenticate(&token.token).await.expect("works before it expires");
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let err = store.authenticate(&token.token).await.unwrap_err();
    assert!(matches!(err, StoreError::Unauthenticated(_)), "{err:?}");
}

async fn disabling_a_user_in_no_group_is_immediate_and_revokes_their_tokens(store: Store) {
    let (root, bob) = governed(&store).await;
    let erin = ask_for_user(&store, &root, "erin").await;
    store.approve_grant(&bob, erin.grant.id).await.unwrap();
    let first = store.redeem_invite(&erin.invite_code).await.unwrap();
    let erin_acting = store.authenticate(&first.token).await.unwrap();
    let second = store.create_token(&erin_acting, "ci".into(), Scopes::of(&[Scope::Write]), None).await.unwrap();
    store.authenticate(&second.token).await.expect("erin's second token works");

    let grant = store.disable_user(&root, user("erin")).await.expect("disable erin");
    assert!(grant.is_none(), "a user without duties is disabled at once");
    assert!(store.get_user(&user("erin")).await.unwrap().disabled);
    for token in [&first.token, &second.token] {
        let err = store.authenticate(token).await.unwrap_err();
        assert!(matches!(err, StoreError::Unauthenticated(_)), "{err:?}");
    }
    let tokens = store.list_tokens(&erin_acting, PageRequest::default()).await.unwrap();
    assert_eq!(tokens.items.len(), 2);
    assert!(tokens.items.iter().all(|t| t.revoked_at.is_some()), "every token is revoked");
    let disabled = all_events(&store).await.into_iter().find(|e| e.action == "user.disable").expect("recorded");
    assert_eq!((disabled.actor.as_str(), disabled.subject.as_str()), ("root", "user:erin"));

    let again = store.disable_user(&root, user("erin")).await.unwrap_err();
    assert!(matches!(again, StoreError::Conflict(_)), "{again:?}");
}

async fn disabling_a_group_member_is_a_grant_that_revokes_on_approval(store: Store) {
    let (root, bob) = governed(&store).await;
    let dave = ask_for_user(&store, &root, "dave").await;
    store.approve_grant(&bob, dave.grant.id).await.unwrap();
    let dave_token = store.redeem_invite(&dave.invite_code).await.unwrap();
    store.create_group(&root, group("qa")).await.unwrap();
    let membership = store.request_membership(&root, group("qa"), user("dave")).await.unwrap();
    store.approve_grant(&bob, membership.id).await.unwrap();

    let grant = store.disable_user(&root, user("dave")).await.unwrap().expect("a member's disabling is a grant");
    assert_eq!(grant.status, GrantStatus::Pending);
    assert!(!store.get_user(&user("dave")).await.unwrap().disabled);
    store.authenticate(&dave_token.token).await.expect("dave works until the grant is approved");

    store.approve_grant(&bob, grant.id).await.unwrap();
    assert!(store.get_user(&user("dave")).await.unwrap().disabled);
    let err = store.authenticate(&dave_token.token).await.unwrap_err();
    assert!(matches!(err, StoreError::Unauthenticated(_)), "{err:?}");
}

async fn disabling_a_user_voids_their_unredeemed_invite(store: Store) {
    let root = init_root(&store).await;
    let frank = ask_for_user(&store, &root, "frank").await;
    assert!(store.disable_user(&root, user("frank")).await.unwrap().is_none());
    let err = store.redeem_invite(&frank.invite_code).await.unwrap_err();
    assert!(matches!(err, StoreError::Unauthenticated(_)), "{err:?}");
}

async fn a_non_admin_cannot_make_an_admin_token(store: Store) {
    let root = init_root(&store).await;
    let carol = ask_for_user(&store, &root, "carol").await;
    let carol = join(&store, &carol).await;
    let before = store.list_tokens(&carol, PageRequest::default()).await.unwrap().items.len();

    let err = store.create_token(&carol, "sneaky".into(), Scopes::of(&[Scope::Admin]), None).await.unwrap_err();
    assert!(matches!(&err, StoreError::Refused(d) if d.reasons[0].rule == "token.admin_scope_needs_admin"), "{err:?}");
    assert_eq!(store.list_tokens(&carol, PageRequest::default()).await.unwrap().items.len(), before);
    // Read and write are hers to have.
    store.create_token(&carol, "ok".into(), Scopes::of(&[Scope::Write]), None).await.unwrap();
}

async fn a_non_admin_cannot_request_grants(store: Store) {
    let root = init_root(&store).await;
    let carol_created = ask_for_user(&store, &root, "carol").await;
    let carol = join(&store, &carol_created).await;
    let events_before = all_events(&store).await.len();

    let rules = refused_rules(store.request_user(&carol, user("mallory"), email("m@example.com"), None).await);
    assert_eq!(rules, ["admin.required"]);
    let rules = refused_rules(store.request_membership(&carol, GroupName::admins(), user("carol")).await);
    assert_eq!(rules, ["admin.required"]);
    let rules = refused_rules(store.disable_user(&carol, user("root")).await);
    assert_eq!(rules, ["admin.required"]);

    // An admin using a token without the admin scope is refused the same way.
    let root_read = store.create_token(&root, "read".into(), Scopes::of(&[Scope::Read, Scope::Write]), None).await;
    let root_read = store.authenticate(&root_read.unwrap().token).await.unwrap();
    assert!(root_read.is_admin && !root_read.has_scope(Scope::Admin));
    let rules = refused_rules(store.request_user(&root_read, user("mallory"), email("m@example.com"), None).await);
    assert_eq!(rules, ["admin.required"]);

    assert_eq!(all_events(&store).await.len(), events_before + 1, "only root's token was recorded");
    assert!(matches!(store.get_user(&user("mallory")).await, Err(StoreError::NotFound { .. })));
}

// ---------------------------------------------------------------------------
// 9. Audit
// ---------------------------------------------------------------------------

async fn audit_log_records_who_did_what(store: Store) {
    let root = init_root(&store).await;
    let bob = second_admin(&store, &root, "bob").await;
    let carol = ask_for_user(&store, &root, "carol").await;
    store.approve_grant(&bob, carol.grant.id).await.unwrap();
    let token = store.create_token(&root, "temp".into(), Scopes::of(&[Scope::Read]), None).await.unwrap();
    store.revoke_token(&root, &token.id).await.unwrap();

    let events = all_events(&store).await;
    assert_gapless(&events);
    let find = |action: &str, actor: &str, subject: &str| -> AuditEvent {
        events
            .iter()
            .find(|e| e.action == action && e.actor == actor && e.subject == subject)
            .unwrap_or_else(|| panic!("no {action} by {actor} on {subject} in {events:#?}"))
            .clone()
    };

    assert_eq!(events[0].action, "instance.init");
    assert_eq!(events[0].actor, SYSTEM_ACTOR);
    let first_admin = find("group.member.add", SYSTEM_ACTOR, "user:root");
    assert_eq!(first_admin.details["bootstrap"], true);

    let bob_admin = find("group.member.add", "root", "user:bob");
    assert_eq!(bob_admin.details["bootstrap"], true, "bob was made admin during bootstrap");
    let end = find("instance.bootstrap.end", SYSTEM_ACTOR, "instance");
    assert!(end.seq > find("user.create", "root", "user:bob").seq, "bootstrap ended after bob was made");

    let subject = format!("grant:{}", carol.grant.id);
    let request = find("grant.request", "root", &subject);
    let approve = find("grant.approve", "bob", &subject);
    assert!(request.seq < approve.seq);
    assert_eq!(approve.details["requested_by"], "root");
    let created = find("user.create", "bob", "user:carol");
    assert_eq!(created.details["bootstrap"], false);
    assert_eq!(created.details["grant"], carol.grant.id);

    let revoke = find("token.revoke", "root", "user:root");
    assert_eq!(revoke.details["token_id"], token.id.as_str());
    assert!(find("invite.redeem", "bob", "user:bob").seq > 0);

    // The filters see the same log.
    let by_bob = store
        .audit_events(&AuditFilter { actor: Some("bob".into()), ..Default::default() }, PageRequest::default())
        .await
        .unwrap();
    assert!(!by_bob.items.is_empty() && by_bob.items.iter().all(|e| e.actor == "bob"));
    let approvals = store
        .audit_events(
            &AuditFilter { action: Some("grant.approve".into()), ..Default::default() },
            PageRequest::default(),
        )
        .await
        .unwrap();
    assert_eq!(approvals.items.len(), 1);
}

async fn a_failed_write_leaves_no_audit_event(store: Store) {
    init_root(&store).await;
    let before = all_events(&store).await;

    let err = store
        .write(|tx| {
            Box::pin(async move {
                tx.audit(test_event("test.doomed")).await?;
                Err::<(), _>(StoreError::Conflict("changed my mind".into()))
            })
        })
        .await
        .unwrap_err();
    assert!(matches!(&err, StoreError::Conflict(m) if m == "changed my mind"), "{err:?}");
    assert_eq!(all_events(&store).await, before, "the failed operation's event is gone");

    // The next event takes the number the failed one would have had.
    let seq = store.write(|tx| Box::pin(async move { tx.audit(test_event("test.kept")).await })).await.unwrap();
    assert_eq!(seq, before.len() as i64 + 1);
    let after = all_events(&store).await;
    assert_gapless(&after);
    assert!(after.iter().all(|e| e.action != "test.doomed"));
}

async fn failures_inside_a_group_commit_leave_no_gaps(store: Store) {
    let mut tasks = Vec::new();
    for i in 0..100 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .write(move |tx| {
                    Box::pin(async move {
                        let seq = tx.audit(test_event(&format!("test.{i}"))).await?;
                        if i % 3 == 0 {
                            return Err(StoreError::Conflict(format!("op {i} fails")));
                        }
                        Ok(seq)
                    })
                })
                .await
        }));
    }
    let mut seqs = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        match task.await.unwrap() {
            Ok(seq) => {
                assert_ne!(i % 3, 0);
                seqs.push(seq);
            }
            Err(err) => {
                assert_eq!(i % 3, 0, "op {i} should have succeeded: {err:?}");
                assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
            }
        }
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=66).collect::<Vec<i64>>());
    let events = all_events(&store).await;
    assert_eq!(events.len(), 66);
    assert_gapless(&events);
    for event in &events {
        let i: usize = event.action.trim_start_matches("test.").parse().unwrap();
        assert_ne!(i % 3, 0, "event of failed op {i} survived");
    }
}

async fn concurrent_writes_get_gapless_distinct_sequence_numbers(store: Store) {
    const N: i64 = 300;
    let mut tasks = Vec::new();
    for i in 0..N {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.write(move |tx| Box::pin(async move { tx.audit(test_event(&format!("test.{i}"))).await })).await
        }));
    }
    let mut seqs = Vec::new();
    for task in tasks {
        seqs.push(task.await.unwrap().expect("every concurrent write succeeds"));
    }
    let distinct: HashSet<i64> = seqs.iter().copied().collect();
    assert_eq!(distinct.len(), N as usize, "no two writes got the same number");
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=N).collect::<Vec<_>>());

    let events = all_events(&store).await;
    assert_eq!(events.len(), N as usize);
    assert_gapless(&events);
    let actions: HashSet<&str> = events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions.len(), N as usize, "every write's own event is there");
}

async fn the_database_refuses_to_change_or_delete_audit_events(store: Store, url: String) {
    use sqlx::Connection as _;
    init_root(&store).await;
    let before = all_events(&store).await;
    assert!(!before.is_empty());

    let mut conn = sqlx::AnyConnection::connect(&url).await.expect("a raw connection to the same database");
    let update = sqlx::query("UPDATE audit_events SET actor = 'mallory' WHERE seq = 1").execute(&mut conn).await;
    let update = update.expect_err("UPDATE on audit_events must fail");
    assert!(update.to_string().contains("append-only"), "{update}");
    let delete = sqlx::query("DELETE FROM audit_events").execute(&mut conn).await;
    let delete = delete.expect_err("DELETE on audit_events must fail");
    assert!(delete.to_string().contains("append-only"), "{delete}");
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_events").fetch_one(&mut conn).await.unwrap();
    assert_eq!(count, before.len() as i64);
    conn.close().await.unwrap();

    assert_eq!(all_events(&store).await, before, "the log is unchanged");
}

// ---------------------------------------------------------------------------
// 10. Pagination
// ---------------------------------------------------------------------------

async fn listing_users_page_by_page_sees_each_once(store: Store) {
    let root = init_root(&store).await;
    for name in ["alice", "bob", "carol", "dave"] {
        ask_for_user(&store, &root, name).await;
    }
    let mut seen = Vec::new();
    let mut pages = Vec::new();
    let mut after = None;
    loop {
        let page = store.list_users(PageRequest::new(after, Some(2))).await.unwrap();
        assert!(page.items.len() <= 2);
        pages.push(page.items.len());
        seen.extend(page.items.iter().map(|u| (u.id, u.name.clone())));
        match page.next_cursor {
            Some(cursor) => {
                assert_eq!(Some(cursor), page.items.last().map(|u| u.id), "the cursor is the last id");
                after = Some(cursor);
            }
            None => break,
        }
        assert!(pages.len() < 10, "pagination does not end");
    }
    assert_eq!(pages, [2, 2, 1]);
    let names: Vec<&str> = seen.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(names, ["root", "alice", "bob", "carol", "dave"], "every user once, in order");
    let ids: Vec<i64> = seen.iter().map(|(id, _)| *id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
}

async fn listing_grants_by_status_pages_the_same_way(store: Store) {
    let (root, _bob) = governed(&store).await;
    for name in ["carol", "dave", "erin"] {
        ask_for_user(&store, &root, name).await;
    }
    let mut after = None;
    let mut pending = Vec::new();
    loop {
        let page = store.list_grants(Some(GrantStatus::Pending), PageRequest::new(after, Some(2))).await.unwrap();
        pending.extend(page.items.iter().map(|g| g.named_user.clone()));
        assert!(page.items.iter().all(|g| g.status == GrantStatus::Pending));
        match page.next_cursor {
            Some(c) => after = Some(c),
            None => break,
        }
    }
    assert_eq!(pending, ["carol", "dave", "erin"]);
    let bootstrap = store.list_grants(Some(GrantStatus::Bootstrap), PageRequest::default()).await.unwrap();
    // root (init), bob's creation, bob's admin membership.
    assert_eq!(bootstrap.items.len(), 3);
}

// ---------------------------------------------------------------------------
// Both backends
// ---------------------------------------------------------------------------

// ---------------------------------------------------------------------------
// Builds: leases, heartbeats, workers that vanish
// ---------------------------------------------------------------------------

async fn project_with_builds(store: &Store, count: usize) -> custody_domain::ProjectName {
    let root = init_root(store).await;
    let project = custody_domain::ProjectName::parse("payments").unwrap();
    store.create_project(&root, project.clone(), "main".into()).await.unwrap();
    for i in 0..count {
        let number = store.queue_build(&project, &format!("{i:040x}"), "main").await.unwrap();
        assert_eq!(number, i as i64 + 1, "builds are numbered per project, in order");
    }
    project
}

async fn two_workers_never_lease_the_same_build(store: Store, url: String) {
    let project = project_with_builds(&store, 40).await;
    // A second store is a second process's writer on the same database.
    let other = Store::open(&url, custody_store::testing::secrets_for(&url)).await.unwrap();
    let take = |store: Store, worker: &'static str| async move {
        let mut taken = Vec::new();
        while let Some(lease) = store.lease_build(worker, 60_000).await.unwrap() {
            taken.push(lease.number);
        }
        taken
    };
    let (a, b) = tokio::join!(take(store.clone(), "worker-a"), take(other.clone(), "worker-b"));
    let mut all: Vec<i64> = a.iter().chain(&b).copied().collect();
    all.sort();
    assert_eq!(all, (1..=40).collect::<Vec<_>>(), "each build leased exactly once: a={a:?} b={b:?}");
    for number in 1..=40 {
        assert_eq!(store.build_attempts(&project, number).await.unwrap().len(), 1);
    }
    other.close().await;
}

async fn a_build_whose_worker_vanished_is_taken_again_and_the_old_lease_is_void(store: Store) {
    let project = project_with_builds(&store, 1).await;
    let ghost = store.lease_build("ghost", 1).await.unwrap().expect("a build to lease");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let second = store.lease_build("worker-b", 60_000).await.unwrap().expect("the expired build, again");
    assert_eq!((second.number, second.attempt), (1, 2));
    // The vanished worker comes back: it can neither heartbeat, log nor finish.
    assert!(!store.heartbeat_build(&ghost, 60_000).await.unwrap());
    assert!(matches!(store.append_build_log(&ghost, "late".into()).await, Err(StoreError::Conflict(_))));
    let late = custody_store::BuildOutcome {
        status: custody_domain::status::BuildStatus::Succeeded,
        artifacts: vec![custody_store::NewArtifact { name: "evil".into(), digest: "00".repeat(32), size: 1 }],
        ..Default::default()
    };
    assert!(matches!(store.finish_build(&ghost, late).await, Err(StoreError::Conflict(_))));
    // The current holder finishes it, once; finishing again is refused.
    let made = custody_store::NewArtifact { name: "dist/app.tar.gz".into(), digest: "ab".repeat(32), size: 3 };
    let outcome = custody_store::BuildOutcome {
        status: custody_domain::status::BuildStatus::Succeeded,
        artifacts: vec![made],
        ..Default::default()
    };
    store.finish_build(&second, outcome.clone()).await.unwrap();
    assert!(store.finish_build(&second, outcome).await.is_err());
    assert_eq!(store.build_attempts(&project, 1).await.unwrap(), ["ghost", "worker-b"]);
    let counts = store.build_counts(&project).await.unwrap();
    assert_eq!(counts, [("succeeded".to_owned(), 1)]);
    let events = store
        .audit_events(
            &AuditFilter { action: Some("build.finish".into()), ..Default::default() },
            PageRequest::default(),
        )
        .await
        .unwrap();
    assert_eq!(events.items.len(), 1, "one finish, by the lease holder");
    assert_eq!(events.items[0].details["artifacts"][0]["name"], "dist/app.tar.gz");
}

async fn a_build_abandoned_too_often_fails_with_the_reason(store: Store) {
    let project = project_with_builds(&store, 1).await;
    for _ in 0..custody_store::MAX_ATTEMPTS {
        store.lease_build("crashing", 1).await.unwrap().expect("the build, again");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(store.lease_build("worker", 60_000).await.unwrap().is_none(), "nothing left to run");
    assert_eq!(store.build_counts(&project).await.unwrap(), [("error".to_owned(), 1)]);
    let events = store
        .audit_events(
            &AuditFilter { action: Some("build.finish".into()), ..Default::default() },
            PageRequest::default(),
        )
        .await
        .unwrap();
    let reason = events.items[0].details["reason"].as_str().unwrap_or_default().to_owned();
    assert!(reason.contains("stopped answering") && reason.contains("crashing"), "{reason}");
}

async fn a_requeued_build_is_taken_by_the_next_worker(store: Store) {
    let project = project_with_builds(&store, 1).await;
    let first = store.lease_build("stopping", 60_000).await.unwrap().expect("a build");
    store.requeue_build(&first).await.unwrap();
    let next = store.lease_build("next", 60_000).await.unwrap().expect("the requeued build");
    assert_eq!(next.number, first.number);
    assert_eq!(store.build_attempts(&project, 1).await.unwrap(), ["stopping", "next"]);
}

// ---------------------------------------------------------------------------
// Deployments: who may approve and sign off
// ---------------------------------------------------------------------------

/// alice's change 1 of `payments`, pushed and opened by her, unreviewed:
/// root, the five people, alice's access and the change's head.
async fn opened_change(store: &Store) -> (Authenticated, Vec<Authenticated>, custody_store::ProjectAccess, String) {
    use custody_domain::project::{Identity, PushedCommit, RefUpdate, ZERO_ID};
    let root = init_root(store).await;
    let mut people = Vec::new();
    for name in ["alice", "bob", "carol", "dave", "erin"] {
        people.push(join(store, &ask_for_user(store, &root, name).await).await);
    }
    let project = custody_domain::ProjectName::parse("payments").unwrap();
    store.create_project(&root, project.clone(), "main".into()).await.unwrap();
    for name in ["alice", "bob", "carol", "dave", "erin"] {
        store.request_project_member(&root, project.clone(), user(name), custody_domain::Role::Write).await.unwrap();
    }
    store.create_group(&root, group("release-managers")).await.unwrap();
    store.create_group(&root, group("qa")).await.unwrap();
    for (g, name) in [
        ("release-managers", "carol"),
        ("release-managers", "erin"),
        ("release-managers", "bob"),
        ("release-managers", "alice"),
        ("qa", "dave"),
        ("qa", "alice"),
    ] {
        store.request_membership(&root, group(g), user(name)).await.unwrap();
    }
    let alice_access = store.project_access(&people[0], &project).await.unwrap();
    let head = "a".repeat(40);
    let me = Identity { name: "Alice".into(), email: "alice@example.com".into(), user: None };
    let commit = PushedCommit { sha: head.clone(), author: me.clone(), committer: me, co_authors: vec![] };
    let update = RefUpdate { name: "refs/heads/feature".into(), old: ZERO_ID.into(), new: head.clone() };
    store.record_push(&alice_access, &people[0], vec![update], vec![commit]).await.unwrap();
    store
        .open_change(
            &people[0],
            &alice_access,
            "feature".into(),
            "main".into(),
            "Refunds".into(),
            String::new(),
            head.clone(),
        )
        .await
        .unwrap();
    (root, people, alice_access, head)
}

/// alice's change, approved by bob and merged; its build succeeded with
/// provenance. Returns root, alice, bob, carol (release manager), dave
/// (tester), erin (release manager too), the project's access and the
/// build's number.
async fn released_build(store: &Store) -> (Authenticated, [Authenticated; 5], custody_store::ProjectAccess, i64) {
    let (root, people, alice_access, head) = opened_change(store).await;
    let project = alice_access.project.clone();
    let change = store.get_change(&project, 1).await.unwrap();
    let bob_access = store.project_access(&people[1], &project).await.unwrap();
    store
        .review(
            &people[1],
            &bob_access,
            change.number,
            custody_domain::gate::Verdict::Approve,
            String::new(),
            Some(head.clone()),
        )
        .await
        .unwrap();
    let plan = custody_store::MergePlan {
        head: head.clone(),
        base: None,
        weakened: Vec::new(),
        evaluate: Box::new(|records: &custody_store::GateRecords| custody_domain::gate::GateReport {
            open: true,
            head: records.change.head.clone(),
            approvers: vec!["bob".into()],
            rules: vec![],
        }),
        prepared: Some(custody_store::Published {
            commit: "m".repeat(40),
            attestation: "{}".into(),
            statement: serde_json::Value::Null,
        }),
        restate: Box::new(|_, _, _| serde_json::Value::Null),
    };
    store.merge_change(&people[0], &alice_access, change.number, vec![head], vec![], plan).await.unwrap();
    assert!(store.lease_build("worker", 60_000).await.unwrap().is_none(), "not built before main holds the merge");
    settle_all(store, custody_store::Settled::Applied).await;
    let lease = store.lease_build("worker", 60_000).await.unwrap().expect("the merge queued a build");
    assert_eq!(lease.commit, "m".repeat(40));
    let outcome = custody_store::BuildOutcome {
        status: custody_domain::status::BuildStatus::Succeeded,
        provenance: Some("{}".into()),
        artifacts: vec![custody_store::NewArtifact { name: "app".into(), digest: "ab".repeat(32), size: 1 }],
        ..Default::default()
    };
    store.finish_build(&lease, outcome).await.unwrap();
    let people: [Authenticated; 5] = people.try_into().unwrap();
    (root, people, alice_access, lease.number)
}

fn production(approvals: u32, testers: bool) -> custody_store::DeployContext {
    custody_store::DeployContext {
        environment: custody_domain::pipeline::Environment {
            name: "production".into(),
            deploy: Some("scripts/deploy.sh".into()),
            after: None,
            approvals,
            approvers: Some(group("release-managers")),
            testers: testers.then(|| group("qa")),
            soak: None,
            reviewers_may_approve: false,
            log_readers: None,
        },
        also: Vec::new(),
        changes: vec![1],
    }
}

/// An environment anyone's build deploys to, with no gate.
fn staging() -> custody_store::DeployContext {
    custody_store::DeployContext {
        environment: custody_domain::pipeline::Environment {
            name: "staging".into(),
            deploy: Some("scripts/deploy.sh".into()),
            after: None,
            approvals: 0,
            approvers: None,
            testers: None,
            soak: None,
            reviewers_may_approve: false,
            log_readers: None,
        },
        also: Vec::new(),
        changes: vec![1],
    }
}

async fn decide(
    store: &Store,
    who: &Authenticated,
    access: &custody_store::ProjectAccess,
    number: i64,
    what: custody_store::DeployDecision,
) -> Result<(custody_store::DeploymentView, custody_domain::deploy::DeployReport), StoreError> {
    store.decide_deployment(who, access, number, what, String::new(), production(1, true)).await
}

async fn only_independent_people_open_a_deployment_gate(store: Store) {
    use custody_store::DeployDecision::{Approve, TestPassed};
    let (_root, [alice, bob, carol, dave, erin], access, build) = released_build(&store).await;
    let (pending, report) = store.request_deployment(&erin, &access, build, production(1, true), None).await.unwrap();
    assert_eq!(pending.status.as_str(), "pending");
    assert_eq!(pending.requested_by.as_deref(), Some("erin"));
    assert!(!report.open);
    let n = pending.number;
    // The author, the reviewer and the requester are refused, each by its rule.
    assert_eq!(refused_rules(decide(&store, &alice, &access, n, Approve).await), ["deploy.approver_not_author"]);
    assert_eq!(refused_rules(decide(&store, &bob, &access, n, Approve).await), ["deploy.approver_not_reviewer"]);
    assert_eq!(refused_rules(decide(&store, &erin, &access, n, Approve).await), ["deploy.approver_not_requester"]);
    assert_eq!(refused_rules(decide(&store, &dave, &access, n, Approve).await), ["deploy.approver_in_group"]);
    assert_eq!(refused_rules(decide(&store, &alice, &access, n, TestPassed).await), ["deploy.tester_not_author"]);
    assert_eq!(refused_rules(decide(&store, &carol, &access, n, TestPassed).await), ["deploy.tester_in_group"]);
    // carol approves: the gate still waits for dave's sign-off.
    let (approved, report) = decide(&store, &carol, &access, n, Approve).await.unwrap();
    assert_eq!(approved.status.as_str(), "pending");
    assert_eq!(report.approvers, ["carol"]);
    let failing: Vec<&str> = report.rules.iter().filter(|r| !r.passed).map(|r| r.rule.as_str()).collect();
    assert_eq!(failing, ["deploy.test_sign_off"]);
    let (queued, report) = decide(&store, &dave, &access, n, TestPassed).await.unwrap();
    assert!(report.open, "{report:?}");
    assert_eq!(queued.status.as_str(), "queued");
    assert_eq!(queued.decisions.len(), 2);
    // Nothing more is decided once it left `pending`.
    assert!(matches!(decide(&store, &erin, &access, n, Approve).await, Err(StoreError::Conflict(_))));
    let events = all_events(&store).await;
    let approvals: Vec<&AuditEvent> = events.iter().filter(|e| e.action == "deploy.approve").collect();
    assert_eq!(approvals.len(), 1, "refused attempts write nothing");
    assert_eq!(approvals[0].actor, "carol");
}

async fn a_rejected_deployment_never_runs_and_a_pending_one_can_be_cancelled(store: Store) {
    use custody_store::DeployDecision::Reject;
    let (_root, [_alice, _bob, carol, _dave, erin], access, build) = released_build(&store).await;
    let (pending, _) = store.request_deployment(&erin, &access, build, production(1, false), None).await.unwrap();
    // A second request for the same build and environment is one too many.
    let again = store.request_deployment(&erin, &access, build, production(1, false), None).await;
    assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
    let no_reason =
        store.decide_deployment(&carol, &access, pending.number, Reject, " ".into(), production(1, false)).await;
    assert!(matches!(no_reason, Err(StoreError::Invalid(_))), "{no_reason:?}");
    let (rejected, _) = store
        .decide_deployment(
            &carol,
            &access,
            pending.number,
            Reject,
            "not during the freeze".into(),
            production(1, false),
        )
        .await
        .unwrap();
    assert_eq!(rejected.status.as_str(), "rejected");
    assert!(rejected.reason.as_deref().is_some_and(|r| r.contains("not during the freeze")));
    let (next, _) = store.request_deployment(&erin, &access, build, production(1, false), None).await.unwrap();
    let cancelled = store.cancel_deployment(&erin, &access, next.number, "wrong build".into()).await.unwrap();
    assert_eq!(cancelled.status.as_str(), "cancelled");
    assert!(matches!(
        store.cancel_deployment(&erin, &access, next.number, "again".into()).await,
        Err(StoreError::Conflict(_))
    ));
}

async fn break_glass_needs_another_approver_and_stays_a_finding_until_an_uninvolved_admin_reviews_it(store: Store) {
    use custody_store::DeployDecision::Approve;
    let (root, [_alice, _bob, carol, _dave, erin], access, build) = released_build(&store).await;
    let context = || {
        let mut c = production(0, true);
        c.environment.approvals = 0;
        c
    };
    let (pending, report) =
        store.request_deployment(&erin, &access, build, context(), Some("payments are down".into())).await.unwrap();
    assert_eq!(
        pending.status.as_str(),
        "pending",
        "no approvals configured, yet break-glass waits for one: {report:?}"
    );
    assert_eq!(pending.break_glass.as_deref(), Some("payments are down"));
    let (queued, report) =
        store.decide_deployment(&carol, &access, pending.number, Approve, String::new(), context()).await.unwrap();
    assert_eq!(queued.status.as_str(), "queued", "{report:?}");
    let events = all_events(&store).await;
    assert!(events.iter().any(|e| e.action == "deploy.break_glass" && e.actor == "erin"));

    // It stays an open finding until an admin who was not involved reviews it.
    let open = store.list_findings(true).await.unwrap();
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0].kind, "break_glass");
    assert!(open[0].summary.contains("payments are down"), "{open:?}");
    assert_eq!(
        refused_rules(store.resolve_finding(&erin, open[0].id, "fine".into()).await),
        ["admin.required"],
        "the requester is no admin"
    );
    let root_token = store.create_token(&root, "admin".into(), Scopes::of(&[Scope::Admin]), None).await.unwrap();
    let root_admin = store.authenticate(&root_token.token).await.unwrap();
    let resolved = store.resolve_finding(&root_admin, open[0].id, "outage INC-7; reviewed".into()).await.unwrap();
    assert_eq!(resolved.resolved_by.as_deref(), Some("root"));
    assert!(store.list_findings(true).await.unwrap().is_empty());
    assert!(matches!(
        store.resolve_finding(&root_admin, open[0].id, "again".into()).await,
        Err(StoreError::Conflict(_))
    ));

    // An admin who broke the glass cannot review their own deployment.
    store
        .request_project_member(&root, access.project.clone(), user("root"), custody_domain::Role::Write)
        .await
        .unwrap();
    let root_access = store.project_access(&root, &access.project).await.unwrap();
    store.cancel_deployment(&erin, &access, queued.number, "superseded".into()).await.unwrap();
    let (mine, _) =
        store.request_deployment(&root, &root_access, build, context(), Some("hotfix".into())).await.unwrap();
    let finding = store.list_findings(true).await.unwrap().remove(0);
    assert!(finding.subject.ends_with(&format!("/{}", mine.number)), "{finding:?}");
    assert_eq!(
        refused_rules(store.resolve_finding(&root_admin, finding.id, "fine".into()).await),
        ["finding.reviewer_not_involved"]
    );
}

async fn a_break_glass_request_cancelled_before_it_ran_leaves_no_open_finding(store: Store) {
    let (_root, [_alice, _bob, _carol, _dave, erin], access, build) = released_build(&store).await;
    let mut context = production(0, true);
    context.environment.approvals = 0;
    let (pending, _) =
        store.request_deployment(&erin, &access, build, context, Some("payments are down".into())).await.unwrap();
    assert_eq!(store.list_findings(true).await.unwrap().len(), 1);
    store.cancel_deployment(&erin, &access, pending.number, "it came back up".into()).await.unwrap();
    assert!(store.list_findings(true).await.unwrap().is_empty(), "nothing ran, nothing to review");
    let all = store.list_findings(false).await.unwrap();
    assert!(all[0].resolution.as_deref().is_some_and(|r| r.contains("withdrawn")), "{all:?}");
    assert!(all_events(&store).await.iter().any(|e| e.action == "finding.withdraw"));
}

async fn a_build_that_custody_did_not_merge_is_never_deployed(store: Store) {
    let (_root, [_alice, _bob, _carol, _dave, erin], access, _) = released_build(&store).await;
    let number = store.queue_build(&access.project, &"c".repeat(40), "main").await.unwrap();
    let lease = store.lease_build("worker", 60_000).await.unwrap().expect("the build");
    let outcome = custody_store::BuildOutcome {
        status: custody_domain::status::BuildStatus::Succeeded,
        provenance: Some("{}".into()),
        ..Default::default()
    };
    store.finish_build(&lease, outcome).await.unwrap();
    let refused = store.request_deployment(&erin, &access, number, production(1, false), None).await;
    assert_eq!(refused_rules(refused), ["deploy.provenance"]);
}

async fn a_running_deployment_keeps_its_lease_by_heartbeat_and_stops_when_cancelled(store: Store) {
    use custody_store::{DeployDecision::Approve, DeployOutcome, Heartbeat};
    let (_root, [alice, _bob, carol, _dave, erin], access, build) = released_build(&store).await;
    let (pending, _) = store.request_deployment(&erin, &access, build, production(1, false), None).await.unwrap();
    // Where each person stands, before anyone clicks: alice wrote the release.
    let (_, _, standing) =
        store.deployment_standing(&access, pending.number, production(1, false), &alice.name).await.unwrap();
    let why = standing.approve.expect("alice may not approve");
    assert_eq!(why.rule, "deploy.approver_not_author");
    let (_, _, standing) =
        store.deployment_standing(&access, pending.number, production(1, false), &carol.name).await.unwrap();
    assert!(standing.approve.is_none(), "{standing:?}");
    store
        .decide_deployment(&carol, &access, pending.number, Approve, String::new(), production(1, false))
        .await
        .unwrap();

    let lease = store.lease_deployment("deployer-1", 30_000).await.unwrap().expect("a queued deployment");
    assert!(store.lease_deployment("deployer-2", 30_000).await.unwrap().is_none(), "one at a time per environment");
    assert_eq!(store.heartbeat_deployment(&lease, 30_000).await.unwrap(), Heartbeat::Held);
    let stopping = store.cancel_deployment(&erin, &access, lease.number, "wrong window".into()).await.unwrap();
    assert_eq!(stopping.status.as_str(), "running", "the deployer records the end");
    assert_eq!(stopping.cancel_requested.as_deref(), Some("cancelled by erin: wrong window"));
    assert!(matches!(
        store.cancel_deployment(&erin, &access, lease.number, "again".into()).await,
        Err(StoreError::Conflict(message)) if message.contains("already being cancelled")
    ));
    let heard = store.heartbeat_deployment(&lease, 30_000).await.unwrap();
    assert_eq!(heard, Heartbeat::Cancel("cancelled by erin: wrong window".into()));
    let outcome = DeployOutcome {
        status: custody_domain::status::DeploymentStatus::Cancelled,
        reason: Some("stopped".into()),
        ..DeployOutcome::default()
    };
    store.finish_deployment(&lease, outcome).await.unwrap();
    assert_eq!(store.get_deployment(&access, lease.number).await.unwrap().status.as_str(), "cancelled");
    assert_eq!(store.heartbeat_deployment(&lease, 30_000).await.unwrap(), Heartbeat::Lost);
}

// ---------------------------------------------------------------------------
// Whoever can write the database, without the keys, cannot forge a decision
// ---------------------------------------------------------------------------

/// Settles every pending merge intent as `settled`, as the server does
/// once it moved (or could not move) their refs: the intents.
async fn settle_all(store: &Store, settled: custody_store::Settled) -> Vec<custody_store::MergeIntent> {
    let pending = store.pending_merges().await.unwrap();
    for intent in &pending {
        store.settle_merge(intent, settled.clone()).await.unwrap();
    }
    pending
}

/// A merge whose gate opens whenever the store's facts hold up.
fn open_plan(head: &str) -> custody_store::MergePlan {
    custody_store::MergePlan {
        head: head.to_owned(),
        base: None,
        weakened: Vec::new(),
        evaluate: Box::new(|records: &custody_store::GateRecords| custody_domain::gate::GateReport {
            open: true,
            head: records.change.head.clone(),
            approvers: records.reviews.iter().map(|r| r.reviewer.to_string()).collect(),
            rules: vec![],
        }),
        prepared: Some(custody_store::Published {
            commit: "m".repeat(40),
            attestation: "{}".into(),
            statement: serde_json::Value::Null,
        }),
        restate: Box::new(|_, _, _| serde_json::Value::Null),
    }
}

/// The message of a refusal for an unproven fact.
fn unproven<T: std::fmt::Debug>(result: Result<T, StoreError>) -> String {
    match result {
        Err(StoreError::Refused(decision)) => {
            assert_eq!(decision.reasons.len(), 1, "{decision:?}");
            assert_eq!(decision.reasons[0].rule, custody_store::UNPROVEN_FACT.name(), "{decision:?}");
            decision.reasons[0].message.clone()
        }
        other => panic!("expected a refusal for an unproven fact, got {other:?}"),
    }
}

async fn a_review_inserted_into_the_database_does_not_open_the_merge_gate(store: Store, url: String) {
    let (_root, people, alice_access, head) = opened_change(&store).await;
    execute_raw(
        &url,
        &format!(
            "INSERT INTO reviews (change_id, reviewer_id, verdict, head, message, at) \
             SELECT c.id, u.id, 'approve', '{head}', '', 1 FROM changes c, users u WHERE u.name = 'bob'"
        ),
    )
    .await;
    let merged = store.merge_change(&people[0], &alice_access, 1, vec![head.clone()], vec![], open_plan(&head)).await;
    let why = unproven(merged);
    assert!(why.contains("reviews row") && why.contains("bob approve") && why.contains("never recorded"), "{why}");
    assert_eq!(store.get_change(&alice_access.project, 1).await.unwrap().state.as_str(), "open", "nothing merged");
}

async fn an_edited_verdict_and_a_deleted_request_for_changes_each_fail_closed(store: Store, url: String) {
    use custody_domain::gate::Verdict;
    let (_root, people, alice_access, head) = opened_change(&store).await;
    let project = alice_access.project.clone();
    let bob = store.project_access(&people[1], &project).await.unwrap();
    let carol = store.project_access(&people[2], &project).await.unwrap();
    store.review(&people[1], &bob, 1, Verdict::RequestChanges, "no".into(), None).await.unwrap();
    store.review(&people[2], &carol, 1, Verdict::Approve, String::new(), Some(head.clone())).await.unwrap();
    // bob's request for changes turned into an approval.
    execute_raw(&url, "UPDATE reviews SET verdict = 'approve' WHERE verdict = 'request_changes'").await;
    let why = unproven(store.gate_records(&alice_access, 1, vec![head.clone()], vec![]).await);
    assert!(why.contains("bob approve") && why.contains("edited around custody"), "{why}");
    // bob's request for changes deleted instead.
    execute_raw(&url, "DELETE FROM reviews WHERE reviewer_id = (SELECT id FROM users WHERE name = 'bob')").await;
    let merged = store.merge_change(&people[0], &alice_access, 1, vec![head.clone()], vec![], open_plan(&head)).await;
    let why = unproven(merged);
    assert!(why.contains("bob request_changes") && why.contains("deleted around custody"), "{why}");
}

async fn forged_deployment_decisions_and_a_queued_status_deploy_nothing(store: Store, url: String) {
    let (_root, [_alice, _bob, _carol, _dave, erin], access, build) = released_build(&store).await;
    let (pending, _) = store.request_deployment(&erin, &access, build, production(1, true), None).await.unwrap();
    execute_raw(
        &url,
        "INSERT INTO deployment_decisions (deployment_id, user_id, kind, message, at) \
         SELECT d.id, u.id, CASE u.name WHEN 'carol' THEN 'approve' ELSE 'test_passed' END, '', 1 \
         FROM deployments d, users u WHERE u.name IN ('carol', 'dave')",
    )
    .await;
    execute_raw(&url, "UPDATE deployments SET status = 'queued'").await;
    // The gate as shown refuses to rest on the forged decisions.
    let why = unproven(store.deployment_gate(&access, pending.number, production(1, true)).await);
    assert!(why.contains("deployment_decisions") && why.contains("never recorded"), "{why}");
    // The deployer runs nothing, and says why.
    assert!(store.lease_deployment("deployer", 30_000).await.unwrap().is_none(), "nothing runs");
    let failed = store.get_deployment(&access, pending.number).await.unwrap();
    assert_eq!(failed.status.as_str(), "failed");
    assert!(failed.reason.as_deref().is_some_and(|r| r.contains("deployment_decisions")), "{failed:?}");
    let events = all_events(&store).await;
    assert!(!events.iter().any(|e| e.action == "deploy.start"), "no deployment started");
    assert!(events.iter().any(|e| e.action == "deploy.finish" && e.details["status"] == "failed"));
}

async fn a_status_set_to_queued_in_the_database_runs_nothing(store: Store, url: String) {
    let (_root, [_alice, _bob, _carol, _dave, erin], access, build) = released_build(&store).await;
    let (pending, _) = store.request_deployment(&erin, &access, build, production(1, true), None).await.unwrap();
    execute_raw(&url, "UPDATE deployments SET status = 'queued'").await;
    assert!(store.lease_deployment("deployer", 30_000).await.unwrap().is_none(), "nothing runs");
    let failed = store.get_deployment(&access, pending.number).await.unwrap();
    assert_eq!(failed.status.as_str(), "failed");
    assert!(failed.reason.as_deref().is_some_and(|r| r.contains("never recorded its gate opening")), "{failed:?}");
}

async fn a_deployment_custody_queued_runs(store: Store) {
    use custody_store::DeployDecision::{Approve, TestPassed};
    let (_root, [_alice, _bob, carol, dave, erin], access, build) = released_build(&store).await;
    let (pending, _) = store.request_deployment(&erin, &access, build, production(1, true), None).await.unwrap();
    decide(&store, &carol, &access, pending.number, Approve).await.unwrap();
    decide(&store, &dave, &access, pending.number, TestPassed).await.unwrap();
    let lease = store.lease_deployment("deployer", 30_000).await.unwrap().expect("the queued deployment runs");
    assert_eq!((lease.approvers, lease.testers), (vec!["carol".to_owned()], vec!["dave".to_owned()]));
}

async fn what_is_live_holds_past_five_hundred_deployments(store: Store) {
    use custody_store::DeployDecision::{Approve, TestPassed};
    let (_root, [_alice, _bob, carol, dave, erin], access, build) = released_build(&store).await;
    let succeed = |lease: custody_store::LeasedDeployment| {
        let store = store.clone();
        async move {
            let outcome = custody_store::DeployOutcome {
                status: custody_domain::status::DeploymentStatus::Succeeded,
                ..custody_store::DeployOutcome::default()
            };
            store.finish_deployment(&lease, outcome).await.unwrap();
        }
    };
    let (pending, _) = store.request_deployment(&erin, &access, build, production(1, true), None).await.unwrap();
    decide(&store, &carol, &access, pending.number, Approve).await.unwrap();
    decide(&store, &dave, &access, pending.number, TestPassed).await.unwrap();
    succeed(store.lease_deployment("deployer", 30_000).await.unwrap().expect("production runs")).await;
    // Then staging, again and again: far more than any page of deployments.
    let staging = staging();
    for _ in 0..510 {
        store.request_deployment(&erin, &access, build, staging.clone(), None).await.unwrap();
        succeed(store.lease_deployment("deployer", 30_000).await.unwrap().expect("staging runs")).await;
    }
    let now = store.environments_now(&access).await.unwrap();
    let live = |env: &str| now.get(env).and_then(|n| n.live.as_ref()).map(|d| d.number);
    assert_eq!(live("production"), Some(pending.number), "production is still live after 510 staging deployments");
    assert_eq!(live("staging"), Some(pending.number + 510));
    assert!(now.values().all(|n| n.waiting.is_empty()));
    assert_eq!(store.deployments_of_build(&access, build).await.unwrap().len(), 511);
    assert_eq!(store.succeeded_deployments_of(&access, build).await.unwrap()[0].number, pending.number);

    // Each environment's own chain says the same, newest first; a failure
    // is not in it.
    store.request_deployment(&erin, &access, build, staging.clone(), None).await.unwrap();
    let failing = store.lease_deployment("deployer", 30_000).await.unwrap().expect("staging runs");
    let failed = custody_store::DeployOutcome {
        status: custody_domain::status::DeploymentStatus::Failed,
        ..custody_store::DeployOutcome::default()
    };
    store.finish_deployment(&failing, failed).await.unwrap();
    let chain = |env: &'static str, last: usize| {
        let (store, project) = (store.clone(), access.project.clone());
        async move {
            let history = store.environment_history(&project, env, last).await.unwrap();
            history.iter().map(|d| d.deployment).collect::<Vec<_>>()
        }
    };
    let newest = pending.number + 510;
    assert_eq!(chain("staging", 3).await, [newest, newest - 1, newest - 2]);
    assert_eq!(chain("production", 10).await, [pending.number]);
    assert_eq!(chain("qa", 10).await, Vec::<i64>::new());
}

/// An instance whose deployments finished before environments kept their
/// chain gets it at its next start, in the order the successes were
/// recorded, once; deployments after that extend it.
async fn environments_deployed_to_before_their_chain_get_it_once(store: Store) {
    let (_root, [_alice, _bob, _carol, _dave, erin], access, build) = released_build(&store).await;
    let staging = staging();
    let outcome = |status| custody_store::DeployOutcome { status, ..custody_store::DeployOutcome::default() };
    use custody_domain::status::DeploymentStatus::{Failed, Succeeded};
    let mut numbers = Vec::new();
    for status in [Succeeded, Failed, Succeeded] {
        let (queued, _) = store.request_deployment(&erin, &access, build, staging.clone(), None).await.unwrap();
        let lease = store.lease_deployment("deployer", 30_000).await.unwrap().expect("staging runs");
        store.finish_deployment_without_environment_chain(&lease, outcome(status)).await.unwrap();
        numbers.push(queued.number);
    }
    let chain = || async { store.environment_history(&access.project, "staging", 10).await.unwrap() };
    assert!(chain().await.is_empty(), "no chain before the start that begins it");
    assert_eq!(store.begin_environment_chains().await.unwrap(), 2);
    let begun: Vec<i64> = chain().await.iter().map(|d| d.deployment).collect();
    assert_eq!(begun, [numbers[2], numbers[0]]);
    assert_eq!(store.begin_environment_chains().await.unwrap(), 0, "begun once");

    store.request_deployment(&erin, &access, build, staging.clone(), None).await.unwrap();
    let lease = store.lease_deployment("deployer", 30_000).await.unwrap().expect("staging runs");
    store.finish_deployment(&lease, outcome(Succeeded)).await.unwrap();
    let extended: Vec<i64> = chain().await.iter().map(|d| d.deployment).collect();
    assert_eq!(extended, [lease.number, numbers[2], numbers[0]]);
}

async fn a_live_deployment_written_around_custody_never_governs_a_gate(store: Store, url: String) {
    use custody_store::DeployDecision::{Approve, TestPassed};
    let (_root, [_alice, _bob, carol, dave, erin], access, build) = released_build(&store).await;
    let (pending, _) = store.request_deployment(&erin, &access, build, production(1, true), None).await.unwrap();
    decide(&store, &carol, &access, pending.number, Approve).await.unwrap();
    decide(&store, &dave, &access, pending.number, TestPassed).await.unwrap();
    let lease = store.lease_deployment("deployer", 30_000).await.unwrap().expect("production runs");
    let outcome = custody_store::DeployOutcome {
        status: custody_domain::status::DeploymentStatus::Succeeded,
        ..custody_store::DeployOutcome::default()
    };
    store.finish_deployment(&lease, outcome).await.unwrap();
    let live = store.live_commit(&access.project, "production").await.unwrap().expect("a live commit");
    // Its build pointed at another commit (one whose pipeline is laxer, say):
    // the gate it would bring is refused, not taken.
    execute_raw(&url, &format!("UPDATE builds SET commit_sha = '{}' WHERE number = {build}", "e".repeat(40))).await;
    let why = unproven(store.live_commit(&access.project, "production").await);
    assert!(why.contains("build"), "{why}");
    execute_raw(&url, &format!("UPDATE builds SET commit_sha = '{live}' WHERE number = {build}")).await;
    // A deployment that never ran, marked succeeded and newest.
    let (forged, _) = store.request_deployment(&erin, &access, build, production(1, true), None).await.unwrap();
    execute_raw(
        &url,
        &format!(
            "UPDATE deployments SET status = 'succeeded', finished_at = 9999999999999 WHERE number = {}",
            forged.number
        ),
    )
    .await;
    let why = unproven(store.live_commit(&access.project, "production").await);
    assert!(why.contains(&format!("deployments row {}", forged.number)), "{why}");
}

async fn a_token_row_written_into_the_database_does_not_authenticate(store: Store, url: String) {
    use custody_domain::secret::{format_secret, SecretKind};
    let root = init_root(&store).await;
    let alice = join(&store, &ask_for_user(&store, &root, "alice").await).await;
    join(&store, &ask_for_user(&store, &root, "bob").await).await;
    // A token row for bob holding the SHA-256 of a secret the attacker chose,
    // as tokens were once stored, and one that looks keyed.
    let secret = "A".repeat(43);
    let digest = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(secret.as_bytes()))
    };
    for (id, hash) in [("forgedtoken1", digest.clone()), ("forgedtoken2", format!("k1:{digest}"))] {
        execute_raw(
            &url,
            &format!(
                "INSERT INTO tokens (id, user_id, name, secret_hash, scopes, created_at) \
                 SELECT '{id}', id, 'forged', '{hash}', 'read,write,admin', 1 FROM users WHERE name = 'bob'"
            ),
        )
        .await;
        let presented = format_secret(SecretKind::Token, id, &secret);
        assert!(
            matches!(store.authenticate(&presented).await, Err(StoreError::Unauthenticated(_))),
            "a token custody did not make must not authenticate"
        );
    }
    // alice's own token moved to bob, or given the admin scope, no longer
    // matches its row.
    let presented = store.create_token(&alice, "mine".into(), Scopes::of(&[Scope::Read]), None).await.unwrap();
    assert_eq!(store.authenticate(&presented.token).await.unwrap().name.as_str(), "alice");
    execute_raw(&url, &format!("UPDATE tokens SET scopes = 'read,write,admin' WHERE id = '{}'", presented.id)).await;
    assert!(matches!(store.authenticate(&presented.token).await, Err(StoreError::Unauthenticated(_))));
    execute_raw(
        &url,
        &format!(
            "UPDATE tokens SET scopes = 'read', user_id = (SELECT id FROM users WHERE name = 'bob') WHERE id = '{}'",
            presented.id
        ),
    )
    .await;
    assert!(matches!(store.authenticate(&presented.token).await, Err(StoreError::Unauthenticated(_))));
}

async fn a_group_membership_written_into_the_database_makes_nobody_an_approver(store: Store, url: String) {
    use custody_store::DeployDecision::Approve;
    let (_root, [_alice, _bob, _carol, dave, erin], access, build) = released_build(&store).await;
    let (pending, _) = store.request_deployment(&erin, &access, build, production(1, true), None).await.unwrap();
    // dave, a tester, is put among the release managers around custody.
    execute_raw(
        &url,
        "INSERT INTO group_members (group_id, user_id, grant_id, added_at) \
         SELECT g.id, u.id, 1, 1 FROM groups g, users u WHERE g.name = 'release-managers' AND u.name = 'dave'",
    )
    .await;
    let why = unproven(decide(&store, &dave, &access, pending.number, Approve).await);
    assert!(why.contains("group_members") && why.contains("of dave"), "{why}");
    // Nor can he sign in any more: who he is is no longer proven.
    let why = unproven(store.password_hash(&user("dave")).await);
    assert!(why.contains("of dave"), "{why}");
}

async fn a_grant_approved_in_the_database_is_refused_and_applies_nothing(store: Store, url: String) {
    let (root, bob) = governed(&store).await;
    let carol = ask_for_user(&store, &root, "carol").await;
    store.approve_grant(&bob, carol.grant.id).await.unwrap();
    let grant = store.request_membership(&root, group("auditors"), user("carol")).await.unwrap();
    // The grant marked approved, and its effect written, around custody.
    execute_raw(&url, &format!("UPDATE grants SET status = 'approved', decided_by = 'bob' WHERE id = {}", grant.id))
        .await;
    execute_raw(
        &url,
        "INSERT INTO group_members (group_id, user_id, grant_id, added_at) \
         SELECT g.id, u.id, 1, 1 FROM groups g, users u WHERE g.name = 'auditors' AND u.name = 'carol'",
    )
    .await;
    let why = unproven(store.approve_grant(&bob, grant.id).await);
    assert!(why.contains(&format!("grants row {}", grant.id)), "{why}");
    let why = unproven(store.password_hash(&user("carol")).await);
    assert!(why.contains("group_members") && why.contains("of carol"), "{why}");
}

async fn a_swapped_password_hash_and_a_put_back_seal_are_refused(store: Store, url: String) {
    let root = init_root(&store).await;
    let alice = join(&store, &ask_for_user(&store, &root, "alice").await).await;
    let bob = join(&store, &ask_for_user(&store, &root, "bob").await).await;
    store.set_password_hash(&alice, "alice-hash".into()).await.unwrap();
    store.set_password_hash(&bob, "bob-hash".into()).await.unwrap();
    assert_eq!(store.password_hash(&user("bob")).await.unwrap().map(|(_, h)| h).as_deref(), Some("bob-hash"));
    // bob's password hash replaced by alice's, whose password the attacker knows.
    execute_raw(&url, "UPDATE users SET password_hash = 'alice-hash' WHERE name = 'bob'").await;
    let why = unproven(store.password_hash(&user("bob")).await);
    assert!(why.contains("users") && why.contains("of bob"), "{why}");
    // Put back as it was, and bob sets a new password; then the old rows and
    // their old seal are put back together: older than bob's newest event.
    execute_raw(&url, "UPDATE users SET password_hash = 'bob-hash' WHERE name = 'bob'").await;
    execute_raw(&url, "CREATE TABLE old_seal AS SELECT * FROM subject_seals WHERE subject = 'user:bob'").await;
    store.set_password_hash(&bob, "bob-new-hash".into()).await.unwrap();
    execute_raw(
        &url,
        "UPDATE users SET password_hash = 'bob-hash' WHERE name = 'bob'; \
         UPDATE subject_seals SET seq = (SELECT seq FROM old_seal), digest = (SELECT digest FROM old_seal), \
         mac = (SELECT mac FROM old_seal) WHERE subject = 'user:bob'",
    )
    .await;
    let why = unproven(store.password_hash(&user("bob")).await);
    assert!(why.contains("older than custody's newest event"), "{why}");
}

async fn an_unprotected_branch_in_the_database_is_refused(store: Store, url: String) {
    let (_root, people, access, _head) = opened_change(&store).await;
    execute_raw(&url, "UPDATE projects SET default_branch = 'release' WHERE name = 'payments'").await;
    let why = unproven(store.project_access(&people[0], &access.project).await);
    assert!(why.contains("protected_branches rows of payments"), "{why}");
}

async fn a_deleted_or_reassigned_push_makes_nobody_eligible(store: Store, url: String) {
    use custody_domain::gate::Verdict;
    let (_root, people, alice_access, head) = opened_change(&store).await;
    let bob = store.project_access(&people[1], &alice_access.project).await.unwrap();
    store.review(&people[1], &bob, 1, Verdict::Approve, String::new(), Some(head.clone())).await.unwrap();
    // alice's push given to carol: alice would no longer be an author.
    execute_raw(&url, "UPDATE pushes SET pusher_id = (SELECT id FROM users WHERE name = 'carol')").await;
    let why = unproven(store.gate_records(&alice_access, 1, vec![head.clone()], vec![]).await);
    assert!(why.contains(&format!("commits row {head}")), "{why}");
    // alice's push deleted outright, and her commit detached from it.
    execute_raw(&url, "DELETE FROM push_updates; UPDATE commits SET first_push_id = NULL; DELETE FROM pushes").await;
    let merged = store.merge_change(&people[0], &alice_access, 1, vec![head.clone()], vec![], open_plan(&head)).await;
    let why = unproven(merged);
    assert!(why.contains(&format!("commits row {head}")), "{why}");
}

async fn a_build_written_into_the_database_is_never_built(store: Store, url: String) {
    let project = project_with_builds(&store, 1).await;
    // A queued build of an unmerged commit, inserted around custody, and
    // custody's own queued build given another commit.
    execute_raw(
        &url,
        "INSERT INTO builds (project_id, number, commit_sha, branch, status, queued_at) \
         SELECT id, 2, 'ffffffffffffffffffffffffffffffffffffffff', 'main', 'queued', 1 FROM projects",
    )
    .await;
    execute_raw(&url, "UPDATE builds SET commit_sha = 'eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee' WHERE number = 1")
        .await;
    assert!(store.lease_build("worker", 60_000).await.unwrap().is_none(), "nothing is built");
    let events = all_events(&store).await;
    assert!(!events.iter().any(|e| e.action == "build.start"), "no build started");
    for number in [1, 2] {
        let refused = events
            .iter()
            .find(|e| e.subject == format!("build:{project}/{number}") && e.action == "build.finish")
            .unwrap_or_else(|| panic!("build {number} is failed, saying why"));
        let reason = refused.details["reason"].as_str().unwrap();
        assert!(reason.contains(&format!("builds row {number}")), "{reason}");
    }
}

async fn artifacts_swapped_in_the_database_are_never_deployed(store: Store, url: String) {
    use custody_store::DeployDecision::{Approve, TestPassed};
    let (_root, [_alice, _bob, carol, dave, erin], access, build) = released_build(&store).await;
    let (pending, _) = store.request_deployment(&erin, &access, build, production(1, true), None).await.unwrap();
    decide(&store, &carol, &access, pending.number, Approve).await.unwrap();
    decide(&store, &dave, &access, pending.number, TestPassed).await.unwrap();
    execute_raw(&url, &format!("UPDATE artifacts SET digest = '{}'", "cd".repeat(32))).await;
    assert!(store.lease_deployment("deployer", 30_000).await.unwrap().is_none(), "nothing runs");
    let failed = store.get_deployment(&access, pending.number).await.unwrap();
    assert_eq!(failed.status.as_str(), "failed");
    assert!(failed.reason.as_deref().is_some_and(|r| r.contains("artifacts of build")), "{failed:?}");
}

async fn an_author_removed_from_a_merged_changes_duties_cannot_approve_its_release(store: Store, url: String) {
    let (_root, [_alice, _bob, _carol, _dave, erin], access, build) = released_build(&store).await;
    // alice wrote change 1; her duty as its author is deleted around custody.
    execute_raw(&url, "DELETE FROM change_duties WHERE user_name = 'alice'").await;
    let why = unproven(store.request_deployment(&erin, &access, build, production(1, true), None).await);
    assert!(why.contains("change_duties rows of change payments/1"), "{why}");
}

async fn a_staging_success_written_into_the_database_does_not_open_production(store: Store, url: String) {
    let (_root, [_alice, _bob, _carol, _dave, erin], access, build) = released_build(&store).await;
    let mut production = production(0, false);
    production.environment.after = Some("staging".into());
    // A staging deployment of the build, marked succeeded around custody.
    execute_raw(
        &url,
        "INSERT INTO deployments (project_id, number, environment, build_id, status, created_at, finished_at) \
         SELECT project_id, 7, 'staging', id, 'succeeded', 1, 1 FROM builds",
    )
    .await;
    let why = unproven(store.request_deployment(&erin, &access, build, production, None).await);
    assert!(why.contains("deployments row 7") && why.contains("never recorded it succeeding"), "{why}");
}

async fn a_merge_prepared_on_other_facts_is_decided_again_and_records_nothing(store: Store) {
    let (_root, people, access, head) = opened_change(&store).await;
    let project = access.project.clone();
    let merge = |plan| store.merge_change(&people[0], &access, 1, vec![head.clone()], vec![], plan);
    // Signed over a statement the facts in the transaction do not give.
    let mut stale = open_plan(&head);
    stale.prepared.as_mut().expect("prepared").statement = serde_json::json!({ "approvers": ["bob"] });
    assert!(matches!(merge(stale).await, Err(StoreError::FactsMoved)));
    // Nothing prepared, yet the gate opened in the transaction.
    let mut unprepared = open_plan(&head);
    unprepared.prepared = None;
    assert!(matches!(merge(unprepared).await, Err(StoreError::FactsMoved)));
    assert_eq!(store.get_change(&project, 1).await.unwrap().state.as_str(), "open", "nothing was recorded");
    assert!(store.pending_merges().await.unwrap().is_empty());
    merge(open_plan(&head)).await.unwrap();
    assert_eq!(store.get_change(&project, 1).await.unwrap().state.as_str(), "merged");
}

async fn a_rejected_user_replayed_in_the_database_is_refused(store: Store, url: String) {
    let (root, bob) = governed(&store).await;
    let carol = ask_for_user(&store, &root, "carol").await;
    // Everything about carol as a pending user, seal included, kept aside.
    for (copy, table, filter) in [
        ("kept_users", "users", "name = 'carol'"),
        ("kept_emails", "user_emails", "user_id IN (SELECT id FROM users WHERE name = 'carol')"),
        ("kept_invites", "invites", "user_id IN (SELECT id FROM users WHERE name = 'carol')"),
        ("kept_seals", "subject_seals", "subject = 'user:carol'"),
    ] {
        execute_raw(&url, &format!("CREATE TABLE {copy} AS SELECT * FROM {table} WHERE {filter}")).await;
    }
    store.reject_grant(&bob, carol.grant.id, Some("wrong team".into())).await.unwrap();
    // Put back as it was, seal and all.
    execute_raw(
        &url,
        "INSERT INTO users SELECT * FROM kept_users; INSERT INTO user_emails SELECT * FROM kept_emails; \
         INSERT INTO invites SELECT * FROM kept_invites; DELETE FROM subject_seals WHERE subject = 'user:carol'; \
         INSERT INTO subject_seals SELECT * FROM kept_seals",
    )
    .await;
    let why = unproven(store.redeem_invite(&carol.invite_code).await);
    assert!(why.contains("user:carol") || why.contains("carol"), "{why}");
}

async fn a_forged_membership_is_not_sealed_in_by_a_later_grant(store: Store, url: String) {
    let (root, bob) = governed(&store).await;
    let carol = ask_for_user(&store, &root, "carol").await;
    store.approve_grant(&bob, carol.grant.id).await.unwrap();
    execute_raw(
        &url,
        "INSERT INTO group_members (group_id, user_id, grant_id, added_at) \
         SELECT g.id, u.id, 1, 1 FROM groups g, users u WHERE g.name = 'admins' AND u.name = 'carol'",
    )
    .await;
    // A genuine grant about carol must not seal the forged row in.
    let grant = store.request_membership(&root, group("auditors"), user("carol")).await.unwrap();
    let why = unproven(store.approve_grant(&bob, grant.id).await);
    assert!(why.contains("group_members") && why.contains("of carol"), "{why}");
    let why = unproven(store.password_hash(&user("carol")).await);
    assert!(why.contains("of carol"), "{why}");
}

async fn someone_whose_push_of_the_source_branch_was_deleted_is_still_its_author(store: Store, url: String) {
    use custody_domain::project::RefUpdate;
    let (_root, people, alice_access, head) = opened_change(&store).await;
    // bob moves alice's branch (here back onto the same commit): he is an
    // author of the change from then on.
    let bob_access = store.project_access(&people[1], &alice_access.project).await.unwrap();
    let update = RefUpdate { name: "refs/heads/feature".into(), old: head.clone(), new: head.clone() };
    let push = store.record_push(&bob_access, &people[1], vec![update], vec![]).await.unwrap();
    let moved = |records: &custody_store::GateRecords| {
        records
            .authors
            .get(&user("bob"))
            .is_some_and(|why| why.contains(&custody_store::AuthorReason::MovedSourceBranch { push }))
    };
    let records = store.gate_records(&alice_access, 1, vec![head.clone()], vec![]).await.unwrap();
    assert!(moved(&records), "{:?}", records.authors);
    // His push deleted around custody: the log still says he moved it.
    execute_raw(
        &url,
        &format!("DELETE FROM push_updates WHERE push_id = {push}; DELETE FROM pushes WHERE id = {push}"),
    )
    .await;
    let records = store.gate_records(&alice_access, 1, vec![head.clone()], vec![]).await.unwrap();
    assert!(moved(&records), "{:?}", records.authors);
    // And read afresh, by a process that never saw the push.
    let reopened = Store::open(&url, custody_store::testing::secrets_for(&url)).await.unwrap();
    let records = reopened.gate_records(&alice_access, 1, vec![head], vec![]).await.unwrap();
    assert!(moved(&records), "{:?}", records.authors);
}

async fn a_revocation_cleared_in_the_database_does_not_revive_the_token(store: Store, url: String) {
    let root = init_root(&store).await;
    let token = store.create_token(&root, "laptop".into(), Scopes::of(&[Scope::Read]), None).await.unwrap();
    store.revoke_token(&root, &token.id).await.unwrap();
    // Someone who kept the secret clears the revocation around custody.
    execute_raw(&url, &format!("UPDATE tokens SET revoked_at = NULL WHERE id = '{}'", token.id)).await;
    let why = unproven(store.authenticate(&token.token).await);
    assert!(why.contains("of root"), "{why}");
}

async fn an_admin_erased_from_a_break_glass_finding_still_cannot_review_it(store: Store, url: String) {
    let (root, _people, access, build) = released_build(&store).await;
    store
        .request_project_member(&root, access.project.clone(), user("root"), custody_domain::Role::Write)
        .await
        .unwrap();
    let root_access = store.project_access(&root, &access.project).await.unwrap();
    let mut context = production(0, true);
    context.environment.approvals = 0;
    store.request_deployment(&root, &root_access, build, context, Some("hotfix".into())).await.unwrap();
    let finding = store.list_findings(true).await.unwrap().remove(0);
    // root, who broke the glass, is taken off the finding around custody.
    execute_raw(&url, &format!("UPDATE findings SET involved = '[]' WHERE id = {}", finding.id)).await;
    let root_token = store.create_token(&root, "admin".into(), Scopes::of(&[Scope::Admin]), None).await.unwrap();
    let root_admin = store.authenticate(&root_token.token).await.unwrap();
    let why = unproven(store.resolve_finding(&root_admin, finding.id, "fine".into()).await);
    assert!(why.contains(&format!("findings row {}", finding.id)), "{why}");
    assert_eq!(store.list_findings(true).await.unwrap().len(), 1, "it stays open");
}

async fn a_merge_is_recorded_with_its_intent_and_one_per_starting_tip(store: Store, url: String) {
    let (_root, people, access, head) = opened_change(&store).await;
    let bob = store.project_access(&people[1], &access.project).await.unwrap();
    store
        .review(&people[1], &bob, 1, custody_domain::gate::Verdict::Approve, String::new(), Some(head.clone()))
        .await
        .unwrap();
    store.merge_change(&people[0], &access, 1, vec![head.clone()], vec![], open_plan(&head)).await.unwrap();
    let pending = store.pending_merges().await.unwrap();
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!((pending[0].change, pending[0].reference.as_str()), (1, "refs/heads/main"));
    assert_eq!((pending[0].old.as_deref(), pending[0].new.clone()), (None, "m".repeat(40)));

    // A second change merged from the same tip (main as it was before the
    // first merge) loses the race: it is told to gather its facts again.
    let head2 = "b".repeat(40);
    let me = custody_domain::project::Identity { name: "Alice".into(), email: "alice@example.com".into(), user: None };
    let commit =
        custody_store::PushedCommit { sha: head2.clone(), author: me.clone(), committer: me, co_authors: vec![] };
    let update = custody_domain::project::RefUpdate {
        name: "refs/heads/second".into(),
        old: custody_domain::project::ZERO_ID.into(),
        new: head2.clone(),
    };
    store.record_push(&access, &people[0], vec![update], vec![commit]).await.unwrap();
    store
        .open_change(&people[0], &access, "second".into(), "main".into(), "Second".into(), String::new(), head2.clone())
        .await
        .unwrap();
    store
        .review(&people[1], &bob, 2, custody_domain::gate::Verdict::Approve, String::new(), Some(head2.clone()))
        .await
        .unwrap();
    let mut plan = open_plan(&head2);
    plan.prepared = Some(custody_store::Published {
        commit: "n".repeat(40),
        attestation: "{}".into(),
        statement: serde_json::Value::Null,
    });
    let raced = store.merge_change(&people[0], &access, 2, vec![head2.clone()], vec![], plan).await;
    assert!(matches!(&raced, Err(StoreError::TargetMoved)), "{raced:?}");
    assert_eq!(
        store.get_change(&access.project, 2).await.unwrap().state.as_str(),
        "open",
        "nothing of it was recorded"
    );

    // Made on the first merge, it is recorded.
    let mut plan = open_plan(&head2);
    plan.base = Some("m".repeat(40));
    plan.prepared = Some(custody_store::Published {
        commit: "n".repeat(40),
        attestation: "{}".into(),
        statement: serde_json::Value::Null,
    });
    store.merge_change(&people[0], &access, 2, vec![head2], vec![], plan).await.unwrap();
    assert_eq!(store.pending_merges().await.unwrap().len(), 2);

    // An intent edited around custody (to move main elsewhere) moves nothing.
    execute_raw(&url, &format!("UPDATE merge_intents SET new_tip = '{}' WHERE change_number = 2", "e".repeat(40)))
        .await;
    let why = unproven(store.pending_merges().await);
    assert!(why.contains("merge_intents row") && why.contains("change 2"), "{why}");
}

async fn a_merge_intent_deleted_or_settled_in_the_database_gets_its_merge_no_build(store: Store, url: String) {
    let (_root, people, access, head) = opened_change(&store).await;
    let bob = store.project_access(&people[1], &access.project).await.unwrap();
    store
        .review(&people[1], &bob, 1, custody_domain::gate::Verdict::Approve, String::new(), Some(head.clone()))
        .await
        .unwrap();
    store.merge_change(&people[0], &access, 1, vec![head.clone()], vec![], open_plan(&head)).await.unwrap();
    // The intent marked applied (or deleted) around custody, main never moved.
    for sql in ["UPDATE merge_intents SET state = 'applied'", "DELETE FROM merge_intents"] {
        execute_raw(&url, sql).await;
        assert!(store.pending_merges().await.unwrap().is_empty());
    }
    assert!(store.lease_build("worker", 60_000).await.unwrap().is_none(), "nothing is built");
    let events = all_events(&store).await;
    let refused = events.iter().find(|e| e.action == "build.finish").expect("the build fails, saying why");
    let reason = refused.details["reason"].as_str().unwrap();
    assert!(reason.contains("merge_intents of change 1"), "{reason}");
}

async fn a_merge_that_never_reached_its_branch_reopens_the_change(store: Store) {
    let (_root, people, access, head) = opened_change(&store).await;
    let bob = store.project_access(&people[1], &access.project).await.unwrap();
    store
        .review(&people[1], &bob, 1, custody_domain::gate::Verdict::Approve, String::new(), Some(head.clone()))
        .await
        .unwrap();
    store.merge_change(&people[0], &access, 1, vec![head.clone()], vec![], open_plan(&head)).await.unwrap();
    settle_all(&store, custody_store::Settled::Dropped { tip: Some("f".repeat(40)) }).await;
    let change = store.get_change(&access.project, 1).await.unwrap();
    assert_eq!((change.state.as_str(), change.merge_commit.as_deref()), ("open", None), "{change:?}");
    let events = all_events(&store).await;
    let dropped = events.iter().find(|e| e.action == "change.merge_dropped").expect("the drop is recorded");
    assert!(dropped.details["reason"].as_str().unwrap().contains("never reached it"), "{dropped:?}");
    assert!(store.lease_build("worker", 60_000).await.unwrap().is_none(), "its build is not built");
    let failed = events.iter().find(|e| e.action == "build.finish").expect("its build failed, saying why");
    assert_eq!(failed.details["status"], "error");
    // The change merges again, on proven facts.
    store.merge_change(&people[0], &access, 1, vec![head.clone()], vec![], open_plan(&head)).await.unwrap();
    assert_eq!(store.get_change(&access.project, 1).await.unwrap().state.as_str(), "merged");
}

on_both_backends! {
    a_live_deployment_written_around_custody_never_governs_a_gate,
    a_merge_prepared_on_other_facts_is_decided_again_and_records_nothing,
    what_is_live_holds_past_five_hundred_deployments,
    environments_deployed_to_before_their_chain_get_it_once,
    a_rejected_user_replayed_in_the_database_is_refused,
    a_forged_membership_is_not_sealed_in_by_a_later_grant,
    a_merge_is_recorded_with_its_intent_and_one_per_starting_tip,
    a_merge_that_never_reached_its_branch_reopens_the_change,
    a_merge_intent_deleted_or_settled_in_the_database_gets_its_merge_no_build,
    an_admin_erased_from_a_break_glass_finding_still_cannot_review_it,
    someone_whose_push_of_the_source_branch_was_deleted_is_still_its_author,
    a_revocation_cleared_in_the_database_does_not_revive_the_token,
    a_staging_success_written_into_the_database_does_not_open_production,
    an_author_removed_from_a_merged_changes_duties_cannot_approve_its_release,
    a_build_written_into_the_database_is_never_built,
    artifacts_swapped_in_the_database_are_never_deployed,
    a_deleted_or_reassigned_push_makes_nobody_eligible,
    a_group_membership_written_into_the_database_makes_nobody_an_approver,
    a_grant_approved_in_the_database_is_refused_and_applies_nothing,
    a_swapped_password_hash_and_a_put_back_seal_are_refused,
    an_unprotected_branch_in_the_database_is_refused,
    a_token_row_written_into_the_database_does_not_authenticate,
    a_review_inserted_into_the_database_does_not_open_the_merge_gate,
    an_edited_verdict_and_a_deleted_request_for_changes_each_fail_closed,
    forged_deployment_decisions_and_a_queued_status_deploy_nothing,
    a_status_set_to_queued_in_the_database_runs_nothing,
    a_deployment_custody_queued_runs,
    initialise_makes_an_admin_with_every_scope,
    initialising_twice_is_a_conflict_that_writes_nothing,
    bootstrap_grants_apply_at_once_until_a_second_admin_exists,
    removing_the_second_admin_does_not_reopen_bootstrap,
    requester_cannot_approve_own_grant,
    a_user_still_awaiting_approval_cannot_be_made_an_admin,
    a_push_records_its_pusher_and_the_people_its_commits_name,
    changing_the_default_branch_is_a_grant_and_keeps_the_old_one_protected,
    a_token_cannot_outlive_the_token_that_made_it,
    an_admin_named_by_a_grant_cannot_approve_it,
    a_second_admin_approves_and_the_grant_applies,
    pending_users_invite_waits_for_approval_then_redeems_once,
    the_last_admin_cannot_be_removed_or_disabled,
    the_last_admin_left_after_governance_cannot_be_removed,
    rejecting_a_new_user_frees_the_name_and_email,
    duplicate_names_and_emails_are_conflicts_that_write_nothing,
    a_revoked_token_no_longer_authenticates,
    a_token_cannot_expire_in_the_past,
    a_token_stops_authenticating_when_it_expires,
    disabling_a_user_in_no_group_is_immediate_and_revokes_their_tokens,
    disabling_a_group_member_is_a_grant_that_revokes_on_approval,
    disabling_a_user_voids_their_unredeemed_invite,
    a_non_admin_cannot_make_an_admin_token,
    a_non_admin_cannot_request_grants,
    audit_log_records_who_did_what,
    a_failed_write_leaves_no_audit_event,
    failures_inside_a_group_commit_leave_no_gaps,
    concurrent_writes_get_gapless_distinct_sequence_numbers,
    the_database_refuses_to_change_or_delete_audit_events,
    listing_users_page_by_page_sees_each_once,
    listing_grants_by_status_pages_the_same_way,
    two_workers_never_lease_the_same_build,
    a_build_whose_worker_vanished_is_taken_again_and_the_old_lease_is_void,
    a_build_abandoned_too_often_fails_with_the_reason,
    a_requeued_build_is_taken_by_the_next_worker,
    only_independent_people_open_a_deployment_gate,
    a_rejected_deployment_never_runs_and_a_pending_one_can_be_cancelled,
    a_running_deployment_keeps_its_lease_by_heartbeat_and_stops_when_cancelled,
    break_glass_needs_another_approver_and_stays_a_finding_until_an_uninvolved_admin_reviews_it,
    a_break_glass_request_cancelled_before_it_ran_leaves_no_open_finding,
    a_build_that_custody_did_not_merge_is_never_deployed,
}
