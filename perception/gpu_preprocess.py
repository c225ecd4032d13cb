"""The inference preprocessing of :mod:`datasets.preprocess` as torch ops, for GPU backends.

Raw uint8 HxWxC frame (BGRA/BGR/RGB/RGBA) -> channel pick to RGB -> INTER_AREA resize ->
round to uint8 values -> ``(x/255 - mean) / std`` -> 1x3xSxS. The resize is two matmuls with
precomputed per-axis weight matrices (:func:`area_weights`): OpenCV's INTER_AREA is separable,
so ``Wy @ img @ Wx.T`` reproduces its weights exactly, needs no data-dependent control flow and
is therefore capturable in a CUDA graph. Runs on the CPU too, which is how the tests pin it to
the OpenCV reference without a GPU.

Tolerance: the result equals :func:`datasets.preprocess.preprocess` except where float
accumulation order puts a resized value on the other side of a rounding boundary; those pixels
differ by one uint8 step, i.e. at most ``1 / (255 * min(std))`` (0.0175 for ImageNet std) in the
normalised input (:data:`MAX_ABS_DIFF`), and are rare (tests bound their share).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from datasets.preprocess import COLOR_ORDERS, IMAGENET_MEAN, IMAGENET_STD


def max_abs_diff(std=IMAGENET_STD) -> float:
    """Largest allowed |GPU - CPU| of the normalised input: one uint8 step of the narrowest channel."""
    return 1.0 / (255.0 * min(std)) + 1e-5


MAX_ABS_DIFF = max_abs_diff()


def area_weights(src: int, dst: int) -> np.ndarray:
    """``dst x src`` float64 matrix of OpenCV INTER_AREA's weights along one axis.

    Downscaling both axes (``cv2.resize`` takes its ``resizeArea`` path only then): output ``k``
    averages input ``[k*s, (k+1)*s)`` with ``s = src/dst``, partial pixels weighted by their
    overlap. Otherwise OpenCV's generic INTER_AREA coefficients: a two-tap blend between source
    pixels ``sx`` and ``sx+1`` with ``fx`` as in ``cv::resize`` (use :func:`axis_weights`, which
    picks the right one for a pair of axes).
    """
    w = np.zeros((dst, src), np.float64)
    scale = src / dst
    for k in range(dst):
        lo, hi = k * scale, (k + 1) * scale
        for i in range(int(math.floor(lo)), min(int(math.ceil(hi)), src)):
            w[k, i] = (min(hi, i + 1) - max(lo, i)) / scale
    return w


def _interp_weights(src: int, dst: int) -> np.ndarray:
    """OpenCV's INTER_AREA coefficients when not both axes shrink (``cv::resize`` generic path)."""
    w = np.zeros((dst, src), np.float64)
    scale, inv = src / dst, dst / src
    for k in range(dst):
        sx = int(math.floor(k * scale))
        fx = (k + 1) - (sx + 1) * inv
        fx = 0.0 if fx <= 0 else fx - math.floor(fx)
        if sx < 0:
            sx, fx = 0, 0.0
        if sx >= src - 1:
            sx, fx = src - 1, 0.0
        w[k, sx] += 1.0 - fx
        if fx:
            w[k, sx + 1] += fx
    return w


def axis_weights(src_hw: tuple[int, int], dst: int) -> tuple[np.ndarray, np.ndarray]:
    """(Wy ``dst x H``, Wx ``dst x W``) reproducing ``cv2.resize(img, (dst, dst), INTER_AREA)``."""
    h, w = src_hw
    fn = area_weights if h >= dst and w >= dst else _interp_weights
    return fn(h, dst), fn(w, dst)


def _channel_index(color_order: str) -> list[int]:
    if color_order not in COLOR_ORDERS:
        raise ValueError(f"unknown color_order {color_order!r}; valid: {', '.join(COLOR_ORDERS)}")
    return [color_order.index(c) for c in "RGB"]


def _half_up(src_hw: tuple[int, int], dst: int) -> bool:
    """OpenCV's 2x2 area fast path rounds ``(a+b+c+d+2)>>2`` (half up); every other path rounds half to even."""
    return src_hw == (2 * dst, 2 * dst)


