"""Browser sign-in sessions and CSRF tokens.

The cookie holds a random 256-bit token; the table holds HMAC-SHA256(session key, token).
CSRF tokens are synchronizer tokens derived from the session: HMAC(session key, "csrf" +
token). Every state-changing form carries one and the server recomputes and compares it;
a page from another site can neither read it nor compute it. Before sign-in, a
`tidegate_login` cookie plays the session's part, so the sign-in form is protected too; the
server only ever accepts one it issued itself (random value, issue time, HMAC under the
session key; at most LOGIN_COOKIE_TTL old): a value planted in the browser by someone else
is replaced, never adopted, and a form posted with one is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from tidegate.access.authorize import Action, allowed
from tidegate.core.principal import Principal
from tidegate.db.base import utcnow
from tidegate.ids import new_id
from tidegate.orgs.models import Organization, User
from tidegate.web.models import WebSession

SESSION_COOKIE = "tidegate_session"
LOGIN_COOKIE = "tidegate_login"
# A session ends after this long without a request, and in any case after SESSION_LIFETIME.
IDLE_TIMEOUT = timedelta(hours=2)
SESSION_LIFETIME = timedelta(hours=12)
TOUCH_EVERY = timedelta(minutes=1)  # last_seen_at is written at most this often


def new_token() -> str:
    return secrets.token_urlsafe(32)


def _mac(key: bytes, purpose: str, value: str) -> str:
    return hmac.new(key, f"{purpose}\0{value}".encode(), hashlib.sha256).hexdigest()


def token_hash(key: bytes, token: str) -> str:
    return _mac(key, "web-session", token)


def csrf_token(key: bytes, token: str, purpose: str = "csrf") -> str:
    return _mac(key, purpose, token)


def csrf_valid(key: bytes, token: str | None, submitted: object, purpose: str = "csrf") -> bool:
    if not token or not isinstance(submitted, str) or not submitted:
        return False
    return hmac.compare_digest(csrf_token(key, token, purpose), submitted)


def sign(key: bytes, purpose: str, payload: str) -> str:
    return _mac(key, purpose, payload)


LOGIN_COOKIE_TTL = 3600  # seconds


def new_login_cookie(key: bytes) -> str:
    payload = f"{new_token()}.{int(time.time())}"
    return f"{payload}.{_mac(key, 'login-cookie', payload)}"


def login_cookie_valid(key: bytes, value: str | None) -> bool:
    """Issued by this server (with this session key) less than LOGIN_COOKIE_TTL ago."""
    if not value or len(value) > 200 or value.count(".") != 2:
        return False
    payload, _, mac = value.rpartition(".")
    issued = payload.rpartition(".")[2]
    if not hmac.compare_digest(_mac(key, "login-cookie", payload), mac) or not issued.isdigit():
        return False
    return 0 <= time.time() - int(issued) < LOGIN_COOKIE_TTL


@dataclass(frozen=True)
class UserInfo:
    id: str
    org_id: str
    email: str
    role: str


@dataclass(frozen=True)
class OrgInfo:
    id: str
    name: str
    api_key_creation_enabled: bool


@dataclass
class Viewer:
    """The signed-in user of one page request, read fresh from the database.

    Plain snapshots rather than ORM rows, so that an error page can still show them after
    the request's transaction was rolled back.
    """

    user: UserInfo
    org: OrgInfo
    principal: Principal
    session_id: str
    csrf: str

    def can(self, action: Action) -> bool:
        return allowed(self.principal, action)


def start_session(session: Session, key: bytes, user: User, *, ip: str | None, user_agent: str | None) -> str:
    """A new session for `user`; returns the token for the cookie (never stored)."""
    now = utcnow()
    session.execute(delete(WebSession).where(WebSession.expires_at <= now))  # housekeeping
    token = new_token()
    session.add(
        WebSession(
            id=new_id("wss"),
            token_hash=token_hash(key, token),
            user_id=user.id,
            org_id=user.org_id,
            created_at=now,
            last_seen_at=now,
            expires_at=now + SESSION_LIFETIME,
            ip_address=ip,
            user_agent=(user_agent or "")[:500] or None,
        )
    )
    session.flush()
    return token


def load_viewer(session: Session, key: bytes, token: str | None) -> Viewer | None:
    """The session's user with their permissions as of now, or None if it is not valid."""
    if not token or len(token) > 100:
        return None
    row = session.scalar(select(WebSession).where(WebSession.token_hash == token_hash(key, token)))
    if row is None:
        return None
    now = utcnow()
    user = session.get(User, row.user_id)
    if (
        row.expires_at <= now
        or row.last_seen_at + IDLE_TIMEOUT <= now
        or user is None
        or not user.is_active
        or user.org_id != row.org_id
    ):
        session.delete(row)
        return None
    if now - row.last_seen_at >= TOUCH_EVERY:
        row.last_seen_at = now
    org = session.get(Organization, user.org_id)
    if org is None:  # (a user row always has its organization; never sign in without one)
        session.delete(row)
        return None
    principal = Principal.for_user(org.id, user.id, user.role)
    return Viewer(
        user=UserInfo(id=user.id, org_id=user.org_id, email=user.email, role=user.role),
        org=OrgInfo(id=org.id, name=org.name, api_key_creation_enabled=org.api_key_creation_enabled),
        principal=principal,
        session_id=row.id,
        csrf=csrf_token(key, token),
    )


def end_session(session: Session, key: bytes, token: str | None) -> WebSession | None:
    if not token or len(token) > 100:
        return None
    row = session.scalar(select(WebSession).where(WebSession.token_hash == token_hash(key, token)))
    if row is not None:
        session.delete(row)
    return row
