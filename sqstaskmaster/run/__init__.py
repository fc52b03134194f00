"""How one task runs: in this process under a signal timer, or in a forked child.

Owns the execution strategies, the timer, the task reaper and the task child:
:mod:`.child_process` (the one fork, the parent's handle on a child process),
:mod:`.fork` (the parent's handle on one task in a child; a fresh fork per
task), :mod:`.reuse_parent` and :mod:`.reuse_child` (a reused child, the
worker's side and the child's own loop), :mod:`.pipes` (what crosses between
them) and :mod:`.child_error` (the child's reports and errors). Imports
:mod:`sqstaskmaster.errors`, :mod:`sqstaskmaster.sqs` and
:mod:`sqstaskmaster.ops`, nothing above.
"""
