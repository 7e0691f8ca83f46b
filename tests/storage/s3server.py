"""One SeaweedFS for the test process (started on first use, stopped at exit)."""

from __future__ import annotations

import atexit
import os

from robustmq.testing.seaweedfs import SeaweedFSProcess

_server: SeaweedFSProcess | None = None


def seaweed() -> SeaweedFSProcess:
    """The shared SeaweedFS; also puts its access keys into this process's environment."""
    global _server
    if _server is None or _server.process is None or _server.process.poll() is not None:
        _server = SeaweedFSProcess().start()
        atexit.register(_server.cleanup)
    os.environ.update(_server.credentials())
    return _server
