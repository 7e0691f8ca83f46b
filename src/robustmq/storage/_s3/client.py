"""
A small, non-blocking S3 client: botocore signs, treq (Twisted's HTTP client) sends.

Only what the C{s3} store needs: PUT (optionally conditional), GET (optionally
a byte range), DELETE, ListObjectsV2 and bucket creation.  Every request runs
on the reactor through one persistent L{HTTPConnectionPool}; the only calls
that may block (resolving and refreshing credentials from the standard AWS
chain, which can read files or ask an instance-metadata endpoint) run in
Twisted's thread pool.  Request signing (SigV4, including the SHA-256 of the
body) is CPU work on the reactor.
"""

from __future__ import annotations

import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Any

import treq
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.web.client import HTTPConnectionPool

__all__ = [
    "NotFound",
    "PreconditionFailed",
    "S3Client",
    "S3Error",
    "S3Unavailable",
    "resolveCredentials",
]

_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


class S3Error(Exception):
    """The object store answered with an error status (not a transient one)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"S3 answered {status}: {message}")
        self.status = status


class NotFound(S3Error):
    """404: no such key (or bucket)."""


class PreconditionFailed(S3Error):
    """412: a conditional write found the key taken (C{If-None-Match: *})."""


class S3Unavailable(Exception):
    """The request got no answer (timeout, refused, reset) or a retryable 5xx/429."""


def resolveCredentials() -> Any:
    """The standard AWS credential chain (env, shared files, instance roles); may block."""
    import botocore.session

    creds = botocore.session.Session().get_credentials()
    if creds is None:
        raise S3Error(
            0,
            "no AWS credentials: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a shared "
            "credentials file or an instance role",
        )
    return creds


class S3Client:
    """Requests to one bucket of one S3-compatible endpoint.

    @param endpoint: C{http(s)://host:port} of an S3-compatible server (path-style
        requests), or empty for AWS itself (virtual-hosted requests to
        C{<bucket>.s3.<region>.amazonaws.com}).
    @param timeout: seconds one request may take before it counts as unanswered.
    @param maxConnections: persistent connections kept to the endpoint.
    """

    def __init__(
        self,
        reactor: Any,
        endpoint: str,
        bucket: str,
        region: str,
        timeout: float,
        maxConnections: int,
    ) -> None:
        self.reactor = reactor
        self.bucket = bucket
        self.region = region or "us-east-1"
        self.timeout = timeout
        if endpoint:
            self._base = endpoint.rstrip("/") + "/" + bucket
        else:
            self._base = f"https://{bucket}.s3.{self.region}.amazonaws.com"
        self.pool = HTTPConnectionPool(reactor, persistent=True)  # type: ignore[no-untyped-call]
        self.pool.maxPersistentPerHost = maxConnections
        self.pool.retryAutomatically = False  # a PUT is retried by the store, knowingly
        self._credentials: Any = None
        self._frozen: Any = None
        #: requests sent, by method (for metrics)
        self.requests: dict[str, int] = {"PUT": 0, "GET": 0, "DELETE": 0, "LIST": 0}

    async def start(self) -> None:
        """Resolve credentials (in a thread: the chain may read files or the network)."""
        self._credentials = await deferToThread(resolveCredentials)
        await self.refreshCredentials()

    async def refreshCredentials(self) -> None:
        """Freeze the current credentials (in a thread: a refresh may block)."""
        if self._credentials is not None:
            self._frozen = await deferToThread(self._credentials.get_frozen_credentials)

    async def close(self) -> None:
        """Close the pooled connections."""
        await self.pool.closeCachedConnections()  # type: ignore[no-untyped-call]

    def _url(self, key: str, query: str = "") -> str:
        url = f"{self._base}/{urllib.parse.quote(key, safe='/~-_.')}"
        return url + ("?" + query if query else "")

    async def _request(
        self,
        method: str,
        url: str,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        ok: tuple[int, ...] = (200,),
        count: str | None = None,
        timeout: float | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        request = AWSRequest(method=method, url=url, data=body, headers=dict(headers or {}))
        S3SigV4Auth(self._frozen, "s3", self.region).add_auth(request)
        sent = {
            k.encode(): [v.encode() if isinstance(v, str) else v]
            for k, v in request.headers.items()
        }
        self.requests[count or method] += 1
        try:
            response = await treq.request(
                method,
                url,
                data=body if method in ("PUT", "POST") else None,
                headers=sent,
                pool=self.pool,
                reactor=self.reactor,
                timeout=self.timeout if timeout is None else max(0.01, min(timeout, self.timeout)),
            )
            content = await treq.content(response)
        except defer.CancelledError as e:
            raise S3Unavailable(f"{method} {url}: no answer in time") from e
        except Exception as e:
            raise S3Unavailable(f"{method} {url}: {e!r}") from e
        status = response.code
        if status in ok:
            got = {
                k.decode().lower(): v[-1].decode("latin-1")
                for k, v in response.headers.getAllRawHeaders()
            }
            return status, got, content
        message = _errorCode(content) or content[:200].decode("utf-8", "replace")
        if status == 404:
            raise NotFound(status, message)
        if status == 412:
            raise PreconditionFailed(status, message)
        if status >= 500 or status in (408, 429):
            raise S3Unavailable(f"{method} {url}: {status} {message}")
        raise S3Error(status, f"{method} {url}: {message}")

    async def ensureBucket(self) -> bool:
        """Create the bucket if it is missing; True if it was created."""
        try:
            await self._request("GET", self._url("", "list-type=2&max-keys=1"), count="LIST")
            return False
        except NotFound:
            pass
        body = b""
        if self.region != "us-east-1":
            body = (
                '<CreateBucketConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
                f"<LocationConstraint>{self.region}</LocationConstraint>"
                "</CreateBucketConfiguration>"
            ).encode()
        try:
            await self._request("PUT", self._url(""), body)
        except S3Error as e:
            if e.status != 409:  # created meanwhile by someone else
                raise
        return True

    async def put(
        self, key: str, body: bytes, ifNoneMatch: bool = False, timeout: float | None = None
    ) -> str:
        """Store C{body} at C{key}; fires with the ETag.

        @param ifNoneMatch: only if the key does not exist (C{If-None-Match: *});
            fails with L{PreconditionFailed} if it does.
        """
        headers = {"Content-Type": "application/octet-stream"}
        if ifNoneMatch:
            headers["If-None-Match"] = "*"
        _, got, _ = await self._request("PUT", self._url(key), body, headers, timeout=timeout)
        return got.get("etag", "")

    async def get(
        self,
        key: str,
        start: int | None = None,
        end: int | None = None,
        timeout: float | None = None,
    ) -> bytes:
        """The object at C{key} (bytes C{start}..C{end} inclusive when given)."""
        headers = {}
        if start is not None:
            headers["Range"] = f"bytes={start}-{'' if end is None else end}"
        _, _, content = await self._request(
            "GET", self._url(key), headers=headers, ok=(200, 206), timeout=timeout
        )
        return content

    async def delete(self, key: str) -> None:
        """Delete C{key} (no error if it is already gone)."""
        await self._request("DELETE", self._url(key), ok=(200, 204, 404))

    async def list(self, prefix: str) -> list[tuple[str, int]]:
        """Every C{(key, size)} under C{prefix}, in key order (all pages)."""
        out: list[tuple[str, int]] = []
        token: str | None = None
        while True:
            params = [("list-type", "2"), ("prefix", prefix), ("max-keys", "1000")]
            if token:
                params.append(("continuation-token", token))
            query = "&".join(f"{k}={urllib.parse.quote(v, safe='-_.~')}" for k, v in sorted(params))
            _, _, content = await self._request("GET", self._url("", query), count="LIST")
            root = ET.fromstring(content)
            for item in root.iter(_NS + "Contents"):
                key = item.findtext(_NS + "Key") or ""
                size = int(item.findtext(_NS + "Size") or 0)
                out.append((key, size))
            if (root.findtext(_NS + "IsTruncated") or "false").lower() != "true":
                return out
            token = root.findtext(_NS + "NextContinuationToken")
            if not token:
                return out


def _errorCode(content: bytes) -> str:
    try:
        root = ET.fromstring(content)
    except ET.ParseError:
        return ""
    code = root.findtext("Code") or ""
    message = root.findtext("Message") or ""
    return f"{code}: {message}" if code else ""
