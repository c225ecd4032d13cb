"""One preprocessing: training's eval path and perception's preprocess(frame_bgra) give the same tensor."""
from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest
import torch

from datasets.dataset import FrameDataset, build_cache, load_frames
from datasets.presets import ClassificationPresetEval
from datasets.preprocess import (IMAGENET_MEAN, IMAGENET_STD, aligned_split, check_frame, normalize, preprocess,
                                 resize_area, to_rgb_resized)
from datasets.schema import MANIFEST_COLUMNS
from tests.synthetic_data import draw_road


def _bgra_frames(n=4, size=(160, 120)):
    rng = np.random.default_rng(3)
    frames = []
    for k in range(n):
        bgr = draw_road("curve" if k % 2 else "straight", 0.8, k, 1.0, rng, size)
        frames.append(np.dstack([bgr, np.full(bgr.shape[:2], 255, np.uint8)]))  # CARLA raw_data layout
    return frames


def _write_png_dataset(root, frames):
    """The collector's path: raw BGRA -> true-colour PNG on disk (lossless)."""
    rows = []
    for k, f in enumerate(frames):
        rel = f"images/f{k}.png"
        (root / "images").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / rel), f[:, :, :3])
        rows.append({c: 0 for c in MANIFEST_COLUMNS} | {"image": rel, "label": ("straight", "curve")[k % 2],
                                                         "town": "Town01", "weather": "ClearNoon", "episode": "e0"})
    with open(root / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(MANIFEST_COLUMNS))
        w.writeheader()
        w.writerows(rows)
    (root / "dataset.json").write_text(json.dumps({"label": {}}))


@pytest.mark.parametrize("img_size", [48, 96, 224])
def test_training_eval_path_equals_inference_preprocess(tmp_path, img_size):
    frames = _bgra_frames()
    _write_png_dataset(tmp_path, frames)
    table = load_frames([tmp_path])
    ds = FrameDataset(build_cache(table, img_size, progress=False), table, ClassificationPresetEval())
    for k, raw in enumerate(frames):
        x_train, _, _ = ds[k]
        x_infer = torch.from_numpy(preprocess(raw, img_size, "BGRA", IMAGENET_MEAN, IMAGENET_STD)[0])
        assert x_train.shape == x_infer.shape == (3, img_size, img_size)
        assert torch.equal(x_train, x_infer)


def test_color_orders_agree_and_channel_order_is_rgb():
    bgra = _bgra_frames(1)[0]
    ref = to_rgb_resized(bgra, 64, "BGRA")
    np.testing.assert_array_equal(ref, to_rgb_resized(bgra[:, :, :3], 64, "BGR"))
    np.testing.assert_array_equal(ref, to_rgb_resized(cv2.cvtColor(bgra, cv2.COLOR_BGRA2RGB), 64, "RGB"))
    red = np.zeros((8, 8, 4), np.uint8)
    red[..., 2] = 255  # red in BGRA
    x = normalize(to_rgb_resized(red, 8, "BGRA"))
    assert x[0].mean() > 2 and x[2].mean() < -1  # channel 0 of the model input is R


@pytest.mark.parametrize("frame, order, expect", [
    (np.zeros((4, 4, 3), np.uint8), "BGRA", "HxWx4 uint8 BGRA"),
    (np.zeros((4, 4, 4), np.float32), "BGRA", "dtype=float32"),
    (np.zeros((4, 4, 3), np.uint8), "YUV", "unknown color_order 'YUV'"),
])
def test_bad_frames_are_rejected(frame, order, expect):
    with pytest.raises(ValueError, match=expect.replace("(", r"\(")):
        check_frame(frame, order)


