"""Exit codes of the ``sqstaskmaster`` command and of a supervised worker fleet.

Only the top of the package (the CLI, the supervisor) returns them; ``cli``
re-exports them for callers that import them from there.
"""

RET_OK = 0  # done; for a worker: stopped cleanly (signal, burst end)
RET_ERROR = 1  # an unexpected error (traceback logged)
RET_USAGE = 2  # bad arguments or settings
RET_IMPORT = 3  # the worker's APP cannot be imported
RET_CONNECT = 4  # SQS cannot be reached, or the queue does not exist
RET_KILLED = 5  # a worker process had to be killed at shutdown
RET_INTERRUPTED = 130  # submit, stats or purge cut short by Ctrl-C (128 + SIGINT)
