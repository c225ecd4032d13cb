"""The one preprocessing definition shared by training, evaluation, export and inference.

Every consumer goes through :func:`to_rgb_resized` (colour order + resize, uint8) and
:func:`normalize` (float CHW). Training caches the uint8 output of the first step and
augments it before the second; inference runs both back to back on a raw CARLA frame.
Keeping both steps here means the two paths cannot disagree (tests pin it).
"""
from __future__ import annotations

import math
from concurrent.futures import Executor

import cv2
import numpy as np

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

COLOR_ORDERS = ("BGRA", "BGR", "RGB", "RGBA")

FULL_FRAME: tuple[float, float] = (0.0, 1.0)
"""``crop_rows`` that keeps every row: the default, and what models without the key were trained on."""
_TO_RGB = {
    "BGRA": cv2.COLOR_BGRA2RGB,
    "BGR": cv2.COLOR_BGR2RGB,
    "RGBA": cv2.COLOR_RGBA2RGB,
    "RGB": None,
}


def check_frame(frame: np.ndarray, color_order: str) -> None:
    """Raise ValueError with the offending shape/dtype unless ``frame`` is a uint8 image in ``color_order``."""
    if color_order not in _TO_RGB:
        raise ValueError(f"unknown color_order {color_order!r}; valid: {', '.join(COLOR_ORDERS)}")
    channels = len(color_order)
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != channels:
        got = f"{type(frame).__name__} shape={getattr(frame, 'shape', None)} dtype={getattr(frame, 'dtype', None)}"
        raise ValueError(f"expected an HxWx{channels} uint8 {color_order} frame, got {got}")


TTA_CHOICES = ("none", "hflip")
"""Test-time augmentation a model can carry (checkpoint config / ONNX metadata ``tta``): ``hflip`` averages
the logits of a frame and of its mirror image inside the model (:class:`training.models.FlipAverage`)."""


def check_tta(value, what: str = "--tta") -> str:
    if value not in TTA_CHOICES:
        raise ValueError(f"{what} {value!r}: valid: {', '.join(TTA_CHOICES)}")
    return value


def check_crop_rows(crop_rows, what: str = "--crop-rows") -> tuple[float, float]:
    """``(top, bottom)`` as floats with 0 <= top < bottom <= 1, else ValueError naming ``what`` and the range."""
    try:
        top, bottom = (float(v) for v in crop_rows)
    except (TypeError, ValueError):
        raise ValueError(f"{what} {crop_rows!r}: expected two fractions of the frame height, TOP BOTTOM, "
                         "with 0 <= TOP < BOTTOM <= 1 (0 1 keeps the whole frame)") from None
    if not (0.0 <= top < bottom <= 1.0 and bottom - top >= 0.05):
        raise ValueError(f"{what} {top:g} {bottom:g}: TOP and BOTTOM must satisfy 0 <= TOP < BOTTOM <= 1 and keep at "
                         "least 5 % of the rows (0 1 keeps the whole frame)")
    return top, bottom


def crop_band(frame: np.ndarray, crop_rows: tuple[float, float] | None) -> np.ndarray:
    """The rows ``[round(top*H), round(bottom*H))`` of ``frame`` as a view (no copy); the frame itself for
    None or :data:`FULL_FRAME`.

    A horizontal band around the horizon gives the distant road more of the model's rows than
    squashing the whole frame: on the 2 m hood camera the ground 25 m and 30 m ahead are 5 rows
    apart in 600, one row at 128 px from the whole frame, two from a band of half the height.
    """
    if crop_rows is None or tuple(crop_rows) == FULL_FRAME:
        return frame
    r0, r1 = band_rows(frame.shape[0], crop_rows)
    return frame[r0:r1]


def band_rows(height: int, crop_rows: tuple[float, float]) -> tuple[int, int]:
    """First and one-past-last row of the band ``crop_rows`` in a frame ``height`` rows high (at least one row)."""
    top, bottom = crop_rows
    r0 = int(round(top * height))
    return r0, max(int(round(bottom * height)), r0 + 1)


def aligned_split(src_rows: int, dst_rows: int) -> tuple[int, int] | None:
    """(input row, output row) nearest the middle where an INTER_AREA resize can be cut exactly.

    Output row ``k`` covers input rows ``[k*H/S, (k+1)*H/S)``; where ``k*H/S`` is an integer the
    two halves have the very area weights of the whole resize, so resizing them separately gives
    bit-identical output. That happens every ``S/gcd(H, S)`` output rows (28 for 600 -> 224).
    None when no such cut lies strictly inside the image, or when upscaling (OpenCV's INTER_AREA
    then interpolates across rows, so no cut is exact).
    """
    if src_rows < dst_rows:
        return None
    step = dst_rows // math.gcd(src_rows, dst_rows)
    k = round(dst_rows / 2 / step) * step
    k = min(max(k, step), dst_rows - step)
    if not 0 < k < dst_rows:
        return None
    return k * src_rows // dst_rows, k


def _band_cut(img: np.ndarray, img_size: int) -> tuple[int, int] | None:
    """:func:`aligned_split` for a square resize of ``img``; None when it must run in one call."""
    return aligned_split(img.shape[0], img_size) if img.shape[1] >= img_size else None


