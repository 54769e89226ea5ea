"""Check-then-act rules hold under concurrency (issue 8, section 10), on SQLite and PostgreSQL.

Each case fires two conflicting requests at the same instant (a barrier) through the API,
many times; the window between a rule's check and its write is widened by a short sleep
inside the check, so a rule that is not atomic fails here every time, not by luck.
"""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import func, select

from tidegate.access.policies import changes as policy_changes
from tidegate.access.policies import crud as policy_crud
from tidegate.access.policies import groups as policy_groups
from tidegate.db.engine import session_scope
from tidegate.orgs import service as orgs_service
from tidegate.orgs.models import User

ROUNDS = 10
WINDOW = 0.05  # seconds added between a check and its write


@pytest.fixture
def wide_windows(monkeypatch):
    def slow(check):
        def wrapper(*args, **kwargs):
            result = check(*args, **kwargs)
            time.sleep(WINDOW)
            return result

        return wrapper

    monkeypatch.setattr(orgs_service, "_active_admin_count", slow(orgs_service._active_admin_count))
    monkeypatch.setattr(policy_crud, "_policy_name_taken", slow(policy_crud._policy_name_taken))
    monkeypatch.setattr(policy_groups, "_group_name_taken", slow(policy_groups._group_name_taken))
    original_scalar = orgs_service.Session.scalar

    def slow_scalar(self, *args, **kwargs):  # the email / external id lookups in orgs.service
        result = original_scalar(self, *args, **kwargs)
        time.sleep(WINDOW / 5)
        return result

    monkeypatch.setattr(orgs_service.Session, "scalar", slow_scalar)


def at_once(*calls):
    """Run the calls in threads released together; return their responses in order."""
    barrier = threading.Barrier(len(calls))
    results: list = [None] * len(calls)

    def run(i, call):
        barrier.wait(timeout=10)
        results[i] = call()

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(r is not None for r in results), "a request did not finish"
    return results


def active_admins(org) -> int:
    with session_scope(org.settings.database_url) as session:
        return session.scalar(
            select(func.count())
            .select_from(User)
            .where(User.org_id == org.id, User.role == "admin", User.is_active.is_(True))
        )


def two_admins(make_org):
    org = make_org()
    b_id = org.add_user(f"b-{time.monotonic_ns()}@example.com", role="admin")
    return org, org.admin_id, org.key_for(b_id), b_id


ACTIONS = {
    "demote": lambda client, org, key, target: client.patch(
        f"/api/v1/users/{target}", json={"role": "member"}, headers=org.headers(key)
    ),
    "deactivate": lambda client, org, key, target: client.delete(f"/api/v1/users/{target}", headers=org.headers(key)),
}


@pytest.mark.parametrize(
    "a_does,b_does", [("demote", "demote"), ("deactivate", "deactivate"), ("demote", "deactivate")]
)
def test_two_admins_removing_each_other_leave_one_admin(client, make_org, wide_windows, a_does, b_does):
    last_admin_refusals = 0
    for _ in range(ROUNDS):
        org, a_id, b_key, b_id = two_admins(make_org)
        first, second = at_once(
            lambda: ACTIONS[a_does](client, org, None, b_id),  # A (the org's admin key) removes B
            lambda: ACTIONS[b_does](client, org, b_key, a_id),  # B removes A
        )
        statuses = sorted([first.status_code, second.status_code])
        assert 500 not in statuses and 503 not in statuses, (first.text, second.text)
        assert statuses[0] == 200 and statuses[1] != 200, (first.text, second.text)
        loser = first if first.status_code != 200 else second
        # Refused by the rule (409 last_admin), or, if the winner committed before the loser
        # was even authenticated, by the loser's own lost rights: never a success.
        assert loser.status_code in (401, 403, 409), loser.text
        if loser.status_code == 409:
            assert loser.json()["error"]["code"] == "last_admin"
            last_admin_refusals += 1
        assert active_admins(org) == 1
    assert last_admin_refusals >= ROUNDS // 2  # the requests really did overlap


def test_concurrent_self_demotions_keep_an_admin(client, make_org, wide_windows):
    for _ in range(ROUNDS):
        org, a_id, b_key, b_id = two_admins(make_org)
        first, second = at_once(
            lambda: ACTIONS["demote"](client, org, None, a_id),
            lambda: ACTIONS["demote"](client, org, b_key, b_id),
        )
        assert sorted([first.status_code, second.status_code]) == [200, 409], (first.text, second.text)
        assert active_admins(org) == 1


def test_concurrent_creations_of_one_user_get_the_precise_conflict(client, org, wide_windows):
    for i in range(ROUNDS):
        body = {"email": f"same-{i}@example.com", "role": "member"}
        responses = at_once(*[lambda: client.post("/api/v1/users", json=body, headers=org.headers())] * 2)
        assert sorted(r.status_code for r in responses) == [201, 409], [r.text for r in responses]
        assert [r.json()["error"]["code"] for r in responses if r.status_code == 409] == ["user_exists"]


