//! The real server, in-process on port 0, over SQLite and PostgreSQL.
//!
//! Every scenario runs against both backends.

use std::time::Duration;

use custody_server::instance::{self, DataDir, InitOptions};
use custody_server::{AppState, Limits};
use custody_store::testing::TestDatabase;
use custody_store::Dialect;
use reqwest::StatusCode;
use serde_json::{json, Value};

struct Server {
    base: String,
    root: String,
    http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _db: TestDatabase,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start(dialect: Dialect) -> Option<Server> {
        Server::start_with(dialect, Limits::default()).await
    }

    async fn start_with(dialect: Dialect, limits: Limits) -> Option<Server> {
        let db = TestDatabase::new(dialect).await?;
        let dir = tempfile::tempdir().unwrap();
        let data_dir = DataDir::new(dir.path().join("data"));
        let made = instance::init(
            &data_dir,
            InitOptions {
                name: "test".into(),
                admin: "root".parse().unwrap(),
                admin_email: Some("root@example.com".parse().unwrap()),
                database_url: Some(db.url.clone()),
            },
        )
        .await
        .unwrap();
        let opened = instance::open(&data_dir, Some(db.url.clone())).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let repositories = custody_git::Repositories::new(data_dir.repositories());
        let blobs = custody_blobs::Blobs::local(&data_dir.blobs()).unwrap();
        let sealing = std::sync::Arc::new(data_dir.sealing_key().unwrap());
        let state = AppState::new(opened.store, opened.name, limits, repositories, blobs, opened.keys, sealing);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            custody_server::launch_with_tcp_listener(listener, state, Default::default(), async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        Some(Server {
            base,
            root: made.token,
            http: reqwest::Client::new(),
            stop: Some(stop),
            task: Some(task),
            _db: db,
            _dir: dir,
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        token: Option<&str>,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn get(&self, token: &str, path: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, Some(token), path, None).await
    }

    async fn post(&self, token: &str, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::POST, Some(token), path, Some(body)).await
    }

    /// Asks for a user as `admin`, returning the grant and invite code.
    async fn add_user(&self, admin: &str, name: &str) -> (Value, String) {
        let (status, body) =
            self.post(admin, "/api/v1/users", json!({ "name": name, "email": format!("{name}@example.com") })).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        (body["grant"].clone(), body["invite_code"].as_str().unwrap().to_owned())
    }

    async fn redeem(&self, code: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::POST, None, "/api/v1/invites/redeem", Some(json!({ "code": code }))).await
    }

    /// A user with a token, made while the instance is in bootstrap.
    async fn person(&self, name: &str) -> String {
        let (_, code) = self.add_user(&self.root, name).await;
        let (status, token) = self.redeem(&code).await;
        assert_eq!(status, StatusCode::OK, "{token}");
        token["token"].as_str().unwrap().to_owned()
    }

    /// A token with the admin scope for an admin who redeemed an invite: a
    /// token cannot widen its own scopes, so they log in with a password.
    async fn admin_token(&self, token: &str) -> String {
        let (status, made) =
            self.post(token, "/api/v1/tokens", json!({ "name": "admin", "scopes": ["admin", "write"] })).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{made}");
        let password = json!({ "password": "a long enough password" });
        let (status, body) = self.call(reqwest::Method::PUT, Some(token), "/api/v1/me/password", Some(password)).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
        let (_, me) = self.get(token, "/api/v1/me").await;
        let login = json!({ "name": me["name"], "password": "a long enough password", "scopes": ["admin", "write"] });
        let (status, made) = self.call(reqwest::Method::POST, None, "/api/v1/auth/token", Some(login)).await;
        assert_eq!(status, StatusCode::OK, "{made}");
        made["token"].as_str().unwrap().to_owned()
    }

    async fn events(&self) -> Vec<Value> {
        let (status, page) = self.get(&self.root, "/api/v1/audit/events?limit=500").await;
        assert_eq!(status, StatusCode::OK, "{page}");
        page["items"].as_array().unwrap().clone()
    }

    /// bob becomes the second admin, which ends bootstrap; returns bob's admin token.
    async fn second_admin(&self, name: &str) -> String {
        let token = self.person(name).await;
        let (status, grant) = self.post(&self.root, "/api/v1/groups/admins/members", json!({ "user": name })).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{grant}");
        assert_eq!(grant["status"], "bootstrap");
        self.admin_token(&token).await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn rule_of(body: &Value) -> Vec<String> {
    body["error"]["reasons"]
        .as_array()
        .map(|r| r.iter().map(|r| r["rule"].as_str().unwrap_or("").to_owned()).collect())
        .unwrap_or_default()
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(server) = super::Server::start(custody_store::Dialect::Sqlite).await {
                        super::$name(server).await;
                    }
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(server) = super::Server::start(custody_store::Dialect::Postgres).await {
                        super::$name(server).await;
                    }
                }
            )*
        }
    };
}

