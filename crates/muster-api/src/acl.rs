//! The access-control routes under `/v1/acl`: bootstrap, tokens, and who a token is.

use muster_core::acl::Rule;
use serde::{Deserialize, Serialize};

/// Header carrying a token, as an alternative to `Authorization: Bearer <token>`.
pub const TOKEN_HEADER: &str = "x-muster-token";

/// `POST /v1/acl/tokens`: a new token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateTokenRequest {
    /// Unique name (1-64 letters, digits, `.`, `_`, `-`), shown in audit lines.
    pub name: String,
    /// What it grants.
    pub rules: Vec<Rule>,
    /// Free text for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A token as listed: never its secret or the secret's hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenView {
    /// Its name.
    pub name: String,
    /// What it grants.
    pub rules: Vec<Rule>,
    /// When it was created (Unix milliseconds; 0 for tokens declared in the configuration).
    pub created_ms: u64,
    /// Free text for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Declared in the server's configuration (cannot be deleted through the API).
    #[serde(default)]
    pub declared: bool,
}

/// A token just created: the only answer that carries its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedToken {
    /// The token as listed.
    #[serde(flatten)]
    pub token: TokenView,
    /// The secret to send as `Authorization: Bearer <secret>`; it is not shown again.
    pub secret: String,
}

/// `GET /v1/acl/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenList {
    /// Every token, by name.
    pub tokens: Vec<TokenView>,
}

/// `GET /v1/acl/whoami`: the caller as the server sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WhoAmI {
    /// Whether access control is on.
    pub acl: bool,
    /// The token's name; absent for the anonymous caller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What the caller may do.
    pub rules: Vec<Rule>,
}
