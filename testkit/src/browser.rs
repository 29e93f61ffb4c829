//! A real browser for the console's tests: Debian's headless Chromium driven
//! over WebDriver (chromedriver, `fantoccini`), and what those tests ask of a
//! page: wait for a condition, screenshot it, check its accessibility
//! (axe-core from `console/node_modules`), sign in.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};

/// Debian's Chromium.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Debian's chromedriver.
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// chromedriver on a free port, stopped on drop.
pub struct Driver {
    child: Child,
    port: u16,
    profile: tempfile::TempDir,
}

impl Driver {
    /// chromedriver started, or `None` where Chromium or chromedriver is missing.
    pub fn start() -> Option<Driver> {
        if !std::path::Path::new(CHROMIUM).exists() || !std::path::Path::new(CHROMEDRIVER).exists()
        {
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let t0 = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if t0.elapsed() > Duration::from_secs(20) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Driver {
            child,
            port,
            profile: tempfile::tempdir().ok()?,
        })
    }

    /// Where the browser saves downloads.
    pub fn downloads(&self) -> PathBuf {
        self.profile.path().join("downloads")
    }

    /// A new headless Chromium session.
    pub async fn browser(&self) -> Client {
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    // The cluster's CA is the test's own.
                    "--ignore-certificate-errors",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--disable-quic", "--no-first-run",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", self.profile.path().display()),
                ],
                // Downloads (the Explorer's CSV) land where the test looks.
                "prefs": {
                    "download.default_directory": self.downloads().display().to_string(),
                    "download.prompt_for_download": false,
                },
            },
        });
        let caps = match caps {
            Value::Object(m) => m,
            _ => unreachable!("an object literal"),
        };
        ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a Chromium session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `script` (a JS expression) is truthy in the page.
pub async fn until(c: &Client, what: &str, script: &str) -> Value {
    let t0 = Instant::now();
    loop {
        let v = c
            .execute(&format!("return {script};"), vec![])
            .await
            .unwrap_or(Value::Null);
        let truthy = match &v {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::String(s) => !s.is_empty(),
            Value::Number(n) => n.as_f64() != Some(0.0),
            _ => true,
        };
        if truthy {
            return v;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            let body = c
                .execute("return document.body.innerText;", vec![])
                .await
                .unwrap_or_default();
            panic!("waited 30 s for {what}; the page shows: {body}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Saves the page as `name`.png: into `docs/console/` with
/// `UPDATE_SCREENSHOTS=1`, else into the target directory.
pub async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("a screenshot");
    let dir = if std::env::var_os("UPDATE_SCREENSHOTS").is_some() {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/console"))
    } else {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/console"))
    };
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
}

/// axe-core's serious and critical WCAG 2.1 A/AA violations on the page as
/// it is now (axe from `console/node_modules`, installed by `.ci/run` with
/// `npm ci`).
pub async fn accessible(c: &Client, page: &str) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../console/node_modules/axe-core/axe.min.js"
    );
    let Ok(axe) = std::fs::read_to_string(path) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the accessibility check: npm ci --prefix console"
        );
        eprintln!("skipping the accessibility check of {page}: no {path}");
        return;
    };
    c.execute(&format!("{axe}\nreturn typeof window.axe;"), vec![])
        .await
        .expect("axe loads");
    let found = c
        .execute_async(
            r#"
            const done = arguments[0];
            axe.run(document, {runOnly: {type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]}})
              .then(r => done(r.violations
                .filter(v => v.impact === "serious" || v.impact === "critical")
                .map(v => `${v.id} (${v.impact}): ${v.nodes.map(n => n.target.join(" ")).join(", ")}`)))
              .catch(e => done([`axe failed: ${e}`]));
            "#,
            vec![],
        )
        .await
        .expect("axe runs");
    assert_eq!(found, json!([]), "accessibility violations on {page}");
}

/// Fills the console's sign-in form and submits it.
pub async fn sign_in(c: &Client, user: &str, secret: &str) {
    let u = c.find(Locator::Id("username")).await.expect("user field");
    u.clear().await.expect("clear");
    u.send_keys(user).await.expect("type user");
    let s = c.find(Locator::Id("secret")).await.expect("secret field");
    s.clear().await.expect("clear");
    s.send_keys(secret).await.expect("type secret");
    c.find(Locator::Css("#signin-form button[type=submit]"))
        .await
        .expect("submit")
        .click()
        .await
        .expect("click");
}
