"""HTTP plumbing of the admin service: routes, JSON, authentication, body bound.

One leaf resource (L{AdminResource}) answers every path from a route table,
so the OpenAPI document can be checked against the same table, and the
static dashboard files are served from a fixed list (no directory walking).
"""

from __future__ import annotations

import base64
import hmac
import inspect
import ipaddress
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from io import BytesIO
from typing import Any
from urllib.parse import unquote

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.resource import Resource

from robustmq.config import HTTPSettings

JSON_TYPE = b"application/json; charset=utf-8"


class APIError(Exception):
    """An error answered as C{{"error": {"code": ..., "message": ...}}} with that HTTP status."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class RawResponse:
    """A non-JSON answer (metrics text, static files)."""

    def __init__(self, body: bytes, contentType: bytes, code: int = 200) -> None:
        self.body = body
        self.contentType = contentType
        self.code = code


@dataclass(frozen=True)
class Route:
    """One endpoint: method + path template (OpenAPI syntax) → handler.

    A C{{name}} segment matches one path segment; with C{greedy} the last
    parameter takes the rest of the path, slashes included (retained topics).
    Handlers get the request and the decoded path parameters and return a
    JSON-able value or a L{RawResponse}, or raise L{APIError}; a handler that
    must wait returns a L{Deferred} (or a coroutine) of one of those, which may
    fail with L{APIError}.
    """

    method: str
    path: str
    handler: Callable[[server.Request, dict[str, str]], Any]
    auth: bool = True
    greedy: bool = False
    code: int = 200

    def compile(self) -> re.Pattern[str]:
        """The regular expression that matches this route's raw (undecoded) path."""
        parts = re.split(r"(\{[a-zA-Z_]+\})", self.path)
        out = []
        for i, part in enumerate(parts):
            if part.startswith("{"):
                last = i == len(parts) - 1 or (i == len(parts) - 2 and not parts[-1])
                body = ".+" if (self.greedy and last) else "[^/]+"
                out.append(f"(?P<{part[1:-1]}>{body})")
            else:
                out.append(re.escape(part))
        return re.compile("^" + "".join(out) + "$")


def queryArgs(request: server.Request) -> dict[str, str]:
    """The query string as a dict (last value wins), decoded as UTF-8."""
    out: dict[str, str] = {}
    for key, values in (request.args or {}).items():
        if values:
            out[key.decode("utf-8", "replace")] = values[-1].decode("utf-8", "replace")
    return out


def jsonBody(request: server.Request) -> Any:
    """The request body parsed as JSON; 415 unless sent as application/json.

    Requiring the JSON content type also keeps cross-site HTML forms from
    posting here: a browser preflights such requests and we send no CORS headers.
    """
    ctype = (request.getHeader("content-type") or "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise APIError(415, "send the body as Content-Type: application/json")
    assert request.content is not None
    raw = request.content.read()
    try:
        return json.loads(raw or b"null")
    except ValueError as e:
        raise APIError(400, f"body is not valid JSON: {e}") from None


def _isLoopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Authenticator:
    """Checks C{Authorization} headers against the C{[http]} settings."""

    def __init__(self, settings: HTTPSettings) -> None:
        self.settings = settings

    @property
    def challenge(self) -> bytes:
        """The C{WWW-Authenticate} value sent with 401."""
        scheme = "Basic" if self.settings.auth == "basic" else "Bearer"
        return f'{scheme} realm="robustmq"'.encode()

    def allowed(self, request: server.Request) -> bool:
        """True if C{request} may use authenticated routes."""
        s = self.settings
        if s.auth == "none":
            return True
        if s.loopback_exempt and _isLoopback(getattr(request.getClientAddress(), "host", "")):
            return True
        header = (request.getHeader("authorization") or "").strip()
        scheme, _, value = header.partition(" ")
        value = value.strip()
        if s.auth == "token":
            return scheme.lower() == "bearer" and hmac.compare_digest(
                value.encode(), s.token.encode()
            )
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except ValueError:
            return False
        okUser = hmac.compare_digest(user.encode(), s.username.encode())
        okPassword = hmac.compare_digest(password.encode(), s.password.encode())
        return okUser and okPassword


#: The dashboard's files (served at "/" + name; "index.html" also at "/").
STATIC_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".svg": b"image/svg+xml",
}


def loadStatic() -> dict[str, RawResponse]:
    """Read the dashboard's files from the package once, at start.

    The files of C{static/} are served at C{/NAME}, those of C{static/vendor/}
    (third-party libraries, see its README) at C{/vendor/NAME}.
    """
    out: dict[str, RawResponse] = {}
    folder = resources.files("robustmq.admin") / "static"
    for prefix, where in (("/", folder), ("/vendor/", folder / "vendor")):
        if not where.is_dir():
            continue
        for entry in where.iterdir():
            suffix = "." + entry.name.rsplit(".", 1)[-1]
            if entry.is_file() and suffix in STATIC_TYPES:
                out[prefix + entry.name] = RawResponse(entry.read_bytes(), STATIC_TYPES[suffix])
    if "/index.html" in out:
        out["/"] = out["/index.html"]
    return out


