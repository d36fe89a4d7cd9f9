"""The NLG server's HTTP connections: Sanic's HTTP/1.1 protocol, bounded against slow and
hostile clients.

Two things in Sanic 21.12 are fixed here:

- **Timeouts that a trickle resets.** Sanic restarts its clock on every chunk it receives, so
  ``REQUEST_TIMEOUT`` only bounds a pause: a client that sends a byte a second holds a
  connection forever (slow-loris), with its headers or with its body. Here a request is timed
  from its first byte: the head and the body must both have arrived within
  ``REQUEST_TIMEOUT`` (else 408), and the answer must be sent within ``RESPONSE_TIMEOUT``.
- **A refused body resets the connection.** Sanic answers 413 to a body over
  ``REQUEST_MAX_SIZE`` and closes the socket while the client is still sending it; the kernel
  answers the unread bytes with a reset, and the client sees "connection reset" instead of
  the 413. Here a connection whose request body was not read ends with a lingering close (as
  nginx's): the answer is sent, then FIN, and what the client still sends is read and
  dropped, up to ``LINGER_BYTES`` or ``LINGER_SECONDS``, before the socket is closed.

``GuardedSanic`` serves with this protocol, however its servers are started (``app.run``,
``app.create_server``). ``AccessLine`` writes Sanic's access-log records as text.
"""

from __future__ import annotations

import logging
import re
from asyncio import Protocol
from time import monotonic
from typing import Any

from sanic import Sanic
from sanic.exceptions import RequestTimeout
from sanic.http import Http, Stage
from sanic.server.protocols.http_protocol import HttpProtocol


class GuardedHttpProtocol(HttpProtocol):
    """Sanic's ``HttpProtocol`` with whole-request deadlines and a lingering close."""

    __slots__ = ("_last_http", "_linger_bytes_left")  # Sanic's protocols have no __dict__

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._last_http: Http | None = None  # Sanic drops ``_http`` before it closes
        self._linger_bytes_left = 0

    def _setup_connection(self) -> None:
        super()._setup_connection()
        self._http = self._last_http = _Http(self)  # in place of Sanic's own

    def _receiving(self) -> bool:
        """Whether a request's head or body is still arriving (or unread)."""
        http = getattr(self, "_http", None)  # unset until the connection's task has started
        return http is not None and (http.stage is Stage.REQUEST or bool(http.request_body))

    def data_received(self, data: bytes) -> None:
        if self._linger_bytes_left > 0:
            self._linger_bytes_left -= len(data)
            if self._linger_bytes_left <= 0:
                super().close()
            return
        started, receiving = self._time, self._receiving()
        super().data_received(data)
        if receiving:
            self._time = started  # the request's clock runs from its first byte

    def check_timeouts(self) -> None:
        http = self._http
        if (
            self._task is not None
            and http is not None
            and http.stage is Stage.HANDLER
            and http.request_body
            and monotonic() - self._time > self.request_timeout
        ):
            http.exception = RequestTimeout("Request Timeout")  # the body came too slowly
            http.request_body = None  # not worth reading on: answer 408, then close
            self._task.cancel()
            return
        super().check_timeouts()

    def close(self, timeout: float | None = None) -> None:
        transport, http = self.transport, self._last_http
        if (
            self._linger_bytes_left <= 0
            and transport is not None
            and not transport.is_closing()
            and transport.can_write_eof()
            and http is not None
            and http.request_body  # the client may still be sending it
        ):
            self._linger_bytes_left = self.app.config.LINGER_BYTES
            transport.write_eof()  # the answer is complete: the client can read it
            transport.resume_reading()
            self.loop.call_later(self.app.config.LINGER_SECONDS, super().close)
            return
        super().close(timeout)


class _Http(Http):
    """Sanic's HTTP/1.1 request reader, answering a request line that is not UTF-8 with 400
    (Sanic's own fails to build the request for its error answer and drops the connection
    with a traceback)."""

    def create_empty_request(self) -> None:
        if self.url is not None:
            try:
                self.url.encode()
            except UnicodeError:
                self.url = None
        super().create_empty_request()


class GuardedSanic(Sanic):
    """A Sanic app whose servers use ``GuardedHttpProtocol`` and a listen backlog of
    ``BACKLOG`` unless told otherwise. Sanic's backlog of 100 overflows when a burst of
    connections arrives (a thousand idle ones), and a client whose connection attempt is
    dropped waits a second for the kernel to retry it."""

    BACKLOG = 1024

    def run(self, *args: Any, protocol: type[Protocol] | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("backlog", self.BACKLOG)
        super().run(*args, protocol=protocol or GuardedHttpProtocol, **kwargs)

    async def create_server(
        self, *args: Any, protocol: type[Protocol] | None = None, **kwargs: Any
    ) -> Any:
        kwargs.setdefault("backlog", self.BACKLOG)
        return await super().create_server(
            *args, protocol=protocol or GuardedHttpProtocol, **kwargs
        )


class AccessLine(logging.Filter):
    """Makes Sanic's access-log records readable with any formatter: Sanic leaves the message
    empty and puts the request in ``extra`` fields that only its own format prints. The line
    is ``client "METHOD URL" status bytes``, with the value of ``token=`` hidden and
    non-printable characters escaped."""

    TOKEN = re.compile(r"(?i)([?&]token=)[^&#\s]*")

    def filter(self, record: logging.LogRecord) -> bool:
        fields = record.__dict__
        if not record.msg and "request" in fields:
            request = printable(self.TOKEN.sub(r"\1<hidden>", str(fields["request"])))
            line = f'{fields.get("host")} "{request}" {fields.get("status")} {fields.get("byte")}'
            record.msg, record.args = line, ()
        return True


def printable(text: str, limit: int = 300) -> str:
    """``text`` for a log line: at most ``limit`` characters, control characters, lone
    surrogates and other non-printable ones escaped (a log line stays one valid line)."""
    if len(text) > limit:
        text = f"{text[:limit]}... ({len(text)} characters)"
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)
