"""The run folder object: one layout, old ``nasforge train`` folders still load, sources resolve in one place."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nasforge.errors import ConfigError
from nasforge.runfolder import RunFolder, resolve_run_source


def test_the_one_layout_names_every_file(tmp_path: Path) -> None:
    run = RunFolder(tmp_path)
    assert run.supernet == tmp_path / "checkpoints" / "supernet.pt"
    assert run.last_checkpoint == tmp_path / "checkpoints" / "last.pt"
    assert run.subnet(3) == tmp_path / "subnets" / "3"
    assert not run.trained() and not run.training_started() and not run.search_started()
    assert run.find_supernet() is None and not tmp_path.joinpath("checkpoints").exists(), "looking creates nothing"


def test_a_new_folder_and_an_old_train_folder_both_resolve(tmp_path: Path) -> None:
    new, old = RunFolder(tmp_path / "new"), RunFolder(tmp_path / "old")
    new.checkpoints.mkdir(parents=True)
    new.supernet.write_bytes(b"x")
    new.config.write_text("data:\n  spec: folder:/data\n  image_size: 64\n")
    old.root.mkdir()
    old.legacy_supernet.write_bytes(b"x")
    old.train_record.write_text(json.dumps({"data": "digits", "image_size": 16}))
    assert resolve_run_source(new.root).as_tuple() == (new.supernet, "folder:/data", 64)
    assert resolve_run_source(old.root).as_tuple() == (old.legacy_supernet, "digits", 16)
    assert new.trained() and new.training_started() and old.trained()


def test_a_subnet_folder_resolves_to_its_run_and_arch(tmp_path: Path) -> None:
    run = RunFolder(tmp_path)
    run.checkpoints.mkdir()
    run.supernet.write_bytes(b"x")
    run.subnet(0).mkdir(parents=True)
    (run.subnet(0) / "arch.json").write_text("{}")
    source = resolve_run_source(run.subnet(0), subnet_folders=True)
    assert source.checkpoint == run.supernet and source.arch_file == run.subnet(0) / "arch.json"
    with pytest.raises(ConfigError, match="holds no checkpoints/supernet.pt"):
        resolve_run_source(run.subnet(0))  # without subnet_folders it is just a folder without a supernet


def test_unreadable_records_and_missing_sources(tmp_path: Path) -> None:
    run = RunFolder(tmp_path)
    run.train_record.write_text("{not json")
    assert run.recorded_data() == (None, None)
    with pytest.raises(ConfigError, match="no checkpoint or run folder"):
        resolve_run_source(tmp_path / "missing.pt")
    lone = tmp_path / "lone.pt"
    lone.write_bytes(b"x")
    assert resolve_run_source(lone).as_tuple() == (lone, None, None)
