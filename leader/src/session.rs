//! Console sessions: an API key exchanged once for a cookie.
//!
//! The browser never keeps the key: signing in checks it like HTTP Basic and
//! hands back a random session token as an `HttpOnly; Secure;
//! SameSite=Strict` cookie (out of the page script's reach, never sent by
//! another site) plus a CSRF token the page keeps in memory and sends as
//! `X-CSRF-Token` with every write. Each request re-reads the key and its
//! user from the replica, so deleting the key or changing the user's roles
//! takes effect at once, as it does for Basic callers.
//!
//! Sessions live in the memory of the node that made them (a restart signs
//! everyone out; a region's console is served by that region), hashed so a
//! memory dump does not hold usable tokens, and bounded in number.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;

use crate::auth::random_hex;
use sc_store::hash::sha256_hex;

/// How long a session lasts, however active.
pub const LIFETIME: Duration = Duration::from_secs(8 * 3600);
/// The cookie's name.
pub const COOKIE: &str = "pce_session";
/// The most sessions one node holds (expired ones go first).
const MAX_SESSIONS: usize = 10_000;

/// One signed-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    /// The API key it was made from (`auth_username`).
    pub key: String,
    /// The token writes must carry.
    pub csrf: String,
    /// When it ends.
    pub expires: Instant,
}

/// This node's sessions, by the hash of their token.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// A new session for `key`: (token for the cookie, the session).
    /// `None` when the node holds too many live sessions.
    pub fn create(&self, key: &str) -> Option<(String, Session)> {
        let token = random_hex(32);
        let s = Session {
            key: key.to_string(),
            csrf: random_hex(32),
            expires: Instant::now() + LIFETIME,
        };
        let mut map = self.map.lock().ok()?;
        if map.len() >= MAX_SESSIONS {
            let now = Instant::now();
            map.retain(|_, s| s.expires > now);
            if map.len() >= MAX_SESSIONS {
                return None;
            }
        }
        map.insert(sha256_hex(&[token.as_bytes()]), s.clone());
        Some((token, s))
    }

    /// The live session of `token`.
    pub fn get(&self, token: &str) -> Option<Session> {
        let mut map = self.map.lock().ok()?;
        let h = sha256_hex(&[token.as_bytes()]);
        match map.get(&h) {
            Some(s) if s.expires > Instant::now() => Some(s.clone()),
            Some(_) => {
                map.remove(&h);
                None
            }
            None => None,
        }
    }

    /// Ends the session of `token`.
    pub fn remove(&self, token: &str) {
        if let Ok(mut map) = self.map.lock() {
            map.remove(&sha256_hex(&[token.as_bytes()]));
        }
    }
}

/// The session token in a `Cookie` header, if any.
pub fn token_of(cookie_header: Option<&str>) -> Option<&str> {
    cookie_header?
        .split(';')
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty() && v.len() <= 128)
}

/// The `Set-Cookie` value for `token` (empty and expired: sign-out).
pub fn cookie(token: &str) -> String {
    let age = if token.is_empty() {
        0
    } else {
        LIFETIME.as_secs()
    };
    format!("{COOKIE}={token}; Path=/; Max-Age={age}; HttpOnly; Secure; SameSite=Strict")
}

/// Whether a request comes from the console's page (it marks its calls;
/// a session cookie without Basic credentials is the console's too).
pub fn from_console(h: &HeaderMap) -> bool {
    h.get("x-requested-with")
        .is_some_and(|v| v.as_bytes() == b"pce-console")
        || (h.contains_key(header::COOKIE) && !h.contains_key(header::AUTHORIZATION))
}

/// A 401 without `WWW-Authenticate`: the browser would otherwise hold the
/// page's request open behind its own password prompt. The console signs
/// in with its form instead.
pub fn no_prompt(mut r: Response) -> Response {
    if r.status() == StatusCode::UNAUTHORIZED {
        r.headers_mut().remove(header::WWW_AUTHENTICATE);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_found_by_its_token_only_until_it_is_removed() {
        let s = Sessions::default();
        let (token, made) = s.create("api_1").unwrap();
        assert_eq!(s.get(&token).unwrap().csrf, made.csrf);
        assert!(s.get("not-a-token").is_none());
        assert!(!s.map.lock().unwrap().contains_key(&token), "kept hashed");
        s.remove(&token);
        assert!(s.get(&token).is_none());
    }

    #[test]
    fn the_cookie_is_read_among_others_and_set_with_its_flags() {
        assert_eq!(token_of(Some("a=1; pce_session=abc; b=2")), Some("abc"));
        assert_eq!(token_of(Some("pce_session=")), None);
        assert_eq!(token_of(None), None);
        let c = cookie("abc");
        for flag in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
            assert!(c.contains(flag), "{c}");
        }
        assert!(cookie("").contains("Max-Age=0"));
    }
}
