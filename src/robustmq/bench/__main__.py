"""``python -m robustmq.bench``: the same as ``robustmq bench``."""

import sys

from . import main

sys.exit(main(sys.argv[1:]))
