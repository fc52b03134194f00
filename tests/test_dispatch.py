"""Whatever ``run`` a handler class resolves to runs under its execution strategy.

Defined in the class, inherited from a mixin anywhere in the MRO, or assigned
to the class later: an isolated handler's body runs in a forked child, under
the hard timeout, and never in the worker's own process.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Optional
from unittest.mock import patch

import pytest

from sqstaskmaster.local import LocalMessage
from sqstaskmaster.message_handler import MessageHandler
from sqstaskmaster.run.strategies import Forked, InProcess
from sqstaskmaster.worker.loop import Worker

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="Forked needs fork")


class RunMixin:
    """A task body kept in a class that is no handler."""

    path = ""

    def run(self) -> int:
        Path(self.path).write_text(str(os.getpid()))
        time.sleep(4)
        return os.getpid()


class Surface:
    """running() and notify(), as a handler written for 0.0.11 has them."""

    def running(self) -> bool:
        return True

    def notify(self, exception: BaseException, context: Optional[dict] = None) -> None:
        pass


class Mixed(RunMixin, Surface, MessageHandler):
    def __init__(
        self, message: Any, sqs_timeout: int, alarm_timeout: int, hard_timeout: int, path: str
    ):
        super().__init__(message, sqs_timeout, alarm_timeout, hard_timeout)
        self.path = path


def test_an_inherited_run_is_killed_at_its_hard_timeout_in_a_forked_child(
    sqs_server: Any, sqs_queue: Any, tmp_path: Path
) -> None:
    # Given a handler whose run() (4 s) comes from a mixin, and a 2 s hard timeout
    worker = Worker({"mixed": Mixed}, sqs_timeout=6, hard_timeout=2)
    worker.connect(sqs_queue.url, sqs=sqs_server.sqs)
    pid_file = tmp_path / "pid"
    sqs_server.task_manager(sqs_queue).submit("mixed", path=str(pid_file))
    [message] = sqs_queue.queue.receive_messages(WaitTimeSeconds=5, VisibilityTimeout=30)
    # When the default (isolated) worker runs it
    started = time.monotonic()
    outcome = worker.process(message)
    took = time.monotonic() - started
    # Then it ran in a forked child and was stopped at about 2 s, as a time-out
    assert outcome == "timed_out"
    assert 1.8 <= took < 3.8, took
    assert int(pid_file.read_text()) != os.getpid()


def handler_of(cls: type, strategy: Any) -> Any:
    handler = cls(LocalMessage("{}", {}, {}), sqs_timeout=10, alarm_timeout=5, hard_timeout=30)
    handler.execution = strategy
    return handler


class Pid(Surface, MessageHandler):
    def run(self) -> int:
        return -1


def test_a_run_assigned_after_class_creation_runs_in_the_child() -> None:
    class Later(Surface, MessageHandler):
        def run(self) -> int:
            return 0

    Later.run = lambda self: os.getpid()  # type: ignore[assignment,method-assign]
    # (Checked after each block: the handler's exit swallows an AssertionError.)
    with handler_of(Later, Forked(kill_grace_s=0.2)) as handler:
        forked = handler.run()
    with handler_of(Later, InProcess()) as handler:
        in_process = handler.run()
    assert forked != os.getpid() and in_process == os.getpid()


def test_a_mixins_run_patched_after_class_creation_is_followed_in_the_child() -> None:
    class Mixin:
        def run(self) -> int:
            return 0

    class Late(Mixin, Surface, MessageHandler):
        pass

    with patch.object(Mixin, "run", lambda self: os.getpid()):
        with handler_of(Late, Forked(kill_grace_s=0.2)) as handler:
            pid = handler.run()
    assert pid != os.getpid()


def test_super_run_from_a_subclass_forks_once() -> None:
    class Base(Surface, MessageHandler):
        def run(self) -> int:
            return os.getpid()

    class Child(Base):
        def run(self) -> Any:
            return [super().run(), os.getpid()]

    with handler_of(Child, Forked(kill_grace_s=0.2)) as handler:
        inner, outer = handler.run()
    assert inner == outer != os.getpid()


def test_a_mock_patched_over_run_is_called_without_self_in_signal_mode() -> None:
    with patch.object(Pid, "run", return_value=7) as run:
        with handler_of(Pid, InProcess()) as handler:
            patched = handler.run()
    run.assert_called_once_with()
    with handler_of(Pid, InProcess()) as handler:
        unpatched = handler.run()
    assert (patched, unpatched) == (7, -1)  # the patch is undone


def test_the_class_is_never_rewrapped_a_patched_run_stays_the_patch_inside_the_block() -> None:
    with patch.object(Pid, "run", return_value=7) as run:
        for strategy in (InProcess(), Forked(kill_grace_s=0.2)):
            with handler_of(Pid, strategy) as handler:
                seen = Pid.run is run
                result = handler.run()
            assert seen and result == 7 and "run" not in vars(handler), strategy
    assert Pid.__dict__["run"].__name__ == "run"  # the class's own function, unwrapped


def test_a_handler_still_mixes_with_a_base_of_another_abc_metaclass() -> None:
    # 0.0.11's MessageHandler is a plain ABC: a class mixing it with a base whose
    # metaclass derives from ABCMeta (a Protocol, a user's own) must still be made.
    import abc
    from typing import Protocol

    from sqstaskmaster.message_handler import MessageHandler

    class Meta(abc.ABCMeta):
        pass

    class Own(metaclass=Meta):
        pass

    class Runs(Protocol):
        def run(self) -> None: ...

    class WithOwn(MessageHandler, Own):
        def run(self) -> None:
            pass

    class WithProtocol(MessageHandler, Runs):
        def run(self) -> None:
            pass

    assert isinstance(WithOwn, Meta) and issubclass(WithProtocol, MessageHandler)
