"""
File-level primitives: a bounded cache of open file descriptors, atomic
small-file writes, fsync helpers, and the worker that applies a batch of
file operations on the storage I/O thread.

Nothing here touches the reactor; L{IOWorker.run} and L{syncPaths} are meant
to be called on the store's dedicated threads.
"""

from __future__ import annotations

import os
import shutil
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["HandleCache", "IOWorker", "atomicWrite", "fsyncPath", "syncPaths"]

_WRITE_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)


class HandleCache:
    """
    A least-recently-used cache of open file descriptors, keyed by path.

    At most C{capacity} descriptors are open at once: opening one more closes
    the least recently used.  A cache belongs to one thread.
    """

    __slots__ = ("capacity", "_fds", "_flags", "opened")

    def __init__(self, capacity: int, write: bool) -> None:
        self.capacity = max(1, capacity)
        self._fds: OrderedDict[str, int] = OrderedDict()
        self._flags = _WRITE_FLAGS if write else _READ_FLAGS
        self.opened = 0  # total opens, for tests and metrics

    def __len__(self) -> int:
        return len(self._fds)

    def get(self, path: str) -> int:
        """Return an open descriptor for C{path}, opening (and evicting) as needed."""
        fds = self._fds
        fd = fds.get(path)
        if fd is not None:
            fds.move_to_end(path)
            return fd
        while len(fds) >= self.capacity:
            _, old = fds.popitem(last=False)
            os.close(old)
        fd = os.open(path, self._flags, 0o644)
        self.opened += 1
        fds[path] = fd
        return fd

    def drop(self, path: str) -> None:
        """Close the descriptor of C{path} if it is open."""
        fd = self._fds.pop(path, None)
        if fd is not None:
            os.close(fd)

    def dropUnder(self, directory: str) -> None:
        """Close every descriptor of a file inside C{directory}."""
        prefix = directory.rstrip(os.sep) + os.sep
        for path in [p for p in self._fds if p.startswith(prefix)]:
            self.drop(path)

    def closeAll(self) -> None:
        """Close every descriptor."""
        while self._fds:
            _, fd = self._fds.popitem()
            os.close(fd)


def fsyncPath(path: str) -> None:
    """fsync a file or directory by path (a missing one has nothing to sync)."""
    try:
        fd = os.open(path, _READ_FLAGS)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def syncPaths(paths: Iterable[str]) -> None:
    """
    fsync each path (files first, then their directories, as given).

    On Linux fsync through any descriptor flushes the file's dirty pages, so
    this works for files whose writing descriptor was closed or is held by
    another thread.
    """
    for path in paths:
        fsyncPath(path)


def writeAll(fd: int, data: Any) -> None:
    """Write all of C{data}, looping over short writes."""
    view = memoryview(data)
    try:
        while view:
            n = os.write(fd, view)
            view = view[n:]
    finally:
        view.release()


def atomicWrite(path: str, data: bytes, sync: bool = True) -> None:
    """
    Replace C{path} with C{data} so that a crash leaves the old or the new
    content, never a mix: write a temporary file, fsync it, rename it over
    C{path}, fsync the directory.
    """
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        writeAll(fd, data)
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        try:  # a half-written temporary file holds space a full disk needs back
            os.unlink(tmp)
        except OSError:
            pass
        raise
    os.close(fd)
    os.replace(tmp, path)
    if sync:
        fsyncPath(os.path.dirname(path) or ".")


