// The Supercluster console: one page, hash routes, the admin API underneath.
//
// Signing in exchanges an API key for this region's session cookie
// (HttpOnly, Secure, SameSite=Strict): the key is never stored, the cookie
// is out of the script's reach, and writes carry the session's CSRF token,
// kept only in this module's memory (a reload asks the session for it again).
// Every call is the admin API the CLI uses, so the console has the same RBAC.

const ORG = "/api/v2/orgs/1";
const REFRESH_MS = 2000;

const session = { csrf: null, user: null };
let timer = null;

/** Text to an element, never HTML: API data is untrusted. */
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v !== undefined && v !== null) e.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

/** The API's error body (`[{token, message}]`) as one sentence. */
function problem(status, body) {
  if (Array.isArray(body) && body[0] && body[0].message) return body[0].message;
  return `the server answered ${status}`;
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function call(method, path, body) {
  // Marked as the console's, so a 401 comes without a browser password prompt.
  const headers = { Accept: "application/json", "X-Requested-With": "pce-console" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && session.csrf) headers["X-CSRF-Token"] = session.csrf;
  const r = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
  });
  const text = await r.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!r.ok) throw new ApiError(r.status, problem(r.status, data));
  return data;
}

function show(section) {
  document.getElementById("signin").hidden = section !== "signin";
  document.getElementById("page").hidden = section !== "page";
  const signed = section === "page";
  document.getElementById("nav").hidden = !signed;
  document.getElementById("signout").hidden = !signed;
  document.getElementById("who").textContent = signed && session.user ? `signed in as ${session.user}` : "";
}

function signedOut(message) {
  session.csrf = null;
  session.user = null;
  clearInterval(timer);
  show("signin");
  document.getElementById("signin-error").textContent = message || "";
  document.getElementById("username").focus();
}

async function signIn(ev) {
  ev.preventDefault();
  const form = ev.target;
  const out = document.getElementById("signin-error");
  out.textContent = "";
  try {
    const s = await call("POST", "/console/session", {
      auth_username: form.username.value.trim(),
      secret: form.secret.value,
    });
    form.reset();
    session.csrf = s.csrf_token;
    session.user = s.username;
    if (!location.hash || location.hash === "#/") location.hash = "#/supercluster";
    route();
  } catch (e) {
    out.textContent = `Not signed in: ${e.message}`;
  }
}

async function signOut() {
  try {
    await call("DELETE", "/console/session");
  } finally {
    signedOut("You are signed out.");
  }
}

/** A table with a caption and column headers (scope=col). */
function table(caption, columns, rows) {
  return el(
    "table",
    {},
    el("caption", {}, caption),
    el("thead", {}, el("tr", {}, columns.map((c) => el("th", { scope: "col" }, c)))),
    el("tbody", {}, rows.map((r) => el("tr", {}, r.map((c) => el("td", {}, c))))),
  );
}

/** Fields a person compares between two versions of an object (not metadata). */
const META = new Set(["href", "created_at", "updated_at", "created_by", "updated_by"]);

/** A field's value for a diff row, label hrefs by name. */
function shown(value, names) {
  if (value === undefined) return "(none)";
  return JSON.stringify(value, (k, v) => (k === "href" && names.has(v) ? names.get(v) : v));
}

/** Version N's changes, field by field, under the versions table. */
async function showVersion(v, names) {
  const out = document.getElementById("version-diff");
  out.replaceChildren(el("p", { role: "status" }, `Loading the changes of version ${v.version}...`));
  try {
    const changes = await call("GET", `/api/v2${v.href}/modified_objects`);
    // Rules have no names: say whose ruleset they belong to.
    const sets = new Map(changes.filter((c) => c.href.includes("/rule_sets/") && !c.href.includes("_rules/")).map((c) => [c.href, (c.after || c.before).name]));
    const nameOf = (c) => {
      const obj = c.after || c.before || {};
      if (obj.name) return obj.name;
      const m = c.href.match(/^(.*\/rule_sets\/[^/]+)\/(sec_rules|deny_rules)\/(.+)$/);
      if (m) return `${m[2] === "sec_rules" ? "rule" : "deny rule"} ${m[3].slice(0, 8)} of ruleset ${sets.get(m[1]) || m[1]}`;
      return c.href;
    };
    const rows = changes.flatMap((c) => {
      const what = nameOf(c);
      if (c.update_type === "create") return [[what, "create", "-", "(none)", "created"]];
      if (c.update_type === "delete") return [[what, "delete", "-", "existed", "(none)"]];
      const fields = [...new Set([...Object.keys(c.before), ...Object.keys(c.after)])]
        .filter((f) => !META.has(f) && JSON.stringify(c.before[f]) !== JSON.stringify(c.after[f]));
      if (!fields.length) return [[what, "update", "-", "(only its timestamps)", "-"]];
      return fields.map((f) => [what, "update", f, shown(c.before[f], names), shown(c.after[f], names)]);
    });
    out.replaceChildren(
      el("h2", {}, `Changes of version ${v.version}`),
      table(`Version ${v.version} against version ${v.version - 1}: ${changes.length} objects`, ["Object", "Change", "Field", "Before", "After"], rows),
    );
    out.focus();
  } catch (e) {
    out.replaceChildren(el("p", { role: "alert" }, `Changes not shown: ${e.message}`));
  }
}

