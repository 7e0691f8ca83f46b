"""A small HTTP authentication server for the tests: `python httpauthserver.py PORT`.

User names decide the answer: C{http-allow*} → allow, C{http-deny*} → deny,
C{http-slow*} → no answer for 30 s (the broker's timeout fires first),
C{http-500*} → status 500.  C{GET /count} tells how many POSTs arrived.
"""

from __future__ import annotations

import json
import sys

from twisted.internet import reactor, task
from twisted.web import resource, server


class Auth(resource.Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def render_GET(self, request: server.Request) -> bytes:
        return json.dumps({"count": self.count}).encode()

    def render_POST(self, request: server.Request) -> bytes | int:
        self.count += 1
        body = json.loads(request.content.read())
        user = body.get("username") or ""
        request.setHeader(b"content-type", b"application/json")
        if user.startswith("http-allow"):
            return json.dumps({"result": "allow"}).encode()
        if user.startswith("http-500"):
            request.setResponseCode(500)
            return b"{}"
        if user.startswith("http-slow"):
            d = task.deferLater(reactor, 30, lambda: None)
            d.addCallback(lambda _: (request.write(b'{"result":"allow"}'), request.finish()))
            d.addErrback(lambda _: None)
            return server.NOT_DONE_YET
        return json.dumps({"result": "deny"}).encode()


if __name__ == "__main__":
    site = server.Site(Auth())
    reactor.listenTCP(int(sys.argv[1]), site, interface="127.0.0.1")
    print("ready", flush=True)
    reactor.run()
