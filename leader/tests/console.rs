//! The management console in a real browser: Debian's headless Chromium,
//! driven over WebDriver (chromedriver) against a three-region in-process
//! cluster serving the console on its HTTPS admin port. Skipped (with a
//! message) where Chromium or chromedriver is missing, except in CI.
//!
//! `UPDATE_SCREENSHOTS=1` writes each page's screenshot into
//! `docs/console/` (shown in docs/console.md); otherwise into the target
//! directory.

use std::time::{Duration, Instant};

use fantoccini::actions::{InputSource, KeyAction, KeyActions};
use fantoccini::{Client, Locator};
use sc_testkit::api::{create, expect, ApiCluster};
use sc_testkit::browser::{accessible, screenshot, sign_in, until, Driver, CHROMEDRIVER, CHROMIUM};
use serde_json::{json, Value};

/// The active rules of draft ruleset `rs`, as a region answers.
async fn active_rules(api: &mut sc_leader::client::ApiClient, rs: &str) -> Value {
    let path = format!("/api/v2{}/sec_rules", rs.replace("/draft/", "/active/"));
    api.get(&path).await.expect("active rules").json()
}

/// The page's own fetch, answering the status (and body) of a request.
async fn fetch(c: &Client, method: &str, path: &str, body: Value, csrf: Option<&str>) -> Value {
    let script = r#"
        const [method, path, body, csrf, done] = arguments;
        const headers = {"Content-Type": "application/json"};
        if (csrf) headers["X-CSRF-Token"] = csrf;
        fetch(path, {method, headers, body: method === "GET" ? undefined : JSON.stringify(body)})
          .then(async r => done({status: r.status, body: await r.text()}))
          .catch(e => done({status: 0, body: String(e)}));
    "#;
    c.execute_async(script, vec![json!(method), json!(path), body, json!(csrf)])
        .await
        .expect("fetch in the page")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_console_signs_in_shows_the_supercluster_and_keeps_writes_csrf_safe() {
    let Some(driver) = Driver::start() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the console test: install chromium and chromium-driver"
        );
        eprintln!("skipping: needs {CHROMIUM} and {CHROMEDRIVER}");
        return;
    };
    let cl = ApiCluster::start(3, 0).await;
    let (leader, member) = (cl.leader().await, cl.member().await);
    let base = format!("https://{}", cl.addr(member));
    let c = driver.browser().await;
    c.goto(&format!("{base}/")).await.expect("open the console");
    until(
        &c,
        "the sign-in form",
        "!document.getElementById('signin').hidden",
    )
    .await;
    screenshot(&c, "sign-in").await;
    accessible(&c, "sign-in").await;

    // A wrong key is refused, with the API's reason.
    sign_in(&c, &cl.owner.auth_username, "not-the-secret").await;
    let refused = until(
        &c,
        "the refusal",
        "document.getElementById('signin-error').textContent",
    )
    .await;
    assert!(
        refused
            .as_str()
            .is_some_and(|t| t.contains("unknown API key")),
        "{refused}"
    );

    // The owner's key signs in on a member region: three regions, the leader.
    sign_in(&c, &cl.owner.auth_username, &cl.owner.secret).await;
    until(
        &c,
        "three regions",
        "document.querySelectorAll('#page table tbody tr').length === 3",
    )
    .await;
    let leader_name = cl.cluster.node(leader).info().name.clone();
    let shown = until(
        &c,
        "the leader",
        "document.getElementById('leader').innerText",
    )
    .await;
    assert!(
        shown.as_str().is_some_and(|t| t.contains(&leader_name)),
        "leader {leader_name}: {shown}"
    );
    screenshot(&c, "supercluster").await;
    accessible(&c, "supercluster").await;

    // The session is a cookie the page cannot read; nothing is stored.
    let cookies = c.get_all_cookies().await.expect("cookies");
    let session = cookies
        .iter()
        .find(|k| k.name() == "pce_session")
        .expect("the session cookie");
    assert_eq!(session.http_only(), Some(true));
    assert_eq!(session.secure(), Some(true));
    assert_eq!(
        session.same_site(),
        Some(
            fantoccini::cookies::Cookie::parse("a=b; SameSite=Strict")
                .unwrap()
                .same_site()
                .unwrap()
        )
    );
    let stored = c
        .execute(
            "return [localStorage.length, sessionStorage.length, document.cookie];",
            vec![],
        )
        .await
        .expect("storage");
    assert_eq!(
        stored,
        json!([0, 0, ""]),
        "no key or token in the page's reach"
    );

    // A write with the cookie alone is refused; with the session's token it
    // goes through (the page's own writes send it).
    let label = json!({"key": "role", "value": "console-made"});
    let bare = fetch(&c, "POST", "/api/v2/orgs/1/labels", label.clone(), None).await;
    assert_eq!(bare["status"], 403, "{bare}");
    let who = fetch(&c, "GET", "/console/session", Value::Null, None).await;
    let token: Value = serde_json::from_str(who["body"].as_str().unwrap()).unwrap();
    let token = token["csrf_token"].as_str().unwrap().to_string();
    let made = fetch(&c, "POST", "/api/v2/orgs/1/labels", label, Some(&token)).await;
    assert_eq!(made["status"], 201, "{made}");

    // A fenced region shows as down.
    let fenced = (1..=3u64).find(|i| *i != leader && *i != member).unwrap();
    let mut owner = cl.client(fenced);
    expect(
        owner
            .put(
                "/api/v2/supercluster/fence",
                &json!({"seconds": 60, "keep_serving": true}),
            )
            .await
            .expect("fence"),
        200,
        "fence",
    );
    let region = cl.cluster.node(fenced).info().region.clone();
    until(
        &c,
        "the fenced region as down",
        &format!(
            "[...document.querySelectorAll('#page tbody tr')].some(r => r.cells[0].innerText === '{region}' && r.cells[2].innerText.includes('down'))"
        ),
    )
    .await;
    screenshot(&c, "supercluster-fenced").await;
    let mut owner = cl.client(fenced);
    let lifted = owner
        .delete("/api/v2/supercluster/fence")
        .await
        .expect("unfence");
    assert!(lifted.status.is_success(), "unfence: {}", lifted.json());

    // Workloads and events.
    c.goto(&format!("{base}/#/workloads"))
        .await
        .expect("workloads");
    until(&c, "the workloads table", "document.querySelector('#page caption') && document.querySelector('#page h1').innerText === 'Workloads'").await;
    // (Its screenshot, with real VENs and their policy versions, is taken by
    // pce/tests/enforcement.rs.)
    accessible(&c, "workloads").await;
    c.goto(&format!("{base}/#/events")).await.expect("events");
    until(
        &c,
        "the label creation in the audit trail",
        "[...document.querySelectorAll('#page tbody tr')].some(r => r.innerText.includes('labels.create'))",
    )
    .await;
    screenshot(&c, "events").await;
    accessible(&c, "events").await;

    // Policy: a rule edited and provisioned from the console; the new
    // version shows in another region.
    let mut api = cl.client(member);
    let web = create(&mut api, "/labels", json!({"key": "role", "value": "web"})).await;
    let db = create(&mut api, "/labels", json!({"key": "role", "value": "db"})).await;
    let rs = create(
        &mut api,
        "/sec_policy/draft/rule_sets",
        json!({"name": "shop"}),
    )
    .await;
    let rule = json!({"providers": [{"label": {"href": db}}], "consumers": [{"label": {"href": web}}], "ingress_services": [{"proto": 6, "port": 5432}]});
    expect(
        api.post(&format!("/api/v2{rs}/sec_rules"), &rule)
            .await
            .unwrap(),
        201,
        "rule",
    );
    expect(
        api.post(
            "/api/v2/orgs/1/sec_policy",
            &json!({"update_description": "base"}),
        )
        .await
        .unwrap(),
        201,
        "provision",
    );
    c.goto(&format!("{base}/#/policy")).await.expect("policy");
    until(
        &c,
        "the shop ruleset",
        "[...document.querySelectorAll('#page caption')].some(c => c.innerText.includes('shop'))",
    )
    .await;
    c.find(Locator::Css("button[aria-label^='Edit the rule']"))
        .await
        .expect("an Edit button")
        .click()
        .await
        .expect("edit");
    let port = c
        .find(Locator::Css("form.edit input[name=port]"))
        .await
        .expect("port");
    port.clear().await.expect("clear");
    port.send_keys("15432").await.expect("type port");
    c.find(Locator::Css("form.edit button[type=submit]"))
        .await
        .expect("save")
        .click()
        .await
        .expect("save");
    until(
        &c,
        "the rule changed in the draft",
        "document.getElementById('page').innerText.includes('changed (active: 5432/tcp)')",
    )
    .await;
    let note = c.find(Locator::Id("provision-note")).await.expect("note");
    note.send_keys("console: db on 15432")
        .await
        .expect("type note");
    c.find(Locator::Css("#provision-form button[type=submit]"))
        .await
        .expect("provision")
        .click()
        .await
        .expect("provision");
    let done = until(&c, "the provision", "document.getElementById('policy-status').innerText.includes('Provisioned version') && document.getElementById('policy-status').innerText").await;
    screenshot(&c, "policy").await;
    accessible(&c, "policy").await;
    let version: u64 = done
        .as_str()
        .unwrap()
        .trim_end_matches('.')
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // Another region has it, as the API and its own console show.
    let other = (1..=3u64).find(|i| *i != member).unwrap();
    let mut there = cl.client(other);
    let t0 = Instant::now();
    loop {
        let v = there
            .get("/api/v2/orgs/1/sec_policy?max_results=1")
            .await
            .unwrap()
            .json();
        if v[0]["version"] == version {
            assert_eq!(v[0]["commit_message"], "console: db on 15432", "{v}");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "version {version} never reached region {other}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let active = active_rules(&mut there, &rs).await;
    assert_eq!(active[0]["ingress_services"][0]["port"], 15432, "{active}");
    let other_base = format!("https://{}", cl.addr(other));
    c.goto(&format!("{other_base}/"))
        .await
        .expect("the other region's console");
    until(
        &c,
        "the other region's sign-in",
        "!document.getElementById('signin').hidden",
    )
    .await;
    sign_in(&c, &cl.owner.auth_username, &cl.owner.secret).await;
    until(
        &c,
        "signed in there",
        "!document.getElementById('page').hidden",
    )
    .await;
    c.goto(&format!("{other_base}/#/policy"))
        .await
        .expect("policy there");
    until(
        &c,
        "the version in the other region's history",
        &format!("[...document.querySelectorAll('#page tbody tr')].some(r => r.cells[0].innerText === '{version}' && r.innerText.includes('console: db on 15432'))"),
    )
    .await;

    // Roll back to the first version from there: a new version equal to it.
    c.find(Locator::Css(&format!(
        "button[aria-label='Roll back to version {}']",
        version - 1
    )))
    .await
    .expect("a Roll back button")
    .click()
    .await
    .expect("roll back");
    c.accept_alert().await.expect("confirm the rollback");
    until(
        &c,
        "the rollback",
        "document.getElementById('policy-status').innerText.includes('restores version')",
    )
    .await;
    let active = active_rules(&mut there, &rs).await;
    assert_eq!(
        active[0]["ingress_services"][0]["port"], 5432,
        "rolled back: {active}"
    );

    // The edited version's changes, field by field: the rule's port.
    c.find(Locator::Css(&format!(
        "button[aria-label='Show the changes of version {version}']"
    )))
    .await
    .expect("a Changes button")
    .click()
    .await
    .expect("show the changes");
    let diff = until(
        &c,
        "the version's diff",
        "(() => { const rows = [...document.querySelectorAll('#version-diff tbody tr')]; return rows.length ? rows.map(r => [...r.cells].map(c => c.innerText).join(' | ')) : null; })()",
    )
    .await;
    assert!(
        diff.as_array().is_some_and(|rows| rows.iter().any(|r| {
            let r = r.as_str().unwrap_or_default();
            r.contains("update | ingress_services") && r.contains("5432") && r.contains("15432")
        })),
        "the diff names the port change: {diff}"
    );
    screenshot(&c, "policy-version-diff").await;
    accessible(&c, "policy-version-diff").await;

    // The keyboard reaches every action: press Tab from the first element
    // (the skip link) and note where the focus goes.
    c.execute("document.querySelector('a.skip').focus();", vec![])
        .await
        .expect("focus the skip link");
    let tab = KeyActions::new("keyboard".into())
        .then(KeyAction::Down { value: '\u{e004}' })
        .then(KeyAction::Up { value: '\u{e004}' });
    let mut seen = Vec::new();
    for _ in 0..60 {
        c.perform_actions(tab.clone()).await.expect("press Tab");
        let at = c
            .execute(
                "const e = document.activeElement; return e ? (e.textContent.trim() || e.id || e.tagName) : '';",
                vec![],
            )
            .await
            .expect("the focused element");
        seen.push(at);
    }
    let reached = Value::Array(seen);
    for action in [
        "Supercluster",
        "Map",
        "Explorer",
        "Workloads",
        "Policy",
        "Events",
        "Sign out",
        "Provision",
        "Edit",
        "Changes",
        "Roll back",
    ] {
        assert!(
            reached
                .as_array()
                .is_some_and(|l| l.iter().any(|x| x == action)),
            "{action} is not reachable by keyboard: {reached}"
        );
    }

    // Signing out ends the session at the server too.
    c.find(Locator::Id("signout"))
        .await
        .expect("sign out button")
        .click()
        .await
        .expect("sign out");
    until(
        &c,
        "the sign-in form again",
        "!document.getElementById('signin').hidden",
    )
    .await;
    let after = fetch(&c, "GET", "/console/session", Value::Null, None).await;
    assert_eq!(after["status"], 401, "{after}");
    let _ = c.close().await;
}
