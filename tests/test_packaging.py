"""Installing fedrec puts only the ``fedrec`` package into site-packages, typed."""

from __future__ import annotations

import json
from importlib import import_module, metadata
from pathlib import Path

import pytest


def test_subpackages_are_namespaced() -> None:
    for name in ("client", "server", "shared", "simulations"):
        module = import_module(f"fedrec.{name}")
        assert module.__name__ == f"fedrec.{name}"


def test_no_generic_top_level_modules_are_installed() -> None:
    distribution = metadata.distribution("fedrec")
    direct_url = json.loads(distribution.read_text("direct_url.json") or "{}")
    installed = Path(str(distribution.locate_file(""))).name == "site-packages"
    if not installed or direct_url.get("dir_info", {}).get("editable"):
        pytest.skip("not an installed wheel (editable or source tree); tox installs a wheel")
    tops = {Path(str(f)).parts[0] for f in distribution.files or []}
    assert {t for t in tops if not t.endswith(".dist-info") and t != ".."} == {"fedrec"}


def test_ships_py_typed() -> None:
    import fedrec

    assert (Path(fedrec.__file__).parent / "py.typed").is_file()


def test_console_script_is_declared() -> None:
    scripts = {e.name: e.value for e in metadata.entry_points(group="console_scripts")}
    assert scripts.get("fedrec") == "fedrec.cli:main"
