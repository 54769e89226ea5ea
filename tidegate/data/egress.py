"""Where connectors may connect: the server's egress policy.

`TIDEGATE_CONNECTOR_ALLOW` is a comma-separated list of entries; a connector may connect
only where one of them allows:

- `public`: any public internet address (the default when the variable is unset or empty);
- `10.1.2.3`, `10.0.0.0/8`, `fd00::/8`: that address or network, any port;
- `10.1.2.3:5432`, `10.0.0.0/8:5432`, `[fd00::1]:5432`, `[fd00::/8]:5432`: on that port only;
- `db.internal`, `db.internal:5432`: a connector whose `host` setting is exactly that name
  (case-insensitive), whatever it resolves to.

"Public" excludes loopback, private, link-local, shared (CGNAT), reserved, multicast and
unspecified addresses, including IPv4 addresses embedded in IPv6 (mapped, 6to4, Teredo,
NAT64). tidegate's own database host is never public, and its own database port is allowed
only by an entry that names that port explicitly (e.g. `127.0.0.1:5432`): a connector on
the metadata database would read every tenant.

The host name is resolved once, every address it resolves to must be allowed, and the
connection goes to the checked address (`hostaddr`), so a second DNS answer (rebinding)
cannot redirect it.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from functools import lru_cache

from tidegate.errors import InvalidRequest

ENV = "TIDEGATE_CONNECTOR_ALLOW"
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


@dataclass(frozen=True)
class AllowEntry:
    public: bool = False
    network: IPNetwork | None = None
    host: str | None = None
    port: int | None = None  # None: any port


@dataclass(frozen=True)
class Destination:
    host: str  # as configured (used for TLS and messages)
    port: int
    address: str  # the checked address to connect to


def _port(text: str, entry: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"{ENV}: bad port in {entry!r}")
    return int(text)


def _normal_host(host: str) -> str:
    return host.strip().rstrip(".").lower()


def parse_entry(entry: str) -> AllowEntry:
    entry = entry.strip()
    if entry.lower() == "public":
        return AllowEntry(public=True)
    target, port = entry, None
    if entry.startswith("["):  # [v6] or [v6]:port
        close = entry.find("]")
        if close < 0:
            raise ValueError(f"{ENV}: unclosed '[' in {entry!r}")
        target, rest = entry[1:close], entry[close + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{ENV}: cannot read {entry!r}")
            port = _port(rest[1:], entry)
    elif entry.count(":") == 1:  # v4, CIDR or host name, with a port
        target, port_text = entry.split(":")
        port = _port(port_text, entry)
    try:
        return AllowEntry(network=ipaddress.ip_network(target, strict=False), port=port)
    except ValueError:
        pass
    host = _normal_host(target)
    if not host or any(c in host for c in " /[]@,") or ":" in host:
        raise ValueError(f"{ENV}: {entry!r} is neither an address, a network nor a host name")
    return AllowEntry(host=host, port=port)


def parse_allowlist(raw: str) -> tuple[AllowEntry, ...]:
    entries = tuple(parse_entry(e) for e in raw.split(",") if e.strip())
    return entries or (AllowEntry(public=True),)


_DEFAULT = (AllowEntry(public=True),)
_policy: tuple[AllowEntry, ...] = _DEFAULT


def configure(raw: str) -> None:
    """The allowlist of this process, from Settings.data.connector_allow (the text of
    TIDEGATE_CONNECTOR_ALLOW). A malformed one raises ValueError and leaves nothing allowed:
    fail closed, should the caller go on regardless."""
    global _policy
    _policy = ()
    _policy = parse_allowlist(raw)


def allow_policy() -> tuple[AllowEntry, ...]:
    """The configured entries."""
    return _policy


def _embedded_ipv4(address: IPAddress) -> list[ipaddress.IPv4Address]:
    if address.version != 6:
        return []
    found = [address.ipv4_mapped, address.sixtofour]
    if address.teredo:
        found.extend(address.teredo)
    if address in _NAT64:
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return [a for a in found if a is not None]


def is_public(address: IPAddress) -> bool:
    if not address.is_global or address.is_multicast:
        return False
    return all(is_public(inner) for inner in _embedded_ipv4(address))


def _own_database_url() -> str | None:
    try:
        from tidegate.config import get_settings

        return get_settings().database_url
    except Exception:  # noqa: BLE001 - no settings in this process: no database to protect
        return None


@lru_cache(maxsize=4)
def _own_database_server(url: str) -> tuple[frozenset[IPAddress], int | None]:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return frozenset(), None
    host, port = parsed.host or "localhost", parsed.port or 5432
    try:
        return frozenset(_resolve(host, port)), port
    except OSError:
        return frozenset(), port


def own_database_server() -> tuple[frozenset[IPAddress], int | None]:
    """The addresses and port of tidegate's own (metadata) database server."""
    url = _own_database_url()
    return _own_database_server(url) if url else (frozenset(), None)


def _resolve(host: str, port: int) -> list[IPAddress]:
    addresses: list[IPAddress] = []
    for *_, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        address = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


def _entry_allows(
    entry: AllowEntry, host: str, port: int, address: IPAddress, own: tuple[frozenset[IPAddress], int | None]
) -> bool:
    own_addresses, own_port = own
    if entry.port is not None and entry.port != port:
        return False
    if entry.public:
        return is_public(address) and address not in own_addresses
    if address in own_addresses and port == own_port and entry.port is None:
        return False  # the metadata database only through an entry naming its port
    if entry.host is not None:
        return entry.host == host
    if entry.network is None:
        return False  # (every parsed entry has one of public, host or network)
    return address.version == entry.network.version and address in entry.network


def not_allowed(host: str, port: int) -> InvalidRequest:
    return InvalidRequest(
        "connector_host_not_allowed",
        f"Connectors may not connect to {host}:{port}: the server's egress policy ({ENV}) does not allow it.",
    )


def unreachable(host: str, port: int) -> InvalidRequest:
    # One message for every way a connection can fail (no such name, refused, timed out,
    # no route, refused login): the answer must not tell a port scan anything.
    return InvalidRequest(
        "connector_unreachable",
        f"Could not connect to the database at {host}:{port}; check the host, port, database, user and password.",
    )


def check_destination(host: str, port: int) -> Destination:
    """Resolve `host` once and return the address to connect to, if the policy allows it.

    Every address the name resolves to must be allowed (InvalidRequest
    `connector_host_not_allowed` otherwise); a name that does not resolve is
    `connector_unreachable`. Nothing is connected to here.
    """
    try:
        entries = allow_policy()
    except ValueError:
        raise InvalidRequest(
            "connector_host_not_allowed", f"The server's {ENV} setting cannot be read; no connector may connect."
        ) from None
    name = _normal_host(host)
    try:
        addresses = _resolve(host, port)
    except (OSError, UnicodeError, ValueError):
        raise unreachable(host, port) from None
    if not addresses:
        raise unreachable(host, port)
    own = own_database_server()
    for address in addresses:
        if not any(_entry_allows(entry, name, port, address, own) for entry in entries):
            raise not_allowed(host, port)
    return Destination(host=host, port=port, address=str(addresses[0]))
