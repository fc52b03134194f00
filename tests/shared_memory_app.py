"""A worker app that builds a large structure of tracked objects at import.

For the test that a worker process forked by the supervisor shares it: a full
garbage collection in that worker process must not copy it.
"""

from __future__ import annotations

import gc
import os
from pathlib import Path

# A million and a half one-item lists (about 130 MB), each tracked by the garbage collector.
SIZE = 1_500_000
TRACKED = [[i] for i in range(SIZE)]

_directory = os.environ.get("SQSTM_TEST_DIR")
if _directory:  # which processes imported the app
    Path(_directory, f"imported.{os.getpid()}").write_text("")


def collect_and_measure(path: str) -> None:
    """A full collection in this process, then its pid, parent pid and private kB."""
    assert len(TRACKED) == SIZE
    gc.collect()
    fields = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        fields[name] = int(value.split()[0])
    private_kb = fields["Private_Clean"] + fields["Private_Dirty"]
    Path(path).write_text(f"{os.getpid()} {os.getppid()} {private_kb} {fields['Rss']}\n")


app = {"collect_and_measure": collect_and_measure}
