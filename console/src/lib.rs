//! The management console's browser assets, embedded at compile time.
//!
//! The console is plain HTML, CSS and JavaScript modules with no build step
//! (decision 0016), so a fresh clone serves it with the README's two commands
//! and no Node toolchain; its one library (cytoscape.js, for the map) is the
//! file npm ships, committed under `dist/vendor/`. The admin API (`sc-leader`) serves these files on
//! its HTTPS port and owns everything with a security consequence (sessions,
//! CSRF, RBAC); this crate only holds the bytes and their media types.

/// One embedded file.
pub struct Asset {
    /// The bytes.
    pub body: &'static [u8],
    /// Its `Content-Type`.
    pub content_type: &'static str,
}

macro_rules! assets {
    ($($name:literal => $type:literal),* $(,)?) => {
        /// Every embedded file by its path under `/console/`.
        const ASSETS: &[(&str, Asset)] = &[
            $(($name, Asset { body: include_bytes!(concat!("../dist/", $name)), content_type: $type }),)*
        ];
    };
}

assets! {
    "index.html" => "text/html; charset=utf-8",
    "app.js" => "text/javascript; charset=utf-8",
    "style.css" => "text/css; charset=utf-8",
    // cytoscape.js as npm ships it (the version console/package-lock.json
    // pins; .ci/run checks the copy is byte for byte that file).
    "vendor/cytoscape.esm.min.mjs" => "text/javascript; charset=utf-8",
}

/// The file at `path` (relative to `/console/`), if the console has it.
pub fn asset(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|(p, _)| *p == path).map(|(_, a)| a)
}

/// The page every console URL starts from.
pub fn index() -> &'static Asset {
    // The list above holds it; a missing entry is a build mistake caught by
    // the test below.
    &ASSETS[0].1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_and_its_files_are_embedded() {
        assert!(index().body.starts_with(b"<!doctype html>"));
        for f in ["app.js", "style.css", "vendor/cytoscape.esm.min.mjs"] {
            assert!(!asset(f).expect(f).body.is_empty());
        }
        assert!(asset("../Cargo.toml").is_none());
    }
}
