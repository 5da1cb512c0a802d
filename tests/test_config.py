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