/** A state as a symbol and a word, coloured as a third cue. */
function state(kind, word) {
  const symbol = { up: "\u25CF", warn: "\u25B2", down: "\u2716" }[kind];
  return el("span", { class: `state ${kind}` }, el("span", { "aria-hidden": "true" }, `${symbol} `), word);
}

/** A rule side for people: labels by key=value, else the actor kind. */
function sides(list, names) {
  return (list || [])
    .map((a) => {
      if (a.actors === "ams") return "all workloads";
      const [kind, ref] = Object.entries(a)[0] || ["?", {}];
      return names.get(ref && ref.href) || `${kind} ${ref && ref.href ? ref.href.split("/").pop() : "?"}`;
    })
    .join(" + ") || "-";
}

const PROTOS = { 6: "tcp", 17: "udp", 1: "icmp", 58: "icmp" };

function services(list) {
  return (list || [])
    .map((s) => (s.href ? "service " + s.href.split("/").pop() : `${s.port != null ? s.port : "all"}${s.to_port ? "-" + s.to_port : ""}/${PROTOS[s.proto] || s.proto}`))
    .join(", ") || "-";
}

function sameRule(a, b) {
  const pick = (r) => JSON.stringify([r.enabled, r.providers, r.consumers, r.ingress_services, r.unscoped_consumers]);
  return pick(a) === pick(b);
}

/** Replaces the rule's Edit button with a small form: services and enabled. */
function editRule(button, rule) {
  const first = (rule.ingress_services || []).find((s) => !s.href) || { proto: 6, port: "" };
  const id = rule.href.split("/").pop();
  const form = el(
    "form",
    { class: "edit", "aria-label": "Edit rule" },
    el("label", { for: `port-${id}` }, "Port"),
    el("input", { id: `port-${id}`, name: "port", inputmode: "numeric", value: first.port != null ? first.port : "", required: "" }),
    el("label", { for: `proto-${id}` }, "Protocol"),
    el("select", { id: `proto-${id}`, name: "proto" }, el("option", { value: "6" }, "tcp"), el("option", { value: "17" }, "udp")),
    el("label", { for: `enabled-${id}` }, "Enabled"),
    el("input", { id: `enabled-${id}`, name: "enabled", type: "checkbox" }),
    el("button", { type: "submit" }, "Save"),
    el("button", { type: "button", name: "cancel" }, "Cancel"),
  );
  form.proto.value = String(first.proto || 6);
  form.enabled.checked = rule.enabled !== false;
  form.cancel.addEventListener("click", () => render("policy"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const port = Number(form.port.value);
    const status = document.getElementById("policy-status");
    if (!Number.isInteger(port) || port < 1 || port > 65535) {
      status.textContent = "The port must be a whole number from 1 to 65535.";
      form.port.focus();
      return;
    }
    try {
      await call("PUT", `/api/v2${rule.href}`, {
        enabled: form.enabled.checked,
        ingress_services: [{ proto: Number(form.proto.value), port }],
      });
      await render("policy");
      document.getElementById("policy-status").textContent = "Saved in the draft; provision to enforce it.";
    } catch (e) {
      status.textContent = `Not saved: ${e.message}`;
    }
  });
  button.replaceWith(form);
  form.port.focus();
}

const DAY_MS = 24 * 3600 * 1000;

function iso(ms) {
  return new Date(ms).toISOString().slice(0, 19) + "Z";
}

/** An edge's worst decision: what its line says. */
function decisionOf(e) {
  const d = e.policy_decisions || {};
  if (d.blocked > 0) return "blocked";
  if (d.potentially_blocked + d.unknown > 0) return "potentially_blocked";
  return "allowed";
}

