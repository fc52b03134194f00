"""Reliability 5: tasks that end within 2 ms of their hard deadline.

The body ends just before or just after the deadline, so the SIGALRM lands
anywhere from the last bytecodes of run() through __exit__ and beyond. The
promises: a message that was deleted never sees a TimeoutError (neither in
the handler nor after it), a timed-out message is never deleted, and no
timer or handler of ours is left behind.
"""

from __future__ import annotations

import random
import signal
import time
from typing import Any, List, Optional

from sqstaskmaster.message_handler import MessageHandler

TASKS = 1000
HARD_TIMEOUT_S = 0.006  # short, so 1,000 races take seconds; the window is what matters
WINDOW_S = 0.002


class RecordingMessage:
    def __init__(self, index: int) -> None:
        self.body = "{}"
        self.attributes = {"ApproximateReceiveCount": "1"}
        self.message_id = f"race-{index}"
        self.deleted_at: Optional[float] = None

    def change_visibility(self, **kwargs: Any) -> None:
        pass

    def delete(self) -> None:
        self.deleted_at = time.monotonic()


class RaceHandler(MessageHandler):
    def __init__(self, message: Any, finish_at_offset_s: float) -> None:
        super().__init__(message, sqs_timeout=30, alarm_timeout=25, hard_timeout=HARD_TIMEOUT_S)
        self.finish_at = self.deadline + finish_at_offset_s
        self.notified: List[BaseException] = []

    def run(self) -> None:
        # A Python-level wait, so the alarm can land on any bytecode of it.
        while time.monotonic() < self.finish_at:
            pass

    def running(self) -> bool:
        return True

    def notify(self, exception: BaseException, context: Optional[dict] = None) -> None:
        self.notified.append(exception)


def test_deadline_races_never_raise_after_delete():
    rng = random.Random(20261127)
    completed = timed_out = 0
    late_errors: List[str] = []
    started = time.monotonic()
    for index in range(TASKS):
        message = RecordingMessage(index)
        handler = RaceHandler(message, rng.uniform(-WINDOW_S, WINDOW_S))
        try:
            with handler:
                handler.run()
            # Give a late alarm the chance to land here, after the handler.
            stray_until = time.monotonic() + 0.002
            while time.monotonic() < stray_until:
                pass
        except BaseException as error:  # noqa: BLE001 - any escape is the failure
            late_errors.append(f"{message.message_id}: {error!r}")
            continue
        if message.deleted_at is not None:
            completed += 1
            assert handler.error is None, message.message_id
            assert handler.notified == [], message.message_id
        else:
            timed_out += 1
            assert isinstance(handler.error, TimeoutError), (message.message_id, handler.error)
            assert [type(e) for e in handler.notified] == [type(handler.error)]
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0), message.message_id
        assert signal.getsignal(signal.SIGALRM) == signal.SIG_DFL, message.message_id
    elapsed = time.monotonic() - started
    print(
        f"RELIABILITY: timer race: {TASKS} tasks, {completed} completed, {timed_out} timed out, "
        f"{len(late_errors)} escaped, {elapsed:.1f} s"
    )
    assert late_errors == []
    assert completed + timed_out == TASKS
    # Both sides of the deadline were exercised.
    assert completed > TASKS // 10 and timed_out > TASKS // 10
