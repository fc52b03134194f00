#!/usr/bin/env bash
# The tests that fork (isolation, execution, worker, control, operator logs,
# prefetch, reused task children, checkpoints and continuations, the status
# table's writes) on
# Python 3.12 or 3.13, which warn
# (DeprecationWarning) when a process forks while it has more than one thread:
# a worker must have none but its main thread when it forks a task. Other
# DeprecationWarnings are errors. Runs on whichever of them the machine has.
#
# CPython drops the fork warning silently when warnings are errors, so it is
# shown instead ("always") and looked for in pytest's output and in the logs of
# the worker processes the tests start (under --basetemp).
set -euo pipefail
cd "$(dirname "$0")/.."

python_bin=""
for candidate in python3.13 python3.12; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c "" >/dev/null 2>&1; then
        python_bin="$(command -v "$candidate")"
        break
    fi
done
if [ -z "$python_bin" ] && command -v pyenv >/dev/null 2>&1; then
    for candidate in "$(pyenv root)"/versions/3.13*/bin/python "$(pyenv root)"/versions/3.12*/bin/python; do
        if [ -x "$candidate" ]; then
            python_bin="$candidate"
            break
        fi
    done
fi
if [ -z "$python_bin" ]; then
    echo "fork_warnings: no Python 3.12 or 3.13 on this machine; skipping the fork-warning run"
    exit 0
fi
echo "fork_warnings: the tests that fork, on $("$python_bin" --version)"

work_dir="$(mktemp -d)"
"$python_bin" -m venv "$work_dir/venv"
if ! "$work_dir/venv/bin/pip" install -q -e ".[dev]" >"$work_dir/pip.log" 2>&1; then
    cat "$work_dir/pip.log" >&2
    exit 1
fi

fork_warning="is multi-threaded, use of fork"
export PYTHONWARNINGS="always:This process:DeprecationWarning"
# pytest-timeout's thread method would add a thread of its own: off for this run.
# The one test that forks from a second thread on purpose is left out.
status=0
"$work_dir/venv/bin/python" -m pytest -q -p no:timeout -p no:cacheprovider \
    -W error::DeprecationWarning -W "always:This process:DeprecationWarning" \
    --basetemp="$work_dir/tmp" \
    --deselect tests/test_isolation.py::test_isolated_handlers_work_outside_the_main_thread \
    tests/test_isolation.py tests/test_execution.py tests/test_worker.py \
    tests/test_control.py tests/test_operator_logs.py tests/test_prefetch.py \
    tests/test_task_process.py tests/test_continuation.py tests/test_status_worker.py \
    2>&1 | tee "$work_dir/pytest.log" || status=$?
if [ "$status" -ne 0 ]; then
    exit "$status"
fi
if grep -rl "$fork_warning" "$work_dir/pytest.log" "$work_dir/tmp" 2>/dev/null; then
    echo "fork_warnings: a process forked while it had threads (files above)" >&2
    exit 1
fi
echo "fork_warnings: no fork with threads"