class FramePreprocessor(nn.Module):
    """uint8 HxWxC frame tensor -> 1x3xSxS normalised input, all torch ops (graph-capturable).

    Args:
        src_hw: frame height, width (the weight matrices are built for it).
        img_size: model input side S.
        color_order: channel order of the frame.
        mean, std: the model's normalisation.
        out_dtype: dtype handed to the model (float16 for an FP16 network).
        channels_last: return a channels_last tensor (the layout tensor cores want).
    """

    def __init__(self, src_hw: tuple[int, int], img_size: int, color_order: str = "BGRA", mean=IMAGENET_MEAN,
                 std=IMAGENET_STD, out_dtype: torch.dtype = torch.float32, channels_last: bool = False) -> None:
        super().__init__()
        self.src_hw = (int(src_hw[0]), int(src_hw[1]))
        self.img_size = int(img_size)
        if not supports_shape(self.src_hw, self.img_size):
            raise ValueError(f"frame {self.src_hw[0]}x{self.src_hw[1]} to {img_size} px shrinks one axis and grows "
                             f"the other: not reproduced on the GPU; use the CPU preprocessing")
        self.color_order = color_order
        self.channels = len(color_order)
        self.resize = self.src_hw != (self.img_size, self.img_size)
        self.half_up = _half_up(self.src_hw, self.img_size)
        self.out_dtype = out_dtype
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        wy, wx = axis_weights(self.src_hw, self.img_size)
        self.register_buffer("idx", torch.tensor(_channel_index(color_order)), persistent=False)
        self.register_buffer("wy", torch.from_numpy(wy.astype(np.float32)), persistent=False)        # S x H
        self.register_buffer("wxt", torch.from_numpy(wx.T.astype(np.float32).copy()), persistent=False)  # W x S
        # the same float32 constants as datasets.preprocess.normalize: x * scale - shift
        scale = np.asarray([1.0 / (255.0 * s) for s in std], np.float32)
        shift = np.asarray([m / s for m, s in zip(mean, std)], np.float32)
        self.register_buffer("scale", torch.from_numpy(scale).view(3, 1, 1), persistent=False)
        self.register_buffer("shift", torch.from_numpy(shift).view(3, 1, 1), persistent=False)

    def forward(self, frame: torch.Tensor) -> torch.Tensor:
        if frame.dtype != torch.uint8 or tuple(frame.shape) != (*self.src_hw, self.channels):
            raise ValueError(f"expected a {self.src_hw[0]}x{self.src_hw[1]}x{self.channels} uint8 "
                             f"{self.color_order} frame, got {tuple(frame.shape)} {frame.dtype}")
        x = frame.permute(2, 0, 1)[self.idx].float()           # 3 x H x W, RGB
        if self.resize:
            # TF32 would round the 10-bit mantissa and move pixels across uint8 steps: force full FP32.
            tf32 = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = False
            try:
                x = torch.matmul(torch.matmul(self.wy, x), self.wxt)   # 3 x S x S
            finally:
                torch.backends.cuda.matmul.allow_tf32 = tf32
            x = torch.floor(x + 0.5) if self.half_up else torch.round(x)
            x = x.clamp_(0.0, 255.0)
        x = x * self.scale - self.shift
        return x.unsqueeze(0).to(self.out_dtype).contiguous(memory_format=self.memory_format)


def preprocess_torch(frame: np.ndarray, img_size: int, color_order: str = "BGRA", mean=IMAGENET_MEAN,
                     std=IMAGENET_STD, device: str | torch.device = "cpu") -> np.ndarray:
    """One-shot helper mirroring :func:`datasets.preprocess.preprocess` (float32 1x3xSxS numpy)."""
    from datasets.preprocess import check_frame
    check_frame(frame, color_order)
    pre = FramePreprocessor(frame.shape[:2], img_size, color_order, mean, std).to(device)
    with torch.inference_mode():
        return pre(torch.from_numpy(np.ascontiguousarray(frame)).to(device)).cpu().numpy()


def supports_shape(src_hw: tuple[int, int], img_size: int) -> bool:
    """True unless one axis shrinks and the other grows (OpenCV's mixed INTER_AREA path is not reproduced)."""
    h, w = src_hw
    return (h >= img_size and w >= img_size) or (h <= img_size and w <= img_size)
