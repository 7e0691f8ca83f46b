"""
The bounded local read cache of the C{s3} store.

Two tiers, each bounded by C{s3_cache_bytes}:

  - memory: decoded records of whole objects, least recently used evicted
    first.  Objects this node writes enter it as they are acknowledged, so
    tail reads of hot shards are served without a GET.
  - disk (when C{s3_cache_dir} is set): the raw bytes of objects fetched
    from the bucket, one file per object, least recently used deleted first.
    File reads and writes run on a one-thread pool, never on the reactor.

An object larger than the bound is served but not kept.  The disk tier is
only a cache: it is wiped when the store opens, so an empty (or deleted)
directory is always a valid state.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections import OrderedDict
from typing import Any

from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

__all__ = ["ObjectCache"]


class ObjectCache:
    """Memory (decoded records) and optional disk (raw bytes) LRU, by object key."""

    def __init__(self, reactor: Any, limit: int, directory: str = "") -> None:
        self.reactor = reactor
        self.limit = limit
        self.directory = directory
        self._memory: OrderedDict[str, tuple[list[dict[str, Any]], int]] = OrderedDict()
        self._memoryBytes = 0
        self._disk: OrderedDict[str, int] = OrderedDict()
        self._diskBytes = 0
        self._pool: ThreadPool | None = None
        self.hits = 0
        self.diskHits = 0
        self.misses = 0

    def start(self) -> None:
        """Start the disk tier's thread (if any); the directory is emptied first, off-reactor."""
        if self.directory:
            self._pool = ThreadPool(1, 1, name="robustmq-s3-cache")
            self._pool.start()
            self._run(self._wipe)

    def stop(self) -> None:
        """Stop the disk tier's thread."""
        if self._pool is not None:
            self._pool.stop()
            self._pool = None

    def _wipe(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
        os.makedirs(self.directory, exist_ok=True)

    def _run(self, f: Any, *args: Any) -> Any:
        assert self._pool is not None
        return deferToThreadPool(self.reactor, self._pool, f, *args)

    # -- memory tier ------------------------------------------------------

    def get(self, key: str) -> list[dict[str, Any]] | None:
        """The decoded records of object C{key} if they are in memory."""
        entry = self._memory.get(key)
        if entry is None:
            return None
        self._memory.move_to_end(key)
        self.hits += 1
        return entry[0]

    def put(self, key: str, records: list[dict[str, Any]], size: int) -> None:
        """Keep C{records} (C{size} bytes) in memory, evicting the least recently used."""
        if size > self.limit:
            return
        old = self._memory.pop(key, None)
        if old is not None:
            self._memoryBytes -= old[1]
        self._memory[key] = (records, size)
        self._memoryBytes += size
        while self._memoryBytes > self.limit:
            _, (_, n) = self._memory.popitem(last=False)
            self._memoryBytes -= n

    def drop(self, key: str) -> None:
        """Forget object C{key} in both tiers (it was deleted from the bucket)."""
        entry = self._memory.pop(key, None)
        if entry is not None:
            self._memoryBytes -= entry[1]
        size = self._disk.pop(key, None)
        if size is not None:
            self._diskBytes -= size
            self._run(_unlink, self._path(key))

    @property
    def memoryBytes(self) -> int:
        return self._memoryBytes

    @property
    def diskBytes(self) -> int:
        return self._diskBytes

    # -- disk tier ----------------------------------------------------------

    def _path(self, key: str) -> str:
        return os.path.join(self.directory, hashlib.sha256(key.encode()).hexdigest())

    async def readDisk(self, key: str) -> bytes | None:
        """The raw bytes of object C{key} from the disk tier, or None."""
        if self._pool is None or key not in self._disk:
            self.misses += 1
            return None
        self._disk.move_to_end(key)
        data: bytes | None = await self._run(_read, self._path(key))
        if data is None:
            self._diskBytes -= self._disk.pop(key, 0)
            self.misses += 1
        else:
            self.diskHits += 1
        return data

    def writeDisk(self, key: str, data: bytes) -> None:
        """Keep a copy of object C{key} on disk (in the background)."""
        if self._pool is None or len(data) > self.limit or key in self._disk:
            return
        self._disk[key] = len(data)
        self._diskBytes += len(data)
        self._run(_write, self._path(key), data)
        while self._diskBytes > self.limit:
            old, n = self._disk.popitem(last=False)
            self._diskBytes -= n
            self._run(_unlink, self._path(old))


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def _write(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
