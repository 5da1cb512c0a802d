"""Composition: quantize-in-the-loop search (int8_accuracy, int8_latency_ms) and `nasforge run`'s compress stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from nasforge.config import RunConfig, config_from_dict, load_config, save_config
from nasforge.errors import ConfigError
from nasforge.nas import parse_objective
from nasforge.pipeline import RunSummary, prepare_run_dir, run_pipeline

# a tiny mbv3-small (as in test_search_cli.py): one epoch on digits takes a few seconds on one core
OPTIONS = {"stem_width": 8, "first_block_width": 8, "stages": [[16, 2, "relu", False], [24, 2, "hswish", True]],
           "kernel_sizes": [3, 5], "expand_ratios": [2, 4], "depths": [1, 2], "resolutions": [12, 16],
           "final_expand_width": 48, "feature_width": 64}


@pytest.fixture(scope="module")
def compose_run(tmp_path_factory: pytest.TempPathFactory) -> RunSummary:
    cfg = config_from_dict({
        "supernet": {"name": "mbv3-small", "options": OPTIONS},
        "train": {"epochs": 2},
        "search": {"trials": 2, "objectives": ["int8_accuracy", "macs"], "calib_images": 200},
        "export": {"max_subnets": 1, "runs": 20, "warmup": 3, "exporter": "torchscript"},
        "compress": {"prune": "macs=0.7", "quantize": True},
    })
    return run_pipeline(cfg, tmp_path_factory.mktemp("compose") / "run")


def test_int8_objectives_have_default_directions() -> None:
    assert parse_objective("int8_accuracy").direction == "maximize"
    assert parse_objective("int8_latency_ms").direction == "minimize"


def test_search_in_the_loop_reports_int8_accuracy(compose_run: RunSummary) -> None:
    trials = [t for t in compose_run.search.trials if t.state == "complete"]
    assert len(trials) == 2
    for t in trials:  # int8 wanted by the objectives, latency not: no latency measured
        assert 0.0 <= t.metrics["int8_accuracy"] <= 1.0
        assert "int8_latency_ms" not in t.metrics and "latency_ms" not in t.metrics


def test_evaluator_int8_accuracy_and_latency(compose_run: RunSummary) -> None:
    from nasforge.data import load_data
    from nasforge.search import make_subnet_evaluator
    from nasforge.supernets.checkpoint import load_supernet

    net, _ = load_supernet(compose_run.out / "checkpoints" / "supernet.pt")
    data = load_data("digits", image_size=16, seed=0)
    evaluate = make_subnet_evaluator(net, data, calib_images=200, latency=True, latency_runs=5, latency_warmup=2,
                                     int8=True, scratch=compose_run.out)
    m = evaluate(net.space.largest())
    assert 0.0 <= m["int8_accuracy"] <= 1.0
    assert abs(m["int8_accuracy"] - m["accuracy"]) <= 0.1
    assert m["int8_latency_ms"] > 0 and m["latency_ms"] > 0


def test_int8_search_objective_sees_the_selective_result(compose_run: RunSummary) -> None:
    """The INT8 file a trial times is the one the compress stage would ship: with a bar no INT8 variant can
    clear it is the FP32 model itself (its accuracy, no Q/DQ), with a bar every variant clears it is INT8."""
    from nasforge.data import load_data
    from nasforge.quantize import QuantConfig
    from nasforge.search import make_subnet_evaluator
    from nasforge.supernets.checkpoint import load_supernet

    net, _ = load_supernet(compose_run.out / "checkpoints" / "supernet.pt")
    data = load_data("digits", image_size=16, seed=0)
    arch = net.space.smallest()
    common = {"calib_images": 200, "latency": True, "latency_runs": 5, "latency_warmup": 2, "int8": True,
              "scratch": compose_run.out}
    never = make_subnet_evaluator(net, data, int8_config=QuantConfig(method="static", min_speedup=10.0), **common)
    m = never(arch)
    assert m["int8_fp32_kept"] == 1.0 and m["int8_float_groups"] == 0.0
    assert m["int8_accuracy"] == pytest.approx(m["accuracy"], abs=0.01)  # FP32 ONNX vs PyTorch, same subnet
    always = make_subnet_evaluator(net, data, int8_config=QuantConfig(method="static", min_speedup=0.01), **common)
    m = always(arch)
    assert m["int8_fp32_kept"] == 0.0 and m["int8_latency_ms"] > 0


def test_run_writes_pruned_and_int8_subnets(compose_run: RunSummary) -> None:
    folder = compose_run.out / "subnets" / "0"
    for name in ("pruned.onnx", "pruned.pt", "model.int8.onnx", "model.int8.report.json"):
        assert (folder / "compressed" / name).is_file(), name
    row = compose_run.subnets[0]
    assert json.loads((folder / "metrics.json").read_text())["compressed"] == row["compressed"]
    pruned, int8 = row["compressed"]["pruned"], row["compressed"]["int8"]
    assert pruned["macs_after"] <= 0.75 * row["macs"]
    assert pruned["max_abs_diff"] <= 1e-4
    assert int8["source"] == "compressed/pruned.onnx" and int8["saturation"] is False
    assert abs(int8["test_acc"] - pruned["test_acc"]) <= 0.1
    assert int8["latency_p50_ms"] > 0 and int8["speedup"] > 0 and pruned["latency_p50_ms"] > 0
    assert int8["choice"] in ("int8", "mixed", "fp32") and set(int8["speedup_by_batch"]) == {"1"}
    if int8["choice"] == "fp32":  # INT8 did not pay on this machine: the file is the (pruned) FP32 model
        assert int8["speedup_vs_source"] == 1.0
    assert "## Compressed subnets" in (compose_run.out / "report.md").read_text()
    summary = json.loads((compose_run.out / "summary.json").read_text())
    assert summary["subnets"][0]["compressed"]["int8"]["onnx"] == "compressed/model.int8.onnx"
    assert "compress_s" in summary["timings_s"]


@pytest.mark.parametrize(("compress", "needle"), [
    ({"method": "fast"}, "method 'fast'"),
    ({"calibration": "mse"}, "calibration 'mse'"),
    ({"prune": "macs=abc"}, "macs=abc"),
    ({"prune": 0.7}, "compress.prune"),
    ({"criterion": "gmn"}, "criterion 'gmn'"),
    ({"finetune_epochs": -1}, "finetune_epochs"),
    ({"round_to": 0}, "round_to"),
    ({"quantize": "yes"}, "compress.quantize"),
    ({"prunes": "macs=0.5"}, "prunes"),
    ({"policy": "some"}, "policy 'some'"),
    ({"batches": "1,x"}, "compress.batches"),
    ({"batches": "0"}, "compress.batches"),
])
def test_bad_compress_config_is_one_line(compress: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_dict({"compress": compress})
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_config_without_compress_loads_and_resumes(tmp_path: Path) -> None:
    old = RunConfig().to_dict()
    del old["compress"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old, sort_keys=False))
    cfg = load_config(tmp_path / "config.yaml")
    assert cfg == RunConfig() and not cfg.compress.enabled
    assert prepare_run_dir(tmp_path, RunConfig(), resume=True) == RunConfig()
    # the compress stage is redone on every resume, so its settings may change (and the change is said)
    said: list[str] = []
    changed = RunConfig().with_overrides(compress__quantize=True)
    assert prepare_run_dir(tmp_path, changed, resume=True, log=said.append) == changed
    assert len(said) == 1 and "compress.quantize (False saved, True given)" in said[0]
    new = RunConfig().with_overrides(compress__prune="macs=2x", compress__quantize=True)
    assert config_from_dict(new.to_dict()) == new


def test_resume_may_repair_the_settings_of_stages_not_yet_started(tmp_path: Path) -> None:
    """Training finished, the search never started (say its sampler was wrong): a resume with a fixed config
    keeps the trained supernet and applies the new search settings; training settings stay fixed."""
    save_config(RunConfig(), tmp_path / "config.yaml")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "supernet.pt").write_bytes(b"")
    fixed = RunConfig().with_overrides(search__sampler="nsga2", search__constraints=["macs<=5e6"])
    said: list[str] = []
    assert prepare_run_dir(tmp_path, fixed, resume=True, log=said.append) == fixed
    assert "search.sampler ('tpe' saved, 'nsga2' given)" in said[0]
    with pytest.raises(ConfigError, match=r"train.epochs \(15 saved, 3 given\)"):
        prepare_run_dir(tmp_path, fixed.with_overrides(train__epochs=3), resume=True)
    (tmp_path / "study.journal").write_text("")  # once the search has begun, its settings are fixed too
    with pytest.raises(ConfigError, match="search.sampler"):
        prepare_run_dir(tmp_path, fixed, resume=True)


@pytest.mark.parametrize(("section", "needle"), [
    ({"search": {"sampler": "nsga4"}}, "unknown sampler 'nsga4'"),
    ({"search": {"constraints": ["banana<=5"]}}, "'banana', which the search does not measure"),
    ({"search": {"objectives": ["accuracy", "banana:max"]}}, "objective 'banana'"),
    ({"data": {"spec": "folder:/no/such/folder"}}, "/no/such/folder does not exist"),
    ({"export": {"backend": "gpu"}}, "backend 'gpu' is unknown"),
    ({"supernet": {"name": "resnet9000"}}, "supernet 'resnet9000' is unknown"),
])
def test_bad_values_fail_when_the_config_loads(section: dict, needle: str) -> None:
    """Every value a stage would reject later is rejected when the config loads, before any training."""
    with pytest.raises(ConfigError) as err:
        config_from_dict(section)
    assert needle in str(err.value) and "\n" not in str(err.value)
