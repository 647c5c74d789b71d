"""The ``fedrec`` command, run as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedrec.cli import _report_failures, main
from fedrec.server.federation import ROUND_FIELDS
from fedrec.shared.federated.settings import FederationSettings


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedrec", *args], capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["evaluate"],
        ["train"],
        ["bench"],
        ["bench", "rank"],
        ["bench", "feedback"],
        ["data"],
        ["data", "describe"],
        ["simulate"],
        ["privacy-report"],
        ["privacy-study"],
        ["privacy-audit"],
        ["privacy-signal"],
        ["update-norms"],
        ["pooled"],
    ],
)
def test_every_command_has_help(command: list[str]) -> None:
    done = run(*command, "--help")
    assert done.returncode == 0 and "usage: fedrec" in done.stdout


def small_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "items.csv").write_text(
        "item_id,text\n" + "".join(f"i{j},item number {j}\n" for j in range(6)), encoding="utf-8"
    )
    rows = "".join(f"u{u},i{(u + t) % 6},{t}\n" for u in range(5) for t in range(4))
    (folder / "interactions.csv").write_text("user_id,item_id,timestamp\n" + rows, "utf-8")
    return folder


def test_evaluate_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, data = tmp_path / "result.json", str(small_folder(tmp_path))
    code = main(["evaluate", "--data", data, "--model", "ease", "--json", str(out)])
    assert code == 0
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["model"] == "ease(lambda=100)" and result["users"] == 5
    assert set(result["metrics"]) == {"hr@10", "ndcg@10", "mrr", "coverage@10"}
    assert all(len(bounds) == 2 for bounds in result["ci95"].values())
    assert "hr@10" in capsys.readouterr().out
    centred = ["evaluate", "--data", data, "--model", "frozen", "--center", "--json", str(out)]
    assert main(centred) == 0
    assert json.loads(out.read_text(encoding="utf-8"))["model"] == "frozen(last=5, centred)"


def test_bad_data_spec_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--data", "nowhere", "--model", "popularity"]) == 2
    assert "fedrec: error: no folder 'nowhere' (and no data spec" in capsys.readouterr().err
    assert main(["evaluate", "--data", "foo:bar", "--model", "popularity"]) == 2
    assert "fedrec: error: unknown data spec 'foo:bar'" in capsys.readouterr().err
    for seed in ("", "x", "-1", "1.5", "\u00b2"):
        assert main(["data", "describe", f"demo:{seed}"]) == 2
        assert f"demo seed must be a non-negative integer, got {seed!r}" in capsys.readouterr().err


def test_a_folder_named_like_the_demo_data_is_not_silently_replaced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()
    assert main(["data", "describe", "demo"]) == 2
    assert "there is also a folder 'demo': write ./demo for the folder" in capsys.readouterr().err


def test_data_without_a_user_to_evaluate_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every user needs 3 distinct items (history, validation, test); with none, metrics
    would be NaN in a --json file no strict parser reads."""
    folder = tmp_path / "short"
    folder.mkdir()
    (folder / "items.csv").write_text("item_id,text\na,Jazz\nb,Tea\n")
    (folder / "interactions.csv").write_text("user_id,item_id,timestamp\nu,a,1\nu,b,2\n")
    out = tmp_path / "o.json"
    args = ["evaluate", "--data", str(folder), "--model", "popularity", "--json", str(out)]
    assert main(args) == 2
    assert "no user with 3 or more distinct items" in capsys.readouterr().err
    assert not out.exists()


