"""What every artifact carries so inference needs no other file: classes, input size, normalisation,
and the camera/label contract the model was trained under.

The same :class:`ModelMeta` is written into the ONNX ``metadata_props`` (as strings), into the
TensorRT engine's JSON sidecar, and read back from a training checkpoint's ``config``.

The contract (:class:`datasets.schema.Contract`: the camera a model must be driven with and the
definition of its labels) travels as two ONNX metadata keys, ``camera`` and ``label`` (JSON of
:meth:`CameraSpec.to_json` / :meth:`LabelParams.to_json`), as ``meta["contract"]`` in the engine
sidecar, and as ``config["contract"]`` in a checkpoint. Models trained before it existed have
none: ``ModelMeta.contract`` is then None and they still load. :func:`read_contract` reads it
from any model file without building an inference session (what the drive loop calls first).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from datasets.io_safety import check_img_size
from datasets.preprocess import COLOR_ORDERS, FULL_FRAME, check_crop_rows, check_tta
from datasets.schema import CLASSES, CameraSpec, Contract, LabelParams

log = logging.getLogger(__name__)

META_VERSION = "1"
MARKER_KEY = "carla_perception"            # present (= META_VERSION) in every ONNX we export
PRECISIONS = ("fp32", "fp16")
CONTRACT_KEYS = ("camera", "label")         # ONNX metadata keys of the contract (JSON each)
FRAME_NOTE = ("model input is RGB float32 NCHW normalised with mean/std; raw CARLA frames are BGRA uint8 "
              "and go through datasets.preprocess.preprocess(frame, img_size, 'BGRA', mean, std, crop_rows)")


@dataclass(frozen=True)
class ModelMeta:
    """Everything needed to run a classifier file correctly.

    Attributes:
        arch: training.models architecture name (lets torch rebuild the network).
        classes: class names in logit order; index 0 is ``curve``.
        img_size: square model input side, px.
        crop_rows: (top, bottom) fractions of the frame's rows kept before resizing
            (:func:`datasets.preprocess.crop_band`); (0, 1) is the whole frame.
        mean, std: per-channel RGB normalisation (0..1 scale).
        color_order: channel order of the MODEL INPUT (always ``RGB``; frames are converted).
        dropout: head dropout (architecture only; inactive at inference).
        precision: ``fp32`` or ``fp16`` compute (IO stays float32 either way).
        dynamic_batch: whether the batch axis is dynamic (else batch 1).
        checkpoint_sha256: hash of the source checkpoint ('' if unknown).
        checkpoint_path: where the source checkpoint was at export ('' if unknown).
        exporter: tool + versions that wrote the artifact.
        contract: camera + label definition the model was trained under (None: not recorded).
        temperature: softmax temperature fitted on the validation split (training.calibration);
            probabilities are ``softmax(logits / temperature)``, logits stay raw.
        tta: test-time augmentation inside the network (``hflip``: the logits are the mean over the frame
            and its mirror, one batch of 2N per call); informational, the graph already does it.
    """
    arch: str
    classes: tuple[str, ...] = CLASSES
    img_size: int = 224
    crop_rows: tuple[float, float] = FULL_FRAME
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    color_order: str = "RGB"
    dropout: float = 0.0
    precision: str = "fp32"
    dynamic_batch: bool = False
    checkpoint_sha256: str = ""
    checkpoint_path: str = ""
    exporter: str = field(default="", compare=False)
    contract: Contract | None = None
    temperature: float = 1.0
    tta: str = "none"

    def __post_init__(self) -> None:
        if isinstance(self.contract, dict):          # from asdict()/JSON: the sidecar, replace()
            object.__setattr__(self, "contract", Contract.from_json(self.contract))
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        object.__setattr__(self, "img_size", int(self.img_size))
        object.__setattr__(self, "crop_rows", check_crop_rows(self.crop_rows, "the model's crop_rows"))
        object.__setattr__(self, "temperature", float(self.temperature))
        check_tta(self.tta, "the model's tta")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if len(self.classes) < 2 or "curve" not in self.classes:
            raise ValueError(f"classes must include 'curve', got {self.classes}")
        check_img_size(self.img_size, "the model's img_size")   # metadata is input: bounded like the CLI
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean/std must be 3 values with std > 0, got mean={self.mean} std={self.std}")
        if self.color_order not in COLOR_ORDERS:
            raise ValueError(f"unknown color_order {self.color_order!r}; valid: {', '.join(COLOR_ORDERS)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; valid: {', '.join(PRECISIONS)}")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def curve_index(self) -> int:
        return self.classes.index("curve")

    @property
    def camera(self) -> CameraSpec | None:
        """The camera the model was trained on (None when not recorded)."""
        return self.contract.camera if self.contract else None

    @property
    def label_params(self) -> LabelParams | None:
        """The label definition the model was trained on (None when not recorded)."""
        return self.contract.label if self.contract else None

    def replace(self, **changes) -> "ModelMeta":
        return ModelMeta(**{**asdict(self), **changes})

    # --- checkpoint config <-> meta -------------------------------------------------
    @classmethod
    def from_checkpoint_config(cls, config: dict, sha256: str = "", path: str = "") -> "ModelMeta":
        """Build from a training checkpoint's ``config`` dict (keys arch, classes, img_size, mean, std, ...)."""
        missing = [k for k in ("arch", "img_size", "mean", "std") if k not in config]
        if missing:
            raise ValueError(f"checkpoint {path or '?'} config lacks {', '.join(missing)}; "
                             f"expected keys arch, classes, img_size, mean, std, color_order, dropout")
        return cls(arch=config["arch"], classes=tuple(config.get("classes", CLASSES)),
                   img_size=config["img_size"], crop_rows=config.get("crop_rows", FULL_FRAME),
                   mean=config["mean"], std=config["std"],
                   color_order=config.get("color_order", "RGB"), dropout=float(config.get("dropout", 0.0)),
                   checkpoint_sha256=sha256, checkpoint_path=path, contract=Contract.from_json(config.get("contract")),
                   temperature=float(config.get("temperature", 1.0)), tta=config.get("tta", "none"))

    # --- flat string dict (ONNX metadata_props, JSON sidecar) -------------------------
    def to_props(self) -> dict[str, str]:
        """Flat ``str -> str`` mapping for ONNX ``metadata_props`` (lists as JSON)."""
        props = {MARKER_KEY: META_VERSION, "frame_note": FRAME_NOTE}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "contract":
                if value is not None:
                    props.update({k: json.dumps(v) for k, v in value.to_json().items()})
            elif isinstance(value, (tuple, bool)):
                props[f.name] = json.dumps(list(value) if isinstance(value, tuple) else value)
            else:
                props[f.name] = str(value)
        return props

    @classmethod
    def from_props(cls, props: dict[str, str], source: str = "?") -> "ModelMeta":
        """Inverse of :meth:`to_props`. Raises ValueError if ``props`` was not written by us."""
        if props.get(MARKER_KEY) != META_VERSION:
            raise ValueError(f"{source} has no carla-perception metadata (key {MARKER_KEY!r} missing or not "
                             f"{META_VERSION!r}); re-export it with: python -m perception.export --checkpoint CKPT "
                             f"--out {Path(source).name}")
        kwargs = {"contract": _contract_from_props(props, source)}
        for f in fields(cls):
            if f.name not in props:
                continue
            raw = props[f.name]
            if f.name in ("classes", "mean", "std", "crop_rows"):
                kwargs[f.name] = tuple(json.loads(raw))
            elif f.name == "dynamic_batch":
                kwargs[f.name] = json.loads(raw)
            elif f.name == "img_size":
                kwargs[f.name] = int(raw)
            elif f.name in ("dropout", "temperature"):
                kwargs[f.name] = float(raw)
            else:
                kwargs[f.name] = raw
        if "arch" not in kwargs:
            raise ValueError(f"{source}: carla-perception metadata lacks 'arch'")
        return cls(**kwargs)

    def to_json(self) -> dict:
        d = asdict(self)
        d["contract"] = self.contract.to_json() if self.contract else None
        return d

    @classmethod
    def from_json(cls, data: dict) -> "ModelMeta":
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


