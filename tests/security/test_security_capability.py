"""Issue 9 §3: reading rows is one capability.

`data.engine` reads rows only with an `access.sources.SourceAccess` (version, row filter and
visible columns together), and only `access.sources` builds one: `open_source` for a caller,
`unrestricted_access` for the few reads that must see every row, each listed here. These
tests scan the code for any other way to get one, and check that the web's "what would
this key see" preview reads exactly the rows the API gives that key.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tidegate.access import sources
from tidegate.core.principal import Principal
from tidegate.credentials.authenticate import principal_for_key
from tidegate.credentials.models import ApiKey
from tidegate.data import engine
from tidegate.db.engine import session_scope

ROOT = Path(__file__).resolve().parents[2]
SCANNED = [ROOT / "tidegate", ROOT / "bench"]

# Where each name may appear in tidegate/ and bench/ (tests are free to build filters).
ALLOWED = {
    # The capability is built in one module only.
    "SourceAccess(": {"tidegate/access/sources.py"},
    "_granted": {"tidegate/access/sources.py"},
    "_OPENED": {"tidegate/access/sources.py"},
    # Every row, for no caller: each use is a decision, listed here (none outside access yet).
    "unrestricted_access": {"tidegate/access/sources.py"},
    # Filters are made by resolution (policies) and the filter type itself; a filter alone
    # reads nothing, but an unrestricted one is still written out only where it is decided.
    "RowFilter(": {
        "tidegate/core/rowfilter.py",
        "tidegate/access/policies/resolution.py",
        "tidegate/access/sources.py",
        # Measures the live dialect's pushdown itself, handing it a filter as a test would;
        # it reads a scratch table of its own, through no server.
        "bench/live_pages.py",
    },
    "allow_all": set(),
}


def _python_files():
    for top in SCANNED:
        for path in sorted(top.rglob("*.py")):
            yield path.relative_to(ROOT).as_posix(), path


def _uses(tree: ast.AST) -> set[str]:
    """The ALLOWED names used in `tree` (calls by name or attribute; any other mention)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            target = node.func
            ident = target.id if isinstance(target, ast.Name) else getattr(target, "attr", "")
            if f"{ident}(" in ALLOWED:
                found.add(f"{ident}(")
        ident = None
        if isinstance(node, ast.Name):
            ident = node.id
        elif isinstance(node, ast.Attribute):
            ident = node.attr
        elif isinstance(node, ast.alias):
            ident = node.name
        if ident in ALLOWED:
            found.add(ident)
    return found


def test_only_access_sources_builds_the_capability_or_an_unrestricted_filter():
    misplaced = {}
    for name, path in _python_files():
        for used in _uses(ast.parse(path.read_text(), str(path))):
            if name not in ALLOWED[used]:
                misplaced.setdefault(name, []).append(used)
    assert misplaced == {}


def test_the_scan_sees_what_it_looks_for():
    tree = ast.parse(
        "from tidegate.access.sources import _granted, unrestricted_access\n"
        "SourceAccess(source=None)\nRowFilter(clauses=())\nRowFilter.allow_all()\nsources._OPENED\n"
    )
    assert _uses(tree) == set(ALLOWED)


def test_engine_readers_take_the_capability_only():
    import inspect

    for reader in (engine.read_page, engine.page_json, engine.count, engine.stream_csv, engine.stream_parquet):
        assert list(inspect.signature(reader).parameters)[0] == "access"
    for reader in (engine.run_query, engine.distinct_values):
        assert list(inspect.signature(reader).parameters)[0] == "access"


def test_a_source_access_cannot_be_forged():
    from tidegate.core.rowfilter import RowFilter

    with pytest.raises(TypeError):
        sources.SourceAccess(source=None, version=None, permission="owner", row_filter=RowFilter(clauses=()))
    with pytest.raises(TypeError):
        sources.SourceAccess(None, None, "owner", RowFilter(clauses=()), object())


