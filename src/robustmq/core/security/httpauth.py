"""HTTP authentication: ask a configured URL whether a client may connect.

C{POST [auth] http_url} with a JSON body C{{"clientid", "username",
"password", "peerhost", "protocol", "listener"}} (over TLS the server's
certificate is verified unless C{http_verify_tls = false}).  The answer:

- 200 with C{{"result": "allow" | "deny" | "ignore"}} (and optionally
  C{"is_superuser": true}); 204 (no body) means allow;
- anything else (other status, bad JSON, timeout after C{http_timeout},
  connection error, more than C{http_max_pending} requests in flight) is a
  failure: DENY, or IGNORE with C{http_fail_open = true}.

Positive answers are cached for C{http_cache_ttl} seconds, at most
C{http_cache_size} entries (the oldest is evicted).  The cache key holds a
salted digest of the password, never the password.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from typing import Any

import treq
from twisted.internet import defer
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import Certificate, CertificateOptions, optionsForClientTLS
from twisted.logger import Logger
from twisted.plugin import IPlugin
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from robustmq.core.auth import ALLOW, DENY, IGNORE, Credentials
from robustmq.interfaces import IAuthenticator, IAuthenticatorPlugin


@implementer(IPolicyForHTTPS)
class _TrustRoot:
    """Verify the server against one CA file (C{http_cafile})."""

    def __init__(self, cafile: str) -> None:
        with open(cafile, "rb") as f:
            self.root = Certificate.loadPEM(f.read())

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return optionsForClientTLS(hostname.decode("ascii"), trustRoot=self.root)


@implementer(IPolicyForHTTPS)
class _NoVerify:
    """C{http_verify_tls = false}: encrypt, but accept any certificate (test setups only)."""

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return _Insecure()


@implementer(IOpenSSLClientConnectionCreator)
class _Insecure:
    def __init__(self) -> None:
        self.options = CertificateOptions(verify=False)

    def clientConnectionForTLS(self, tlsProtocol: Any) -> Any:
        from OpenSSL import SSL

        connection = SSL.Connection(self.options.getContext(), None)
        connection.set_app_data(tlsProtocol)
        return connection


@implementer(IAuthenticator)
class HTTPAuthenticator:
    """One configured URL, a bounded cache of positive answers, a bound on pending requests."""

    name = "http"
    log = Logger()

    def __init__(self, settings: Any, reactor: Any, http: Any = None) -> None:
        self.url = settings.http_url
        self.timeout = settings.http_timeout
        self.ttl = settings.http_cache_ttl
        self.cacheSize = settings.http_cache_size
        self.maxPending = settings.http_max_pending
        self.failOpen = settings.http_fail_open
        self.reactor = reactor
        self.cache: OrderedDict[bytes, tuple[float, bool]] = OrderedDict()
        self.pending = 0
        self._salt = os.urandom(16)
        if http is None:
            if not settings.http_verify_tls:
                policy: Any = _NoVerify()
            elif settings.http_cafile:
                policy = _TrustRoot(settings.http_cafile)
            else:
                policy = BrowserLikePolicyForHTTPS()
            pool = HTTPConnectionPool(reactor, persistent=True)
            pool.maxPersistentPerHost = 8
            http = treq.client.HTTPClient(Agent(reactor, contextFactory=policy, pool=pool))
        self.http = http

    def _cacheKey(self, c: Credentials) -> bytes:
        h = hashlib.sha256(self._salt)
        for part in (c.protocol, c.clientId, c.username or "", c.peerHost or ""):
            h.update(part.encode("utf-8", "replace") + b"\x00")
        h.update(c.password or b"\x01")
        return h.digest()

    async def authenticate(self, credentials: Credentials) -> str:
        key = self._cacheKey(credentials) if self.ttl and self.cacheSize else None
        now = self.reactor.seconds()
        if key is not None:
            hit = self.cache.get(key)
            if hit is not None:
                if hit[0] > now:
                    if hit[1]:
                        credentials.attributes["superuser"] = True
                    return ALLOW
                del self.cache[key]
        if self.pending >= self.maxPending:
            return self._failed(credentials, f"{self.pending} requests already pending")
        self.pending += 1
        try:
            decision, superuser = await self._ask(credentials)
        except Exception as e:  # timeouts, refused connections, TLS failures
            return self._failed(credentials, f"{type(e).__name__}: {e}")
        finally:
            self.pending -= 1
        if decision is None:
            return self._failed(credentials, "unexpected answer")
        if decision == ALLOW:
            if superuser:
                credentials.attributes["superuser"] = True
            if key is not None:
                self.cache[key] = (now + self.ttl, superuser)
                while len(self.cache) > self.cacheSize:
                    self.cache.popitem(last=False)
        return decision

    async def _ask(self, c: Credentials) -> tuple[str | None, bool]:
        body = {
            "clientid": c.clientId,
            "username": c.username,
            "password": c.password.decode("utf-8", "replace") if c.password is not None else None,
            "peerhost": c.peerHost,
            "protocol": c.protocol,
            "listener": c.listener,
        }
        d = self.http.post(
            self.url,
            data=json.dumps(body).encode(),
            headers={b"Content-Type": [b"application/json"]},
            timeout=self.timeout,
        )
        response = await d
        if response.code == 204:
            await response.content()
            return ALLOW, False
        raw = await defer.ensureDeferred(_content(response))
        if response.code != 200:
            return None, False
        try:
            answer = json.loads(raw)
        except ValueError:
            return None, False
        result = answer.get("result") if isinstance(answer, dict) else None
        if result not in (ALLOW, DENY, IGNORE):
            return None, False
        return result, answer.get("is_superuser") is True

    def _failed(self, credentials: Credentials, why: str) -> str:
        decision = IGNORE if self.failOpen else DENY
        self.log.warn(
            "HTTP authentication of client {clientId} failed ({why}): {decision}",
            clientId=credentials.clientId,
            why=why,
            decision=decision,
        )
        return decision


async def _content(response: Any) -> bytes:
    return bytes(await response.content())


@implementer(IPlugin, IAuthenticatorPlugin)
class HTTPPlugin:
    """Plugin entry for L{HTTPAuthenticator} (C{"http"} in C{[auth] chain})."""

    name = "http"

    def build(self, settings: Any, security: Any = None) -> IAuthenticator:
        """Configured from the C{http_*} keys of C{[auth]}."""
        from twisted.internet import reactor

        return HTTPAuthenticator(settings.auth, getattr(security, "reactor", None) or reactor)


httpPlugin = HTTPPlugin()

__all__ = ["HTTPAuthenticator", "httpPlugin"]
