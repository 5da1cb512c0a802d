"""`nasforge export` and `nasforge latency` through the real command line."""

from __future__ import annotations

import json
from pathlib import Path

import inprocess_cli
import pytest
from inprocess_cli import CliResult

from nasforge.export import read_metadata
from nasforge.supernets import create_supernet
from nasforge.supernets.checkpoint import save_checkpoint

TINY = {"num_classes": 10, "in_channels": 1, "stem_width": 8, "first_block_width": 8,
        "stages": [[16, 2, "relu", False], [24, 2, "hswish", True]], "kernel_sizes": [3, 5],
        "expand_ratios": [2, 4], "depths": [1, 2], "resolutions": [12, 16], "final_expand_width": 32,
        "feature_width": 32}


def run_cli(*args: str, cwd: Path | None = None) -> CliResult:
    """The command in this process, on one thread as ``OMP_NUM_THREADS=1`` would run it."""
    return inprocess_cli.run_cli(*args, cwd=cwd, env={"OMP_NUM_THREADS": "1"}, torch_threads=1)


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("run")
    save_checkpoint(folder / "supernet.pt", create_supernet("mbv3-small", **TINY), "mbv3-small", TINY)
    (folder / "train.json").write_text(json.dumps({"data": "digits", "image_size": 16}))
    return folder