def _contract_from_props(props: dict[str, str], source: str) -> Contract | None:
    """The contract stored under :data:`CONTRACT_KEYS` (None when the file predates it)."""
    if "camera" not in props:
        return None
    try:
        return Contract.from_json({k: json.loads(props[k]) for k in CONTRACT_KEYS if k in props})
    except (ValueError, TypeError) as e:
        raise ValueError(f"{source}: unreadable camera/label metadata ({e}); re-export it with "
                         f"python -m perception.export") from None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def load_checkpoint(path: str | os.PathLike):
    """Load a training checkpoint -> (eval-mode CPU model, ModelMeta).

    The format and the loader are the training package's (:mod:`training.checkpoint`); this adds
    the checkpoint's sha256 and path so every exported artifact can name its source.
    """
    from training.checkpoint import load_checkpoint as _load
    path = Path(path)
    model, config = _load(path)
    return model.eval(), ModelMeta.from_checkpoint_config(config, sha256_file(path), str(path.resolve()))


def read_onnx_meta(path: str | os.PathLike) -> ModelMeta:
    """ModelMeta from an ONNX file's ``metadata_props``. Raises ValueError for a foreign or broken ONNX."""
    import onnx
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf DecodeError and friends
        raise ValueError(f"{path} is not a readable ONNX file ({e.__class__.__name__}: {e})") from None
    return ModelMeta.from_props({p.key: p.value for p in model.metadata_props}, str(path))


def read_model_meta(path: str | os.PathLike) -> ModelMeta:
    """ModelMeta of any model file (.pt config, .onnx metadata_props, .engine sidecar), cheaply.

    Builds no network and no inference session: a checkpoint is memory-mapped and only its
    config is read. An engine whose sidecar predates the contract falls back to its source ONNX.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unknown file type, or a file without our metadata.
    """
    from perception.formats import format_for_path
    path = Path(path)
    fmt = format_for_path(path).arg          # unknown suffix -> ValueError listing the valid ones
    if not path.is_file():
        raise FileNotFoundError(f"model file {str(path)!r} not found")
    if fmt == "onnx":
        return read_onnx_meta(path)
    if fmt == "engine":
        from perception.tensorrt_engine import engine_meta
        return engine_meta(path)
    config = _checkpoint_config(path)
    return ModelMeta.from_checkpoint_config(config, sha256_file(path), str(path.resolve()))


def read_contract(path: str | os.PathLike) -> Contract | None:
    """The camera/label contract a model file was trained under; None for models that record none.

    Cheap (see :func:`read_model_meta`): call it before building the classifier, e.g. to open the
    simulator's camera with ``read_contract(model).camera``.
    """
    return read_model_meta(path).contract


def _checkpoint_config(path: Path) -> dict:
    """A training checkpoint's ``config`` without materialising its weights (mmap when possible)."""
    import torch
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:     # legacy (non-zip) serialisation cannot be memory-mapped
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("config"), dict):
        raise ValueError(f"{path}: not a training checkpoint (no config)")
    return ckpt["config"]
