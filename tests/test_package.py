"""The package itself: cheap import without boto3, lazy names, loggers, version."""

from __future__ import annotations

import importlib
import json
import logging
import subprocess
import sys
import textwrap

import pytest

import sqstaskmaster
import sqstaskmaster.version

COMPAT_MODULES = {
    "sqstaskmaster.task_manager": ["TaskManager"],
    "sqstaskmaster.message_handler": ["MessageHandler"],
    "sqstaskmaster.local": ["LocalQueue", "LocalMessage"],
    "sqstaskmaster.queue_scale": ["Provisioner", "ServiceState"],
}


def run_python(code: str) -> str:
    completed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout.strip().splitlines()[-1]


def test_version() -> None:
    assert sqstaskmaster.version.__version__ == "0.1.0"
    assert sqstaskmaster.__version__ == "0.1.0"
    assert "__version__" in sqstaskmaster.__all__


def test_import_works_without_boto3_and_stays_cheap() -> None:
    # sys.modules[name] = None makes "import name" raise ImportError, as if not installed.
    out = run_python(
        """
        import json, sys
        for name in ("boto3", "botocore"):
            sys.modules[name] = None
        try:
            import boto3
        except ImportError:
            pass
        else:
            raise SystemExit("boto3 was importable")
        import sqstaskmaster
        loaded = sorted(
            name for name in sys.modules
            if name.startswith("sqstaskmaster.") and sys.modules[name] is not None
        )
        print(json.dumps({"version": sqstaskmaster.__version__, "loaded": loaded}))
        """
    )
    result = json.loads(out)
    assert result["version"] == "0.1.0"
    # None of the modules behind the lazy names came along.
    assert "sqstaskmaster.version" in result["loaded"]
    assert not set(result["loaded"]) & set(COMPAT_MODULES)


def test_import_does_not_import_boto3() -> None:
    out = run_python(
        """
        import sys
        import sqstaskmaster
        print(sorted(n for n in ("boto3", "botocore", "moto") if n in sys.modules))
        """
    )
    assert out == "[]"


@pytest.mark.parametrize("name", [n for n in sqstaskmaster.__all__ if n != "__version__"])
def test_lazy_names_resolve(name: str) -> None:
    value = getattr(sqstaskmaster, name)
    assert getattr(value, "__name__", None) == name
    assert name in dir(sqstaskmaster)


def test_compat_names_are_in_all_and_the_same_objects() -> None:
    for module_name, names in COMPAT_MODULES.items():
        module = importlib.import_module(module_name)
        for name in names:
            assert name in sqstaskmaster.__all__
            assert getattr(sqstaskmaster, name) is getattr(module, name)


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        sqstaskmaster.no_such_name  # noqa: B018
    with pytest.raises(ImportError):
        from sqstaskmaster import no_such_name  # noqa: F401


@pytest.mark.parametrize("module_name", sorted(COMPAT_MODULES))
def test_each_module_has_a_logger_named_after_it(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert isinstance(module.logger, logging.Logger)
    assert module.logger.name == module_name
    assert module.logger is logging.getLogger(module_name)


def _readme_section(title: str) -> str:
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def test_readme_says_how_to_install_0_1_rather_than_the_index() -> None:
    # The package index serves 0.0.11 under this name: the README must not
    # promise 0.1 from a plain `pip install sqstaskmaster`.
    install = _readme_section("Install")
    assert "not on the package index" in install
    assert "pip install ." in install and "pip wheel" in install
    assert "\npip install sqstaskmaster\n" not in install


def test_readme_says_how_a_command_reaches_the_test_server() -> None:
    testing = _readme_section("Testing your code against a real SQS-compatible server")
    assert "server.environment" in testing and "--endpoint-url" in testing
    assert "--sqs-endpoint" in testing and "SQSTASKMASTER_TEST_ENDPOINT" in testing
