"""Fixtures for the transport tests; the helpers live in transport_support.py.

Test modules import helpers from `transport_support`, not from `conftest`:
several test folders have a conftest.py, and `import conftest` would pick
whichever one was loaded first.
"""

from transport_support import *  # noqa: F401,F403
