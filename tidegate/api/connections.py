"""The HTTP protocol of `tidegate serve`: uvicorn's httptools protocol with a bounded cost per
connection (tidegate.limits).

uvicorn only times out a connection that is idle *after* a response (keep-alive): a socket
that never sends a byte, or sends a header line every few seconds (slowloris), or stops in
the middle of a body, stays open for ever. This protocol adds, per connection:

- a header timeout: a request's line and headers must be complete within
  `header_timeout_seconds` of the connection opening (or of the next request's first byte);
  else 408 and close;
- a header size cap (`max_header_bytes`): else 431 and close;
- a body timeout: while a request body is arriving, at most `body_timeout_seconds` of
  silence (time the server itself stops reading, for back-pressure, does not count); and
  once the response was sent early (a 413), the rest of the body is discarded for at most
  that long before the connection is closed;
- a cap on open connections per worker (`max_connections`): one more is answered 503 and
  closed at once, before it can hold a slot.

Idle keep-alive connections: uvicorn's `timeout_keep_alive`, set from the same limits.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from tidegate.limits import get_limits

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}


def _raw_error(status: int, code: str, message: str, extra_headers: bytes = b"") -> bytes:
    """A whole HTTP/1.1 error response in the API's envelope, for when no request is running."""
    body = f'{{"error":{{"type":"invalid_request_error","code":"{code}","message":"{message}"}}}}'.encode()
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"connection: close\r\n%s\r\n" % (status, _REASONS[status], len(body), extra_headers)
    ) + body


def _headers_too_large(limit: int):
    async def app(scope, receive, send):
        body = _raw_error(
            431, "request_header_too_large", f"The request line and headers may be at most {limit:,} bytes."
        ).split(b"\r\n\r\n", 1)[1]
        await send(
            {
                "type": "http.response.start",
                "status": 431,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return app


_refusals = {"count": 0, "logged_at": float("-inf")}
REFUSAL_LOG_INTERVAL = 10.0


def _log_refusal(logger, now: float, cap: int) -> None:
    """One warning per interval however many connections are refused: a flood of
    connections must not become a flood of log lines."""
    _refusals["count"] += 1
    if now - _refusals["logged_at"] >= REFUSAL_LOG_INTERVAL:
        logger.warning(
            "Refused %d connection(s): at most %d open connections per worker (TIDEGATE_MAX_CONNECTIONS).",
            _refusals["count"],
            cap,
        )
        _refusals.update(count=0, logged_at=now)


HEAD, BODY, IDLE = "head", "body", "idle"  # what the connection is waiting for from the client


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """One timer per connection, re-armed only when it fires: a request costs a few
    attribute writes, not a timer of its own (the data page path is benchmarked)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        limits = get_limits()
        self._header_timeout = limits.header_timeout_seconds
        self._body_timeout = limits.body_timeout_seconds
        self._max_connections = limits.max_connections
        self._max_header_bytes = limits.max_header_bytes
        self._timer: asyncio.TimerHandle | None = None
        self._phase = HEAD
        self._since = 0.0  # HEAD: when the head began; BODY: the last body byte (or headers' end)
        self._head_bytes = 0  # received while reading a head (headers that never end)
        self._linger_until: float | None = None  # a response went out before the body was in

    # -- connection ------------------------------------------------------------------

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self._max_connections:
            _log_refusal(self.logger, self.loop.time(), self._max_connections)
            self.transport.write(
                _raw_error(
                    503,
                    "too_many_connections",
                    "The server has too many open connections; retry shortly.",
                    b"retry-after: 1\r\n",
                )
            )
            self.transport.close()
            return
        self._since = self.loop.time()
        self._timer = self.loop.call_later(self._header_timeout, self._check)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._phase is IDLE:  # any byte after a request starts the next head's clock
            self._phase, self._since, self._head_bytes = HEAD, self.loop.time(), 0
        if self._phase is HEAD:
            self._head_bytes += len(data)
        else:
            self._since = self.loop.time()
        super().data_received(data)
        if self._phase is HEAD and self._head_bytes > self._max_header_bytes and not self.transport.is_closing():
            self._refuse(
                431,
                "request_header_too_large",
                f"The request line and headers may be at most {self._max_header_bytes:,} bytes.",
            )

    # -- parser callbacks -------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._phase is IDLE:  # the next request, pipelined behind the end of a body
            self._phase, self._since, self._head_bytes = HEAD, self.loop.time(), 0

    def on_headers_complete(self) -> None:
        self._phase, self._since = BODY, self.loop.time()
        self._linger_until = None
        # Headers that arrived whole, in one read, past the cap. Measured only when more
        # than the cap arrived while reading the head (the common request skips the sum).
        too_large = self._head_bytes > self._max_header_bytes and self._head_size() > self._max_header_bytes
        self._head_bytes = 0
        if too_large:
            app, self.app = self.app, _headers_too_large(self._max_header_bytes)
            try:
                super().on_headers_complete()
            finally:
                self.app = app
        else:
            super().on_headers_complete()

    def _head_size(self) -> int:
        return len(self.url) + sum(len(name) + len(value) for name, value in self.headers)

    def on_message_complete(self) -> None:
        self._phase = IDLE  # idle keep-alive connections: uvicorn's timeout_keep_alive
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._phase is BODY and not self.transport.is_closing():
            # Answered before the body was in (a 413): discard the rest, but not for ever.
            self._linger_until = self.loop.time() + self._body_timeout

    # -- the timer ----------------------------------------------------------------------

    def _check(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        now = self.loop.time()
        if self._phase is HEAD:
            due = self._since + self._header_timeout
            if now >= due:
                self._refuse(
                    408,
                    "request_timeout",
                    f"The request line and headers must arrive within {self._header_timeout:g} s.",
                )
                return
        elif self._phase is BODY:
            if self.flow.read_paused:  # the application is not reading yet: not the client's silence
                self._since = now
            due = min(self._since + self._body_timeout, self._linger_until or float("inf"))
            if now >= due:
                self.logger.info("Closed a connection whose request body stalled (%g s).", self._body_timeout)
                self._close()
                return
        else:
            due = now + self._header_timeout  # idle: check again later
        self._timer = self.loop.call_later(due - now, self._check)

    # -- closing ----------------------------------------------------------------------

    def _refuse(self, status: int, code: str, message: str) -> None:
        """Answer `status` and close; the error is written only if no response is under way."""
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(_raw_error(status, code, message))
        self._close()

    def _close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.cycle is not None and not self.cycle.response_complete:
            # As connection_lost would: the application's receive() answers http.disconnect
            # and whatever it still sends is dropped.
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        self.transport.close()
