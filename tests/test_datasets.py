"""datasets/: manifest validation, the uint8 cache, leakage-free splits, transform presets."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch

from datasets.dataset import DatasetError, FrameDataset, build_cache, cache_paths, check_classes, load_frames
from datasets.presets import ClassificationPresetEval, ClassificationPresetTrain
from datasets.preprocess import normalize
from datasets.schema import CLASSES, MANIFEST_COLUMNS
from datasets.splits import SplitConfig, load_split, make_split
from tests.synthetic_data import make_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("d") / "ds", episodes=4, frames_per_episode=6)


@pytest.fixture
def copy_data(data, tmp_path):
    return shutil.copytree(data, tmp_path / "copy", ignore=shutil.ignore_patterns("cache"))


def _rewrite_manifest(root, rows, columns=MANIFEST_COLUMNS):
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def _rows(root):
    with open(root / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------ manifest validation (table-driven)

@pytest.mark.parametrize("mutate, expect", [
    (lambda r: _rewrite_manifest(r, _rows(r), [c for c in MANIFEST_COLUMNS if c != "town"]), "missing column(s) town"),
    (lambda r: _rewrite_manifest(r, []), "empty dataset"),
    (lambda r: (r / "manifest.csv").unlink(), "manifest.csv: not found"),
    (lambda r: _rewrite_manifest(r, [{**x, "label": "left"} for x in _rows(r)]), "unknown label 'left'"),
])
def test_bad_manifest_names_file_and_problem(copy_data, mutate, expect):
    mutate(copy_data)
    with pytest.raises(DatasetError) as e:
        load_frames([copy_data])
    msg = str(e.value)
    assert expect in msg and "\n" not in msg
    if "manifest" in expect or "column" in expect or "label" in expect:
        assert str(copy_data) in msg


def test_missing_images_are_counted_and_listed(copy_data):
    gone = sorted((copy_data / "images" / "curve").iterdir())[:3]
    for p in gone:
        p.unlink()
    with pytest.raises(DatasetError, match=r"^3 of \d+ images .* missing from disk, e.g. .*" + gone[0].name):
        load_frames([copy_data])


def test_one_class_only_is_rejected(copy_data):
    _rewrite_manifest(copy_data, [r for r in _rows(copy_data) if r["label"] == "straight"])
    with pytest.raises(DatasetError, match="one class only"):
        check_classes(load_frames([copy_data]))


# ------------------------------------------------------------------ cache

def test_cache_holds_resized_rgb_and_is_reused(copy_data, caplog):
    table = load_frames([copy_data])
    cache = build_cache(table, 32, progress=False)
    npy, index = cache_paths(copy_data.resolve(), 32)
    assert npy == copy_data.resolve() / "cache" / "frames_32.npy" and index.is_file()
    arr = np.load(npy, mmap_mode="r")
    assert arr.shape == (len(table), 32, 32, 3) and arr.dtype == np.uint8
    import cv2  # the cache is RGB, resized with INTER_AREA, of the decoded file
    bgr = cv2.imread(str(copy_data / table.image[3]))
    np.testing.assert_array_equal(arr[3], cv2.resize(bgr, (32, 32), interpolation=cv2.INTER_AREA)[:, :, ::-1])
    mtime = npy.stat().st_mtime_ns
    caplog.set_level("INFO")
    build_cache(table, 32, progress=False)
    assert npy.stat().st_mtime_ns == mtime and "up to date" in caplog.text
    # re-collecting a frame under the same name invalidates the cache
    img = copy_data / table.image[0]
    img.write_bytes(img.read_bytes())
    import os
    os.utime(img, ns=(mtime + 10**9, mtime + 10**9))
    build_cache(table, 32, progress=False)
    assert npy.stat().st_mtime_ns != mtime


def test_corrupt_images_are_skipped_and_counted(copy_data, caplog):
    table = load_frames([copy_data])
    (copy_data / table.image[1]).write_bytes(b"not a jpeg")
    (copy_data / table.image[4]).write_bytes(b"")
    cache = build_cache(table, 24, progress=False)
    mask = cache.corrupt_mask(table)
    assert mask.sum() == 2 and mask[1] and mask[4]
    assert "skipped 2 corrupt image(s)" in caplog.text


def test_dataset_returns_transformed_frame_label_and_index(data):
    table = load_frames([data])
    cache = build_cache(table, 24, progress=False)
    ds = FrameDataset(cache, table, ClassificationPresetEval())
    x, y, i = ds[5]
    assert x.shape == (3, 24, 24) and x.dtype == torch.float32
    assert y == table.label[5] and i == 5
    assert torch.allclose(x, torch.from_numpy(normalize(ds.frame(5))))


# ------------------------------------------------------------------ splits

def test_split_by_episode_never_straddles_and_is_seeded(data):
    table = load_frames([data])
    s = make_split(table, SplitConfig(val_split=0.25, seed=1))
    ep = table.episode_keys()
    assert not set(ep[s.indices["train"]]) & set(ep[s.indices["val"]])
    for town in table.towns():  # every town contributes validation episodes
        assert (table.town[s.indices["val"]] == town).any()
    assert len(s.indices["test"]) == 0
    same = make_split(table, SplitConfig(val_split=0.25, seed=1))
    assert all(np.array_equal(s.indices[k], same.indices[k]) for k in s.indices)
    others = [make_split(table, SplitConfig(val_split=0.25, seed=k)).indices["val"] for k in range(2, 8)]
    assert any(not np.array_equal(o, s.indices["val"]) for o in others)


def test_held_out_towns_and_saved_split(data, tmp_path):
    table = load_frames([data])
    s = make_split(table, SplitConfig(val_towns=("Town03",), test_towns=("Town02",)))
    assert set(table.town[s.indices["val"]]) == {"Town03"}
    assert set(table.town[s.indices["test"]]) == {"Town02"}
    assert set(table.town[s.indices["train"]]) == {"Town01"}
    s.save(tmp_path / "split.json", table)
    saved = json.loads((tmp_path / "split.json").read_text())
    assert saved["val"]["towns"] == ["Town03"] and saved["config"]["test_towns"] == ["Town02"]
    assert sum(e["frames"] for e in saved["train"]["episodes"]) == len(s.indices["train"])
    again = load_split(tmp_path / "split.json", table)
    assert all(np.array_equal(again.indices[k], s.indices[k]) for k in s.indices)


@pytest.mark.parametrize("cfg, expect", [
    (dict(val_towns=("Town09",)), "--val-towns: unknown town(s) Town09; towns in the data: Town01, Town02, Town03"),
    (dict(test_towns=("town1",)), "--test-towns: unknown town(s) town1"),
    (dict(val_towns=("Town01", "Town02", "Town03")), "training split is empty"),
])
def test_split_errors(data, cfg, expect):
    with pytest.raises(DatasetError) as e:
        make_split(load_frames([data]), SplitConfig(**cfg))
    assert expect in str(e.value)


@pytest.mark.parametrize("cfg, expect", [(dict(val_split=1.0), "--val-split 1.0"),
                                         (dict(val_towns=("A",), test_towns=("A",)), "both --val-towns")])
def test_split_config_validation(cfg, expect):
    with pytest.raises(ValueError, match=expect):
        SplitConfig(**cfg)


# ------------------------------------------------------------------ presets

def test_train_preset_augments_but_keeps_shape_and_eval_is_deterministic():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
    train = ClassificationPresetTrain(img_size=40, seed=0)
    outs = [train(img.copy()) for _ in range(8)]
    assert all(o.shape == (3, 40, 40) and o.dtype == torch.float32 for o in outs)
    assert sum(not torch.equal(o, outs[0]) for o in outs[1:]) >= 5
    ev = ClassificationPresetEval()
    assert torch.equal(ev(img), ev(img))
    flip_only = ClassificationPresetTrain(img_size=40, hflip_prob=1.0, photometric=False, geometric=False)
    assert torch.equal(flip_only(img.copy()), ev(img[:, ::-1].copy()))


def test_classes_order_is_the_contract():
    assert CLASSES == ("curve", "straight")


def test_haze_fog_is_denser_towards_the_horizon():
    import albumentations as A
    from datasets.presets import _haze_class
    img = np.zeros((50, 20, 3), np.uint8)
    out = A.Compose([_haze_class()(strength=(0.4, 0.4), p=1.0)], seed=0)(image=img)["image"]
    assert out.dtype == np.uint8 and out.shape == img.shape
    assert out[0].mean() == pytest.approx(0.4 * 205, abs=1) and out[0].mean() > out[-1].mean() > 0


def test_two_datasets_keep_their_episodes_apart(data, tmp_path):
    other = make_dataset(tmp_path / "other", towns=("Town01", "Town04"), episodes=2, frames_per_episode=3, seed=1)
    table = load_frames([data, other])
    assert len(table) == len(load_frames([data])) + 12 and table.towns() == ["Town01", "Town02", "Town03", "Town04"]
    keys = table.episode_keys()
    same_id = table.episode == "Town01-e00"  # the same episode id in both datasets is two episodes
    assert len(set(keys[same_id])) == 2
    s = make_split(table, SplitConfig(val_split=0.5, seed=0))
    assert not set(keys[s.indices["train"]]) & set(keys[s.indices["val"]])
    cache = build_cache(table, 16, progress=False)
    assert len(cache.npy_paths) == 2 and FrameDataset(cache, table, ClassificationPresetEval())[len(table) - 1][1] \
        == table.label[-1]