class IOWorker:
    """
    Applies batches of file operations, in order, on the storage I/O thread.

    Operations are tuples whose first item names them:

      - C{("append", path, data)}: append bytes through the write-handle cache
      - C{("create", path)}: create an empty file (its directory becomes dirty)
      - C{("put", path, data)}: write a whole file in place (index files,
        which carry their own CRC and are rebuilt if torn)
      - C{("atomic", path, data)}: L{atomicWrite} with fsync
      - C{("mkdir", path)}: create a directory (and parents)
      - C{("unlink", path)}: close and remove a file
      - C{("rename", src, dst)}: rename a file (its directory becomes dirty)
      - C{("rmtree", path, trash)}: rename a directory to C{trash}, then delete it
      - C{("call", function)}: run C{function()} here (compaction output)

    L{run} returns the paths that must be fsynced for the batch to be
    durable: files written, then directories whose entries changed.

    A batch that fails half-way (a full disk, an I/O error) is undone as far
    as it can be before the error is raised: files appended to are cut back
    to their size before the batch, files it created are removed, and the
    deletions queued after the failed operation are still carried out (they
    free space, and the store already forgot what they delete).  The store
    then rebuilds the shards the batch touched from what is on disk.
    """

    def __init__(self, maxOpenFiles: int) -> None:
        self.handles = HandleCache(maxOpenFiles, write=True)

    def run(self, ops: Sequence[tuple[Any, ...]]) -> list[str]:
        """Apply C{ops}; return the files and then directories to fsync."""
        files: dict[str, None] = {}
        dirs: dict[str, None] = {}
        #: size before this batch of every file appended to, and files created
        before: dict[str, int] = {}
        created: list[str] = []
        done = 0
        try:
            for done, op in enumerate(ops):  # noqa: B007 - done is read after a failure
                self._apply(op, files, dirs, before, created)
        except BaseException:
            self._undo(before, created)
            for op in ops[done + 1 :]:
                if op[0] in ("unlink", "rmtree"):
                    try:
                        self._apply(op, files, dirs, before, created)
                    except OSError:
                        pass
            raise
        return [*files, *dirs]

    def _undo(self, before: dict[str, int], created: list[str]) -> None:
        """Cut files back to their size before the failed batch; remove the ones it created."""
        for path, size in before.items():
            if path in created:
                continue
            try:
                fd = self.handles.get(path)
                os.ftruncate(fd, size)
            except OSError:
                pass
        for path in created:
            self.handles.drop(path)
            try:
                os.unlink(path)
            except OSError:
                pass

    def _apply(
        self,
        op: tuple[Any, ...],
        files: dict[str, None],
        dirs: dict[str, None],
        before: dict[str, int],
        created: list[str],
    ) -> None:
        handles = self.handles
        kind = op[0]
        if kind == "append":
            fd = handles.get(op[1])
            if op[1] not in before:
                before[op[1]] = os.fstat(fd).st_size
            writeAll(fd, op[2])
            files[op[1]] = None
        elif kind == "create":
            if not os.path.exists(op[1]):
                created.append(op[1])
            handles.get(op[1])
            files[op[1]] = None
            dirs[os.path.dirname(op[1])] = None
        elif kind == "put":
            handles.drop(op[1])
            fd = os.open(op[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                writeAll(fd, op[2])
            finally:
                os.close(fd)
            files[op[1]] = None
        elif kind == "atomic":
            atomicWrite(op[1], op[2], sync=True)
        elif kind == "mkdir":
            os.makedirs(op[1], exist_ok=True)
            dirs[os.path.dirname(op[1].rstrip(os.sep))] = None
        elif kind == "unlink":
            handles.drop(op[1])
            files.pop(op[1], None)
            try:
                os.unlink(op[1])
            except FileNotFoundError:
                pass
            dirs[os.path.dirname(op[1])] = None
        elif kind == "rename":
            handles.drop(op[1])
            handles.drop(op[2])
            files.pop(op[1], None)
            os.replace(op[1], op[2])
            dirs[os.path.dirname(op[2])] = None
        elif kind == "rmtree":
            handles.dropUnder(op[1])
            for path in [p for p in files if p.startswith(op[1] + os.sep)]:
                del files[path]
            try:
                os.replace(op[1], op[2])
            except FileNotFoundError:
                return
            fsyncPath(os.path.dirname(op[2]))
            shutil.rmtree(op[2], ignore_errors=True)
        elif kind == "call":
            op[1]()
        else:  # pragma: no cover - programming error
            raise ValueError(f"unknown storage operation {kind!r}")

    def close(self) -> None:
        """Close every cached descriptor."""
        self.handles.closeAll()