on_both_backends!(
    an_invited_user_redeems_the_code_once_for_their_own_token,
    revoked_expired_and_disabled_tokens_get_401,
    a_disabled_user_comes_back_only_by_a_grant_with_a_fresh_code,
    a_read_token_cannot_write,
    a_grant_waits_for_a_second_admin_who_did_not_ask_for_it,
    an_admin_cannot_approve_a_grant_naming_themselves,
    removing_the_second_admin_does_not_reopen_bootstrap,
    bad_input_is_a_clear_4xx_and_writes_nothing,
    duplicate_names_and_emails_are_conflicts_and_write_nothing,
    health_metrics_and_openapi_are_served,
    every_documented_operation_is_served_and_no_other_method_is,
    lists_are_paginated,
);

async fn an_invited_user_redeems_the_code_once_for_their_own_token(server: Server) {
    let (grant, code) = server.add_user(&server.root, "alice").await;
    assert_eq!(grant["status"], "bootstrap", "a lone admin's grant applies at once, marked");
    let (status, token) = server.redeem(&code).await;
    assert_eq!(status, StatusCode::OK, "{token}");
    let token = token["token"].as_str().unwrap();
    assert!(token.starts_with("cst_"));
    let (status, me) = server.get(token, "/api/v1/me").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["name"], "alice");
    assert_eq!(me["emails"], json!(["alice@example.com"]));

    let (status, again) = server.redeem(&code).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{again}");

    let events = server.events().await;
    let redeem = events.iter().find(|e| e["action"] == "invite.redeem").expect("a redeem event");
    assert_eq!(redeem["actor"], "alice");
    let created = events.iter().find(|e| e["action"] == "user.create" && e["subject"] == "user:alice").unwrap();
    assert_eq!(created["actor"], "root");
    assert_eq!(created["details"]["bootstrap"], true);
}

