"""Durable writes and the run folder's JSON readers (fedrec.shared.files)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from fedrec.shared.files import (
    check_output_folder,
    json_number,
    json_object,
    read_json,
    read_json_lines,
    write_atomic,
    write_json,
)


def test_write_json_round_trips_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "summary.json"
    write_json(target, {"hr@10": 0.25, "rounds": [1, 2]})
    write_json(target, {"hr@10": 0.5})
    assert read_json(target) == {"hr@10": 0.5}
    assert target.read_text(encoding="utf-8").endswith("}\n")
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]
    if os.name != "nt":  # a result anyone may read; a store or key stays the owner's
        assert stat.S_IMODE(target.stat().st_mode) == 0o644
        write_atomic(tmp_path / "store", b"secret")
        assert stat.S_IMODE((tmp_path / "store").stat().st_mode) == 0o600


def test_a_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "budgets.json"
    write_json(target, {"0": 1.5})

    with pytest.raises(TypeError):
        write_json(target, {"0": object()})  # not JSON: nothing is written

    def crash(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        write_json(target, {"0": 2.5})
    assert read_json(target) == {"0": 1.5}
    assert [p.name for p in tmp_path.iterdir()] == ["budgets.json"]


def test_read_json_names_the_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "privacy.json"
    bad.write_text('{\n  "epsilon": ,\n}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"privacy\.json, line 2: invalid JSON"):
        read_json(bad)


def test_read_json_lines_names_the_first_bad_line(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"round": 1}\n\n[2]\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"line 3: expected a JSON object"):
        read_json_lines(metrics)
    metrics.write_text('{"round": 1}\n{"loss": 2}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"line 2: missing round"):
        read_json_lines(metrics, keys=("round",))
    metrics.write_text('{"round": 1}\n\n{"round": 2}\n', encoding="utf-8")
    assert read_json_lines(metrics, keys=("round",)) == [{"round": 1}, {"round": 2}]


def test_json_values_are_checked_with_errors_that_name_them(tmp_path: Path) -> None:
    assert json_object({"a": 1}, "x") == {"a": 1}
    assert json_number(3, "x") == 3.0
    with pytest.raises(ValueError, match=r"summary.json settings must be a JSON object, got 5"):
        json_object(5, "summary.json settings")
    for bad in (True, "1", None, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="round 1 hr@10 must be a number"):
            json_number(bad, "round 1 hr@10")
    check_output_folder(tmp_path, "the run folder")
    check_output_folder(tmp_path / "new", "the run folder")
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ValueError, match=r"the run folder .*a-file is a file, not a folder"):
        check_output_folder(tmp_path / "a-file", "the run folder")
