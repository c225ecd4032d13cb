"""GPU training recipe (datasets/gpu_augment.py): worker geometry on uint8, photometric + normalise per batch."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from datasets.gpu_augment import GeometricPresetTrain, GpuPhotometric
from datasets.preprocess import IMAGENET_MEAN, IMAGENET_STD, normalize


@pytest.fixture(scope="module")
def rgb():
    from perception.frames import road_frames
    import cv2
    frames, _ = road_frames(4, seed=2, width=64, height=64)
    return [cv2.cvtColor(f, cv2.COLOR_BGRA2RGB) for f in frames]


def test_geometry_off_is_identity_and_flip_is_exact(rgb):
    ident = GeometricPresetTrain(img_size=64, hflip_prob=0, affine_prob=0, perspective_prob=0, seed=0)
    out = ident(rgb[0])
    assert out.dtype == torch.uint8 and tuple(out.shape) == (3, 64, 64)
    assert np.array_equal(out.numpy().transpose(1, 2, 0), rgb[0])
    flip = GeometricPresetTrain(img_size=64, hflip_prob=1, affine_prob=0, perspective_prob=0, seed=0)
    assert np.array_equal(flip(rgb[0]).numpy().transpose(1, 2, 0), rgb[0][:, ::-1])


def test_geometry_is_mild_and_seeded(rgb):
    a = GeometricPresetTrain(img_size=64, hflip_prob=0, affine_prob=1, perspective_prob=1, seed=3)
    b = GeometricPresetTrain(img_size=64, hflip_prob=0, affine_prob=1, perspective_prob=1, seed=3)
    x, y = a(rgb[1]), b(rgb[1])
    assert torch.equal(x, y)
    moved = (x.numpy().transpose(1, 2, 0).astype(int) - rgb[1]).__abs__().mean()
    assert 0 < moved < 60, "a small warp changes pixels but keeps the scene"


def test_eval_mode_is_the_cpu_normalisation(rgb):
    batch = torch.from_numpy(np.stack([r.transpose(2, 0, 1) for r in rgb]))
    aug = GpuPhotometric(IMAGENET_MEAN, IMAGENET_STD).eval()
    np.testing.assert_allclose(aug(batch).numpy(), normalize(np.stack(rgb)), atol=1e-5)


def test_train_mode_jitters_per_image_within_range(rgb):
    batch = torch.from_numpy(np.stack([r.transpose(2, 0, 1) for r in rgb] * 16))     # 64 images
    aug = GpuPhotometric(IMAGENET_MEAN, IMAGENET_STD, seed=1).train()
    out = aug(batch)
    ref = GpuPhotometric(IMAGENET_MEAN, IMAGENET_STD).eval()(batch)
    changed = (out - ref).abs().flatten(1).amax(1) > 1e-3
    assert torch.isfinite(out).all() and out.shape == ref.shape
    assert 0.3 < changed.float().mean() < 1.0, "some images jittered, not all"
    lo = (0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    hi = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert (out >= lo.view(1, 3, 1, 1) - 1e-5).all() and (out <= hi.view(1, 3, 1, 1) + 1e-5).all()
    with pytest.raises(ValueError, match="uint8 Nx3xHxW"):
        aug(batch.float())