async fn revoked_expired_and_disabled_tokens_get_401(server: Server) {
    let alice = server.person("alice").await;
    // Revoked.
    let (_, spare) = server.post(&alice, "/api/v1/tokens", json!({ "name": "spare", "scopes": ["read"] })).await;
    let spare_token = spare["token"].as_str().unwrap();
    assert_eq!(server.get(spare_token, "/api/v1/me").await.0, StatusCode::OK);
    let (status, _) = server
        .call(reqwest::Method::DELETE, Some(&alice), &format!("/api/v1/tokens/{}", spare["id"].as_str().unwrap()), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = server.get(spare_token, "/api/v1/me").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "unauthenticated");

    // Expired.
    let (_, short) =
        server.post(&alice, "/api/v1/tokens", json!({ "name": "short", "scopes": ["read"], "expires_in": 1 })).await;
    let short = short["token"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(server.get(&short, "/api/v1/me").await.0, StatusCode::UNAUTHORIZED);

    // Disabled: alice holds no duty, so disabling her is immediate, and her
    // tokens stop working at once.
    let (status, outcome) = server.post(&server.root, "/api/v1/users/alice/disable", json!(null)).await;
    assert_eq!(status, StatusCode::OK, "{outcome}");
    assert_eq!(outcome["disabled"], true);
    assert_eq!(server.get(&alice, "/api/v1/me").await.0, StatusCode::UNAUTHORIZED);

    // A made-up token is refused the same way.
    let forged = format!("cst_aaaaaaaaaaaa_{}", "A".repeat(43));
    assert_eq!(server.get(&forged, "/api/v1/me").await.0, StatusCode::UNAUTHORIZED);
    let (status, _) = server.call(reqwest::Method::GET, None, "/api/v1/me", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let events = server.events().await;
    assert!(events.iter().any(|e| e["action"] == "token.revoke" && e["actor"] == "alice"));
    assert!(events
        .iter()
        .any(|e| e["action"] == "user.disable" && e["actor"] == "root" && e["subject"] == "user:alice"));
}

/// Enabling a disabled user is an admin's grant that comes with a new
/// invite code: their old tokens and codes stay dead, and enabling someone
/// who is not disabled is a conflict that writes nothing.
async fn a_disabled_user_comes_back_only_by_a_grant_with_a_fresh_code(server: Server) {
    let alice = server.person("alice").await;
    let bob = server.person("bob").await;
    let (status, outcome) = server.post(&server.root, "/api/v1/users/alice/disable", json!(null)).await;
    assert_eq!(status, StatusCode::OK, "{outcome}");
    let (status, body) = server.post(&bob, "/api/v1/users/alice/enable", json!(null)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "bob is no admin: {body}");
    let (status, made) = server.post(&server.root, "/api/v1/users/alice/enable", json!(null)).await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    assert_eq!(made["grant"]["status"], "bootstrap", "{made}");
    assert_eq!(made["grant"]["description"], "enable user alice again", "{made}");
    assert_eq!(server.get(&alice, "/api/v1/me").await.0, StatusCode::UNAUTHORIZED, "an old token came back");
    let (status, token) = server.redeem(made["invite_code"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{token}");
    let (status, me) = server.get(token["token"].as_str().unwrap(), "/api/v1/me").await;
    assert_eq!((status, me["disabled"].as_bool()), (StatusCode::OK, Some(false)), "{me}");
    let before = server.events().await.len();
    let (status, body) = server.post(&server.root, "/api/v1/users/alice/enable", json!(null)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(server.events().await.len(), before, "a refused enable wrote an event");
}

async fn a_read_token_cannot_write(server: Server) {
    let alice = server.person("alice").await;
    let (_, read) = server.post(&alice, "/api/v1/tokens", json!({ "name": "ro", "scopes": ["read"] })).await;
    let read = read["token"].as_str().unwrap();
    assert_eq!(server.get(read, "/api/v1/users").await.0, StatusCode::OK);

    // It cannot mint itself a stronger token...
    let (status, body) = server.post(read, "/api/v1/tokens", json!({ "name": "up", "scopes": ["write"] })).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // ...nor set a password, nor revoke tokens.
    let (status, _) = server
        .call(
            reqwest::Method::PUT,
            Some(read),
            "/api/v1/me/password",
            Some(json!({ "password": "correct horse battery" })),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // An admin's read-only token cannot administer either.
    let (_, root_read) = server.post(&server.root, "/api/v1/tokens", json!({ "name": "ro", "scopes": ["read"] })).await;
    let root_read = root_read["token"].as_str().unwrap();
    let (status, body) =
        server.post(root_read, "/api/v1/users", json!({ "name": "mallory", "email": "m@example.com" })).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(rule_of(&body), ["admin.required"]);

    // A user who is not an admin cannot give themselves the admin scope.
    let (status, body) = server.post(&alice, "/api/v1/tokens", json!({ "name": "x", "scopes": ["admin"] })).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
}

async fn a_grant_waits_for_a_second_admin_who_did_not_ask_for_it(server: Server) {
    let bob = server.second_admin("bob").await;
    let (grant, code) = server.add_user(&server.root, "carol").await;
    assert_eq!(grant["status"], "pending");
    let id = grant["id"].as_i64().unwrap();

    // Until approved, carol's code does not work, and says why.
    let (status, body) = server.redeem(&code).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(rule_of(&body), ["grant.awaiting_approval"]);

    // root asked, so root cannot approve.
    let (status, body) = server.post(&server.root, &format!("/api/v1/grants/{id}/approve"), json!(null)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(rule_of(&body), ["grant.requester_cannot_approve"]);
    assert!(body["error"]["reasons"][0]["satisfy"].as_str().unwrap().contains("another admin"));

    // bob did not ask and is not named: approved, and it applies.
    let (status, approved) = server.post(&bob, &format!("/api/v1/grants/{id}/approve"), json!(null)).await;
    assert_eq!(status, StatusCode::OK, "{approved}");
    assert_eq!(approved["status"], "approved");
    assert_eq!(approved["decided_by"], "bob");
    assert_eq!(server.redeem(&code).await.0, StatusCode::OK);

    let events = server.events().await;
    let request = events.iter().find(|e| e["action"] == "grant.request").unwrap();
    assert_eq!(request["actor"], "root");
    let approval = events.iter().find(|e| e["action"] == "grant.approve").unwrap();
    assert_eq!(approval["actor"], "bob");
    assert!(events.iter().any(|e| e["action"] == "instance.bootstrap.end"));
}

async fn an_admin_cannot_approve_a_grant_naming_themselves(server: Server) {
    let bob = server.second_admin("bob").await;
    let carol = server.person_after_bootstrap("carol", &bob).await;
    let carol_admin = {
        // carol becomes an admin through root's grant, approved by bob.
        let (_, grant) = server.post(&server.root, "/api/v1/groups/admins/members", json!({ "user": "carol" })).await;
        let id = grant["id"].as_i64().unwrap();
        assert_eq!(server.post(&bob, &format!("/api/v1/grants/{id}/approve"), json!(null)).await.0, StatusCode::OK);
        server.admin_token(&carol).await
    };
    // root asks to put carol in release-managers; carol may not approve it.
    let (status, _) = server.post(&server.root, "/api/v1/groups", json!({ "name": "release-managers" })).await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, grant) =
        server.post(&server.root, "/api/v1/groups/release-managers/members", json!({ "user": "carol" })).await;
    assert_eq!(grant["status"], "pending");
    let id = grant["id"].as_i64().unwrap();
    let (status, body) = server.post(&carol_admin, &format!("/api/v1/grants/{id}/approve"), json!(null)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(rule_of(&body), ["grant.named_cannot_approve"]);
    assert!(body["error"]["message"].as_str().unwrap().contains("carol"));
    let (_, still) = server.get(&server.root, &format!("/api/v1/grants/{id}")).await;
    assert_eq!(still["status"], "pending");
}

impl Server {
    /// A user created after bootstrap: requested by root, approved by `approver`.
    async fn person_after_bootstrap(&self, name: &str, approver: &str) -> String {
        let (grant, code) = self.add_user(&self.root, name).await;
        let id = grant["id"].as_i64().unwrap();
        let (status, body) = self.post(approver, &format!("/api/v1/grants/{id}/approve"), json!(null)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (status, token) = self.redeem(&code).await;
        assert_eq!(status, StatusCode::OK, "{token}");
        token["token"].as_str().unwrap().to_owned()
    }
}

async fn removing_the_second_admin_does_not_reopen_bootstrap(server: Server) {
    let bob = server.second_admin("bob").await;
    // bob asks to leave the admins; root approves.
    let (status, grant) =
        server.call(reqwest::Method::DELETE, Some(&bob), "/api/v1/groups/admins/members/bob", None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{grant}");
    assert_eq!(grant["status"], "pending");
    let id = grant["id"].as_i64().unwrap();
    let (status, body) = server.post(&server.root, &format!("/api/v1/grants/{id}/approve"), json!(null)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, admins) = server.get(&server.root, "/api/v1/groups/admins").await;
    assert_eq!(admins["members"].as_array().unwrap().len(), 1);

    // root is the only admin again, yet grants stay pending.
    let (grant, _) = server.add_user(&server.root, "dave").await;
    assert_eq!(grant["status"], "pending");
    // And the last admin cannot be removed at all.
    let (status, body) =
        server.call(reqwest::Method::DELETE, Some(&server.root), "/api/v1/groups/admins/members/root", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(rule_of(&body), ["admin.last_admin"]);
}

async fn bad_input_is_a_clear_4xx_and_writes_nothing(server: Server) {
    let before = server.events().await.len();
    let url = format!("{}/api/v1/users", server.base);
    let send = |body: String, content_type: &'static str| {
        server.http.post(&url).bearer_auth(&server.root).header("content-type", content_type).body(body).send()
    };
    let error = |response: reqwest::Response| async move {
        let status = response.status();
        (status, response.json::<Value>().await.unwrap())
    };

    let (status, body) = error(send("{\"name\": \"alice\",".into(), "application/json").await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "invalid_input");
    assert!(body["error"]["message"].as_str().unwrap().contains("not valid JSON"), "{body}");

    let (status, body) = error(
        send(json!({ "name": "alice", "email": "a@example.com", "admin": true }).to_string(), "application/json")
            .await
            .unwrap(),
    )
    .await;
    assert!(status.is_client_error(), "{status}");
    assert!(body["error"]["message"].as_str().unwrap().contains("unknown field"), "{body}");

    let (status, body) =
        error(send("x".repeat(custody_server::BODY_LIMIT + 1), "application/json").await.unwrap()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"]["code"], "too_large");

    let (status, body) = error(send("name=alice".into(), "application/x-www-form-urlencoded").await.unwrap()).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{body}");

    for name in ["../etc", "a/b", "Alice", "..", "", "custody", "a..b"] {
        let (status, body) =
            server.post(&server.root, "/api/v1/users", json!({ "name": name, "email": "x@example.com" })).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name:?}: {body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("not valid"), "{body}");
    }
    let (status, _) = server.post(&server.root, "/api/v1/groups", json!({ "name": "../admins" })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = server.post(&server.root, "/api/v1/users", json!({ "name": "eve", "email": "no-at-sign" })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = server.get(&server.root, "/api/v1/users?limit=0").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = server.get(&server.root, "/api/v1/grants/not-a-number").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = server.get(&server.root, "/api/v1/no-such-thing").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found");

    assert_eq!(server.events().await.len(), before, "no bad request may write anything");
    let (_, users) = server.get(&server.root, "/api/v1/users").await;
    assert_eq!(users["items"].as_array().unwrap().len(), 1);
}

async fn duplicate_names_and_emails_are_conflicts_and_write_nothing(server: Server) {
    server.add_user(&server.root, "alice").await;
    let before = server.events().await.len();
    let (status, body) =
        server.post(&server.root, "/api/v1/users", json!({ "name": "alice", "email": "other@example.com" })).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("already exists"));
    let (status, body) =
        server.post(&server.root, "/api/v1/users", json!({ "name": "alicia", "email": "ALICE@example.com" })).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, _) = server.post(&server.root, "/api/v1/groups", json!({ "name": "qa" })).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = server.post(&server.root, "/api/v1/groups", json!({ "name": "qa" })).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(server.events().await.len(), before + 1, "only the group's creation was written");
    let (_, users) = server.get(&server.root, "/api/v1/users").await;
    assert_eq!(users["items"].as_array().unwrap().len(), 2);
}

async fn health_metrics_and_openapi_are_served(server: Server) {
    let (status, body) = server.call(reqwest::Method::GET, None, "/healthz", None).await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("ok")));
    let (status, body) = server.call(reqwest::Method::GET, None, "/readyz", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, doc) = server.call(reqwest::Method::GET, None, "/api/v1/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in ["/api/v1/users", "/api/v1/grants/{id}/approve", "/api/v1/audit/events", "/api/v1/invites/redeem"] {
        assert!(doc["paths"].get(path).is_some(), "{path} is documented");
    }
    let metrics = server.http.get(format!("{}/metrics", server.base)).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains("custody_http_requests_total{method=\"GET\",route=\"/readyz\",status=\"200\"} 1"),
        "{metrics}"
    );
}

/// The document and the routes agree: each documented operation reaches
/// its handler (never the fallback, never 405), and on each documented path
/// every other method is 405.
async fn every_documented_operation_is_served_and_no_other_method_is(server: Server) {
    let (_, doc) = server.call(reqwest::Method::GET, None, "/api/v1/openapi.json", None).await;
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 60, "{} paths", paths.len());
    for (template, item) in paths {
        let path = template
            .split('/')
            .map(|segment| match segment {
                "{number}" | "{id}" | "{seq}" => "1".to_owned(),
                "{sha}" => "0123abcd".to_owned(),
                "{digest}" => "a".repeat(64),
                s if s.starts_with('{') => "x1".to_owned(),
                s => s.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("/");
        for method in ["get", "put", "post", "delete", "patch"] {
            let verb = reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes()).unwrap();
            let body = matches!(method, "put" | "post" | "patch").then(|| json!({}));
            let (status, answer) = server.call(verb, Some(&server.root), &path, body).await;
            if item.get(method).is_some() {
                assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {template} is documented, not served");
                let message = answer["error"]["message"].as_str().unwrap_or("");
                assert!(!message.contains("no such route"), "{method} {template} is documented, not served");
            } else {
                assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {template} is served, not documented");
            }
        }
    }
}

async fn lists_are_paginated(server: Server) {
    for name in ["u1", "u2", "u3", "u4"] {
        server.add_user(&server.root, name).await;
    }
    let mut seen = Vec::new();
    let mut path = "/api/v1/users?limit=2".to_owned();
    loop {
        let (status, page) = server.get(&server.root, &path).await;
        assert_eq!(status, StatusCode::OK);
        seen.extend(page["items"].as_array().unwrap().iter().map(|u| u["name"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_i64() {
            Some(cursor) => path = format!("/api/v1/users?limit=2&after={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, ["root", "u1", "u2", "u3", "u4"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invite_redemption_is_rate_limited_per_source() {
    let limits = Limits { redemptions: 3, ..Limits::default() };
    let server = Server::start_with(Dialect::Sqlite, limits).await.unwrap();
    let guess = format!("cin_aaaaaaaaaaaa_{}", "B".repeat(43));
    for _ in 0..3 {
        assert_eq!(server.redeem(&guess).await.0, StatusCode::UNAUTHORIZED);
    }
    let (status, body) = server.redeem(&guess).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_stop_their_source_and_never_lock_the_owner_out() {
    let limits = Limits { failed_logins: 2, name_delay: std::time::Duration::from_millis(1), ..Limits::default() };
    let server = Server::start_with(Dialect::Sqlite, limits).await.unwrap();
    let alice = server.person("alice").await;
    let (status, _) = server
        .call(reqwest::Method::PUT, Some(&alice), "/api/v1/me/password", Some(json!({ "password": "short" })))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = server
        .call(
            reqwest::Method::PUT,
            Some(&alice),
            "/api/v1/me/password",
            Some(json!({ "password": "correct horse battery staple" })),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    // Each source its own loopback address.
    let login = |source: [u8; 4], password: &'static str| {
        let client = reqwest::Client::builder().local_address(std::net::IpAddr::from(source)).build().unwrap();
        let url = format!("{}/api/v1/auth/token", server.base);
        async move {
            let response =
                client.post(url).json(&json!({ "name": "alice", "password": password })).send().await.unwrap();
            let status = response.status();
            let retry = response.headers().get("retry-after").is_some();
            (status, retry, response.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (status, _, token) = login([127, 0, 0, 1], "correct horse battery staple").await;
    assert_eq!(status, StatusCode::OK, "{token}");
    assert_eq!(server.get(token["token"].as_str().unwrap(), "/api/v1/me").await.1["name"], "alice");
    // Six sources guess alice's password until each is stopped.
    for last in 2..=7 {
        assert_eq!(login([127, 0, 0, last], "wrong").await.0, StatusCode::UNAUTHORIZED);
        assert_eq!(login([127, 0, 0, last], "wrong again").await.0, StatusCode::UNAUTHORIZED);
        let (status, retry, body) = login([127, 0, 0, last], "correct horse battery staple").await;
        assert_eq!((status, retry), (StatusCode::TOO_MANY_REQUESTS, true), "{body}");
        assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    }
    // alice, from her own address, still gets in: slowed down, not locked out.
    let (status, _, token) = login([127, 0, 0, 1], "correct horse battery staple").await;
    assert_eq!(status, StatusCode::OK, "{token}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_is_decoded_strictly_and_refused_with_a_reason() {
    let server = Server::start_with(Dialect::Sqlite, Limits::default()).await.unwrap();
    let root = server.root.clone();
    // A query value that is not UTF-8 once decoded, as a path segment would be refused.
    let (status, body) = server.get(&root, "/api/v1/audit/events?actor=%FF").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"]["message"].as_str().unwrap_or_default().contains("not UTF-8"), "{body}");
    let (status, _) = server.get(&root, "/api/v1/audit/events?actor=caf%C3%A9").await;
    assert_eq!(status, StatusCode::OK, "UTF-8 text percent-encoded is fine");
    // A password with a NUL or a line break in it.
    let alice = server.person("alice").await;
    for password in ["correct horse\u{0}battery staple", "correct horse\nbattery staple"] {
        let (status, body) = server
            .call(reqwest::Method::PUT, Some(&alice), "/api/v1/me/password", Some(json!({ "password": password })))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(body["error"]["message"].as_str().unwrap_or_default().contains("control characters"), "{body}");
    }
    // JSON announced in another charset.
    let response = reqwest::Client::new()
        .put(format!("{}/api/v1/me/password", server.base))
        .bearer_auth(&alice)
        .header("Content-Type", "application/json; charset=latin1")
        .body(r#"{"password": "correct horse battery staple"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unsupported_media_type", "{body}");
}
