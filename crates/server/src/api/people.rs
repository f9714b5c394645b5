//! Users, invites, tokens and passwords.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use custody_api::DisableOutcome;
use custody_domain::{Email, Scope, Scopes, UserName};
use custody_store::{CreatedUser, NewToken, Page, TokenView, UserView};

use super::{PageQuery, Params, PathParam};
use crate::auth::{limit_keys, Auth, Body};
use crate::error::{ApiError, ApiResult};
use crate::proxies::ClientAddress;
use crate::AppState;
use custody_api::{CreateTokenRequest, CreateUserRequest, LoginRequest, PasswordRequest, RedeemRequest};

const MIN_PASSWORD: usize = 12;
const MAX_PASSWORD: usize = 1024;

/// Who the token belongs to.
#[utoipa::path(get, path = "/api/v1/me", tag = "people", security(("token" = [])),
    responses((status = 200, body = UserView), (status = 401, body = custody_api::ErrorBody)))]
pub(crate) async fn me(State(state): State<AppState>, auth: Auth) -> ApiResult<Json<UserView>> {
    Ok(Json(state.store().get_user(&auth.0.name).await?))
}

/// Sets the caller's own password.
#[utoipa::path(put, path = "/api/v1/me/password", tag = "people", security(("token" = [])), request_body = PasswordRequest,
    responses((status = 204), (status = 400, body = custody_api::ErrorBody)))]
pub(crate) async fn set_password(
    State(state): State<AppState>,
    auth: Auth,
    Body(request): Body<PasswordRequest>,
) -> ApiResult<StatusCode> {
    auth.require(Scope::Write)?;
    let hash = hash_new_password(request.password).await?;
    state.store().set_password_hash(&auth.0, hash).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A new password checked (length, no control characters) and hashed.
pub(crate) async fn hash_new_password(password: String) -> ApiResult<String> {
    if password.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "a password holds no control characters (a NUL, a line break, a tab): choose one without them",
        ));
    }
    let length = password.chars().count();
    if !(MIN_PASSWORD..=MAX_PASSWORD).contains(&length) {
        return Err(ApiError::invalid(format!(
            "a password needs {MIN_PASSWORD} to {MAX_PASSWORD} characters; this one has {length}"
        )));
    }
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
        Argon2::default().hash_password(password.as_bytes(), &salt).map(|h| h.to_string())
    })
    .await
    .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "hashing failed"))?
    .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "hashing failed"))
}

/// Exchanges a name and password for a token valid for a day. Admins get an
/// admin-scoped token this way. Failures are limited per source; a name's
/// failures slow every attempt naming it down, and never lock its owner out.
#[utoipa::path(post, path = "/api/v1/auth/token", tag = "people", request_body = LoginRequest,
    responses((status = 200, body = NewToken), (status = 401, body = custody_api::ErrorBody), (status = 429, body = custody_api::ErrorBody)))]
pub(crate) async fn login(
    State(state): State<AppState>,
    ClientAddress(client): ClientAddress,
    headers: axum::http::HeaderMap,
    Body(request): Body<LoginRequest>,
) -> ApiResult<Json<NewToken>> {
    state.logins().check_source(client)?;
    tokio::time::sleep(state.logins().delay(&request.name)).await;
    let refused = || ApiError::unauthenticated("wrong name or password");
    let Some((name, user_id)) = check_password(&state, &request.name, request.password).await? else {
        state.logins().failed(client, Some(&request.name));
        let user_agent = crate::metrics::user_agent(&headers);
        tracing::info!(source = %client, name = %request.name, %user_agent, "failed login");
        return Err(refused());
    };
    state.logins().succeeded(name.as_str());
    let scopes = request.scopes.unwrap_or_else(|| Scopes::of(&[Scope::Read, Scope::Write]));
    Ok(Json(state.store().create_token_after_login(user_id, &name, scopes).await?))
}

