//! The access token: when the server has one, every request must carry it — as
//! `Authorization: Bearer TOKEN`, the `prh_token` cookie, or `?token=TOKEN` (which also sets
//! the cookie, so a browser opens the dashboard from one link).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, App};

pub(super) async fn check(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let Some(token) = app.token.as_deref() else {
        return next.run(req).await;
    };
    let from_query = req.uri().query().and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "token")
            .map(|(_, v)| v.to_string())
    });
    let headers_ok = presented(req.headers()).is_some_and(|t| same(&t, token));
    let query_ok = from_query.as_deref().is_some_and(|t| same(t, token));
    if !(headers_ok || query_ok) {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this server needs its access token: send `Authorization: Bearer TOKEN` or open a page with ?token=TOKEN",
        )
        .into_response();
    }
    let mut resp = next.run(req).await;
    if query_ok && !headers_ok {
        let cookie = format!("prh_token={token}; Path=/; HttpOnly; SameSite=Strict");
        if let Ok(v) = cookie.parse() {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    resp
}

/// The token a request carries in its headers, if any.
fn presented(h: &HeaderMap) -> Option<String> {
    if let Some(b) = h
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return Some(b.trim().to_string());
    }
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == "prh_token")
        .map(|(_, v)| v.to_string())
}

/// Compares in time independent of where the strings first differ.
fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
