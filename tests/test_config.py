"""RunConfig: strict loading, YAML round-trip, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from nasforge.config import RunConfig, config_from_dict, load_config, save_config
from nasforge.errors import ConfigError


def test_defaults_round_trip_through_yaml(tmp_path: Path) -> None:
    cfg = RunConfig().with_overrides(train__epochs=3, search__constraints=["macs<=5e6"], seed=7)
    path = save_config(cfg, tmp_path / "config.yaml")
    again = load_config(path)
    assert again == cfg
    assert again.search.constraints == ("macs<=5e6",)
    assert again.train.train_config(again.seed).seed == 7


def test_partial_config_takes_defaults(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("train:\n  epochs: 2\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.train.epochs == 2 and cfg.search == RunConfig().search


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"trian": {}}, "trian"),
        ({"train": {"epochz": 3}}, "epochz"),
        ({"train": {"epochs": "ten"}}, "train.epochs"),
        ({"train": {"epochs": 0}}, "'train': bad training value(s): epochs=0"),
        ({"train": {"epochs": True}}, "train.epochs"),
        ({"train": {"optimizer": "lion"}}, "lion"),
        ({"train": {"momentum": 1.5}}, "momentum=1.5"),
        ({"search": {"objectives": "accuracy"}}, "search.objectives"),
        ({"export": {"exporter": "tf"}}, "export.exporter"),
        ({"data": {"val_fraction": 0.9}}, "data.val_fraction"),
        ({"schema_version": 99}, "schema_version"),
        ({"data": 5}, "data"),
    ],
)
def test_bad_configs_name_the_key(data: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_dict(data)
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [epochs: 3\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml")


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)), "is not UTF-8 text (byte 0 is 0x89)"),
        (bytes(range(256)) * 8, "is not UTF-8 text"),
        (b"train:\n  epochs: 2\x00\x01\n", "not valid YAML"),
    ],
    ids=["png", "random-bytes", "control-characters"],
)
def test_binary_config_file_is_a_config_error(tmp_path: Path, content: bytes, needle: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_unreadable_config_file_is_a_config_error(tmp_path: Path) -> None:
    import os

    if os.name != "posix" or os.geteuid() == 0:
        pytest.skip("root reads files whatever their mode")
    path = tmp_path / "c.yaml"
    path.write_text("seed: 1\n")
    path.chmod(0)
    with pytest.raises(ConfigError, match="cannot read config file .* check its permissions"):
        load_config(path)


def test_one_home_for_the_search_options() -> None:
    """`nasforge run`'s search section and `nasforge search`'s job are one class: same options, same defaults."""
    from dataclasses import fields

    from nasforge.config import SEARCH_COMMAND_OBJECTIVES, SearchSection
    from nasforge.search import SearchJob

    assert issubclass(SearchJob, SearchSection) and type(RunConfig().search) is SearchSection
    shared = {f.name for f in fields(SearchSection)}
    job = SearchJob.for_cli(checkpoint="c.pt", data="digits", out="o")
    section = RunConfig().search
    # every shared option has the same default in both commands, except nasforge search's objectives
    assert {k: getattr(job, k) for k in shared} == {**{k: getattr(section, k) for k in shared},
                                                     "objectives": SEARCH_COMMAND_OBJECTIVES}
    assert (section.objectives, job.objectives) == (("accuracy", "latency_ms"), ("accuracy", "macs"))
    assert (section.trials, job.trials, job.seed, RunConfig().seed) == (40, 40, 0, 0)
    # both commands build their search from the section's methods
    assert section.search_options() == {"objectives": ("accuracy", "latency_ms"), "constraints": (), "n_trials": 40,
                                        "sampler": "tpe", "study_name": "nasforge"}
    assert section.evaluator_options() == {"calib_images": 500, "latency": True, "int8": False,
                                           "latency_runs": 50, "latency_warmup": 10}
    assert job.evaluator_options()["latency"] is False and job.storage_url == section.storage_in("o")
    assert SearchSection(objectives=("int8_accuracy",)).evaluator_options()["int8"] is True


def test_search_settings_are_checked_by_the_section() -> None:
    from nasforge.config import SearchSection
    from nasforge.search import SearchJob

    with pytest.raises(ConfigError, match="config section 'search': unknown sampler 'sobol'"):
        config_from_dict({"search": {"sampler": "sobol"}})
    job = SearchJob.for_cli(checkpoint="c.pt", data="digits", out="o", sampler="sobol")  # checked when it runs
    with pytest.raises(ConfigError, match="unknown sampler 'sobol'"):
        job.check()
    with pytest.raises(ConfigError, match="'bogus'"):
        SearchSection(objectives=("accuracy", "bogus"))
