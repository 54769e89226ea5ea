"""Ids inside sentences, shown as names, linked.

The access layer explains a preview in sentences written for the API ("policy pol_… ('US
only') applies: region IN ('US')"). A page shows those ids as what they name: a policy, a
group, a source, a key by its name and a person by their email, linked to their page when the
viewer may open it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from markupsafe import Markup, escape
from sqlalchemy import select

from tidegate.access.models import Group, Policy
from tidegate.catalog.models import Source
from tidegate.core.scopes import Scope
from tidegate.credentials.models import ApiKey
from tidegate.orgs.models import User
from tidegate.web.sessions import Viewer

# An id, and the quoted name the access layer sometimes writes after it: "pol_… ('US only')".
MENTION = re.compile(r"\b(pol|grp|src|key|user)_[0-9a-z]{26}\b(?: \((?:'[^']*'|\"[^\"]*\")\))?")
# prefix -> (model, its name column, its page or None, the scope the page needs)
KINDS: dict[str, tuple[Any, Any, str | None, Scope | None]] = {
    "pol": (Policy, Policy.name, "/settings/security/access-policies/{}", Scope.POLICIES_READ),
    "grp": (Group, Group.name, "/settings/security/groups/{}", Scope.POLICIES_READ),
    "src": (Source, Source.name, "/sources/{}", Scope.SOURCES_READ),
    "key": (ApiKey, ApiKey.name, "/audit/keys/{}", Scope.AUDIT_READ),
    "user": (User, User.email, None, None),
}


def _names(session, org_id: str, ids: set[str]) -> dict[str, str]:
    by_kind: dict[str, list[str]] = {}
    for id_ in ids:
        by_kind.setdefault(id_.split("_", 1)[0], []).append(id_)
    found: dict[str, str] = {}
    for kind, wanted in by_kind.items():
        model, name, _, _ = KINDS[kind]
        query = select(model.id, name).where(model.org_id == org_id, model.id.in_(sorted(wanted)))
        found.update({id_: str(label) for id_, label in session.execute(query).all()})
    return found


def linked(session, viewer: Viewer, sentences: Iterable[str]) -> list[str]:
    """Each sentence as safe markup (Markup, a str the templates do not escape again): every
    id of the organization replaced by its name (a link where the viewer may open that page);
    unknown ids stay as they are."""
    sentences = list(sentences)
    ids = {m.group(0).split(" ", 1)[0] for s in sentences for m in MENTION.finditer(s)}
    names = _names(session, viewer.org.id, ids) if ids else {}

    def one(sentence: str) -> Markup:
        out, pos = [], 0
        for match in MENTION.finditer(sentence):
            id_ = match.group(0).split(" ", 1)[0]
            out.append(escape(sentence[pos : match.start()]))
            pos = match.end()
            if id_ not in names:
                out.append(escape(match.group(0)))
                continue
            _, _, page, scope = KINDS[match.group(1)]
            label = escape(f"“{names[id_]}”" if match.group(1) != "user" else names[id_])
            if page and (scope is None or viewer.can(scope)):
                out.append(Markup('<a href="{}" title="{}">{}</a>').format(page.format(id_), id_, label))
            else:
                out.append(Markup('<span title="{}">{}</span>').format(id_, label))
        out.append(escape(sentence[pos:]))
        return Markup("").join(out)

    return [one(s) for s in sentences]