/// The user named `name` and their id, if `password` is theirs. Takes as
/// long for an unknown name as for a known one. Callers rate-limit.
pub(crate) async fn check_password(
    state: &AppState,
    name: &str,
    password: String,
) -> ApiResult<Option<(UserName, i64)>> {
    let user = match UserName::parse(name) {
        Ok(name) => state.store().password_hash(&name).await?.map(|found| (name, found)),
        Err(_) => None,
    };
    let stored = user.as_ref().map(|(_, (_, hash))| hash.clone());
    // Verify against a fixed hash when the user is unknown, so that timing
    // does not tell which names exist.
    let verified = tokio::task::spawn_blocking(move || {
        let stored = stored.unwrap_or_else(|| UNKNOWN_USER_HASH.clone());
        PasswordHash::new(&stored)
            .map(|hash| Argon2::default().verify_password(password.as_bytes(), &hash).is_ok())
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false);
    Ok(user.filter(|_| verified).map(|(name, (user_id, _))| (name, user_id)))
}

/// The argon2 hash of a random password nobody knows, made once.
static UNKNOWN_USER_HASH: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    let password: [u8; 32] = rand_bytes();
    Argon2::default().hash_password(&password, &salt).map(|h| h.to_string()).unwrap_or_default()
});

fn rand_bytes() -> [u8; 32] {
    use argon2::password_hash::rand_core::RngCore;
    let mut bytes = [0u8; 32];
    argon2::password_hash::rand_core::OsRng.fill_bytes(&mut bytes);
    bytes
}

/// Redeems an invite code for the invited user's own token. Needs no
/// token; attempts are rate-limited per source and per invite.
#[utoipa::path(post, path = "/api/v1/invites/redeem", tag = "people", request_body = RedeemRequest,
    responses((status = 200, body = NewToken), (status = 401, body = custody_api::ErrorBody),
              (status = 403, body = custody_api::ErrorBody), (status = 429, body = custody_api::ErrorBody)))]
pub(crate) async fn redeem(
    State(state): State<AppState>,
    ClientAddress(client): ClientAddress,
    Body(request): Body<RedeemRequest>,
) -> ApiResult<Json<NewToken>> {
    // Counted per source, and per invite (its public id), so neither many
    // guesses from one place nor guesses at one invite from many get far.
    let code = request.code.trim();
    let keys = limit_keys(client, code.get(..16));
    state.redemptions().check(&keys)?;
    state.redemptions().record(&keys);
    Ok(Json(state.store().redeem_invite(code).await?))
}

/// Every user.
#[utoipa::path(get, path = "/api/v1/users", tag = "people", security(("token" = [])), params(PageQuery),
    responses((status = 200, body = Page<UserView>)))]
pub(crate) async fn list_users(
    State(state): State<AppState>,
    auth: Auth,
    Params(page): Params<PageQuery>,
) -> ApiResult<Json<Page<UserView>>> {
    auth.require(Scope::Read)?;
    Ok(Json(state.store().list_users(page.request()?).await?))
}

/// An admin asks for a new user: a grant. The answer holds the invite code,
/// which works once a second admin approved the grant.
#[utoipa::path(post, path = "/api/v1/users", tag = "people", security(("token" = [])), request_body = CreateUserRequest,
    responses((status = 201, body = CreatedUser), (status = 400, body = custody_api::ErrorBody),
              (status = 403, body = custody_api::ErrorBody), (status = 409, body = custody_api::ErrorBody)))]
pub(crate) async fn create_user(
    State(state): State<AppState>,
    auth: Auth,
    Body(request): Body<CreateUserRequest>,
) -> ApiResult<(StatusCode, Json<CreatedUser>)> {
    let name = UserName::parse(&request.name)?;
    let email = Email::parse(&request.email)?;
    let created = state.store().request_user(&auth.0, name, email, request.display_name).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// One user.
#[utoipa::path(get, path = "/api/v1/users/{name}", tag = "people", security(("token" = [])),
    responses((status = 200, body = UserView), (status = 404, body = custody_api::ErrorBody)))]
pub(crate) async fn get_user(
    State(state): State<AppState>,
    auth: Auth,
    PathParam(name): PathParam<String>,
) -> ApiResult<Json<UserView>> {
    auth.require(Scope::Read)?;
    Ok(Json(state.store().get_user(&UserName::parse(&name)?).await?))
}