def test_export_command(run_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    res = run_cli("export", str(run_folder), "--arch", "smallest", "--out", str(out), "--dynamic-batch", "--json",
                  "--exporter", "torchscript")
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads(res.stdout)
    assert report["max_abs_diff"] < 1e-4 and report["real_inputs"] > 1
    assert json.loads(read_metadata(out)["architecture"]) == report["arch"]
    assert report["input_dims"][0] == "batch" and report["input_dims"][1:] == report["input_shape"][1:]
    res = run_cli("export", str(run_folder), "--arch", "smallest", "--out", str(tmp_path / "d.onnx"),
                  "--dynamic-batch", "--exporter", "torchscript")
    assert res.returncode == 0 and "input [batch, 1, " in res.stdout, res.stdout  # not the example's [1, 1, ...]
    # the exported file measured on a device named in ./devices.yaml (its settings, overridable)
    (tmp_path / "devices.yaml").write_text("devices:\n  laptop: {backend: ort-cpu, threads: 1, runs: 15, warmup: 2}\n")
    res = run_cli("profile", str(out), "--device", "laptop", "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    measured = json.loads(res.stdout)
    assert measured["runs"] == 15 and measured["warmup"] == 2 and measured["backend"] == "ort-cpu"
    res = run_cli("profile", str(out), "--device", "laptop", "--runs", "12", "--json", cwd=tmp_path)
    assert json.loads(res.stdout)["runs"] == 12
    res = run_cli("profile", str(out), "--device", "nope", cwd=tmp_path)
    assert res.returncode == 2 and "unknown device" in res.stderr
    for args, needle in ((["--arch", '{"ks": [11]}'], "ks"), (["--format", "tflite"], "tflite"),
                         (["--resolution", "99"], "resolutions")):
        res = run_cli("export", str(run_folder), "--out", str(tmp_path / "x.onnx"), *args)
        assert res.returncode == 2 and needle in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert not (tmp_path / "x.onnx").exists()


def test_latency_table_commands(tmp_path: Path) -> None:
    sets = [f"--set={k}={json.dumps(v)}" for k, v in TINY.items()]
    table = tmp_path / "t.json"
    res = run_cli("latency", "build-table", "mbv3-small", *sets, "--out", str(table), "--runs", "20",
                  "--calibration", "5")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "segments" in res.stdout and json.loads(table.read_text())["entries"]
    res = run_cli("latency", "validate", "mbv3-small", *sets, "--table", str(table), "--samples", "4", "--json",
                  "--repeats", "2", "--resolution", "12")
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads(res.stdout)
    assert report["samples"] == 4 and report["mape"] >= 0 and report["repeatability"]["n"] == 4
    assert {row["arch"]["r"] for row in report["rows"]} == {12}
    res = run_cli("latency", "validate", "mbv3-small", "--table", str(table), "--samples", "4")
    assert res.returncode == 2 and "another supernet" in res.stderr and "Traceback" not in res.stderr
    res = run_cli("latency", "build-table", "mbv3-small", "--device", "jetson")
    assert res.returncode == 2 and "unknown device 'jetson'" in res.stderr


def test_search_uses_the_latency_table(run_folder: Path, tmp_path: Path) -> None:
    table = tmp_path / "t.json"
    res = run_cli("latency", "build-table", str(run_folder), "--out", str(table), "--runs", "10", "--calibration", "4",
                  "--holdout", "3")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "held-out error on 3 subnets" in res.stdout
    # a table whose held-out error is above the limit is refused before any work, in one line ...
    record = json.loads(table.read_text())
    record["holdout"] = {"n": 10, "mape": 0.2, "max_ape": 0.5, "within_10": 0.3, "kendall_tau": 0.36, "spearman": 0.5}
    table.write_text(json.dumps(record))
    out = tmp_path / "search"
    args = ("search", str(run_folder), "--out", str(out), "--trials", "6", "--sampler", "predictor", "--objectives",
            "accuracy,latency_ms", "--constraint", "latency_ms<=100", "--latency-table", str(table))
    res = run_cli(*args)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "Kendall tau 0.36" in res.stderr, res.stderr
    assert not out.exists()
    # ... and used, with a warning, when the user accepts it
    res = run_cli(*args, "--accept-latency-error")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "warning: using a latency table that may not rank subnets" in res.stderr
    from nasforge.export import LatencyTable
    from nasforge.nas import SearchResult
    from nasforge.supernets.checkpoint import load_supernet

    net = load_supernet(run_folder / "supernet.pt")[0]
    loaded = LatencyTable.load(table)
    result = SearchResult.from_json(out / "search.json")
    for trial in result.trials:  # every trial's latency is the table's prediction, not a measurement
        assert abs(trial.metrics["latency_ms"] - loaded.predict(net, trial.arch)) < 1e-9
    other = tmp_path / "other.json"
    other.write_text(table.read_text().replace(loaded.signature, "0" * 16))
    res = run_cli("search", str(run_folder), "--out", str(tmp_path / "s2"), "--objectives", "accuracy,latency_ms",
                  "--latency-table", str(other))
    assert res.returncode == 2 and "another supernet" in res.stderr and not (tmp_path / "s2").exists()
    record["holdout"]["mape"], record["holdout"]["kendall_tau"] = 0.03, 0.95  # trusted, but from another CPU
    record["fingerprint"]["cpu"]["model"] = "Cortex-A72"
    table.write_text(json.dumps(record))
    res = run_cli("search", str(run_folder), "--out", str(tmp_path / "s3"), "--objectives", "accuracy,latency_ms",
                  "--latency-table", str(table))
    assert res.returncode == 2 and "another CPU (Cortex-A72" in res.stderr and not (tmp_path / "s3").exists()


#: The metadata every subnet deliverable of a supernet carries (nasforge.deploy.SubnetMetadata, plus the keys
#: export_onnx adds); test_pipeline.py checks `nasforge run`'s files against the same schema.
SUBNET_KEYS = {"architecture", "supernet", "dataset", "resolution", "normalization_mean", "normalization_std",
               "source_checkpoint", "source_checkpoint_sha256", "nasforge_version", "input_shape"}


def test_export_and_prune_write_one_metadata_schema(run_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    res = run_cli("export", str(run_folder), "--arch", "largest", "--out", str(out), "--exporter", "torchscript")
    assert res.returncode == 0, res.stderr[-2000:]
    res = run_cli("prune", str(run_folder), "--arch", "largest", "--target", "macs=0.8", "--finetune-epochs", "0",
                  "--device", "none", "--out", str(tmp_path / "p"))
    assert res.returncode == 0, res.stderr[-2000:]
    exported, pruned = read_metadata(out), read_metadata(tmp_path / "p" / "model.onnx")
    assert SUBNET_KEYS <= set(exported) and SUBNET_KEYS <= set(pruned)
    # the same subnet of the same checkpoint (the largest: prune loads the data at the subnet's resolution, export
    # at the run's image size, and the normalisation statistics are those of the data as loaded)
    for key in SUBNET_KEYS - {"nasforge_version", "input_shape"}:
        assert exported[key] == pruned[key], key
    assert {"source", "base_model", "pruning_target", "criterion"} <= set(pruned) - set(exported)
    assert json.loads(pruned["base_model"])["kind"] == "subnet" and pruned["pruning_target"] == "macs=0.8"
