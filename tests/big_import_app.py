"""A test app that loads a large object at import (copy-on-write checks)."""

BIG_BYTES = 200 * 1024 * 1024
# Written page by page (not calloc's untouched zero pages): resident in the worker.
BIG = b"x" * BIG_BYTES

# Objects the garbage collector tracks (about 60 MB): a collection that walked
# them in a task's child would write to every one (copy-on-write copies).
TRACKED = [[i] for i in range(500_000)]