/// Disables a user and revokes their tokens: at once for someone holding no
/// duty, as a grant for an admin or group member.
#[utoipa::path(post, path = "/api/v1/users/{name}/disable", tag = "people", security(("token" = [])),
    responses((status = 200, body = DisableOutcome), (status = 403, body = custody_api::ErrorBody)))]
pub(crate) async fn disable_user(
    State(state): State<AppState>,
    auth: Auth,
    PathParam(name): PathParam<String>,
) -> ApiResult<Json<DisableOutcome>> {
    let grant = state.store().disable_user(&auth.0, UserName::parse(&name)?).await?;
    let disabled = grant.as_ref().is_none_or(|g| g.status != custody_domain::GrantStatus::Pending);
    Ok(Json(DisableOutcome { disabled, grant }))
}

/// An admin asks to enable a disabled user again: a grant. The answer holds
/// a fresh invite code for them, which works once a second admin approved
/// the grant; their password, if they have one, works again then too.
#[utoipa::path(post, path = "/api/v1/users/{name}/enable", tag = "people", security(("token" = [])),
    responses((status = 201, body = CreatedUser), (status = 403, body = custody_api::ErrorBody),
              (status = 409, body = custody_api::ErrorBody)))]
pub(crate) async fn enable_user(
    State(state): State<AppState>,
    auth: Auth,
    PathParam(name): PathParam<String>,
) -> ApiResult<(StatusCode, Json<CreatedUser>)> {
    let created = state.store().request_enable_user(&auth.0, UserName::parse(&name)?).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// The caller's own tokens.
#[utoipa::path(get, path = "/api/v1/tokens", tag = "people", security(("token" = [])), params(PageQuery),
    responses((status = 200, body = Page<TokenView>)))]
pub(crate) async fn list_tokens(
    State(state): State<AppState>,
    auth: Auth,
    Params(page): Params<PageQuery>,
) -> ApiResult<Json<Page<TokenView>>> {
    Ok(Json(state.store().list_tokens(&auth.0, page.request()?).await?))
}

/// The longest a token may be made to live, in seconds: ten years.
const TOKEN_LIFETIME_MAX: u64 = 315_576_000;

/// Creates a token for the caller. Nobody can create one for someone else.
#[utoipa::path(post, path = "/api/v1/tokens", tag = "people", security(("token" = [])), request_body = CreateTokenRequest,
    responses((status = 201, body = NewToken), (status = 403, body = custody_api::ErrorBody)))]
pub(crate) async fn create_token(
    State(state): State<AppState>,
    auth: Auth,
    Body(request): Body<CreateTokenRequest>,
) -> ApiResult<(StatusCode, Json<NewToken>)> {
    if let Some(missing) = request.scopes.to_vec().into_iter().find(|s| !auth.0.has_scope(*s)) {
        return Err(ApiError::forbidden(format!(
            "this token lacks the {missing} scope, so it cannot make a token that has it; \
             log in with your password to get one (`custody login --user NAME --scope {missing}`)"
        )));
    }
    let expires_at = match request.expires_in {
        Some(0) => return Err(ApiError::invalid("expires_in must be at least 1 second")),
        Some(seconds) if seconds > TOKEN_LIFETIME_MAX => {
            return Err(ApiError::invalid(format!(
                "expires_in is at most {TOKEN_LIFETIME_MAX} seconds (ten years); ask for less"
            )))
        }
        Some(seconds) => {
            let ms = i64::try_from(seconds)
                .ok()
                .and_then(|s| s.checked_mul(1000))
                .and_then(|ms| custody_store::now_ms().checked_add(ms))
                .ok_or_else(|| ApiError::invalid("expires_in is too large"))?;
            Some(ms)
        }
        None => None,
    };
    let token = state.store().create_token(&auth.0, request.name, request.scopes, expires_at).await?;
    Ok((StatusCode::CREATED, Json(token)))
}

/// Revokes a token: one's own, or any as an admin.
#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "people", security(("token" = [])),
    responses((status = 204), (status = 404, body = custody_api::ErrorBody)))]
pub(crate) async fn revoke_token(
    State(state): State<AppState>,
    auth: Auth,
    PathParam(id): PathParam<String>,
) -> ApiResult<StatusCode> {
    auth.require(Scope::Write)?;
    state.store().revoke_token(&auth.0, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