def test_concurrent_external_upserts_create_once(client, org, wide_windows):
    for i in range(ROUNDS):
        body = {"email": f"ext-{i}@example.com", "role": "member"}
        responses = at_once(
            *[lambda: client.put(f"/api/v1/users/external/ext-{i}", json=body, headers=org.headers())] * 2
        )
        assert all(r.status_code in (200, 201) for r in responses), [r.text for r in responses]
        assert len({r.json()["id"] for r in responses}) == 1
        assert sorted(r.json()["created"] for r in responses) == [False, True]


@pytest.mark.parametrize(
    "path,code", [("/api/v1/access/policies", "policy_exists"), ("/api/v1/access/groups", "group_exists")]
)
def test_concurrent_names_get_the_precise_conflict(client, org, wide_windows, path, code):
    for i in range(ROUNDS):
        # Two definitions: the same one twice would be one policy, not a conflict.
        bodies = [{"name": f"same name {i}", "description": d} for d in ("one", "two")]
        responses = at_once(*[lambda b=b: client.post(path, json=b, headers=org.headers()) for b in bodies])
        assert sorted(r.status_code for r in responses) == [201, 409], [r.text for r in responses]
        assert [r.json()["error"]["code"] for r in responses if r.status_code == 409] == [code]


def test_the_cli_keeps_the_rule_against_a_concurrent_api_change(client, make_org, wide_windows):
    """The operator CLI goes through the same service: its demotion and an API one race too."""
    for _ in range(ROUNDS // 2):
        org, a_id, b_key, b_id = two_admins(make_org)

        def cli_demotes_a():
            try:
                with session_scope(org.settings.database_url) as session:
                    user = orgs_service.get_user(session, org.id, a_id)
                    orgs_service.update_user(session, None, user, role="member")
                return "ok"
            except orgs_service.Conflict as exc:
                return exc.code

        cli, api = at_once(cli_demotes_a, lambda: ACTIONS["demote"](client, org, b_key, b_id))
        assert sorted([cli == "ok", api.status_code == 200]) == [False, True], (cli, api.text)
        assert active_admins(org) == 1


@pytest.fixture
def slow_membership_writes(monkeypatch):
    """Widen the window between reading current assignments and writing new ones."""
    real_utcnow, real_direct = policy_changes.utcnow, policy_crud.direct_policy_ids

    def slow_utcnow():  # called for each row added, after the existing rows were read
        time.sleep(WINDOW)
        return real_utcnow()

    def slow_direct(*args, **kwargs):
        result = real_direct(*args, **kwargs)
        time.sleep(WINDOW)
        return result

    monkeypatch.setattr(policy_changes, "utcnow", slow_utcnow)  # links are added in policies.changes
    monkeypatch.setattr(policy_crud, "utcnow", slow_utcnow)  # replace_user_policies adds its own
    monkeypatch.setattr(policy_crud, "direct_policy_ids", slow_direct)


def test_concurrent_identical_assignments_stay_idempotent(client, org, slow_membership_writes):
    for i in range(ROUNDS):
        user_id = org.add_user(f"member-{i}@example.com")
        policy = client.post("/api/v1/access/policies", json={"name": f"p{i}"}, headers=org.headers()).json()
        group = client.post("/api/v1/access/groups", json={"name": f"g{i}"}, headers=org.headers()).json()
        assigned = at_once(
            *[
                lambda: client.post(
                    f"/api/v1/access/policies/{policy['id']}/users", json={"user_ids": [user_id]}, headers=org.headers()
                )
            ]
            * 2
        )
        assert [r.status_code for r in assigned] == [200, 200], [r.text for r in assigned]
        assert sorted(len(r.json()["assigned_user_ids"]) for r in assigned) == [0, 1]
        members = at_once(
            *[
                lambda: client.post(
                    f"/api/v1/access/groups/{group['id']}/users", json={"user_ids": [user_id]}, headers=org.headers()
                )
            ]
            * 2
        )
        assert all(r.status_code in (200, 201) for r in members), [r.text for r in members]


def test_concurrent_policy_replacements_set_one_of_the_two_sets(client, org, slow_membership_writes):
    p1, p2 = (
        client.post("/api/v1/access/policies", json={"name": n}, headers=org.headers()).json()["id"]
        for n in ("only one", "only two")
    )
    for i in range(ROUNDS):
        user_id = org.add_user(f"replaced-{i}@example.com")
        responses = at_once(
            *[
                lambda ids=ids: client.put(
                    f"/api/v1/access/users/{user_id}/policies", json={"policy_ids": ids}, headers=org.headers()
                )
                for ids in ([p1], [p2])
            ]
        )
        assert [r.status_code for r in responses] == [200, 200], [r.text for r in responses]
        with session_scope(org.settings.database_url) as session:
            final = policy_crud.direct_policy_ids(session, user_id)
        assert sorted(final) in ([p1], [p2]), final  # never both: the union nobody asked for