/** A label filter (`key=value`) as an Explorer side, by the label's href. */
async function sideOf(text, field) {
  if (!text.trim()) return { include: [] };
  const [key, value] = text.split("=").map((x) => x.trim());
  if (!key || !value) throw new ApiError(400, `${field}: write a label as key=value, e.g. role=web`);
  const found = await call("GET", `${ORG}/labels?key=${encodeURIComponent(key)}&value=${encodeURIComponent(value)}`);
  const label = found.find((l) => l.key === key && l.value === value);
  if (!label) throw new ApiError(404, `${field}: there is no label ${key}=${value}`);
  return { include: [[{ label: { href: label.href } }]] };
}

const CSV_COLUMNS = ["time", "source", "destination", "port", "proto", "direction", "decision", "connections", "region"];

async function explore(form, out) {
  const now = Date.now();
  try {
    const body = {
      start_date: iso(now - DAY_MS),
      end_date: iso(now + 60000),
      max_results: 1000,
      sources: await sideOf(form.src.value, "Source"),
      destinations: await sideOf(form.dst.value, "Destination"),
    };
    if (form.port.value.trim()) {
      const port = Number(form.port.value);
      if (!Number.isInteger(port) || port < 0 || port > 65535) throw new ApiError(400, "Port: a whole number from 0 to 65535");
      body.services = { include: [{ port }] };
    }
    if (form.decision.value) body.policy_decisions = [form.decision.value];
    const flows = await call("POST", `${ORG}/traffic_flows/traffic_analysis_queries`, body);
    const end = (e) => (e && e.workload && (e.workload.hostname || e.workload.name)) || (e && e.ip) || "-";
    const records = flows.map((f) => [
      f.timestamp_range ? f.timestamp_range.last_detected : "",
      end(f.src),
      end(f.dst),
      f.service ? String(f.service.port) : "",
      f.service ? PROTOS[f.service.proto] || String(f.service.proto) : "",
      f.flow_direction || "",
      f.policy_decision || "",
      String(f.num_connections || 0),
      f.region || "",
    ]);
    const csv = el("button", { type: "button", id: "explorer-csv" }, "Export CSV");
    csv.addEventListener("click", () => download(records));
    out.replaceChildren(csv, table(`${flows.length} flows`, ["Last seen", "Source", "Destination", "Port", "Proto", "Direction", "Decision", "Connections", "Region"], records));
  } catch (e) {
    out.replaceChildren(el("p", { class: "error", role: "alert" }, e.message));
  }
}

