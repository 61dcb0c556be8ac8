"""One prepared cache per dataset and preprocessing, shared by runs: reuse, invalidation, waiting."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np
import pytest

from partialseg.config import load_config
from partialseg.errors import InputError
from partialseg.io import load_volume, save_volume
from partialseg.labels import LabelSpace
from partialseg.preprocessing import PreparedDataset, PreprocessConfig
from partialseg.preprocessing.cache import CACHE_KEY_JSON, default_cache_root, shared_cache
from tests.conftest import write_block_dataset

SPACE = LabelSpace(("liver", "spleen", "kidney_right", "kidney_left"))
CFG = PreprocessConfig(spacing=(2.0, 2.5, 3.0))


def test_the_cache_is_built_once_beside_the_dataset_and_reused(tmp_path):
    root = write_block_dataset(tmp_path / "d", SPACE, n_cases=2)
    a = shared_cache(root, CFG, progress=False)
    assert a.parent == default_cache_root(root) == tmp_path / "d.partialseg-cache"
    assert a.name.startswith("2x2.5x3mm_tct_") and (a / CACHE_KEY_JSON).exists()
    stamp = (a / "prepared.json").stat().st_mtime_ns
    assert shared_cache(root, CFG, progress=False) == a and (a / "prepared.json").stat().st_mtime_ns == stamp
    assert len(PreparedDataset.load(a)) == 2
    assert sorted(p.name for p in root.iterdir()) == ["dataset.json", "imagesTr", "labelsTr"]  # dataset untouched
    other = shared_cache(root, PreprocessConfig(spacing=(4.0, 4.0, 4.0)), progress=False)
    assert other != a and other.parent == a.parent


def test_an_edited_label_file_makes_a_new_cache(tmp_path):
    root = write_block_dataset(tmp_path / "d", SPACE, n_cases=2)
    a = shared_cache(root, CFG, progress=False)
    f = root / "labelsTr" / "case_000.nii.gz"
    v = load_volume(f)
    time.sleep(0.01)
    save_volume(np.zeros_like(v.array), v.affine, f, overwrite=True)
    b = shared_cache(root, CFG, progress=False)
    assert b != a and int(np.asarray(PreparedDataset.load(b).case("case_000").label).max()) == 0


def _hold_lock(folder: str, seconds: float, ready) -> None:  # noqa: ANN001
    from partialseg.locking import folder_lock

    with folder_lock(folder):
        ready.set()
        time.sleep(seconds)


def test_a_second_process_waits_for_the_build_instead_of_failing(tmp_path, monkeypatch):
    import partialseg.preprocessing.cache as cache

    root = write_block_dataset(tmp_path / "d", SPACE, n_cases=2)
    target = shared_cache(root, CFG, build=False)
    ready = mp.get_context("fork").Event()
    holder = mp.get_context("fork").Process(target=_hold_lock, args=(str(target), 1.5, ready))
    holder.start()
    ready.wait(10)
    monkeypatch.setattr(cache, "_WAIT_S", 0.2)
    t0 = time.perf_counter()
    assert shared_cache(root, CFG, progress=False) == target
    assert time.perf_counter() - t0 >= 1.0 and (target / "prepared.json").exists()
    holder.join()


def test_runs_of_two_methods_share_one_cache(tmp_path):
    from partialseg.training.trainer import train

    root = write_block_dataset(tmp_path / "d", SPACE, n_cases=3)
    sets = ["train.steps=1", "train.val_every=0", "network.options={base_channels: 4}", "data.val_fraction=0.34",
            "train.patch_size=[32,16,16]", "train.batch_size=1", "data.spacing=[2.0,2.5,3.0]"]
    for m in ("marginal", "full"):
        train(root, tmp_path / m, load_config(None, [*sets, f"method.name={m}"]), progress=False)
    a, b = (json.loads((tmp_path / m / "split.json").read_text())["prepared"] for m in ("marginal", "full"))
    assert a == b and not (tmp_path / "marginal" / "prepared").exists()
    assert [p.name for p in default_cache_root(root).iterdir()] == [Path(a).name]  # one cache; the lock went with its holder


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_dataset_parent_asks_for_data_cache_dir(tmp_path):
    from partialseg.training.trainer import prepared_cache

    parent = tmp_path / "ro"
    root = write_block_dataset(parent / "d", SPACE, n_cases=1)
    parent.chmod(0o555)
    try:
        with pytest.raises(InputError, match="data.cache_dir"):
            prepared_cache(root, tmp_path / "run", load_config(None, ["data.spacing=[2.0,2.5,3.0]"]))
    finally:
        parent.chmod(0o755)


def test_a_permission_error_building_the_cache_names_data_cache_dir(tmp_path, monkeypatch):
    import partialseg.preprocessing.cache as cache
    from partialseg.training.trainer import prepared_cache

    root = write_block_dataset(tmp_path / "d", SPACE, n_cases=1)

    def refuse(ds, out, cfg, **kw):  # noqa: ANN001, ANN003 - what a read-only parent folder raises
        raise PermissionError(13, "Permission denied", str(out))

    monkeypatch.setattr(cache, "prepare_dataset", refuse)
    with pytest.raises(InputError, match="set data.cache_dir to a writable folder"):
        prepared_cache(root, tmp_path / "run", load_config(None, ["data.spacing=[2.0,2.5,3.0]"]))