def resize_area(img: np.ndarray, img_size: int, pool: Executor | None = None) -> np.ndarray:
    """INTER_AREA resize to ``img_size`` x ``img_size``; with ``pool``, two row bands run concurrently.

    OpenCV runs INTER_AREA on one thread for outputs this small (it sizes its parallel stripes by
    output pixels), and it is 90 % of the preprocessing of an 800x600 frame. The bands are cut
    where :func:`aligned_split` says the output is bit-identical (tests pin it), so training, which
    calls this without a pool, and the classifier, which passes one, still see the same pixels.
    A helper that has not started by the time the caller's half is done is cancelled and its
    half done inline, so a busy machine costs at most the single-threaded time.
    """
    cut = _band_cut(img, img_size) if pool is not None else None
    if cut is None:
        return cv2.resize(img, (img_size, img_size), interpolation=cv2.INTER_AREA)
    src, dst = cut
    out = np.empty((img_size, img_size) + img.shape[2:], np.uint8)
    lower = pool.submit(cv2.resize, img[src:], (img_size, img_size - dst), dst=out[dst:],
                        interpolation=cv2.INTER_AREA)
    cv2.resize(img[:src], (img_size, dst), dst=out[:dst], interpolation=cv2.INTER_AREA)
    if lower.cancel():      # the helper never got a core: do its half here rather than wait for it
        cv2.resize(img[src:], (img_size, img_size - dst), dst=out[dst:], interpolation=cv2.INTER_AREA)
    else:
        lower.result()
    return out


def to_rgb_resized(frame: np.ndarray, img_size: int, color_order: str = "BGRA",
                   pool: Executor | None = None, crop_rows: tuple[float, float] | None = None) -> np.ndarray:
    """Convert to RGB and resize to ``img_size`` x ``img_size`` (INTER_AREA); returns uint8 HxWx3.

    ``crop_rows`` (a model's metadata, see :func:`crop_band`) first keeps only a band of rows;
    by default the whole frame is squashed, not cropped, so the road ahead and the horizon both
    stay in view.

    Both steps act per channel, so their order does not change a single output value (tests pin
    it); only the cost differs. Alone, converting first is faster: the area resize, the costly
    step, then works on 3 channels instead of 4 (1.2 ms instead of 1.46 ms for 800x600). With
    ``pool`` the frame is resized in its own channel order in two concurrent bands (see
    :func:`resize_area`) and only the small result is converted: converting the full frame first
    wakes OpenCV's own thread pool, whose worker then spins on the spare core and pushed the band
    onto the caller's core in about half the runs (0.85 vs 1.35 ms).
    """
    check_frame(frame, color_order)
    code = _TO_RGB[color_order]
    frame = np.ascontiguousarray(crop_band(frame, crop_rows))
    resize = frame.shape[0] != img_size or frame.shape[1] != img_size
    if pool is not None and resize and _band_cut(frame, img_size):
        small = resize_area(frame, img_size, pool)
        return small if code is None else cv2.cvtColor(small, code)
    rgb = frame if code is None else cv2.cvtColor(frame, code)
    return resize_area(rgb, img_size) if resize else rgb


def normalize(rgb: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """uint8 HxWx3 RGB (or NxHxWx3) -> float32 CHW (or NCHW), ``(x/255 - mean) / std``.

    Each channel is written straight into its plane of the planar output (0.06 ms at 224 px
    instead of 0.38 ms for convert + transpose; the same float32 operations, so identical values).
    """
    scale = np.asarray([1.0 / (255.0 * s) for s in std], dtype=np.float32)
    shift = np.asarray([m / s for m, s in zip(mean, std)], dtype=np.float32)
    out = np.empty(rgb.shape[:-3] + (3,) + rgb.shape[-3:-1], dtype=np.float32)
    for c in range(3):
        np.multiply(rgb[..., c], scale[c], out=out[..., c, :, :], casting="unsafe")
        out[..., c, :, :] -= shift[c]
    return out


def preprocess(frame: np.ndarray, img_size: int, color_order: str = "BGRA",
               mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_rows: tuple[float, float] | None = None) -> np.ndarray:
    """Raw frame -> float32 1x3xSxS model input. The exact inference path; training uses the same two steps."""
    return normalize(to_rgb_resized(frame, img_size, color_order, crop_rows=crop_rows), mean, std)[None]


def to_rgb_resized_hw(frame: np.ndarray, size_hw: tuple[int, int], color_order: str = "BGRA") -> np.ndarray:
    """Like :func:`to_rgb_resized` for a non-square ``(height, width)`` input (driving policies:
    PilotNet's 66x200). Same steps (colour conversion, whole frame squashed by INTER_AREA), uint8 HxWx3."""
    check_frame(frame, color_order)
    h, w = int(size_hw[0]), int(size_hw[1])
    code = _TO_RGB[color_order]
    rgb = np.ascontiguousarray(frame) if code is None else cv2.cvtColor(np.ascontiguousarray(frame), code)
    if rgb.shape[:2] == (h, w):
        return rgb
    return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
