//! The access token: when the server has one, every request must carry it — as
//! `Authorization: Bearer TOKEN` (the scheme in any case, white space around the token
//! ignored), the `prh_token` cookie, or `?token=TOKEN` (percent-encoded, as in any URL; it
//! also sets the cookie, so a browser opens the dashboard from one link). Tokens are compared
//! in constant time; a token with white space at either end is refused at start
//! ([`check_token`]).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, App};

pub(super) async fn check(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    if let Some(hosts) = &app.hosts {
        let named = req
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(host_name);
        if !named
            .as_deref()
            .is_some_and(|h| hosts.iter().any(|a| a == h))
        {
            return ApiError::new(
                StatusCode::MISDIRECTED_REQUEST,
                format!(
                    "this server does not answer to host {:?}: open it as localhost or 127.0.0.1, or start it with --allow-host NAME",
                    named.unwrap_or_default()
                ),
            )
            .into_response();
        }
    }
    let Some(token) = app.token.as_deref() else {
        return next.run(req).await;
    };
    let from_query = req.uri().query().and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "token")
            .map(|(_, v)| percent_decode(v, true))
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
        let cookie = format!(
            "prh_token={}; Path=/; HttpOnly; SameSite=Strict",
            percent_encode(token)
        );
        if let Ok(v) = cookie.parse() {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    resp
}

/// The host names a server bound to `bind` answers to: the loopback names, the bound address
/// and `allowed`; `None` (any) for a server bound to every address with a token.
pub(crate) fn accepted_hosts(
    bind: std::net::IpAddr,
    token: bool,
    allowed: &[String],
) -> Option<Vec<String>> {
    if bind.is_unspecified() && token {
        return None;
    }
    let mut hosts: Vec<String> = ["localhost", "127.0.0.1", "::1"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    hosts.push(bind.to_string());
    hosts.extend(allowed.iter().map(|h| host_name(h)));
    Some(hosts)
}

/// A `Host` value without its port and brackets, in lower case (`[::1]:8080` → `::1`).
fn host_name(h: &str) -> String {
    let h = h.trim();
    let h = if let Some(rest) = h.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        h.rsplit_once(':')
            .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
            .map_or(h, |(name, _)| name)
    };
    h.trim_end_matches('.').to_ascii_lowercase()
}

/// A server token is usable only when it is not empty and has no white space at either end
/// (a presented token is trimmed, so such a token could never match).
pub(crate) fn check_token(token: &str) -> Result<(), String> {
    if token.trim().is_empty() {
        return Err("--token is empty or only white space: give a secret string".into());
    }
    if token.trim() != token {
        return Err("--token starts or ends with white space: give it without".into());
    }
    Ok(())
}

/// The token a request carries in its headers, if any.
fn presented(h: &HeaderMap) -> Option<String> {
    // Header bytes as UTF-8: a token may hold any character (`to_str` takes ASCII only).
    if let Some(auth) = h
        .get(header::AUTHORIZATION)
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
    {
        let (scheme, rest) = auth
            .trim()
            .split_once(char::is_whitespace)
            .unwrap_or((auth, ""));
        if scheme.eq_ignore_ascii_case("bearer") {
            return Some(rest.trim().to_string());
        }
    }
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == "prh_token")
        .map(|(_, v)| percent_decode(v, false))
}

/// Decodes `%XX` escapes (and `+` as a space when `plus`, as in a query string); a malformed
/// escape stays as written.
fn percent_decode(s: &str, plus: bool) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let escaped = (b[i] == b'%' && i + 2 < b.len())
            .then(|| Some(hex(b[i + 1])? * 16 + hex(b[i + 2])?))
            .flatten();
        match (escaped, b[i]) {
            (Some(v), _) => {
                out.push(v as u8);
                i += 3;
                continue;
            }
            (None, b'+') if plus => out.push(b' '),
            (None, c) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Escapes every byte outside `A–Z a–z 0–9 - . _ ~` as `%XX` (a cookie value).
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|c| match c {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (c as char).to_string()
            }
            _ => format!("%{c:02X}"),
        })
        .collect()
}

/// Compares in time independent of where the strings first differ.
fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_through_urls_and_cookies() {
        let token = "a+b&c%d#e f/ü";
        let in_url = percent_encode(token);
        assert_eq!(percent_decode(&in_url, true), token);
        assert_eq!(percent_decode(&in_url, false), token);
        assert_eq!(percent_decode("a+b", true), "a b");
        assert_eq!(percent_decode("100%", true), "100%");
        assert_eq!(percent_decode("%zz%4", true), "%zz%4");
    }

    #[test]
    fn bearer_is_any_case_and_trimmed() {
        for v in ["Bearer s3cret", "bearer s3cret", "BEARER   s3cret  "] {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, v.parse().unwrap());
            assert_eq!(presented(&h).as_deref(), Some("s3cret"), "{v}");
        }
    }

    #[test]
    fn host_names_lose_ports_brackets_and_case() {
        assert_eq!(host_name("LocalHost:8080"), "localhost");
        assert_eq!(host_name("[::1]:80"), "::1");
        assert_eq!(host_name("127.0.0.1"), "127.0.0.1");
        assert_eq!(host_name("evil.example."), "evil.example");
        let loopback = "127.0.0.1".parse().unwrap();
        let hosts = accepted_hosts(loopback, false, &["Lab-Box".into()]).unwrap();
        assert!(hosts.contains(&"lab-box".to_string()));
        assert!(!hosts.contains(&"evil.example".to_string()));
        assert!(accepted_hosts("0.0.0.0".parse().unwrap(), true, &[]).is_none());
    }

    #[test]
    fn blank_or_padded_tokens_are_refused() {
        assert!(check_token("   ").is_err());
        assert!(check_token("").is_err());
        assert!(check_token(" x").is_err());
        assert!(check_token("x y").is_ok());
    }
}
