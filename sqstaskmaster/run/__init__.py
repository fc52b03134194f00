"""How one task runs: in this process under a signal timer, or in a forked child.

Owns the execution strategies, the timer, the task child (fresh or reused,
the parent's side and the child's), the task reaper and the child's errors.
Imports :mod:`sqstaskmaster.sqs` and :mod:`sqstaskmaster.errors`, nothing above.
"""
