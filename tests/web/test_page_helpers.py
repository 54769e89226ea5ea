"""The web pages' small helpers, without a browser: paging both ways, plain words for every
permission, a refusal at its field."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tidegate.core.scopes import SCOPE_GROUPS, Scope
from tidegate.errors import InvalidRequest
from tidegate.web import embeds, policies, security, sources
from tidegate.web.common import CursorPage, FieldRefusal, field_error
from tidegate.web.keys import FIELD_OF_CODE, PLAIN_WORDS, SCOPE_WORDS, ListView, list_view


@dataclass
class Row:
    id: str


def rows(*ids: int) -> list[Row]:
    return [Row(f"r{n:03d}") for n in ids]


def test_cursor_page_both_ways():
    first = CursorPage.of(rows(1, 2, 3, 4), 3, after=None, before=None)  # 3 shown, one more after
    assert [r.id for r in first.rows] == ["r001", "r002", "r003"]
    assert (first.next_after, first.previous_before) == ("r003", None)
    last = CursorPage.of(rows(4), 3, after="r003", before=None)
    assert (last.next_after, last.previous_before) == (None, "r004")
    # Back from r004: the 3 just before it (one more exists before those), and a way forward.
    back = CursorPage.of(rows(0, 1, 2, 3), 3, after=None, before="r004")
    assert [r.id for r in back.rows] == ["r001", "r002", "r003"]
    assert (back.next_after, back.previous_before) == ("r003", "r001")
    start = CursorPage.of(rows(1, 2, 3), 3, after=None, before="r004")
    assert (start.next_after, start.previous_before) == ("r003", None)
    assert CursorPage.of([], 3, after=None, before=None) == CursorPage([], None, None)


def test_every_permission_has_plain_words():
    assert set(SCOPE_WORDS) == set(Scope) == {s for group in SCOPE_GROUPS.values() for s in group}
    assert all(words and ":" not in words for words in SCOPE_WORDS.values())


def test_refusals_go_to_their_field_in_plain_words():
    api_words = InvalidRequest("invalid_rate_limit", "rate_limit_per_minute must be between 1 and 10000.")
    assert field_error(api_words, FIELD_OF_CODE, PLAIN_WORDS) == {
        "field": "rate_limit",
        "message": "Enter a rate limit between 1 and 10,000 requests per minute.",
    }
    other = InvalidRequest("api_key_creation_disabled", "An admin has switched off API key creation.")
    assert field_error(other, FIELD_OF_CODE, PLAIN_WORDS) == {"field": "", "message": other.message}


def test_a_forms_own_refusal_names_its_field_whatever_the_code_table_says():
    refusal = FieldRefusal("values_2", "invalid_row_filters", "Choose or type at least one allowed value.")
    assert field_error(refusal, policies.FIELD_OF_CODE, policies.PLAIN_WORDS) == {
        "field": "values_2",
        "message": "Choose or type at least one allowed value.",
    }
    assert refusal.status == 400 and refusal.code == "invalid_row_filters"


@pytest.mark.parametrize("module", [security, policies, embeds])
def test_plain_words_never_name_a_wire_field(module):
    for words in module.PLAIN_WORDS.values():
        assert "_" not in words, words  # (wire fields: user_rate_limit_per_minute, row_filters[0])
    assert "_" not in "".join(sources.SHARE_WORDS.values())


def test_list_view_query_and_sort_links():
    view = ListView()
    assert view.query() == {} and view.query(page=2) == {"page": "2"}
    assert view.sort_link("name") == {"sort": "name", "order": "asc"}  # names A to Z first
    assert view.sort_link("created") == {"order": "asc"}  # the current sort flips
    assert view.aria_sort("created") == "descending" and view.aria_sort("name") == "none"
    searched = list_view("bi", "revoked", "expires", "asc", 3)
    assert searched.query(page=1) == {"q": "bi", "status": "revoked", "sort": "expires", "order": "asc"}
    for status, sort, order in (("x", None, None), (None, "id", None), (None, None, "up")):
        with pytest.raises(InvalidRequest):
            list_view(None, status, sort, order, 1)
