"""Exit codes of the ``sqstaskmaster`` command and of a supervised worker fleet.

The CLI's commands, the Worker's ``run()`` and the supervisor return them.
"""

RET_OK = 0  # done; for a worker: stopped cleanly (signal, burst end)
RET_ERROR = 1  # an unexpected error (traceback logged)
RET_USAGE = 2  # bad arguments or settings
RET_IMPORT = 3  # the worker's APP cannot be imported
RET_CONNECT = 4  # SQS cannot be reached, or the queue does not exist
RET_KILLED = 5  # a worker process had to be killed at shutdown
RET_INTERRUPTED = 130  # submit, stats or purge cut short by Ctrl-C (128 + SIGINT)
