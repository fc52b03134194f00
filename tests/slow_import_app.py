"""A worker app that takes a second to import, and says when its import began.

For the test of a stop that arrives while the worker is still starting up.
"""

from __future__ import annotations

import os
import time

from worker_apps import app  # noqa: F401 - the app the worker runs

_directory = os.environ.get("SQSTM_TEST_DIR")
if _directory:
    with open(os.path.join(_directory, f"importing.{os.getpid()}"), "w") as _handle:
        _handle.write("importing")
time.sleep(1.0)
