"""What a freshly forked helper process puts back: the signal state it inherited.

A task child and a worker's task reaper are forked from a worker process whose
Python-level handlers (its shutdown flag, the signal-mode timer) and signal
mask mean nothing to them; :func:`reset_signals` puts those back to the
defaults before the child's own code runs.
"""

from __future__ import annotations

import signal


def reset_signals() -> None:
    """Python-level handlers back to SIG_DFL, ITIMER_REAL off, no wakeup fd, nothing blocked."""
    signal.setitimer(signal.ITIMER_REAL, 0)
    try:
        signal.set_wakeup_fd(-1)
    except ValueError:
        pass  # not the main thread: it has no wakeup fd to clear
    for signum in signal.valid_signals():
        try:
            if callable(signal.getsignal(signum)):
                signal.signal(signum, signal.SIG_DFL)
        except (OSError, ValueError):
            pass  # SIGKILL, SIGSTOP and the like cannot be set
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
