//! Label lookups the commands share: `pce policy generate`, `pce flows` and
//! the drills name labels as `key=value`, and the API wants their hrefs.

use anyhow::{anyhow, Result};
use sc_leader::client::cluster::ok;
use sc_leader::client::ApiClient;

/// The href of the label `key=value`, or an error saying it does not exist.
/// The API filters by key and by a part of the value; the exact match is
/// picked here.
pub(crate) async fn href(c: &mut ApiClient, key: &str, value: &str) -> Result<String> {
    let path = format!(
        "/api/v2/orgs/1/labels?key={}&value={}",
        encode(key),
        encode(value)
    );
    let list = ok(c.get(&path).await?, &format!("GET {path}"))?;
    list.as_array()
        .into_iter()
        .flatten()
        .find(|l| l["key"] == key && l["value"] == value)
        .and_then(|l| l["href"].as_str().map(str::to_string))
        .ok_or_else(|| anyhow!("there is no label {key}={value}"))
}

/// Percent-encodes a query value.
pub(crate) fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