def test_a_copy_with_a_wider_filter_is_refused():
    """`dataclasses.replace` on a real capability, with an allow-all filter: refused, since the
    grant is init-only and not copied; `narrowed` still works and only takes rows away."""
    import dataclasses

    from tidegate.core.rowfilter import Clause, RowFilter

    eu = RowFilter(clauses=(Clause("region", frozenset({"EU"})),))
    access = sources._granted(None, None, "view", eu)
    with pytest.raises(TypeError):
        dataclasses.replace(access, row_filter=RowFilter(clauses=()))
    narrower = access.narrowed(RowFilter(clauses=(Clause("amount", frozenset({"1"})),)))
    assert narrower.row_filter.clauses == eu.clauses + (Clause("amount", frozenset({"1"})),)


ROWS = [
    {"region": "US", "amount": 10},
    {"region": "EU", "amount": 20},
    {"region": "US", "amount": 30},
    {"region": "APAC", "amount": 40},
]


def _api_rows(client, source_id, headers):
    response = client.get(f"/api/v1/sources/{source_id}/data?page_size=100", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["data"]


@pytest.mark.parametrize("key_policy", [None, ["US"]])
def test_the_key_preview_reads_what_the_key_reads_through_the_api(client, org, key_policy):
    """A member filtered to US and EU, their key (optionally narrowed to US by its own
    policy): the admin's preview of the key equals the key's GET /data, row for row."""
    member = org.add_user(f"m{len(key_policy or [])}@example.com")
    admin = org.headers()
    source = client.post("/api/v1/sources", json={"name": "s", "rows": ROWS}, headers=admin).json()["id"]
    client.post(f"/api/v1/sources/{source}/shares", json={"user_id": member, "permission": "view"}, headers=admin)

    def policy(name, values):
        body = {"name": name, "row_filters": [{"column": "region", "values": values}]}
        return client.post("/api/v1/access/policies", json=body, headers=admin).json()["id"]

    client.post(
        f"/api/v1/access/policies/{policy('us-eu', ['US', 'EU'])}/users", json={"user_ids": [member]}, headers=admin
    )
    options = {"access_policy_ids": [policy("own", key_policy)]} if key_policy else {}
    secret = org.key_for(member, scopes=["data:read"], **options)
    through_api = _api_rows(client, source, org.headers(secret))

    with session_scope(org.settings.database_url) as session:
        key = session.query(ApiKey).filter(ApiKey.created_by == member).one()
        viewer = Principal.for_user(org.id, org.admin_id, "admin")
        mine = sources.open_source(session, viewer, source)
        seen = sources.preview_as(session, mine, org.admin_id, principal_for_key(session, key))
        previewed, total = engine.read_page(seen.access, page=1, page_size=100)
    assert previewed == through_api and total == len(through_api)
    expected = {"US"} if key_policy else {"US", "EU"}
    assert {row["region"] for row in through_api} == expected
    assert seen.explanation.effective_access == "filtered" and not seen.narrowed_by_viewer


def test_a_filtered_viewer_previews_no_more_than_their_own_rows(client, org):
    """A viewer filtered to EU previews a user filtered to US and EU: only EU rows."""
    viewer_id = org.add_user("viewer@example.com", role="admin")
    subject = org.add_user("subject@example.com")
    admin = org.headers()
    source = client.post("/api/v1/sources", json={"name": "s", "rows": ROWS}, headers=admin).json()["id"]

    def assign(values, user):
        body = {"name": "-".join(values) + user[-4:], "row_filters": [{"column": "region", "values": values}]}
        pid = client.post("/api/v1/access/policies", json=body, headers=admin).json()["id"]
        client.post(f"/api/v1/access/policies/{pid}/users", json={"user_ids": [user]}, headers=admin)

    assign(["EU"], viewer_id)
    assign(["US", "EU"], subject)
    with session_scope(org.settings.database_url) as session:
        from tidegate.orgs.models import User

        mine = sources.open_source(session, Principal.for_user(org.id, viewer_id, "admin"), source)
        seen = sources.preview_as_user(session, mine, viewer_id, session.get(User, subject))
        rows, _ = engine.read_page(seen.access, page=1, page_size=100)
    assert seen.narrowed_by_viewer
    assert {row["region"] for row in rows} == {"EU"}
    assert seen.explanation.where_clause == "\"region\" IN ('EU', 'US')"  # the subject's own filter
