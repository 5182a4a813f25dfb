"""Packaging: one version, written in cupyflash/__init__.py; the PEP 561 marker shipped; the public API's
annotations resolve. (The CLI's --version is checked against the package's in test_cli.py.)"""
import typing
from pathlib import Path

import pytest

import cupyflash

REPO = Path(cupyflash.__file__).resolve().parent.parent


def _pyproject():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_the_version_is_written_once():
    project = _pyproject()
    assert "version" not in project["project"] and project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "cupyflash.__version__"}


def test_py_typed_ships_with_the_package():
    assert (REPO / "cupyflash" / "py.typed").is_file()
    assert "py.typed" in _pyproject()["tool"]["setuptools"]["package-data"]["cupyflash"]


@pytest.mark.parametrize("name", [n for n in cupyflash.__all__ if callable(getattr(cupyflash, n))
                                  and not isinstance(getattr(cupyflash, n), type)])
def test_public_functions_are_annotated(name):
    fn = getattr(cupyflash, name)
    hints = typing.get_type_hints(fn)  # raises if an annotation names something that does not exist
    assert "return" in hints


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    command = next(line for line in readme.splitlines() if line.startswith("python -m pytest"))
    assert command == "python -m pytest -rs -q tests"  # -rs: every skip with its reason
    assert command in (REPO / ".ci" / "run").read_text().splitlines()
