//! The token routes under `/v1/acl`: bootstrap (the first admin token), create, list, delete,
//! and `whoami`. Each change is made in the store, installed in this server's copy at once, and
//! written as an audit line (`muster::audit`, never a secret).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use muster_api::ErrorCode;
use muster_api::acl::{CreateTokenRequest, CreatedToken, TokenList, TokenView, WhoAmI};
use muster_core::acl::{Access, Rule, TokenRecord};

use super::{Auth, hash_secret, new_secret};
use crate::error::ApiJson;
use crate::{ApiError, AppState};

fn view(
    name: String,
    rules: Vec<Rule>,
    created_ms: u64,
    description: Option<String>,
    declared: bool,
) -> TokenView {
    TokenView { name, rules, created_ms, description, declared }
}

/// `POST /v1/acl/bootstrap`: the first admin token, once, when no token is stored yet.
#[utoipa::path(post, path = "/v1/acl/bootstrap", tag = "acl",
    responses((status = 201, description = "The first admin token (its secret is shown only now)", body = muster_api::acl::CreatedToken),
        (status = 409, description = "Bootstrap already happened, or access control is off", body = muster_api::ErrorBody)))]
pub(crate) async fn bootstrap(
    State(state): State<AppState>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    let acl = &state.inner.acl;
    if !acl.enabled() {
        return Err(ApiError::new(ErrorCode::Conflict, "access control is off; start the server with --acl"));
    }
    let rules = vec![Rule::everything(Access::Admin)];
    let created =
        create(&state, "bootstrap".into(), rules, Some("the first admin token".into()), true).await?;
    tracing::info!(target: "muster::audit", token = "bootstrap", "ACL bootstrap: the first admin token was created");
    Ok((StatusCode::CREATED, Json(created)))
}

async fn create(
    state: &AppState,
    name: String,
    rules: Vec<Rule>,
    description: Option<String>,
    only_if_empty: bool,
) -> Result<CreatedToken, ApiError> {
    let acl = &state.inner.acl;
    if acl.config.tokens.iter().any(|t| t.name == name) {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("a token named `{name}` is declared in the configuration"),
        ));
    }
    let secret = new_secret()?;
    let record = TokenRecord {
        name,
        secret_hash: hash_secret(&secret),
        rules,
        created_ms: muster_core::time::now_ms(),
        description,
    };
    acl.store()?.create(&record, only_if_empty).await?;
    acl.reload().await?;
    Ok(CreatedToken {
        token: view(record.name, record.rules, record.created_ms, record.description, false),
        secret,
    })
}

/// `POST /v1/acl/tokens` (admin).
#[utoipa::path(post, path = "/v1/acl/tokens", tag = "acl", request_body = muster_api::acl::CreateTokenRequest,
    responses((status = 201, description = "Created (its secret is shown only now)", body = muster_api::acl::CreatedToken),
        (status = 401, description = "No valid token", body = muster_api::ErrorBody),
        (status = 403, description = "Not an admin token", body = muster_api::ErrorBody),
        (status = 409, description = "The name is taken", body = muster_api::ErrorBody)))]
pub(crate) async fn create_token(
    State(state): State<AppState>,
    Auth(caller): Auth,
    ApiJson(request): ApiJson<CreateTokenRequest>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    caller.require_admin()?;
    muster_core::acl::validate_token_name(&request.name)?;
    let created = create(&state, request.name, request.rules, request.description, false).await?;
    if let Some(by) = &caller.name {
        tracing::info!(target: "muster::audit", token = %by, created = %created.token.name, "token created");
    }
    Ok((StatusCode::CREATED, Json(created)))
}

/// `GET /v1/acl/tokens` (admin).
#[utoipa::path(get, path = "/v1/acl/tokens", tag = "acl",
    responses((status = 200, description = "Every token, without secrets", body = muster_api::acl::TokenList),
        (status = 401, description = "No valid token", body = muster_api::ErrorBody),
        (status = 403, description = "Not an admin token", body = muster_api::ErrorBody)))]
pub(crate) async fn list_tokens(
    State(state): State<AppState>,
    Auth(caller): Auth,
) -> Result<Json<TokenList>, ApiError> {
    caller.require_admin()?;
    let acl = &state.inner.acl;
    let mut tokens: Vec<TokenView> =
        acl.config.tokens.iter().map(|t| view(t.name.clone(), t.rules.clone(), 0, None, true)).collect();
    if let Some(store) = &acl.store {
        let (_, stored) = store.load().await?;
        tokens.extend(stored.into_iter().map(|t| view(t.name, t.rules, t.created_ms, t.description, false)));
    }
    tokens.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(TokenList { tokens }))
}

/// `DELETE /v1/acl/tokens/{name}` (admin): revokes a token.
#[utoipa::path(delete, path = "/v1/acl/tokens/{name}", tag = "acl", params(("name" = String, Path, description = "Token name")),
    responses((status = 204, description = "Revoked"),
        (status = 401, description = "No valid token", body = muster_api::ErrorBody),
        (status = 403, description = "Not an admin token", body = muster_api::ErrorBody),
        (status = 404, description = "No such token", body = muster_api::ErrorBody),
        (status = 409, description = "Declared in the configuration", body = muster_api::ErrorBody)))]
pub(crate) async fn delete_token(
    State(state): State<AppState>,
    Auth(caller): Auth,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    let acl = &state.inner.acl;
    if acl.config.tokens.iter().any(|t| t.name == name) {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("token `{name}` is declared in the configuration; remove it there"),
        ));
    }
    muster_core::acl::validate_token_name(&name)?;
    if !acl.store()?.delete(&name).await? {
        return Err(ApiError::not_found(format!("no token is named `{name}`")));
    }
    acl.reload().await?;
    if let Some(by) = &caller.name {
        tracing::info!(target: "muster::audit", token = %by, revoked = %name, "token revoked");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/acl/whoami`: the caller's token name and rules.
#[utoipa::path(get, path = "/v1/acl/whoami", tag = "acl",
    responses((status = 200, description = "The caller", body = muster_api::acl::WhoAmI),
        (status = 401, description = "An invalid token", body = muster_api::ErrorBody)))]
pub(crate) async fn whoami(State(state): State<AppState>, Auth(caller): Auth) -> Json<WhoAmI> {
    let rules =
        if caller.open { vec![Rule::everything(Access::Admin)] } else { caller.policy.rules().to_vec() };
    Json(WhoAmI { acl: state.inner.acl.enabled(), name: caller.name.as_deref().map(str::to_owned), rules })
}
