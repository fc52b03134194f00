"""One copy of the app for every worker process: the garbage collector kept off it.

A forked process shares its parent's memory page by page until either side
writes to a page. Python's garbage collector writes: every collection of the
oldest generation updates a field in the header of every object it tracks,
so a worker process that collects once copies every page of the app (a
model, a lookup table, a dataframe of Python objects) even if it never reads
a byte of it. ``gc.freeze()`` moves every tracked object into a permanent
generation that collections never visit.

The supervisor calls :func:`freeze_for_fork` once, after the app was imported
and right before it forks its worker processes, so the supervisor, its
workers, their task children and restarted workers all share the app's pages;
:func:`thaw` hands the objects back to the collector once the workers are
gone. Nothing is collected first: a collection would leave holes in the app's
pages that the workers' own allocations would then fill, copying those pages.

Task children freeze again at their start (:func:`sqstaskmaster.run.child_process.fork_child`),
which also covers what a worker process built after its fork.
"""

from __future__ import annotations

import gc
import logging

logger = logging.getLogger(__name__)


def freeze_for_fork() -> bool:
    """Freeze every object tracked now; True when this call froze them (and should thaw).

    False when objects were frozen already (by the app or a program that embeds
    the worker): those stay frozen, theirs to thaw.
    """
    frozen_before = gc.get_freeze_count()
    gc.freeze()
    logger.debug("supervisor: %d objects frozen before the fork", gc.get_freeze_count())
    return frozen_before == 0


def thaw(froze: bool) -> None:
    """Undo :func:`freeze_for_fork` when it was the one that froze."""
    if froze:
        gc.unfreeze()