class AdminResource(Resource):
    """Answers every admin request from the route table and the static files."""

    isLeaf = True
    log = Logger()

    def __init__(
        self, routes: list[Route], auth: Authenticator, static: Mapping[str, RawResponse]
    ) -> None:
        super().__init__()
        self.routes = [(route, route.compile()) for route in routes]
        self.auth = auth
        self.static = static

    def render(self, request: server.Request) -> bytes:
        method = (request.method or b"GET").decode("ascii", "replace").upper()
        path = (request.path or b"/").decode("latin-1")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-content-type-options", b"nosniff")
        try:
            result, code = self._dispatch(request, method, path)
        except Exception:
            result, code = self._error(request, Failure(), method, path)
        if inspect.iscoroutine(result):
            result = defer.ensureDeferred(result)
        if isinstance(result, defer.Deferred):
            self._renderLater(request, result, code, method, path)
            return server.NOT_DONE_YET
        return self._body(request, result, code, method)

    def _error(
        self, request: server.Request, failure: Failure, method: str, path: str
    ) -> tuple[Any, int]:
        """The JSON error answer for a handler's failure (logged unless an L{APIError})."""
        e = failure.value
        if isinstance(e, APIError):
            if e.code == 401:
                request.setHeader(b"www-authenticate", self.auth.challenge)
            return {"error": {"code": e.code, "message": e.message}}, e.code
        self.log.failure(
            "admin API request {method} {path} failed", failure, method=method, path=path
        )
        return {"error": {"code": 500, "message": "internal error (see node log)"}}, 500

    def _renderLater(
        self, request: server.Request, d: defer.Deferred[Any], code: int, method: str, path: str
    ) -> None:
        """Answer once C{d} fires; cancel it if the client goes away first."""
        gone: list[bool] = []

        def lost(reason: Failure) -> None:
            gone.append(True)
            d.cancel()

        def answer(result: Any, code: int) -> None:
            if gone:
                return
            try:
                body = self._body(request, result, code, method)
            except Exception:
                body = self._body(request, *self._error(request, Failure(), method, path), method)
            request.write(body)
            request.finish()

        def failed(failure: Failure) -> None:
            if not gone:
                answer(*self._error(request, failure, method, path))

        request.notifyFinish().addErrback(lost)
        d.addCallbacks(answer, failed, callbackArgs=(code,))

    def _body(self, request: server.Request, result: Any, code: int, method: str) -> bytes:
        """Set the status and headers for C{result}; returns the body to send."""
        if isinstance(result, RawResponse):
            request.setResponseCode(result.code)
            request.setHeader(b"content-type", result.contentType)
            body = result.body
        else:
            request.setResponseCode(code)
            request.setHeader(b"content-type", JSON_TYPE)
            body = json.dumps(result, separators=(",", ":")).encode()
        if method == "HEAD":
            request.setHeader(b"content-length", str(len(body)).encode())
            return b""
        return body

    def _dispatch(self, request: server.Request, method: str, path: str) -> tuple[Any, int]:
        allowed: list[str] = []
        for route, pattern in self.routes:
            m = pattern.match(path)
            if m is None:
                continue
            if route.method != method and not (method == "HEAD" and route.method == "GET"):
                allowed.append(route.method)
                continue
            if route.auth and not self.auth.allowed(request):
                raise APIError(401, "authentication required (see [http] auth)")
            try:
                params = {k: unquote(v, errors="strict") for k, v in m.groupdict().items()}
            except UnicodeDecodeError:
                raise APIError(400, "path parameter is not valid percent-encoded UTF-8") from None
            return route.handler(request, params), route.code
        if allowed:
            request.setHeader(b"allow", ", ".join(sorted(set(allowed))).encode())
            raise APIError(405, f"{method} is not allowed on {path}")
        if method in ("GET", "HEAD") and path in self.static:
            return self.static[path], 200
        raise APIError(404, f"no such endpoint: {path}")


class BoundedRequest(server.Request):
    """A request that refuses a body larger than the site's C{maxBodyBytes} with 413.

    The refusal is written as soon as the length is known (or, for a chunked
    body, as soon as it passes the bound) and the connection is closed, so the
    rest of the body is never buffered.
    """

    _refused = False
    _bodyBytes = 0

    def _limit(self) -> int:
        return int(getattr(self.channel.site, "maxBodyBytes", 1 << 20))

    def _refuse(self) -> None:
        self._refused = True
        body = json.dumps(
            {"error": {"code": 413, "message": f"request body over {self._limit()} bytes"}}
        ).encode()
        transport = self.channel.transport
        transport.write(
            b"HTTP/1.1 413 Payload Too Large\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        self.channel.loseConnection()

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self._limit():
            self.content = BytesIO()
            self._refuse()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._bodyBytes += len(data)
        if self._bodyBytes > self._limit():
            self._refuse()
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._refused:
            return
        super().requestReceived(command, path, version)


class AdminSite(server.Site):
    """A C{Site} whose requests are bounded by C{[http] max_body_bytes}; no access log noise."""

    requestFactory = BoundedRequest

    def __init__(self, resource: Resource, maxBodyBytes: int) -> None:
        super().__init__(resource)
        self.maxBodyBytes = maxBodyBytes
        self.noisy = False

    def log(self, request: server.Request) -> None:
        """Access logging is left to a reverse proxy; errors are logged by the resource."""


__all__ = [
    "APIError",
    "AdminResource",
    "AdminSite",
    "Authenticator",
    "BoundedRequest",
    "RawResponse",
    "Route",
    "jsonBody",
    "loadStatic",
    "queryArgs",
]
