"""``sqstaskmaster demo --json``: the README's first command keeps the three promises."""

from __future__ import annotations

import json
import subprocess
import sys

from sqstaskmaster.cli.demo_report import overlapping_runs, summarize


def test_demo_summary_counts_every_outcome_and_loses_nothing() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sqstaskmaster", "demo", "--json"],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary == {
        "done": 8,  # 6 x add, flaky (on its retry), crunch (past 3 x its visibility timeout)
        "retried": 3,  # flaky, python_spin, native_spin
        "timed_out": 2,  # python_spin, native_spin
        "dead_lettered": 3,  # the two spins and the malformed message
        "lost": 0,
        "duplicates": 0,
    }, result.stderr[-3000:]


def test_summary_detects_lost_messages_and_overlapping_runs() -> None:
    # The measurement itself must be able to report a failure.
    submitted = {"body-a": "a", "body-b": "b", "junk": ""}
    runs = {
        "a": [
            {"start": 0.0, "end": 5.0, "ok": True},
            {"start": 4.0, "end": 6.0, "ok": True},  # started while the first still ran
        ],
    }
    summary = summarize(submitted, runs, dead_bodies=["junk"])
    assert summary["done"] == 1 and summary["lost"] == 1 and summary["duplicates"] == 1
    killed_then_rerun = [{"start": 0.0, "end": None, "alongside": []}, {"start": 1.0, "end": 2.0}]
    assert overlapping_runs(killed_then_rerun) == 0
    killed_then_rerun[1]["alongside"] = [1234]  # the first run's process was still alive
    assert overlapping_runs(killed_then_rerun) == 1
