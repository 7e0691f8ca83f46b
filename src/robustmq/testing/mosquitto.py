"""Debian's mosquitto_sub as a test subscriber, read line by line on a thread.

mosquitto_sub runs with C{-d} (debug) under C{stdbuf -oL} so that its output
is line-buffered: a test waits for its "received SUBACK" line before
publishing (no sleeps), and reads the QoS and retain flag of each message
from its "received PUBLISH (d0, q1, r0, ...)" lines, while the C{-v} lines
("topic payload") give what the user would see.
"""

from __future__ import annotations

import queue
import re
import shutil
import signal
import subprocess
import threading
import time

__all__ = ["MosquittoSub"]

#: Seconds a test waits for one line by default.
TIMEOUT = 5.0

_PUBLISH_LINE = re.compile(r"received PUBLISH \(d(\d), q(\d), r(\d), m\d+, '([^']*)'")


class MosquittoSub:
    """A running mosquitto_sub whose output is read line by line on a thread."""

    def __init__(self, port: int, version: str, args: list[str], host: str = "127.0.0.1") -> None:
        command = ["mosquitto_sub", "-h", host, "-p", str(port), "-V", version, "-d", "-v"]
        if shutil.which("stdbuf"):
            command = ["stdbuf", "-oL", *command]
        self.process = subprocess.Popen(
            [*command, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def nextLine(self, timeout: float = TIMEOUT) -> str | None:
        """The next output line; None at EOF; fails the test after C{timeout}."""
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"mosquitto_sub printed nothing for {timeout}s; so far: {self.seen}"
            ) from None
        if line is not None:
            self.seen.append(line)
        return line

    def waitFor(self, text: str, timeout: float = TIMEOUT) -> None:
        """Read output until a line contains C{text}."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.nextLine(max(0.01, deadline - time.monotonic()))
            if line is None:
                raise AssertionError(f"mosquitto_sub ended before {text!r}: {self.seen}")
            if text in line:
                return

    def waitSubscribed(self) -> None:
        self.waitFor("received SUBACK")

    def finish(self, timeout: float = TIMEOUT) -> tuple[list[str], list[tuple[str, int, int, int]]]:
        """Wait for exit (0); return the C{-v} lines and (topic, dup, qos, retain) per PUBLISH."""
        deadline = time.monotonic() + timeout
        while self.nextLine(max(0.01, deadline - time.monotonic())) is not None:
            pass
        assert self.process.wait(timeout) == 0, self.seen
        return self.messages()

    def messages(self) -> tuple[list[str], list[tuple[str, int, int, int]]]:
        """The C{-v} lines and the parsed debug PUBLISH lines seen so far."""
        verbose: list[str] = []
        flags: list[tuple[str, int, int, int]] = []
        for line in self.seen:
            m = _PUBLISH_LINE.search(line)
            if m:
                flags.append((m.group(4), int(m.group(1)), int(m.group(2)), int(m.group(3))))
            elif not line.startswith(("Client ", "Subscribed (mid")):
                verbose.append(line)
        return verbose, flags

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            self.process.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(TIMEOUT)
        if self.process.stdout is not None:
            self.process.stdout.close()
