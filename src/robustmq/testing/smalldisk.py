"""A small tmpfs for full-disk tests: mount, fill to the brim, free again.

Mounting needs root (or CAP_SYS_ADMIN); L{SmallDisk.mount} raises
L{unittest.SkipTest} with the reason when it is not possible, so a test
that needs a full disk is skipped with a clear message rather than faked.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import unittest

__all__ = ["SmallDisk"]


class SmallDisk:
    """
    A tmpfs of C{size} bytes mounted under a fresh temporary directory.

    @ivar path: the mount point.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.path = ""
        self._ballast = 0

    def mount(self) -> SmallDisk:
        """Mount it (L{unittest.SkipTest} if this machine cannot)."""
        self.path = tempfile.mkdtemp(prefix="robustmq-smalldisk-")
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={self.size}", "tmpfs", self.path],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            os.rmdir(self.path)
            raise unittest.SkipTest(
                f"cannot mount a tmpfs for a full-disk test (needs root or CAP_SYS_ADMIN): "
                f"{result.stderr.strip() or result.returncode}"
            )
        return self

    def unmount(self) -> None:
        """Unmount and remove the mount point (lazily if something still holds it)."""
        if not self.path:
            return
        result = subprocess.run(["umount", self.path], capture_output=True)
        if result.returncode != 0:
            subprocess.run(["umount", "-l", self.path], capture_output=True)
        shutil.rmtree(self.path, ignore_errors=True)
        self.path = ""

    def free(self) -> int:
        """Bytes free on the disk now."""
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self, leave: int = 0) -> None:
        """Write ballast files until at most C{leave} bytes are free."""
        chunk = b"\0" * 65536
        while self.free() > leave:
            self._ballast += 1
            name = os.path.join(self.path, f"ballast-{self._ballast}")
            want = max(4096, self.free() - leave)
            try:
                with open(name, "wb") as f:
                    while want > 0:
                        n = f.write(chunk[: min(len(chunk), want)])
                        want -= n
            except OSError:
                break

    def release(self) -> None:
        """Delete every ballast file."""
        for i in range(1, self._ballast + 1):
            try:
                os.unlink(os.path.join(self.path, f"ballast-{i}"))
            except FileNotFoundError:
                pass
        self._ballast = 0