/** The rows as a CSV file the browser saves. */
function download(records) {
  const quote = (v) => (/[",\n]/.test(v) ? `"${v.replace(/"/g, '""')}"` : v);
  const text = [CSV_COLUMNS, ...records].map((r) => r.map((v) => quote(String(v))).join(",")).join("\n") + "\n";
  const a = el("a", { href: URL.createObjectURL(new Blob([text], { type: "text/csv" })), download: "flows.csv" });
  document.body.append(a);
  a.click();
  a.remove();
}

const pages = {
  async supercluster(root) {
    const s = await call("GET", "/api/v2/supercluster/status");
    const nodes = s.nodes || [];
    const leader = nodes.find((n) => n.status && n.status.role === "leader");
    const committed = leader && leader.status.committed;
    const regions = new Set(nodes.map((n) => (n.status ? n.status.region : `node ${n.id}`)));
    const down = nodes.filter((n) => !n.reachable || (n.status && n.status.fenced_for_ms)).length;
    const summary = el(
      "ul",
      { class: "summary", "aria-label": "Summary" },
      el("li", {}, el("strong", {}, String(regions.size)), "regions"),
      el("li", { id: "leader" }, el("strong", {}, leader ? `${leader.status.name} (${leader.status.region})` : "none"), "leader"),
      el("li", {}, el("strong", {}, leader ? String(leader.status.term) : "-"), "term"),
      el("li", {}, el("strong", {}, String(down)), "regions down"),
    );
    const rows = nodes.map((n) => {
      const st = n.status;
      if (!st) {
        return [`node ${n.id}`, "-", state("down", "down"), "-", "-", "-", "-", n.error || "unreachable"];
      }
      const fenced = st.fenced_for_ms ? `fenced for ${Math.ceil(st.fenced_for_ms / 1000)} s` : "no";
      const lag = committed != null && st.last_applied != null ? String(Math.max(0, committed - st.last_applied)) : "-";
      const health = st.fenced_for_ms ? state("down", "down (fenced)") : state("up", "up");
      const role = st.role === "leader" ? el("span", {}, el("span", { "aria-hidden": "true" }, "\u2605 "), "leader") : st.role;
      const vens = st.services && st.services.vens_connected != null ? String(st.services.vens_connected) : "-";
      return [st.region, st.name, health, role, String(st.term), lag, vens, fenced];
    });
    root.replaceChildren(
      el("h1", {}, "Supercluster"),
      el("p", { class: "muted" }, `as seen by ${s.asked}; refreshed every ${REFRESH_MS / 1000} s`),
      summary,
      table("Regions", ["Region", "Node", "State", "Role", "Term", "Lag (entries)", "VENs connected", "Fenced"], rows),
    );
  },

  async workloads(root) {
    const [workloads, labels, sync] = await Promise.all([
      call("GET", `${ORG}/workloads?max_results=500`),
      call("GET", `${ORG}/labels?max_results=500`),
      call("GET", `${ORG}/workloads/policy_sync`),
    ]);
    const names = new Map(labels.map((l) => [l.href, `${l.key}=${l.value}`]));
    const enforced = new Map(sync.workloads.map((v) => [v.href, v]));
    const silent = sync.regions.filter((r) => !r.responded).map((r) => r.region);
    const policy = (w) => {
      if (w.managed === false) return "no VEN";
      const v = enforced.get(w.href);
      if (!v || !v.connected) return state("warn", "not connected");
      const which = `version ${v.applied_version} (latest ${sync.latest_version})`;
      return v.current ? state("up", `${which}, current`) : state("warn", `${which}, syncing`);
    };
    const rows = workloads.map((w) => [
      w.name || w.hostname || w.href,
      (w.labels || []).map((l) => names.get(l.href) || l.href).join(", ") || "none",
      w.enforcement_mode || "-",
      w.visibility_level || "-",
      policy(w),
      w.online ? state("up", "online") : state("down", "offline"),
      w.region || (w.managed === false ? "unmanaged" : "-"),
    ]);
    root.replaceChildren(
      el("h1", {}, "Workloads"),
      el(
        "p",
        { class: "muted" },
        silent.length
          ? `Regions that did not answer for their VENs' policy: ${silent.join(", ")}`
          : `Latest active policy: version ${sync.latest_version}. A VEN whose rules a later version did not change keeps its version and is current.`,
      ),
      table(`${workloads.length} workloads`, ["Name", "Labels", "Enforcement", "Visibility", "Policy enforced", "Online", "Region"], rows),
    );
  },

  async policy(root) {
    const [draft, active, pending, versions, labels] = await Promise.all([
      call("GET", `${ORG}/sec_policy/draft/rule_sets`),
      call("GET", `${ORG}/sec_policy/active/rule_sets`),
      call("GET", `${ORG}/sec_policy/pending`),
      call("GET", `${ORG}/sec_policy?max_results=20`),
      call("GET", `${ORG}/labels?max_results=500`),
    ]);
    const names = new Map(labels.map((l) => [l.href, `${l.key}=${l.value}`]));
    const activeRules = new Map();
    for (const rs of active) for (const r of rs.rules || []) activeRules.set(r.href.replace("/active/", "/draft/"), r);
    const changes = Object.entries(pending || {}).flatMap(([kind, list]) => list.map((c) => [kind, c.update_type, c.href]));
    const status = el("p", { id: "policy-status", role: "status" });

    const provision = el(
      "form",
      { id: "provision-form", "aria-labelledby": "provision-title" },
      el("label", { for: "provision-note" }, "Note for this version"),
      el("input", { id: "provision-note", name: "note", required: "", maxlength: "4096" }),
      el("button", { type: "submit" }, "Provision"),
    );
    provision.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      try {
        const v = await call("POST", `${ORG}/sec_policy`, { update_description: provision.note.value });
        await render("policy");
        document.getElementById("policy-status").textContent = `Provisioned version ${v.version}.`;
      } catch (e) {
        status.textContent = `Not provisioned: ${e.message}`;
      }
    });

    const sets = draft.map((rs) => {
      const rows = (rs.rules || []).map((r) => {
        const was = activeRules.get(r.href);
        const diff = !was ? "new in draft" : sameRule(was, r) ? "unchanged" : `changed (active: ${services(was.ingress_services)}${was.enabled ? "" : ", disabled"})`;
        const edit = el("button", { type: "button", "aria-label": `Edit the rule ${sides(r.consumers, names)} to ${sides(r.providers, names)}` }, "Edit");
        edit.addEventListener("click", () => editRule(edit, r));
        return [sides(r.consumers, names), sides(r.providers, names), services(r.ingress_services), r.enabled ? "yes" : "no", diff, edit];
      });
      return table(`Ruleset ${rs.name} (draft)`, ["Consumers", "Providers", "Services", "Enabled", "Draft vs active", "Action"], rows);
    });

    const history = versions.map((v) => {
      const back = el("button", { type: "button", "aria-label": `Roll back to version ${v.version}` }, "Roll back");
      back.addEventListener("click", async () => {
        if (!window.confirm(`Provision a new version equal to version ${v.version}?`)) return;
        try {
          const n = await call("POST", `/api/v2${v.href}/restore`, { update_description: `roll back to version ${v.version}` });
          await render("policy");
          document.getElementById("policy-status").textContent = `Version ${n.version} restores version ${v.version}.`;
        } catch (e) {
          status.textContent = `Not rolled back: ${e.message}`;
        }
      });
      const show = el("button", { type: "button", "aria-label": `Show the changes of version ${v.version}`, "aria-controls": "version-diff" }, "Changes");
      show.addEventListener("click", () => showVersion(v, names));
      const counts = Object.entries(v.object_counts || {}).map(([k, n]) => `${n} ${k}`).join(", ") || "-";
      return [String(v.version), v.commit_message || "-", v.created_at, counts, String(v.workloads_affected), el("span", { class: "actions" }, show, back)];
    });

    root.replaceChildren(
      el("h1", {}, "Policy"),
      status,
      el("h2", { id: "provision-title" }, "Pending changes"),
      changes.length
        ? table(`${changes.length} pending changes`, ["Kind", "Change", "Object"], changes)
        : el("p", {}, "The draft equals the active policy."),
      provision,
      el("h2", {}, "Rulesets"),
      ...(sets.length ? sets : [el("p", {}, "No rulesets.")]),
      el("h2", {}, "Versions"),
      table("Provisioned versions, newest first", ["Version", "Note", "Time", "Changed", "Workloads affected", "Actions"], history),
      el("section", { id: "version-diff", "aria-live": "polite", tabindex: "-1" }),
    );
  },

  async map(root) {
    const now = Date.now();
    const m = await call("POST", `${ORG}/app_group_map`, { start_date: iso(now - DAY_MS), end_date: iso(now + 60000) });
    const { default: cytoscape } = await import("/console/vendor/cytoscape.esm.min.mjs");
    const names = new Map(m.nodes.map((n) => [n.id, n.name]));
    const graph = el("div", {
      id: "map-graph",
      role: "img",
      "aria-label": `App group map of the last day: ${m.nodes.length} groups and ${m.edges.length} edges, listed in the table below`,
    });
    const rows = m.edges.map((e) => {
      const k = decisionOf(e);
      return [
        names.get(e.src) || e.src,
        names.get(e.dst) || e.dst,
        e.services.map((s) => `${s.port}/${PROTOS[s.proto] || s.proto}`).join(", "),
        String(e.connections),
        state(k === "allowed" ? "up" : k === "blocked" ? "down" : "warn", k.replace("_", " ")),
        `${Math.round(e.rule_coverage * 100)} %`,
      ];
    });
    const silent = (m.regions || []).filter((r) => !r.responded).map((r) => r.region);
    root.replaceChildren(
      el("h1", {}, "Map"),
      el("p", { class: "muted" }, silent.length ? `Regions that did not answer: ${silent.join(", ")}` : `Every region answered (${(m.regions || []).length}); the last 24 hours.`),
      el(
        "ul",
        { class: "legend", "aria-label": "Legend" },
        el("li", {}, el("span", { class: "swatch allowed", "aria-hidden": "true" }), "allowed: solid blue line"),
        el("li", {}, el("span", { class: "swatch potentially_blocked", "aria-hidden": "true" }), "potentially blocked or unknown: dotted orange line"),
        el("li", {}, el("span", { class: "swatch blocked", "aria-hidden": "true" }), "blocked: dashed vermilion line"),
      ),
      graph,
      table("Edges: traffic between app groups", ["From", "To", "Services", "Connections", "Decisions", "Rule coverage"], rows),
    );
    cytoscape({
      container: graph,
      elements: [
        ...m.nodes.map((n) => ({
          data: { id: n.id, label: n.workloads ? `${n.name}\n${n.workloads} workloads` : n.name },
          classes: n.kind === "app_group" || n.kind === "unlabelled" ? "group" : "address",
        })),
        ...m.edges.map((e, i) => ({
          data: { id: `e${i}`, source: e.src, target: e.dst, label: `${e.services.map((s) => s.port).join(",")} · ${Math.round(e.rule_coverage * 100)}%` },
          classes: decisionOf(e),
        })),
      ],
      style: [
        { selector: "node", style: { label: "data(label)", "text-wrap": "wrap", "text-valign": "center", "font-size": 11, "background-color": "#e8f1f8", "border-color": "#1b1b1b", "border-width": 1, width: 110, height: 44 } },
        { selector: "node.group", style: { shape: "round-rectangle" } },
        { selector: "node.address", style: { shape: "ellipse", "background-color": "#f0f0f0" } },
        { selector: "edge", style: { label: "data(label)", "font-size": 10, "curve-style": "bezier", "target-arrow-shape": "triangle", width: 2, "text-background-color": "#fff", "text-background-opacity": 1 } },
        { selector: "edge.allowed", style: { "line-color": "#0072b2", "target-arrow-color": "#0072b2", "line-style": "solid" } },
        { selector: "edge.potentially_blocked", style: { "line-color": "#e69f00", "target-arrow-color": "#e69f00", "line-style": "dotted" } },
        { selector: "edge.blocked", style: { "line-color": "#d55e00", "target-arrow-color": "#d55e00", "line-style": "dashed" } },
      ],
      layout: { name: "cose", animate: false, padding: 20 },
      wheelSensitivity: 0.3,
    });
  },

  async explorer(root) {
    const form = el(
      "form",
      { id: "explorer-form", class: "filters", "aria-label": "Explorer filters" },
      el("label", { for: "f-src" }, "Source label (key=value)"),
      el("input", { id: "f-src", name: "src", placeholder: "role=web" }),
      el("label", { for: "f-dst" }, "Destination label (key=value)"),
      el("input", { id: "f-dst", name: "dst", placeholder: "app=shop" }),
      el("label", { for: "f-port" }, "Port"),
      el("input", { id: "f-port", name: "port", inputmode: "numeric" }),
      el("label", { for: "f-decision" }, "Decision"),
      el(
        "select",
        { id: "f-decision", name: "decision" },
        el("option", { value: "" }, "any"),
        ...["allowed", "potentially_blocked", "blocked", "unknown"].map((d) => el("option", { value: d }, d.replace("_", " "))),
      ),
      el("button", { type: "submit" }, "Search"),
    );
    const out = el("div", { id: "explorer-results" });
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      explore(form, out);
    });
    root.replaceChildren(el("h1", {}, "Explorer"), el("p", { class: "muted" }, "Flows of the last 24 hours from every region."), form, out);
    await explore(form, out);
  },

  async events(root) {
    const events = await call("GET", `${ORG}/events?max_results=100`);
    const rows = events.map((e) => [
      e.timestamp || e.created_at || "-",
      e.event_type || "-",
      e.status === "success" ? state("up", "success") : state("down", e.status || "failure"),
      (e.created_by && e.created_by.user && e.created_by.user.username) || "-",
      e.region || e.pce_fqdn || "-",
    ]);
    root.replaceChildren(
      el("h1", {}, "Events"),
      table("The latest audit events", ["Time", "Event", "Status", "By", "Region"], rows),
    );
  },
};

async function render(name) {
  const root = document.getElementById("page");
  try {
    await pages[name](root);
  } catch (e) {
    if (e.status === 401) return signedOut("Your session ended; sign in again.");
    root.replaceChildren(el("h1", {}, name), el("p", { class: "error", role: "alert" }, e.message));
  }
}

function route() {
  const name = (location.hash.replace(/^#\//, "") || "supercluster").split("?")[0];
  const page = pages[name] ? name : "supercluster";
  for (const a of document.querySelectorAll("nav a")) {
    if (a.getAttribute("href") === `#/${page}`) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  show("page");
  clearInterval(timer);
  render(page);
  if (page === "supercluster") timer = setInterval(() => render(page), REFRESH_MS);
}

async function start() {
  document.getElementById("signin-form").addEventListener("submit", signIn);
  document.getElementById("signout").addEventListener("click", signOut);
  window.addEventListener("hashchange", () => session.csrf && route());
  try {
    const s = await call("GET", "/console/session");
    session.csrf = s.csrf_token;
    session.user = s.username;
    route();
  } catch {
    signedOut();
  }
}

start();
