"""A test app that loads a large object at import (copy-on-write checks)."""

BIG_BYTES = 200 * 1024 * 1024
# Written page by page (not calloc's untouched zero pages): resident in the worker.
BIG = b"x" * BIG_BYTES