def test_bad_file_error_names_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = small_folder(tmp_path)
    with (folder / "interactions.csv").open("a", encoding="utf-8") as out:
        out.write("u9,missing,5\n")
    assert main(["data", "describe", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "interactions.csv, line 22: unknown item 'missing'" in err


def test_data_export_then_describe(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "exported"
    assert main(["data", "export", str(small_folder(tmp_path)), str(out), "--format", "jsonl"]) == 0
    assert (out / "items.jsonl").is_file()
    assert main(["data", "describe", str(out)]) == 0
    assert "5 users, 6 items, 20 interactions" in capsys.readouterr().out


def test_privacy_report_of_a_folder_that_is_no_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["privacy-report", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "is not a finished fedrec run" in error and "summary.json" in error


def test_privacy_report_names_the_line_of_a_damaged_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    summary = {"settings": FederationSettings().to_run_config(), "metrics": {}, "ci95": {}}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    line = {field: None for field in ROUND_FIELDS}
    for text, message in [
        (json.dumps(line) + "\n{bad\n", "metrics.jsonl, line 2: invalid JSON"),
        (json.dumps(line) + '\n{"round": 2}\n', "metrics.jsonl, line 2: missing wall_s, devices"),
        ("[1, 2]\n", "metrics.jsonl, line 1: expected a JSON object"),
        ("", "metrics.jsonl has no rounds"),
    ]:
        (tmp_path / "metrics.jsonl").write_text(text)
        assert main(["privacy-report", str(tmp_path)]) == 2
        assert message in capsys.readouterr().err
    (tmp_path / "summary.json").write_text("{")
    assert main(["privacy-report", str(tmp_path)]) == 2
    assert "summary.json, line 1: invalid JSON" in capsys.readouterr().err


def test_outputs_that_cannot_be_written_fail_before_the_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = str(small_folder(tmp_path))
    for path, message in [
        (tmp_path, "is a folder, not a file"),
        (tmp_path / "nowhere" / "r.json", "no folder"),
    ]:
        assert main(["evaluate", "--data", data, "--model", "popularity", "--json", str(path)]) == 2
        captured = capsys.readouterr()
        assert message in captured.err and "hr@10" not in captured.out  # nothing evaluated
    a_file = tmp_path / "a-file"
    a_file.write_text("keep me")
    for args, message in [
        (["simulate", "--out", str(a_file)], "is a file, not a folder"),
        (["simulate", "--out", str(tmp_path / "r"), "--set", "out=elsewhere"], "with --out"),
        (["simulate", "--out", str(tmp_path / "r"), "--set", "data=demo:3"], "with --data"),
        (["data", "export", data, str(a_file)], "is a file, not a folder"),
        (["data", "export", data, data], "already holds items.csv, interactions.csv"),
    ]:
        assert main(args) == 2
        assert message in capsys.readouterr().err
    assert a_file.read_text() == "keep me" and not (tmp_path / "r").exists()
    # an error of the file system or the encoder's folder is a clear error too, not a traceback
    args = ["evaluate", "--data", data, "--model", "frozen", "--encoder", str(tmp_path / "none")]
    assert main(args) == 2
    assert "fedrec: error: model" in capsys.readouterr().err


def test_simulate_refuses_trained_parts_that_name_no_module(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["simulate", "--out", str(tmp_path / "run"), "--trained", "items,users.lstmm"]
    assert main(args) == 2
    assert "trained parts ['users.lstmm'] name no module" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_set_overrides_run_config_keys_after_every_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import fedrec.simulations.run as run_module

    seen = []

    def fake_simulate(settings: FederationSettings) -> dict[str, object]:
        seen.append(settings)
        metrics = {"hr@10": 0.0, "ndcg@10": 0.0}
        summary = {"metrics": metrics, "wall_s": 0.0, "epsilon_max": None}
        return {**summary, "bytes_up_per_device_round": 0}

    monkeypatch.setattr(run_module, "simulate", fake_simulate)
    args = ["simulate", "--data", "movielens:x", "--rounds", "60", "--no-dp", "--out"]
    sets = ["local-max-examples=256", "local-batch-size=32", "server-learning-rate=1"]
    extra = ["--trained", "items", "--set", "local-trained=users.recency", "--set", "rounds=40"]
    assert main([*args, str(tmp_path), *[f"--set={s}" for s in sets], *extra]) == 0
    (settings,) = seen
    assert (settings.local.max_examples, settings.local.batch_size) == (256, 32)
    assert settings.server_learning_rate == 1.0 and settings.rounds == 40
    assert settings.local.trained == "users.recency" and not settings.privacy.enabled
    assert settings.devices == 610 and settings.fraction_train == 0.2  # the data set's defaults
    assert settings.strategy == "fedadam" and settings.server_schedule == "cosine"  # without DP
    seen.clear()
    assert main(["simulate", "--data", "movielens:x", "--out", str(tmp_path)]) == 0
    assert main([*args[:-1], "--strategy", "fedavg", "--out", str(tmp_path)]) == 0
    assert main([*args[:-2], "--out", str(tmp_path), "--set", "dp-enabled=false"]) == 0
    assert main([*args, str(tmp_path), "--set", "user-dp-enabled=true"]) == 0
    assert main([*args, str(tmp_path), "--user-dp", "--trained", "all"]) == 0
    assert main([*args[:-2], "--distributed-dp", "--out", str(tmp_path)]) == 0
    assert main([*args[:-2], "--out", str(tmp_path), "--set", "dp-distributed=true"]) == 0
    private, chosen, set_off, user_level, user_level_all, *distributed = seen
    for shared_noise in distributed:  # one DP-SGD step a round, stepped as fedrec pooled does
        assert shared_noise.privacy.distributed and shared_noise.rounds == 60
        assert (shared_noise.server_momentum, shared_noise.server_schedule) == (0.9, "cosine")
        assert shared_noise.model.center_features and shared_noise.noise_shares == 110
    assert (user_level.strategy, user_level.user_privacy.enabled) == ("fedavg", True)
    assert user_level.local.trained == "users.recency"  # the user-level default
    assert user_level_all.user_privacy.enabled and user_level_all.local.trained == "all"
    assert (private.strategy, private.rounds, private.privacy.enabled) == ("fedavg", 25, True)
    assert (chosen.strategy, chosen.rounds, chosen.local.optimizer) == ("fedavg", 60, "sgd")
    assert (set_off.strategy, set_off.privacy.enabled) == ("fedadam", False)
    for bad, message in [
        ("local-batch-size=abc", "run-config key 'local-batch-size' takes an integer, got 'abc'"),
        ("dp-enabled=1", "run-config key 'dp-enabled' takes true or false, got 1"),
        ("local-batchsize=3", "unknown run-config keys ['local-batchsize']"),
        ("rounds", "--set takes KEY=VALUE, got 'rounds'"),
    ]:
        assert main(["simulate", "--out", str(tmp_path), "--set", bad]) == 2
        assert message in capsys.readouterr().err
    assert len(seen) == 7  # no bad --set reached a federation


@pytest.mark.parametrize("seed", ["-1", "x", str(2**40)])
def test_a_seed_out_of_range_is_named(seed: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["evaluate", "--data", "demo", "--model", "popularity", "--seed", seed])
    assert exited.value.code == 2
    assert f"argument --seed: must be an integer in [0, 4294967295], got '{seed}'" in (
        capsys.readouterr().err
    )


def test_simulate_warns_of_rounds_that_changed_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def round_(number: int, devices: int, failed: int, applied: bool) -> dict[str, object]:
        return {
            "round": number,
            "devices": devices,
            "failed": failed,
            "dropped": 0,
            "applied": applied,
        }

    assert _report_failures([round_(1, 3, 0, True), round_(2, 3, 1, True)], tmp_path) == 0
    assert capsys.readouterr().err == ""
    assert _report_failures([round_(1, 3, 3, False), round_(2, 3, 0, True)], tmp_path) == 0
    assert "rounds [1] changed nothing (3 failed device rounds" in capsys.readouterr().err
    assert _report_failures([round_(1, 3, 3, False), round_(2, 2, 2, False)], tmp_path) == 1
    assert "every device failed in every round" in capsys.readouterr().err


def test_an_unwritable_json_path_or_an_infinite_rate_fails_before_the_work(
    capsys: pytest.CaptureFixture[str],
) -> None:
    if Path("/proc").is_dir():  # a folder no file can be made in, even by root
        assert (
            main(["evaluate", "--data", "demo", "--model", "popularity", "--json", "/proc/x.json"])
            == 2
        )
        assert "--json /proc/x.json: cannot write in /proc" in capsys.readouterr().err
    assert main(["train", "--central", "--data", "demo", "--learning-rate", "inf"]) == 2
    assert "learning_rate must be a finite number > 0, got inf" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("model", "option", "flag"),
    [
        ("popularity", ["--ease-lambda", "-1"], "--ease-lambda applies to --model ease only"),
        ("ease", ["--last", "3"], "--last applies to --model frozen only"),
        ("popularity", ["--encoder", "/nowhere"], "--encoder applies to --model frozen only"),
        ("ease", ["--max-length", "16"], "--max-length applies to --model frozen only"),
        ("popularity", ["--center"], "--center applies to --model frozen only"),
    ],
)
def test_an_option_of_another_model_is_an_error(
    model: str, option: list[str], flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["evaluate", "--data", "demo", "--model", model, *option]) == 2
    assert flag in capsys.readouterr().err


def test_a_budget_no_noise_can_keep_fails_before_any_round(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Devices plan their noise for the run's rounds: where no noise keeps them within the
    target, every device would fail every round, so the run does not start."""
    out = tmp_path / "run"
    args = ["simulate", "--data", "demo", "--devices", "4", "--rounds", "5"]
    assert main([*args, "--target-epsilon", "0.001", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "devices cannot plan DP noise for 5 rounds at epsilon 0.001" in err
    assert not out.exists()
