"""``sqstaskmaster demo --json``: the README's first command keeps the three promises,
and shows a resumable task crossing its ``--continue-after`` boundary."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

from sqstaskmaster.cli.demo_report import overlapping_runs, summarize, training_line


def test_demo_summary_counts_every_outcome_and_loses_nothing() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sqstaskmaster", "demo", "--json", "--continue-after", "1.5"],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    # train's 10 epochs of 0.5 s cross the 1.5 s boundary (timing decides how often).
    continued = summary.pop("continued")
    assert continued >= 1, result.stderr[-3000:]
    assert summary == {
        "done": 9,  # 6 x add, train, flaky (on its retry), crunch (past 3 x its visibility timeout)
        "retried": 3,  # flaky, python_spin, native_spin (train's continuations are new messages)
        "timed_out": 2,  # python_spin, native_spin
        "dead_lettered": 3,  # the two spins and the malformed message
        "lost": 0,
        "duplicates": 0,
    }, result.stderr[-3000:]
    # The human output (stderr with --json) shows each of train's messages, in order.
    lines = result.stderr.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("train-"))
    assert "--continue-after is 1.5 s" in lines[header]
    runs = list(itertools.takewhile(str.strip, lines[header + 1 :]))
    assert runs[0].split()[:2] == ["first", "message"] and "goes on in a new message" in runs[0]
    assert runs[1].split()[:2] == ["continuation", "1"] and "resumed from epoch" in runs[1]
    assert sum("goes on in a new message" in line for line in runs) == continued, runs
    assert "resumed from epoch" in runs[-1] and "finished all 10 epochs" in runs[-1], runs


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
    assert summary["retried"] == 1 and summary["continued"] == 0
    killed_then_rerun = [{"start": 0.0, "end": None, "alongside": []}, {"start": 1.0, "end": 2.0}]
    assert overlapping_runs(killed_then_rerun) == 0
    killed_then_rerun[1]["alongside"] = [1234]  # the first run's process was still alive
    assert overlapping_runs(killed_then_rerun) == 1


def test_continuations_are_not_retries_and_each_run_says_where_it_resumed() -> None:
    # Given a resumable task's three messages, the second one received twice
    # (its first run killed), each run noting its continuation and epochs.
    first = {"start": 0.0, "end": 1.0, "continuation": 0, "resumed_from": 0, "epoch": 4}
    first["continued"] = True
    killed = {"start": 1.5, "end": None, "continuation": 1, "resumed_from": 4}
    second = {"start": 5.0, "end": 6.0, "continuation": 1, "resumed_from": 4, "epoch": 8}
    second["continued"] = True
    last = {"start": 6.5, "end": 7.0, "continuation": 2, "resumed_from": 8, "epoch": 10}
    last["ok"] = True
    runs = [first, killed, second, last]
    # When the summary counts them
    summary = summarize({"body": "train"}, {"train": runs}, dead_bodies=[])
    # Then two continuations, one retry (continuation 1, twice), the task done
    assert summary["continued"] == 2 and summary["retried"] == 1 and summary["done"] == 1
    assert summarize({"body": "train"}, {"train": [first, second, last]}, [])["retried"] == 0
    assert [training_line(run, 10).split(None, 2)[2] for run in runs] == [
        "started at epoch 0, ran epochs 1-4; asked to stop: goes on in a new message",
        "resumed from epoch 4, stopped before it ended (killed)",
        "resumed from epoch 4, ran epochs 5-8; asked to stop: goes on in a new message",
        "resumed from epoch 8, ran epochs 9-10: finished all 10 epochs",
    ]
