"""Column rules over the PostgreSQL wire (issue 14 §1): a hidden column does not exist in the
key's tables nor in its catalog views; a masked column holds only its masks, so SQL over it
cannot get the real values back."""

from __future__ import annotations

import psycopg
import pytest
from columns_world import PEOPLE, SECRETS

from tests.pgwire.conftest import World
from tidegate.access import policies


def column_policy(world: World, rules: list[dict[str, str]], users: list[str]) -> str:
    with world.tx() as s:
        policy = policies.create_policy(s, world.admin, world.org_id, name="columns", column_rules=rules)
        policies.assign_users(s, world.admin, policy, users)
        return policy.id


@pytest.fixture
def analyst(world: World) -> str:
    """A key of a member whose policy hides salary and masks email, on a shared `people`."""
    user = world.user()
    world.source(PEOPLE, "people", shared_with=[user])
    column_policy(world, [{"column": "salary", "action": "hide"}, {"column": "email", "action": "mask"}], [user])
    return world.key(user)


def test_tables_and_catalog_views_omit_hidden_columns(world: World, analyst):
    with world.connect(analyst) as conn:
        cursor = conn.execute("SELECT * FROM people ORDER BY name")
        assert [d.name for d in cursor.description] == ["name", "email", "region", "hired"]
        assert [row[1] for row in cursor.fetchall()] == ["a***", "a***", "b***"]
        listed = conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'people' ORDER BY ordinal_position"
        ).fetchall()
        assert [name for (name,) in listed] == ["name", "email", "region", "hired"]
        attributes = conn.execute(
            "SELECT attname FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON a.attrelid = c.oid "
            "WHERE c.relname = 'people' AND a.attnum > 0"
        ).fetchall()
        assert {name for (name,) in attributes} >= {"name", "email"}
        assert "salary" not in {name for (name,) in attributes}
        with pytest.raises(psycopg.errors.Error) as refused:
            conn.execute("SELECT sum(salary) FROM people")
        assert not any(secret in str(refused.value) for secret in SECRETS)


def test_sql_over_a_masked_column_sees_only_masks(world: World, analyst):
    with world.connect(analyst) as conn:
        assert conn.execute("SELECT count(*) FROM people WHERE email = 'ann@example.com'").fetchone() == (0,)
        assert conn.execute("SELECT count(DISTINCT email) FROM people").fetchone() == (2,)
        assert conn.execute("SELECT min(email), max(email) FROM people").fetchone() == ("a***", "b***")
        rows = conn.execute("SELECT * FROM people").fetchall()
        assert not any(secret in str(rows) for secret in SECRETS)


def test_the_admin_without_rules_reads_every_column(world: World, analyst):
    with world.connect(world.key()) as conn:
        cursor = conn.execute("SELECT email, salary FROM people ORDER BY name")
        assert cursor.fetchall()[0] == ("amy@example.org", 90000)
