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
    body = ('{"error":{"type":"invalid_request_error","code":"%s","message":"%s"}}' % (code, message)).encode()
    return (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n%s\r\n" % (status, _REASONS[status], len(body), extra_headers)) + body


def _headers_too_large(limit: int):
    async def app(scope, receive, send):
        body = _raw_error(431, "request_header_too_large",
                          f"The request line and headers may be at most {limit:,} bytes.").split(b"\r\n\r\n", 1)[1]
        await send({"type": "http.response.start", "status": 431, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    return app


_refusals = {"count": 0, "logged_at": float("-inf")}
REFUSAL_LOG_INTERVAL = 10.0


def _log_refusal(logger, now: float, cap: int) -> None:
    """One warning per interval however many connections are refused: a flood of
    connections must not become a flood of log lines."""
    _refusals["count"] += 1
    if now - _refusals["logged_at"] >= REFUSAL_LOG_INTERVAL:
        logger.warning("Refused %d connection(s): at most %d open connections per worker "
                       "(TIDEGATE_MAX_CONNECTIONS).", _refusals["count"], cap)
        _refusals.update(count=0, logged_at=now)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        limits = get_limits()
        self._header_timeout = limits.header_timeout_seconds
        self._body_timeout = limits.body_timeout_seconds
        self._max_connections = limits.max_connections
        self._max_header_bytes = limits.max_header_bytes
        self._timer: asyncio.TimerHandle | None = None
        self._reading_head = True  # from a request's first byte (or the connection) to its headers' end
        self._head_bytes = 0  # received while reading a head (headers that never end)
        self._head_parsed = 0  # of the request line and headers parsed (headers that arrive whole)
        self._body_active_at = 0.0  # loop time of the last body byte (or of the headers' end)
        self._linger_until: float | None = None  # a response went out before the body was in

    # -- connection ------------------------------------------------------------------

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self._max_connections:
            _log_refusal(self.logger, self.loop.time(), self._max_connections)
            self.transport.write(_raw_error(503, "too_many_connections",
                                            "The server has too many open connections; retry shortly.",
                                            b"retry-after: 1\r\n"))
            self.transport.close()
            return
        self._arm(self._header_timeout, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._reading_head:
            self._head_bytes += len(data)
        else:
            self._body_active_at = self.loop.time()
        super().data_received(data)
        if self._reading_head and self._head_bytes > self._max_header_bytes and not self.transport.is_closing():
            self._refuse_idle(431, "request_header_too_large",
                              f"The request line and headers may be at most {self._max_header_bytes:,} bytes.")

    # -- parser callbacks -------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_head = True
        if self._timer is None:  # the next request of a keep-alive connection
            self._arm(self._header_timeout, self._head_timed_out)

    def on_url(self, url: bytes) -> None:
        self._head_parsed += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_parsed += len(name) + len(value)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._head_bytes = 0
        self._disarm()
        if self._head_parsed > self._max_header_bytes:  # arrived whole, in one read
            app, self.app = self.app, _headers_too_large(self._max_header_bytes)
            try:
                super().on_headers_complete()
            finally:
                self.app = app
        else:
            super().on_headers_complete()
        self._head_parsed = 0
        self._body_active_at = self.loop.time()
        self._linger_until = None
        self._arm(self._body_timeout, self._body_check)  # disarmed when the message is complete

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.cycle is not None and self.cycle.more_body and not self.transport.is_closing():
            # Answered before the body was in (413): discard the rest, but not for ever.
            self._linger_until = self.loop.time() + self._body_timeout

    # -- timers -----------------------------------------------------------------------

    def _arm(self, delay: float, callback) -> None:
        self._disarm()
        self._timer = self.loop.call_later(delay, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_timed_out(self) -> None:
        self._timer = None
        if self._reading_head and not self.transport.is_closing():
            self._refuse_idle(408, "request_timeout",
                              f"The request line and headers must arrive within {self._header_timeout:g} s.")

    def _body_check(self) -> None:
        self._timer = None
        if self.transport.is_closing() or self.cycle is None or not self.cycle.more_body:
            return
        now = self.loop.time()
        if self.flow.read_paused:  # the application is not reading yet: not the client's silence
            self._body_active_at = now
        due = min(self._body_active_at + self._body_timeout, self._linger_until or float("inf"))
        if now < due:
            self._timer = self.loop.call_later(due - now, self._body_check)
            return
        self.logger.info("Closed a connection whose request body stalled (%g s).", self._body_timeout)
        self._close_during_request()

    # -- closing ----------------------------------------------------------------------

    def _refuse_idle(self, status: int, code: str, message: str) -> None:
        """Answer `status` and close; the error is written only if no response is under way."""
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(_raw_error(status, code, message))
        self._close_during_request()

    def _close_during_request(self) -> None:
        self._disarm()
        if self.cycle is not None and not self.cycle.response_complete:
            # As connection_lost would: the application's receive() answers http.disconnect
            # and whatever it still sends is dropped.
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        self.transport.close()
