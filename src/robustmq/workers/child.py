"""A worker process's entry point: C{python -m robustmq.workers.child --worker FILE [--config FILE]}.

Started by the node (L{robustmq.workers.WorkerSupervisor}), never by hand.
The worker leaves the node's process group first, so a Ctrl-C in the
node's terminal reaches the node alone (which stops its workers in order);
then it runs twistd's runner with the C{robustmq} plugin like the node does,
logging to standard output, which the node reads and relays.
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> None:
    """Run twistd with the C{robustmq} plugin as a worker (arguments: C{--worker FILE
    [--config FILE]})."""
    args = sys.argv[1:] if argv is None else argv
    try:
        os.setpgrp()
    except OSError:
        pass  # already a group leader
    from twisted.scripts.twistd import run

    sys.argv = [
        "twistd",
        "--nodaemon",
        "--pidfile=",
        "--logger=robustmq.logs.observer",
        "robustmq",
        *args,
    ]
    run()


if __name__ == "__main__":
    main()
