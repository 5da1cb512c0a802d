"""The command line: exit codes, one-line errors, `space` commands, `--debug`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from inprocess_cli import run_cli

from nasforge.cli import main
from nasforge.errors import NasforgeError


def run_cli_subprocess(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m nasforge ARGS`` in a fresh interpreter: for what only a real process's stderr shows."""
    return subprocess.run([sys.executable, "-m", "nasforge", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_version() -> None:
    res = run_cli("--version")
    assert res.returncode == 0 and res.stdout.startswith("nasforge ")


def test_space_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["space", "list", "--json"]) == 0
    names = [e["name"] for e in json.loads(capsys.readouterr().out)]
    assert {"mbv3-small", "ofa-mbv3-w1.0", "ofa-mbv3-w1.2"} <= set(names)


def test_space_describe_ofa_reference_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    largest = json.dumps({"ks": [7] * 20, "e": [6] * 20, "d": [4] * 5})
    assert main(["space", "describe", "ofa-mbv3-w1.0", "--arch", largest, "--resolution", "224",
                 "--num-classes", "1000", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["params"], out["macs"]) == (7_664_760, 566_170_656)
    smallest = json.dumps({"ks": [3] * 20, "e": [3] * 20, "d": [2] * 5, "r": 128})
    assert main(["space", "describe", "ofa-mbv3-w1.0", "--arch", smallest, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"] == 3_410_792


def test_space_describe_reads_arch_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arch = tmp_path / "a.json"
    arch.write_text(json.dumps({"ks": [7] * 20, "e": [6] * 20, "d": [4] * 5}))
    assert main(["space", "describe", "ofa-mbv3-w1.2", "--arch", str(arch), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["macs"] == 843_101_040


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["space", "describe", "nope"], "unknown supernet"),
        (["space", "describe", "mbv3-small", "--arch", '{"ks": [9]}'], "'ks'"),
        (["space", "describe", "mbv3-small", "--arch", "{bad json"], "not valid JSON"),
        (["space", "describe", "mbv3-small", "--arch", "missing.json"], "does not exist"),
        (["run", "--config", "missing.yaml"], "does not exist"),
        (["run", "--resume"], "--out"),
        (["run", "--epochs", "0", "--out", "x"], "--epochs 0 is invalid"),
    ],
)
def test_bad_input_gives_one_line_and_exit_2(args: list[str], needle: str, tmp_path: Path) -> None:
    res = run_cli(*args, cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert needle in lines[0]


def test_a_foreign_pickle_is_one_line_without_torch_warnings(tmp_path: Path) -> None:
    """torch warns "Detected pickle protocol 4" on a plain pickle; the one-line error must stand alone."""
    import pickle

    (tmp_path / "foreign.pt").write_bytes(pickle.dumps({"weights": [1.0, 2.0]}, protocol=4))
    # A subprocess: pytest records warnings instead of printing them, so only a real process shows torch's.
    res = run_cli_subprocess("search", "foreign.pt", "--data", "digits", "--out", "s", "--trials", "1", cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Warning" not in res.stderr and "foreign.pt" in lines[0], res.stderr


def test_a_refused_run_prints_only_the_refusal(tmp_path: Path) -> None:
    """The "run folder" banner comes after the checks: a refused run prints its one line and nothing else."""
    from nasforge.config import RunConfig, save_config

    save_config(RunConfig(), tmp_path / "r" / "config.yaml")
    res = run_cli("run", "--out", "r", cwd=tmp_path)
    assert res.returncode == 2 and "already holds a run" in res.stderr
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("nasforge: error: "), res.stderr
    (tmp_path / "bad.yaml").write_text("search: {sampler: nsga4}\n")
    res = run_cli("run", "--config", "bad.yaml", "--out", "new", cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "nsga4" in res.stderr, res.stderr
    assert not (tmp_path / "new").exists()


def test_progress_lines_keep_long_paths_whole() -> None:
    """Off a terminal, rich would wrap at 80 columns and cut a run folder's path in two."""
    from io import StringIO

    from rich.console import Console

    from nasforge.progress import ProgressReporter

    buf = StringIO()
    reporter = ProgressReporter(console=Console(file=buf, width=40))
    line = "nasforge 0.1: run folder /tmp/" + "x" * 60 + "; resuming: training is finished"
    reporter.log(line)
    with reporter.task("search", total=2) as task:
        task.update(1, "trial 0 complete " + "y" * 60)
    assert line + "\n" in buf.getvalue()
    assert all(len(row) > 40 for row in buf.getvalue().splitlines()), buf.getvalue()


def test_debug_shows_traceback(tmp_path: Path) -> None:
    """With ``--debug`` the error is re-raised, so the interpreter prints its traceback."""
    with pytest.raises(NasforgeError, match="unknown supernet"):
        run_cli("space", "describe", "nope", "--debug", cwd=tmp_path)


def test_unknown_config_key_exit_2(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("train:\n  epochz: 3\n")
    res = run_cli("run", "--config", "c.yaml", "--out", "r", cwd=tmp_path)
    assert res.returncode == 2 and "epochz" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("spec", ["folder:does-not-exist", "cifar10:nowhere", "imagenet", "digits?bogus=1"])
def test_bad_data_spec_exit_2_and_nothing_written(tmp_path: Path, spec: str) -> None:
    (tmp_path / "c.yaml").write_text(f"data:\n  spec: '{spec}'\n")
    res = run_cli("run", "--config", "c.yaml", "--out", "r", "--quiet", cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_bad_supernet_option_exit_2_and_nothing_written(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("supernet:\n  options: {stem_widht: 8}\n")
    res = run_cli("run", "--config", "c.yaml", "--out", "r", "--quiet", cwd=tmp_path)
    assert res.returncode == 2 and "stem_widht" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------ numbers are checked when the line is parsed

_BAD_NUMBERS = [
    (["prune", "zoo:resnet8", "--out", "o", "--finetune-epochs", "-1"], "--finetune-epochs -1 is invalid; pass an integer >= 0"),
    (["prune", "zoo:resnet8", "--out", "o", "--round-to", "0"], "--round-to 0 is invalid; pass an integer >= 1"),
    (["prune", "zoo:resnet8", "--out", "o", "--round-to", "-4"], "--round-to -4 is invalid"),
    (["prune", "zoo:resnet8", "--out", "o", "--lr", "nan"], "--lr nan is invalid; pass a finite number > 0"),
    (["prune", "zoo:resnet8", "--out", "o", "--steps", "two"], "--steps two is invalid"),
    (["prune", "meta-train", "--data", "digits", "--out", "m.pt", "--meta-steps", "0"], "--meta-steps 0 is invalid"),
    (["quantize", "m.onnx", "--out", "q.onnx", "--calib-samples", "0"], "--calib-samples 0 is invalid"),
    (["quantize", "m.onnx", "--out", "q.onnx", "--qat-lr", "-0.001"], "--qat-lr -0.001 is invalid"),
    (["quantize", "m.onnx", "--out", "q.onnx", "--batch", "1,0"], "--batch 1,0 is invalid"),
    (["run", "--trials", "0"], "--trials 0 is invalid"),
    (["run", "--seed", "-1"], "--seed -1 is invalid; pass an integer >= 0"),
    (["train", "mbv3-small", "--lr", "inf"], "--lr inf is invalid"),
    (["train", "mbv3-small", "--batch-size", "0"], "--batch-size 0 is invalid"),
    (["train", "mbv3-small", "--scale", "-0.5"], "--scale -0.5 is invalid"),
    (["search", "runs/x", "--workers", "0"], "--workers 0 is invalid"),
    (["space", "describe", "mbv3-small", "--resolution", "4"], "--resolution 4 is invalid; pass an integer >= 8"),
    (["profile", "m.onnx", "--runs", "0"], "--runs 0 is invalid"),
    (["profile", "m.onnx", "--warmup", "-1"], "--warmup -1 is invalid"),
    (["profile", "m.onnx", "--input-shape", "3,0,8"], "--input-shape 3,0,8 is invalid"),
    (["export", "runs/x", "--out", "x.onnx", "--atol", "inf"], "--atol inf is invalid"),
    (["latency", "build-table", "mbv3-small", "--runs", "0"], "--runs 0 is invalid"),
    (["latency", "validate", "mbv3-small", "--table", "t.json", "--samples", "0"], "--samples 0 is invalid"),
    (["data", "pack", "src", "--out", "o", "--shard-mb", "inf"], "--shard-mb inf is invalid"),
    (["data", "describe", "digits", "--image-size", "0"], "--image-size 0 is invalid"),
]


@pytest.mark.parametrize(("args", "needle"), _BAD_NUMBERS, ids=[" ".join(a[:1] + a[-2:]) for a, _ in _BAD_NUMBERS])
def test_bad_numbers_are_refused_at_parse_time(args: list[str], needle: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nasforge: error: ") and needle in lines[0], err
    assert lines[0].endswith(" --help`)")  # the usage line says where to look


def test_help_lists_registry_choices_that_load_lazily(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prune", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "resnet20" in out and "l2" in out and "gmn" in out
    assert main(["quantize", "--help"]) == 0
    assert "minmax, entropy, percentile" in " ".join(capsys.readouterr().out.split())
    assert main(["prune", "zoo:resnet8", "--out", "o", "--criterion", "nope"]) == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- run --config, --resume


def test_run_config_that_is_not_text_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "image.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    assert main(["run", "--config", str(png), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not UTF-8 text" in err and "Traceback" not in err, err
    assert not (tmp_path / "r").exists()


@pytest.fixture
def recorded_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[Any]]:
    """A run folder whose config.yaml differs from the defaults, and ``run_pipeline`` replaced by a stub that
    records the config :func:`prepare_run_dir` settles on (nothing is trained)."""
    import nasforge.pipeline
    import nasforge.report
    from nasforge.config import RunConfig, save_config

    out = tmp_path / "run"
    out.mkdir()
    original = RunConfig().with_overrides(train__epochs=2, search__trials=3, seed=5, data__image_size=12)
    save_config(original, out / "config.yaml")
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "last.pt").write_bytes(b"")  # training has started: its settings are fixed
    used: list[Any] = []

    def fake_run(cfg: Any, folder: Any, *, resume: bool = False, reporter: Any = None) -> str:
        used.append(nasforge.pipeline.prepare_run_dir(Path(folder), cfg, resume))
        return "summary"

    monkeypatch.setattr(nasforge.pipeline, "run_pipeline", fake_run)
    monkeypatch.setattr(nasforge.report, "print_summary", lambda summary: None)
    return out, used


def test_resume_needs_no_repeated_options(recorded_run: tuple[Path, list[Any]],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from nasforge.config import load_config

    out, used = recorded_run
    saved = load_config(out / "config.yaml")
    assert main(["run", "--resume", "--out", str(out), "--quiet"]) == 0, capsys.readouterr().err
    assert used[-1] == saved
    assert main(["run", "--resume", "--out", str(out), "--trials", "9", "--quiet"]) == 0
    assert used[-1] == saved.with_overrides(search__trials=9)
    assert main(["run", "--resume", "--out", str(out), "--seed", "5", "--epochs", "2", "--quiet"]) == 0
    assert used[-1] == saved


@pytest.mark.parametrize(("args", "needle"), [(["--epochs", "4"], "train.epochs (2 saved, 4 given)"),
                                              (["--seed", "0"], "seed (5 saved, 0 given)")])
def test_resume_refuses_options_that_change_the_run(recorded_run: tuple[Path, list[Any]], args: list[str],
                                                    needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    out, used = recorded_run
    assert main(["run", "--resume", "--out", str(out), *args, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err and "--trials may change" in err, err
    assert used == []


def test_resume_with_the_original_config_file(recorded_run: tuple[Path, list[Any]], tmp_path: Path) -> None:
    out, used = recorded_run
    config = tmp_path / "c.yaml"
    config.write_text("seed: 5\ndata: {image_size: 12}\ntrain: {epochs: 2}\nsearch: {trials: 3}\n")
    assert main(["run", "--config", str(config), "--resume", "--out", str(out), "--quiet"]) == 0
    assert used[-1].seed == 5 and used[-1].train.epochs == 2
