"""The ``sqstaskmaster`` command: worker, submit, stats, provision, demo.

The top of the package: it may import anything, and nothing imports it.
"""

from .commands import main

__all__ = ["main"]