def test_normalize_matches_reference_formula_single_and_batch():
    """The planar fast path equals (x/255 - mean)/std in CHW order, for one image and a batch."""
    import numpy as np
    from datasets.preprocess import IMAGENET_MEAN, IMAGENET_STD, normalize
    rgb = np.random.default_rng(0).integers(0, 256, (2, 37, 53, 3), dtype=np.uint8)
    ref = (rgb.astype(np.float64) / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    ref = ref.transpose(0, 3, 1, 2)
    assert normalize(rgb).shape == (2, 3, 37, 53) and normalize(rgb).dtype == np.float32
    np.testing.assert_allclose(normalize(rgb), ref, atol=1e-5)
    np.testing.assert_allclose(normalize(rgb[0]), ref[0], atol=1e-5)


def test_resize_to_rgb_matches_resize_then_convert():
    """Converting before the area resize must not change a single pixel (it only saves time)."""
    import cv2
    import numpy as np
    from datasets.preprocess import to_rgb_resized
    frame = np.random.default_rng(1).integers(0, 256, (600, 800, 4), dtype=np.uint8)
    ref = cv2.cvtColor(cv2.resize(frame, (224, 224), interpolation=cv2.INTER_AREA), cv2.COLOR_BGRA2RGB)
    assert np.array_equal(to_rgb_resized(frame, 224, "BGRA"), ref)


def test_two_band_resize_is_bit_identical_to_one_call():
    """Training resizes in one call, the classifier in two concurrent bands: same pixels, every size."""
    from concurrent.futures import ThreadPoolExecutor
    rng = np.random.default_rng(11)
    sizes = [(600, 800, 224), (720, 1280, 224), (600, 800, 96), (480, 640, 160), (1080, 1920, 224),
             (601, 800, 224), (224, 300, 224), (100, 100, 224), (37, 53, 8)]
    sizes += [(int(rng.integers(20, 900)), int(rng.integers(20, 900)), int(rng.integers(8, 260))) for _ in range(150)]
    split = 0
    with ThreadPoolExecutor(1) as pool:
        for h, w, s in sizes:
            img = rng.integers(0, 256, (h, w, 3), np.uint8)
            if rng.random() < 0.5:
                img = cv2.GaussianBlur(img, (0, 0), 2)
            want = cv2.resize(img, (s, s), interpolation=cv2.INTER_AREA)
            np.testing.assert_array_equal(resize_area(img, s, pool), want, err_msg=f"{h}x{w} -> {s}")
            split += aligned_split(h, s) is not None and w >= s
    assert split >= 40, "the test must exercise the split path, not only the fallback"


@pytest.mark.parametrize("h, s, want", [(600, 224, (300, 112)), (720, 224, (360, 112)), (601, 224, None),
                                        (100, 224, None), (448, 224, (224, 112))])
def test_aligned_split_cuts_on_exact_row_boundaries(h, s, want):
    assert aligned_split(h, s) == want
    if want:
        assert want[0] * s == want[1] * h


@pytest.mark.parametrize("order", ["BGRA", "BGR", "RGB", "RGBA"])
def test_pooled_to_rgb_resized_matches_training_for_every_colour_order(order):
    """With a pool the frame is resized before the colour conversion; the pixels must not change."""
    from concurrent.futures import ThreadPoolExecutor
    rng = np.random.default_rng(5)
    with ThreadPoolExecutor(1) as pool:
        for h, w, s in [(600, 800, 224), (720, 1280, 96), (480, 640, 160), (600, 800, 600)]:
            frame = cv2.GaussianBlur(rng.integers(0, 256, (h, w, len(order)), np.uint8), (0, 0), 1.5)
            np.testing.assert_array_equal(to_rgb_resized(frame, s, order, pool), to_rgb_resized(frame, s, order))


def test_resize_does_not_wait_for_a_busy_helper():
    """A helper thread stuck elsewhere must not stall the frame: its half is done inline."""
    import threading
    from concurrent.futures import ThreadPoolExecutor
    img = np.random.default_rng(2).integers(0, 256, (600, 800, 3), np.uint8)
    release = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        blocker = pool.submit(release.wait, 30)
        out = resize_area(img, 224, pool)
        assert not blocker.done(), "resize_area returned while the helper was still busy"
        release.set()
    np.testing.assert_array_equal(out, cv2.resize(img, (224, 224), interpolation=cv2.INTER_AREA))
