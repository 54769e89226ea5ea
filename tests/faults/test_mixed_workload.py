"""A mixed concurrent workload against a real `tidegate serve --workers 2`, on SQLite and on
PostgreSQL (issue 8, "Tests that keep it so").

Eight client threads for a bounded time mix what real traffic mixes: page reads, CSV exports
and column values as members, SQL over `data` (some of it bad: syntax, unknown column, failed
cast, not a SELECT), appends and short-lived sources, policy edits and (un)assignments, key
creation and revocation, and a member promoted and demoted. The oracle:

1. no 5xx at all (each one is printed with its body);
2. no row a policy denies: every row, CSV line, query result and column value a key receives
   is in the union of what its policies allowed at any moment of the run (policies toggle
   between two values), and `SECRET` rows, which no policy ever allows, never appear;
3. a key whose revocation has returned is refused (401 api_key_revoked) on every later request;
4. every error answers the JSON envelope `{"error": {"type", "code", "message"}}`, and bad
   input answers 4xx;
5. every answered request has its audit event (same id, same status) in the database after
   the shipper catches up (bounded wait);
6. every acknowledged append is stored exactly once, and an append refused by the writer's
   row policy stores nothing.

The figures (requests, per-status counts, 5xx, violations, events missing, duration) are printed
at the end for the closing note. `TIDEGATE_MIXED_SECONDS` sets the least workload time per
database (see COVERAGE).

Fixtures are private to this module (tests/faults/conftest.py belongs to the fault suite).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import random
import sqlite3
import threading
import time
import uuid
from collections import Counter
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import httpx
import pytest
from server import init_home, scratch_postgres_database

from tidegate.config import load_settings
from tidegate.core.principal import Principal
from tidegate.core.scopes import preset_scopes
from tidegate.credentials import service as keys_service
from tidegate.db.engine import get_engine, session_scope
from tidegate.orgs import service as orgs

pytestmark = pytest.mark.slow

# The workload runs at least DURATION seconds, then until it has covered every kind of step
# (COVERAGE) or for MAX_DURATION at most: a loaded machine gets a longer run, not a vacuous one.
DURATION = float(os.environ.get("TIDEGATE_MIXED_SECONDS", "15"))
MAX_DURATION = 4 * DURATION
COVERAGE = {
    "requests": 200,
    "bad_query": 10,
    "page": 50,
    "query": 30,
    "csv": 5,
    "policy_edit": 2,
    "policy_assign": 1,
    "policy_unassign": 1,
    "role_change": 2,
    "append": 2,
    "denied_append": 1,
    "key_revoke": 3,
    "revoked_key": 3,
    "source_delete": 1,
}
START_TIMEOUT = 120.0  # four processes importing tidegate on a busy 2-core machine
READERS = 6  # + one admin changing things + one key churner = 8 client threads
AUDIT_WAIT = 20.0  # the shipper ships every second
RATE = 10_000  # per key and minute: the workload measures correctness, not the limiter

PUBLIC = ("US", "EU", "APAC", "LATAM")
SECRET = "SECRET"  # no policy ever allows it
SEED_ROWS = 2_000

# Each policy toggles between two values (or is assigned and unassigned) during the run;
# what a key may ever see is the union of its values over the run, AND-ed along the way.
P1_VALUES = (["US"], ["US", "EU"])
P2_VALUES = (["EU"], ["EU", "APAC"])
P3_VALUES = ["APAC", "LATAM"]  # assigned to m3 and unassigned (then m3 sees nothing)
P4_VALUES = ["LATAM"]  # m4, who is promoted to admin and demoted again
KEY_POLICY_VALUES = ["US"]  # assigned to nobody; named by some keys' access_policy_ids
ADMIN_VALUES = list(PUBLIC)  # the admin sees every region but SECRET

GOOD_QUERIES = [
    ("SELECT region, count(*) AS n, sum(amount) AS total FROM data GROUP BY region ORDER BY region", "rows"),
    ("SELECT * FROM data WHERE amount > {n} ORDER BY amount, owner LIMIT 50", "rows"),
    ("SELECT DISTINCT region FROM data", "rows"),
    ("SELECT owner, amount, region FROM data WHERE owner LIKE 'secret%'", "empty"),
    (f"SELECT count(*) AS n FROM data WHERE region = '{SECRET}'", "zero"),
    (
        "WITH t AS (SELECT region, amount FROM data WHERE amount < {n}) SELECT region, max(amount) AS m "
        "FROM t GROUP BY region",
        "rows",
    ),
]
# (sql, fails whatever the rows): a cast that fails on the rows fails only where there are
# rows, so over a caller's empty view (m3 unassigned, m2_us) it may answer 200 with no data.
BAD_QUERIES = [
    ("SELEC region FROM data", True),  # syntax
    ("SELECT no_such_column FROM data", True),  # unknown column
    ("SELECT * FROM not_data", True),  # another relation
    ("DELETE FROM data", True),  # not a SELECT
    ("SELECT CAST(owner AS INTEGER) AS n FROM data", False),  # a cast that fails on the rows
    ("SELECT region FROM data WHERE amount = 'lots'", False),  # a comparison whose cast fails
]


READ_KINDS = {"page", "query", "bad_query", "csv", "values", "final_read"}


# -- the server under test ---------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def mixed_server(request, tmp_path):
    with ExitStack() as stack:
        url = None
        if request.param == "postgresql":
            url = stack.enter_context(scratch_postgres_database("tidegate_mixed"))
        srv = init_home(tmp_path, database_url=url)
        srv.database = request.param
        srv.raw_database_url = url
        stack.callback(srv.stop)
        srv.start(workers=2, timeout=START_TIMEOUT)
        yield srv


# The workload's long-lived keys are made through the service, as a signed-in person makes them
# in the web UI: a key made by a key may not exceed its parent's rate limit (issue 8, section 1),
# and `tidegate init` and the CLI make keys with the default limit, too low for a load test. In
# this process (a `python -c` child would spend seconds importing tidegate on a loaded machine),
# with the server's settings.
@contextmanager
def server_settings(srv):
    names = {n for n in (*os.environ, *srv.env) if n.startswith("TIDEGATE_")}
    saved = {name: os.environ.get(name) for name in names}
    for name in names:  # exactly the server's TIDEGATE_* settings, nothing of ours
        if name in srv.env:
            os.environ[name] = srv.env[name]
        else:
            os.environ.pop(name, None)
    try:
        yield load_settings()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def make_keys(srv, org_id: str, wanted: dict[str, dict]) -> dict[str, dict]:
    made = {}
    with server_settings(srv) as settings:
        try:
            with session_scope(settings.database_url) as session:
                for name, spec in wanted.items():
                    user = orgs.get_user(session, org_id, spec["user_id"])
                    principal = Principal.for_user(org_id, user.id, user.role)
                    created = keys_service.create_key(
                        session,
                        principal,
                        keys_service.KeyRequest(
                            name=name,
                            scopes=preset_scopes(spec.get("preset", "data_access"), user.role),
                            rate_limit_per_minute=RATE,
                            access_policy_ids=spec.get("access_policy_ids"),
                        ),
                        pepper=settings.pepper,
                    )
                    made[name] = {"id": created.key.id, "secret": created.secret}
        finally:
            get_engine(settings.database_url).dispose()  # no connection of ours outlives the set-up
    return made


def seed_rows() -> list[dict]:
    rows = []
    for i in range(SEED_ROWS):
        region = SECRET if i % 10 == 0 else PUBLIC[i % 4]
        rows.append({"region": region, "amount": (i * 37) % 1000, "owner": f"{region.lower()}-{i}"})
    return rows


def row(region: str, tag: str) -> dict:
    return {"region": region, "amount": random.randrange(1000), "owner": f"{region.lower()}-{tag}"}


# -- what the workload records ---------------------------------------------------------------


@dataclass
class Key:
    name: str
    id: str
    secret: str
    allowed: frozenset[str]  # every region this key may ever be shown during the run
    revoked_at: float | None = None  # monotonic time the revoke call returned


@dataclass
class Outcome:
    """Everything the workload saw, and every broken promise."""

    statuses: Counter = field(default_factory=Counter)
    by_kind: Counter = field(default_factory=Counter)
    answered: dict[str, int] = field(default_factory=dict)  # request id -> status
    server_errors: list[str] = field(default_factory=list)
    denied_rows: list[str] = field(default_factory=list)
    after_revoke: list[str] = field(default_factory=list)
    bad_envelopes: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    transport_errors: list[str] = field(default_factory=list)
    rows_checked: int = 0
    regions_seen: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, where: list[str], text: str) -> None:
        with self.lock:
            where.append(text)


class Workload:
    def __init__(self, srv, source_id: str, keys: dict[str, Key], admin: Key, ids: dict[str, str]):
        self.srv = srv
        self.source_id = source_id
        self.keys = keys  # the long-lived keys the readers use
        self.admin = admin
        self.ids = ids  # policy and user ids by name
        self.churned: list[Key] = []  # keys made and revoked during the run
        self.appended_owners: set[str] = set()  # rows the server acknowledged (owner is unique)
        self.refused_owners: set[str] = set()  # rows of appends refused whole
        self.out = Outcome()
        self.stop = threading.Event()

    def uncovered(self) -> dict[str, int]:
        """The kinds of step the run has done fewer times than COVERAGE asks."""
        with self.out.lock:
            done = {**self.out.by_kind, "requests": sum(self.out.statuses.values())}
        return {kind: done.get(kind, 0) for kind, least in COVERAGE.items() if done.get(kind, 0) < least}

    # -- one request, and what every response must satisfy --------------------------------

    def call(
        self, http: httpx.Client, key: Key, method: str, path: str, kind: str, expect: tuple[int, ...], **kwargs
    ) -> httpx.Response | None:
        headers = {"Authorization": f"Bearer {key.secret}", "X-Tenant-ID": self.srv.org_id}
        sent = time.monotonic()
        revoked_before = key.revoked_at is not None and sent > key.revoked_at
        try:
            resp = http.request(method, path, headers=headers, **kwargs)
        except httpx.HTTPError as exc:
            self.out.note(self.out.transport_errors, f"{kind} {method} {path}: {exc!r}")
            return None
        status = resp.status_code
        request_id = resp.headers.get("x-request-id", "")
        with self.out.lock:
            self.out.statuses[status] += 1
            self.out.by_kind[kind] += 1
            if request_id:
                self.out.answered[request_id] = status
        label = f"{kind} {method} {path} key={key.name} -> {status} {request_id}"
        if not request_id.startswith("req_"):
            self.out.note(self.out.unexpected, f"{label}: no X-Request-ID")
        if status >= 500:
            self.out.note(self.out.server_errors, f"{label}: {resp.text[:600]}")
        if status >= 400:
            self._check_envelope(resp, label)
        if revoked_before and status < 400:
            self.out.note(self.out.after_revoke, label)
        if status not in expect and status < 500 and not self._admitted_later(resp, kind):
            self.out.note(self.out.unexpected, f"{label} (expected {expect}): {resp.text[:300]}")
        return resp

    def _admitted_later(self, resp: httpx.Response, kind: str) -> bool:
        """A read turned away by the query admission control (issue 8, section 3): a 429 with
        its own code is the promised answer under load, not a failure."""
        if resp.status_code != 429 or kind not in READ_KINDS:
            return False
        try:
            return resp.json()["error"]["code"] == "too_many_concurrent_queries"
        except Exception:  # noqa: BLE001 -- reported by the envelope check
            return False

    def _check_envelope(self, resp: httpx.Response, label: str) -> None:
        try:
            error = resp.json()["error"]
            assert all(isinstance(error[part], str) and error[part] for part in ("type", "code", "message"))
        except Exception:  # noqa: BLE001 -- anything else is a broken envelope
            self.out.note(self.out.bad_envelopes, f"{label}: {resp.text[:300]}")

    def check_rows(self, key: Key, rows: list[dict], label: str) -> None:
        """Every row (or value) shown to `key` is one its policies could have allowed."""
        for item in rows:
            regions = []
            if isinstance(item, dict):
                if "region" in item:
                    regions.append(item["region"])
                if isinstance(item.get("owner"), str):  # owner is "<region>-<n>": a second witness
                    regions.append(item["owner"].split("-", 1)[0].upper())
            else:
                regions.append(item)
            with self.out.lock:
                self.out.rows_checked += 1
                for region in regions:
                    self.out.regions_seen[region] += 1
            denied = [r for r in regions if r not in key.allowed]
            if denied:
                self.out.note(self.out.denied_rows, f"{label}: {item!r} (key may see {sorted(key.allowed)})")

    # -- readers ----------------------------------------------------------------------------

    def reader(self, seed: int) -> None:
        rnd = random.Random(seed)
        names = sorted(self.keys)
        with httpx.Client(base_url=self.srv.url + "/api/v1", timeout=30.0) as http:
            while not self.stop.is_set():
                if self.churned and rnd.random() < 0.04:
                    self.revoked_read(http, rnd)
                    continue
                key = self.keys[rnd.choice(names)]
                pick = rnd.random()
                if pick < 0.42:
                    self.read_page(http, key, rnd)
                elif pick < 0.72:
                    self.good_query(http, key, rnd)
                elif pick < 0.78:
                    self.bad_query(http, key, rnd)
                elif pick < 0.86:
                    self.export_csv(http, key)
                elif pick < 0.94:
                    self.column_values(http, key)
                else:
                    self.bad_page(http, key, rnd)

    def data_path(self, suffix: str = "data") -> str:
        return f"/sources/{self.source_id}/{suffix}"

    def read_page(self, http, key: Key, rnd: random.Random, expect=(200,)) -> None:
        params = {"page": rnd.randint(1, 4), "page_size": rnd.choice([1, 10, 100, 500])}
        resp = self.call(http, key, "GET", self.data_path(), "page", expect, params=params)
        if resp is not None and resp.status_code == 200:
            page = resp.json()
            self.check_rows(key, page["data"], f"page {params}")
            if not key.allowed and page["total_count"]:
                self.out.note(self.out.denied_rows, f"{key.name} may see no row; page total {page['total_count']}")

    def good_query(self, http, key: Key, rnd: random.Random) -> None:
        sql, shape = rnd.choice(GOOD_QUERIES)
        sql = sql.format(n=rnd.randrange(1000))
        resp = self.call(http, key, "POST", self.data_path("query"), "query", (200,), json={"sql": sql})
        if resp is None or resp.status_code != 200:
            return
        rows = resp.json()["data"]
        self.check_rows(key, rows, f"query {sql!r}")
        if shape == "empty" and rows:
            self.out.note(self.out.denied_rows, f"query {sql!r} by {key.name}: {rows[:3]!r}")
        if shape == "zero" and rows != [{"n": 0}]:
            self.out.note(self.out.denied_rows, f"query {sql!r} by {key.name}: {rows!r}")

    def bad_query(self, http, key: Key, rnd: random.Random) -> None:
        sql, always = rnd.choice(BAD_QUERIES)
        resp = self.call(
            http, key, "POST", self.data_path("query"), "bad_query", (400,) if always else (400, 200), json={"sql": sql}
        )
        if resp is not None and resp.status_code == 200 and resp.json()["data"]:
            self.out.note(self.out.unexpected, f"bad query {sql!r} by {key.name} answered rows: {resp.text[:200]}")

    def bad_page(self, http, key: Key, rnd: random.Random) -> None:
        params = rnd.choice([{"page_size": 0}, {"page": "x"}, {"format": "xml"}, {"page": -1}])
        self.call(http, key, "GET", self.data_path(), "bad_page", (400,), params=params)

    def export_csv(self, http, key: Key) -> None:
        resp = self.call(http, key, "GET", self.data_path(), "csv", (200,), params={"format": "csv"})
        if resp is not None and resp.status_code == 200:
            self.check_rows(key, list(csv.DictReader(io.StringIO(resp.text))), "csv export")

    def column_values(self, http, key: Key) -> None:
        resp = self.call(http, key, "GET", self.data_path("columns/region/values"), "values", (200,))
        if resp is not None and resp.status_code == 200:
            self.check_rows(key, resp.json()["data"], "region values")

    def revoked_read(self, http, rnd: random.Random) -> None:
        with self.out.lock:
            revoked = [k for k in self.churned if k.revoked_at is not None]
        if revoked:
            key = rnd.choice(revoked)
            resp = self.call(http, key, "GET", self.data_path(), "revoked_key", (401,))
            if resp is not None and resp.status_code == 401 and resp.json()["error"]["code"] != "api_key_revoked":
                self.out.note(self.out.unexpected, f"revoked key {key.name}: {resp.text[:200]}")

    # -- the admin, changing things -------------------------------------------------------------

    def changer(self, seed: int) -> None:
        rnd = random.Random(seed)
        toggles = Counter()
        # In turn, not at random: even a slow run makes every kind of change a few times.
        steps = [
            self.toggle_p1,
            self.toggle_p3_assignment,
            self.toggle_m4_role,
            self.append_rows,
            self.toggle_p2,
            self.scratch_source,
        ]
        with httpx.Client(base_url=self.srv.url + "/api/v1", timeout=30.0) as http:
            for turn in itertools.count():
                if self.stop.is_set():
                    break
                step = steps[turn % len(steps)]
                toggles[step.__name__] += 1
                step(http, toggles[step.__name__], rnd)
                time.sleep(rnd.uniform(0.0, 0.05))

    def admin_call(self, http, method: str, path: str, kind: str, expect=(200,), **kwargs):
        return self.call(http, self.admin, method, path, kind, expect, **kwargs)

    def toggle_p1(self, http, n: int, rnd) -> None:
        self.admin_call(
            http,
            "PATCH",
            f"/access/policies/{self.ids['p1']}",
            "policy_edit",
            json={"row_filters": [{"column": "region", "values": P1_VALUES[n % 2]}]},
        )

    def toggle_p2(self, http, n: int, rnd) -> None:
        self.admin_call(
            http,
            "PATCH",
            f"/access/policies/{self.ids['p2']}",
            "policy_edit",
            json={"row_filters": [{"column": "region", "values": P2_VALUES[n % 2]}]},
        )

    def toggle_p3_assignment(self, http, n: int, rnd) -> None:
        policy, user = self.ids["p3"], self.ids["m3"]
        if n % 2:
            self.admin_call(http, "DELETE", f"/access/policies/{policy}/users/{user}", "policy_unassign")
        else:
            self.admin_call(
                http, "POST", f"/access/policies/{policy}/users", "policy_assign", json={"user_ids": [user]}
            )

    def toggle_m4_role(self, http, n: int, rnd) -> None:
        role = "admin" if n % 2 else "member"
        resp = self.admin_call(http, "PATCH", f"/users/{self.ids['m4']}", "role_change", json={"role": role})
        if resp is not None and resp.status_code == 200 and resp.json()["role"] != role:
            self.out.note(self.out.unexpected, f"role change to {role} answered {resp.text[:200]}")

    def append_rows(self, http, n: int, rnd) -> None:
        if n % 3 == 2:
            # The admin's own policy does not allow SECRET: refused whole, nothing written.
            rows = [row("US", f"w{n}x"), row(SECRET, f"w{n}s")]
            resp = self.admin_call(http, "POST", self.data_path("rows"), "denied_append", (403,), json={"rows": rows})
            if resp is not None and resp.status_code == 403:
                self.refused_owners.update(r["owner"] for r in rows)
                if resp.json()["error"]["code"] != "row_filter_restricts_write":
                    self.out.note(self.out.unexpected, f"denied append: {resp.text[:200]}")
            return
        rows = [row(rnd.choice(PUBLIC), f"w{n}x{i}") for i in range(10)]
        resp = self.admin_call(http, "POST", self.data_path("rows"), "append", json={"rows": rows})
        if resp is not None and resp.status_code == 200:
            self.appended_owners.update(r["owner"] for r in rows)

    def written_rows_check(self) -> list[str]:
        """Every acknowledged append is in the source exactly once; no refused one is."""
        sql = "SELECT owner FROM data WHERE owner LIKE '%-w%'"
        with httpx.Client(base_url=self.srv.url + "/api/v1", timeout=60.0) as http:
            for _ in range(5):  # nothing else runs now; a 429 from admission control would clear
                resp = self.admin_call(
                    http, "POST", self.data_path("query"), "final_read", json={"sql": sql, "page_size": 10_000}
                )
                if resp is None or resp.status_code != 429:
                    break
                time.sleep(1)
        if resp is None or resp.status_code != 200:
            return [f"final read failed: {resp.text[:300] if resp is not None else 'no answer'}"]
        stored = Counter(r["owner"] for r in resp.json()["data"])
        problems = [f"acknowledged row {o} stored {stored[o]} times" for o in self.appended_owners if stored[o] != 1]
        problems += [f"refused row {o} stored" for o in self.refused_owners if stored[o]]
        problems += [f"row {o} stored but never acknowledged" for o in stored if o not in self.appended_owners]
        return problems

    def scratch_source(self, http, n: int, rnd) -> None:
        rows = [row(region, f"s{n}x{i}") for i, region in enumerate((*PUBLIC, SECRET) * 4)]
        resp = self.admin_call(
            http,
            "POST",
            "/sources",
            "source_create",
            (201,),
            json={"name": f"scratch-{n}-{uuid.uuid4().hex[:6]}", "rows": rows},
        )
        if resp is None or resp.status_code != 201:
            return
        source_id = resp.json()["id"]
        page = self.admin_call(http, "GET", f"/sources/{source_id}/data", "page", params={"page_size": 100})
        if page is not None and page.status_code == 200:
            self.check_rows(self.admin, page.json()["data"], "scratch source page")
        self.admin_call(http, "DELETE", f"/sources/{source_id}", "source_delete")

    # -- keys made, used, revoked -----------------------------------------------------------------

    def churner(self, seed: int) -> None:
        rnd = random.Random(seed)
        n = 0
        with httpx.Client(base_url=self.srv.url + "/api/v1", timeout=30.0) as http:
            while not self.stop.is_set():
                n += 1
                resp = self.admin_call(
                    http,
                    "POST",
                    "/keys",
                    "key_create",
                    (201,),
                    json={
                        "name": f"churn-{n}",
                        "preset": "data_access",
                        "rate_limit_per_minute": 1000,
                        "access_policy_ids": [self.ids["key_policy"]],
                    },
                )
                if resp is None or resp.status_code != 201:
                    time.sleep(0.05)
                    continue
                made = resp.json()
                key = Key(f"churn-{n}", made["id"], made["secret"], frozenset(KEY_POLICY_VALUES))
                with self.out.lock:
                    self.churned.append(key)
                for _ in range(rnd.randint(1, 3)):
                    self.read_page(http, key, rnd)
                if rnd.random() < 0.5:
                    self.bad_query(http, key, rnd)
                    self.read_page(http, key, rnd)  # the read right after a failed one (section 2)
                revoke = self.admin_call(http, "DELETE", f"/keys/{key.id}", "key_revoke")
                if revoke is not None and revoke.status_code == 200:
                    key.revoked_at = time.monotonic()
                    for _ in range(2):
                        self.read_page(http, key, rnd, expect=(401,))


# -- set-up: members, policies, keys, the source ---------------------------------------------------


def ok(resp: httpx.Response, status: int = 200) -> dict:
    assert resp.status_code == status, f"{resp.request.method} {resp.request.url} -> {resp.status_code} {resp.text}"
    return resp.json()


def set_up(srv) -> Workload:
    made = make_keys(srv, srv.org_id, {"admin": {"user_id": srv.admin_user_id, "preset": "full_access"}})
    admin = Key("admin", made["admin"]["id"], made["admin"]["secret"], frozenset(ADMIN_VALUES))
    admin_secret = admin.secret
    ids: dict[str, str] = {}
    with srv.client(admin_secret) as http:
        source = ok(http.post("/sources", json={"name": "sales", "rows": seed_rows()}), 201)
        # Before any policy, the source really holds SECRET rows an unrestricted reader gets:
        # so the "never shown" checks below can fail.
        secret_count = ok(
            http.post(
                f"/sources/{source['id']}/query",
                json={"sql": f"SELECT count(*) AS n FROM data WHERE region = '{SECRET}'"},
            )
        )
        assert secret_count["data"] == [{"n": SEED_ROWS // 10}], secret_count
        ok(http.post(f"/sources/{source['id']}/org-share", json={"enabled": True, "permission": "view"}))
        for name in ("m1", "m2", "m3", "m4"):
            user = ok(http.post("/users", json={"email": f"{name}-{uuid.uuid4().hex[:6]}@example.com"}), 201)
            ids[name] = user["id"]
        policies = {
            "p1": (P1_VALUES[0], "m1"),
            "p2": (P2_VALUES[0], "m2"),
            "p3": (P3_VALUES, "m3"),
            "p4": (P4_VALUES, "m4"),
            "key_policy": (KEY_POLICY_VALUES, None),
            "admin_policy": (ADMIN_VALUES, None),
        }
        for name, (values, holder) in policies.items():
            policy = ok(
                http.post(
                    "/access/policies",
                    json={
                        "name": f"{name}-{uuid.uuid4().hex[:6]}",
                        "row_filters": [{"column": "region", "values": values}],
                    },
                ),
                201,
            )
            ids[name] = policy["id"]
            user_ids = [ids[holder]] if holder else ([srv.admin_user_id] if name == "admin_policy" else [])
            if user_ids:
                ok(http.post(f"/access/policies/{policy['id']}/users", json={"user_ids": user_ids}))
        # A user with no applicable policy sees nothing (m3 while unassigned).
        ok(http.patch("/org/settings", json={"deny_by_default": True}))

    wanted = {
        "m1": ({"user_id": ids["m1"]}, {"US", "EU"}),
        "m1_us": ({"user_id": ids["m1"], "access_policy_ids": [ids["key_policy"]]}, {"US"}),
        "m2": ({"user_id": ids["m2"]}, {"EU", "APAC"}),
        "m2_us": ({"user_id": ids["m2"], "access_policy_ids": [ids["key_policy"]]}, set()),  # EU/APAC AND US
        "m3": ({"user_id": ids["m3"]}, set(P3_VALUES)),
        "m4": ({"user_id": ids["m4"]}, set(P4_VALUES)),
    }
    made = make_keys(srv, srv.org_id, {name: spec for name, (spec, _) in wanted.items()})
    keys = {
        name: Key(name, made[name]["id"], made[name]["secret"], frozenset(allowed))
        for name, (_, allowed) in wanted.items()
    }
    keys["admin"] = admin
    return Workload(srv, source["id"], keys, admin, ids)


# -- the audit log, read from the database -------------------------------------------------------


def request_events(srv) -> tuple[dict[str, int | None], Counter]:
    """({request id: status}, events per request id) of the org's request events: the events
    with a status (change events, recorded beside them, carry the request id but no status)."""
    query = "SELECT request_id, status FROM audit_events WHERE org_id = {} AND status IS NOT NULL"
    if srv.database == "sqlite":
        with sqlite3.connect(f"file:{srv.home / 'tidegate.db'}?mode=ro", uri=True, timeout=30) as db:
            rows = db.execute(query.format("?"), (srv.org_id,)).fetchall()
    else:
        import psycopg

        with psycopg.connect(srv.raw_database_url, connect_timeout=5) as db:
            rows = db.execute(query.format("%s"), (srv.org_id,)).fetchall()
    found: dict[str, int | None] = {}
    count = Counter()
    for request_id, status in rows:
        count[request_id] += 1
        found[request_id] = status
    return found, count


def audit_gaps(srv, answered: dict[str, int]) -> tuple[list[str], list[str], float]:
    """(request ids without an event, events that disagree with the answer, seconds waited)."""
    began = time.monotonic()
    while True:
        found, count = request_events(srv)
        missing = [rid for rid in answered if rid not in found]
        waited = time.monotonic() - began
        if not missing or waited > AUDIT_WAIT:
            break
        time.sleep(0.5)
    wrong = [
        f"{rid}: answered {answered[rid]}, event {found[rid]}"
        for rid in answered
        if rid in found and found[rid] != answered[rid]
    ]
    wrong += [f"{rid}: {count[rid]} events" for rid in answered if count[rid] > 1]
    return missing, wrong, waited


# -- the test ----------------------------------------------------------------------------------


def test_mixed_workload_keeps_every_promise(mixed_server):
    server = mixed_server
    work = set_up(server)
    threads = [threading.Thread(target=work.reader, args=(i,), name=f"reader-{i}") for i in range(READERS)]
    threads += [
        threading.Thread(target=work.changer, args=(100,), name="changer"),
        threading.Thread(target=work.churner, args=(200,), name="churner"),
    ]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    time.sleep(DURATION)
    while work.uncovered() and time.monotonic() - began < MAX_DURATION:
        time.sleep(0.5)
    work.stop.set()
    for thread in threads:
        thread.join(timeout=60)
    duration = time.monotonic() - began
    assert not any(t.is_alive() for t in threads), "a client thread did not finish"

    write_problems = work.written_rows_check()
    out = work.out
    missing, wrong_status, waited = audit_gaps(server, out.answered)
    churned = len(work.churned)
    revoked = sum(1 for k in work.churned if k.revoked_at is not None)
    figures = {
        "database": server.database,
        "workers": 2,
        "client_threads": len(threads),
        "duration_s": round(duration, 1),
        "requests": sum(out.statuses.values()),
        "statuses": dict(sorted(out.statuses.items())),
        "by_kind": dict(sorted(out.by_kind.items())),
        "5xx": len(out.server_errors),
        "denied_row_violations": len(out.denied_rows),
        "accepted_after_revoke": len(out.after_revoke),
        "bad_envelopes": len(out.bad_envelopes),
        "unexpected_statuses": len(out.unexpected),
        "transport_errors": len(out.transport_errors),
        "rows_checked": out.rows_checked,
        "regions_seen": dict(out.regions_seen),
        "keys_churned": churned,
        "keys_revoked": revoked,
        "rows_appended": len(work.appended_owners),
        "write_problems": len(write_problems),
        "events_missing": len(missing),
        "events_wrong_status": len(wrong_status),
        "audit_wait_s": round(waited, 1),
    }
    print(f"\nmixed workload figures: {json.dumps(figures)}")
    if out.server_errors:  # what the server said about them
        causes = Counter(
            line.strip()
            for line in server.logs().splitlines()
            if line[:1].isalpha() and "Error" in line.split(":", 1)[0]
        )
        print(f"  exceptions in the server log: {dict(causes.most_common(10))}")
    for title, items in (
        ("5xx", out.server_errors),
        ("denied rows", out.denied_rows),
        ("accepted after revoke", out.after_revoke),
        ("bad envelopes", out.bad_envelopes),
        ("unexpected statuses", out.unexpected),
        ("transport errors", out.transport_errors),
        ("events missing", missing),
        ("events with another status", wrong_status),
        ("writes", write_problems),
    ):
        for item in items[:25]:
            print(f"  {title}: {item}")
        if len(items) > 25:
            print(f"  {title}: ... {len(items) - 25} more")

    assert not out.server_errors, f"{len(out.server_errors)} 5xx: {out.server_errors[:5]}"
    assert not out.denied_rows, f"rows a policy denies: {out.denied_rows[:5]}"
    assert not out.after_revoke, f"accepted after revoke: {out.after_revoke[:5]}"
    assert not out.bad_envelopes, f"errors without the envelope: {out.bad_envelopes[:5]}"
    assert not out.transport_errors, f"requests without an answer: {out.transport_errors[:5]}"
    assert not out.unexpected, f"unexpected statuses: {out.unexpected[:5]}"
    assert not write_problems, f"appended rows: {write_problems[:5]}"
    assert not missing, f"{len(missing)} answered requests have no audit event after {waited:.0f}s"
    assert not wrong_status, f"audit events with another status: {wrong_status[:5]}"
    # The run did what it claims, or its silence would prove nothing.
    assert not work.uncovered(), f"too little of the workload ran in {duration:.0f}s: {work.uncovered()}"
    assert out.rows_checked > 0 and all(out.regions_seen[r] > 0 for r in PUBLIC), out.regions_seen
