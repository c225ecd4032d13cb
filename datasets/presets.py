"""Train and eval transform presets (like torchvision references' ``presets.py``).

Both take the cached uint8 RGB frame (already ``img_size`` square, made by
:func:`datasets.preprocess.to_rgb_resized`) and end with :func:`datasets.preprocess.normalize`,
so the eval preset is exactly the inference preprocessing minus the colour/resize step that the
cache already did.

The train preset augments with albumentations (2.x argument names):

* photometric -- brightness/contrast, hue/saturation, gamma, blur, sensor noise, and the
  weather CARLA renders: shadows, rain, fog, sun flare (fog is :class:`Haze`, a vectorised blend:
  albumentations' ``RandomFog`` draws hundreds of circles and costs ~50 ms per 224 px frame,
  ten times the rest of the pipeline, which would starve a GPU);
* mild geometric -- small shift/scale/rotate (``Affine``) and perspective, i.e. a camera mounted a
  little differently; kept small so a straight road does not start to look curved;
* horizontal flip -- a left curve mirrored is a right curve, still ``curve``; a straight road
  mirrored is still ``straight``. The label is invariant under the flip, so it doubles the data
  for free and removes any left/right bias of the collected routes.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from datasets.preprocess import IMAGENET_MEAN, IMAGENET_STD, normalize


def _albumentations():
    """Import albumentations without its phone-home version check (a network call, and a warning offline)."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations as A
    return A


def _haze_class():
    A = _albumentations()

    class Haze(A.ImageOnlyTransform):
        """Fog: blend towards light grey, denser towards the top of the frame (the distance)."""

        def __init__(self, strength: tuple[float, float] = (0.15, 0.45), p: float = 0.5) -> None:
            super().__init__(p=p)
            self.strength = strength

        def get_params(self) -> dict:
            return {"s": self.py_random.uniform(*self.strength)}

        def apply(self, img: np.ndarray, s: float = 0.3, **params) -> np.ndarray:
            w = (s * np.linspace(1.0, 0.35, img.shape[0], dtype=np.float32))[:, None, None]
            return (img.astype(np.float32) * (1 - w) + 205.0 * w).astype(np.uint8)

    return Haze


class ClassificationPresetEval:
    """uint8 HxWx3 RGB -> float32 3xHxW tensor, no randomness."""

    def __init__(self, *, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> None:
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, rgb: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(normalize(rgb, self.mean, self.std))


class ClassificationPresetTrain(ClassificationPresetEval):
    """Albumentations augmentation of the uint8 frame, then the eval normalisation.

    Args:
        img_size: side of the (square) cached frames; scales the sun-flare radius.
        hflip_prob: probability of the horizontal flip (label-preserving, see module docstring).
        photometric, geometric: switch the two augmentation groups.
        seed: seed of albumentations' own RNG (it ignores numpy/torch seeds); DataLoader workers
            re-seed it per worker and epoch via :meth:`set_random_seed`.
    """

    def __init__(self, *, img_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD, hflip_prob: float = 0.5,
                 photometric: bool = True, geometric: bool = True, seed: int | None = None) -> None:
        super().__init__(mean=mean, std=std)
        A = _albumentations()

        ops: list = [A.HorizontalFlip(p=hflip_prob)]
        if geometric:
            ops += [
                A.Affine(translate_percent=(-0.04, 0.04), scale=(0.93, 1.07), rotate=(-4, 4),
                         border_mode=0, p=0.5),
                A.Perspective(scale=(0.02, 0.05), p=0.25),
            ]
        if photometric:
            ops += [
                A.RandomBrightnessContrast(brightness_limit=0.25, contrast_limit=0.25, p=0.5),
                A.HueSaturationValue(hue_shift_limit=8, sat_shift_limit=20, val_shift_limit=10, p=0.3),
                A.RandomGamma(gamma_limit=(80, 120), p=0.3),
                A.OneOf([
                    A.RandomShadow(shadow_roi=(0, 0.5, 1, 1), num_shadows_limit=(1, 2), p=1.0),
                    A.RandomRain(brightness_coefficient=0.85, p=1.0),
                    _haze_class()(p=1.0),
                    A.RandomSunFlare(flare_roi=(0, 0, 1, 0.5), src_radius=max(8, img_size // 4),
                                     num_flare_circles_range=(3, 6), p=1.0),
                ], p=0.3),
                A.OneOf([A.GaussianBlur(blur_limit=(3, 5), p=1.0), A.MotionBlur(blur_limit=(3, 5), p=1.0)], p=0.2),
                A.GaussNoise(std_range=(0.01, 0.05), p=0.2),
            ]
        self.augment = A.Compose(ops, seed=seed)

    def set_random_seed(self, seed: int) -> None:
        self.augment.set_random_seed(seed)

    def __call__(self, rgb: np.ndarray) -> torch.Tensor:
        return super().__call__(self.augment(image=rgb)["image"])


PRESETS = {"train": ClassificationPresetTrain, "eval": ClassificationPresetEval}
