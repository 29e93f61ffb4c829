"""Drives a Supercluster with the published `illumio` Python client (PyPI 1.1.3).

Usage: illumio_client.py LEADER_HOST MEMBER_HOST PORT CA_FILE KEY_FILE

Every call goes through the client's own methods, so what passes here is what an
Illumio user's script would see. Writes go to the member region (forwarded to the
leader), reads are checked in both regions. Exits non-zero on the first failure.
"""
import json
import os
import sys
import time

import illumio
from illumio import (EnforcementMode, Interface, IPList, IPRange, Label, LabelSet,
                     PolicyComputeEngine, Rule, RuleSet, Service, ServicePort, Workload)


def connect(host, port, ca, key):
    pce = PolicyComputeEngine(host, port=port, org_id=1, retry_count=2)
    pce.set_credentials(key["auth_username"], key["secret"])
    pce.set_tls_settings(verify=ca)
    return pce


def check(cond, what):
    if not cond:
        raise SystemExit(f"FAILED: {what}")
    print(f"ok: {what}")


def main():
    leader_host, member_host, port, ca, key_file = sys.argv[1:6]
    # requests lets REQUESTS_CA_BUNDLE override a session's `verify`; point it at ours.
    os.environ["REQUESTS_CA_BUNDLE"] = ca
    os.environ.pop("CURL_CA_BUNDLE", None)
    key = json.load(open(key_file))
    member = connect(member_host, port, ca, key)
    leader = connect(leader_host, port, ca, key)
    check(member.check_connection(), "check_connection (health + org settings)")

    suffix = str(int(time.time() * 1000))
    web = member.labels.create(Label(key="role", value="web-" + suffix))
    db = member.labels.create(Label(key="role", value="db-" + suffix))
    app = member.labels.create(Label(key="app", value="crm-" + suffix))
    env = member.labels.create(Label(key="env", value="prod-" + suffix))
    check(web.href.startswith("/orgs/1/labels/"), "labels.create returns an href")
    got = leader.labels.get_by_reference(web.href)
    check(got.key == "role" and got.value == "web-" + suffix, "labels.get_by_reference in another region")
    found = member.labels.get(params={"key": "role", "value": "web-" + suffix})
    check(len(found) == 1 and found[0].href == web.href, "labels.get with filters")
    member.labels.update(web.href, {"value": "web2-" + suffix})
    check(member.labels.get_by_reference(web.href).value == "web2-" + suffix, "labels.update")

    ip_list = member.ip_lists.create(IPList(
        name="IPL-partners-" + suffix,
        ip_ranges=[IPRange(from_ip="203.0.113.0/24"), IPRange(from_ip="198.51.100.10", to_ip="198.51.100.20"),
                   IPRange(from_ip="203.0.113.128/25", exclusion=True)]))
    check("/sec_policy/draft/ip_lists/" in ip_list.href, "ip_lists.create (draft)")
    check(len(member.ip_lists.get_by_reference(ip_list.href).ip_ranges) == 3, "ip_lists.get_by_reference")
    check(member.get_default_ip_list().name == "Any (0.0.0.0/0 and ::/0)", "get_default_ip_list")

    svc = member.services.create(Service(name="S-PG-" + suffix, service_ports=[ServicePort(port=5432, proto="tcp")]))
    check(member.services.get_by_name("S-PG-" + suffix).href == svc.href, "services.create + get_by_name")
    check(member.get_default_service().name == "All Services", "get_default_service")

    rs = member.rule_sets.create(RuleSet(name="RS-crm-" + suffix, scopes=[LabelSet(labels=[app, env])]))
    check("/sec_policy/draft/rule_sets/" in rs.href, "rule_sets.create with a scope")
    rule = Rule.build(providers=[db], consumers=[web], ingress_services=[svc])
    rule = member.rules.create(rule, parent=rs)
    check("/sec_rules/" in rule.href, "rules.create under a ruleset")
    extra = Rule.build(providers=[db], consumers=[ip_list], ingress_services=[{"port": 443, "proto": "tcp"}],
                       unscoped_consumers=True)
    member.rules.create(extra, parent=rs)
    rules = leader.rules.get(parent=rs)
    check(len(rules) == 2, "rules.get(parent=...) lists both rules")
    fetched = leader.rule_sets.get_by_reference(rs.href)
    check(len(fetched.rules) == 2 and fetched.scopes[0] == LabelSet(labels=[app, env]),
          "rule_sets.get_by_reference carries scope and rules")

    wl = member.workloads.create(Workload(
        name="db-01-" + suffix, hostname="db-01.example", labels=[db, app, env],
        interfaces=[Interface(name="eth0", address="10.0.0.5")],
        enforcement_mode=EnforcementMode.FULL))
    check(wl.href.startswith("/orgs/1/workloads/"), "workloads.create (unmanaged)")
    check(leader.workloads.get_by_reference(wl.href).enforcement_mode == "full", "workloads.get_by_reference")
    everyone = member.workloads.get_all()
    check(any(w.href == wl.href for w in everyone), "workloads.get_all (X-Total-Count, max_results)")
    async_list = member.workloads.get_async()
    check(any(w.href == wl.href for w in async_list), "workloads.get_async (Prefer: respond-async job)")

    version = member.provision_policy_changes(
        change_description="crm database access",
        hrefs=[rs.href, svc.href, ip_list.href])
    check(version.version >= 1 and version.workloads_affected is not None,
          f"provision_policy_changes -> version {version.version}")
    active = leader.rule_sets.get(policy_version="active", params={"name": "RS-crm-" + suffix})
    check(len(active) == 1 and len(active[0].rules) == 2, "active ruleset visible in another region")
    check(len(member.rules.get(parent=active[0].href)) == 2, "active rules via the draft-converted parent href")

    # Pairing profiles carry the visibility level and Illumio's locks.
    from illumio.workloads import PairingProfile
    prof = member.pairing_profiles.create(PairingProfile(
        name="PP-db-" + suffix, enabled=True, enforcement_mode="visibility_only",
        visibility_level="flow_drops", visibility_level_lock=True, role_label_lock=False,
        labels=[db]))
    got = leader.pairing_profiles.get_by_reference(prof.href)
    check(got.visibility_level == "flow_drops" and got.visibility_level_lock is True,
          "pairing profile with visibility_level and locks")

    # Explorer: an async traffic query from a member region, answered by every
    # region (this cluster has no VENs, so the answer is an empty list of flows).
    from illumio.explorer import TrafficQuery
    import datetime
    now = datetime.datetime.now(datetime.timezone.utc)
    query = TrafficQuery.build(
        start_date=(now - datetime.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        end_date=(now + datetime.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        include_destinations=[db.href],
        include_services=[{"port": 5432, "proto": 6}],
        policy_decisions=["allowed", "potentially_blocked", "blocked"],
    )
    flows = member.get_traffic_flows_async(query_name="compat-" + suffix, traffic_query=query)
    check(isinstance(flows, list), f"get_traffic_flows_async -> {len(flows)} flows")

    member.workloads.delete(wl.href)
    check(all(w.href != wl.href for w in member.workloads.get()), "workloads.delete")
    try:
        member.labels.create(Label(key="role", value="db-" + suffix))
        check(False, "a duplicate label is refused")
    except illumio.IllumioApiException as e:
        check("name_in_use" in str(e), "a duplicate label is refused with its token")
    print("ALL OK")


if __name__ == "__main__":
    main()
