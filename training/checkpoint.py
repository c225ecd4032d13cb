"""The checkpoint format shared by training, evaluation and perception/.

A checkpoint is ``torch.save`` of a dict of plain types and tensors, loadable with
``torch.load(path, weights_only=True)``::

    {"state_dict": model.state_dict(),
     "config": {"arch": str, "num_classes": 2, "classes": ["curve", "straight"], "img_size": int,
                "crop_rows": [top, bottom] (band of frame rows fed to the model; [0, 1] if absent),
                "mean": [3 floats], "std": [3 floats], "color_order": "RGB", "dropout": float,
                "recipe": {every training flag, plain types},
                "contract": {"camera": {...}, "label": {...}} or None},
                "temperature": float (softmax temperature fitted on validation; 1 if absent),
                "tta": "none" | "hflip" (test-time augmentation the loaded model runs with; none if absent)},
     "epoch": int, "metrics": {plain types}}

``last.pt`` adds the resume state (``optimizer``, ``history``, ``early_stop``, ``stage``).
``contract`` is the datasets' camera/label contract (:class:`datasets.schema.Contract` as JSON;
None or absent in checkpoints of datasets that record none or written before it existed).
``color_order`` is the channel order of the model input; :func:`datasets.preprocess.preprocess`
produces it from any raw frame. ``last.pt`` also carries ``rng`` (:func:`capture_rng_state`) so
``--resume`` continues with the same shuffling and augmentation draws as an uninterrupted run.

Every failure to read or write a checkpoint is a :class:`CheckpointError`: one line naming the
file (empty, not a checkpoint, another architecture, disk full), never a pickle traceback or
the 15 KB "Missing key(s)" list.
"""
from __future__ import annotations

import contextlib
import errno
import os
import random
import zipfile
from pathlib import Path

import numpy as np

import torch
from torch import nn

from datasets.preprocess import check_tta
from training.models import base_model, create_model, with_tta

class CheckpointError(ValueError):
    """A checkpoint cannot be read, used or written (one line naming the file)."""


REQUIRED_CONFIG = ("arch", "num_classes", "classes", "img_size", "mean", "std", "color_order", "dropout", "recipe")


def crop_rows_of(config: dict) -> tuple[float, float]:
    """The band of frame rows a checkpoint's model was trained on (the whole frame for older checkpoints)."""
    from datasets.preprocess import FULL_FRAME, check_crop_rows
    return check_crop_rows(config.get("crop_rows", FULL_FRAME), "checkpoint config crop_rows")


def tta_of(config: dict) -> str:
    """The test-time augmentation a checkpoint's model runs with (``none`` for older checkpoints)."""
    return check_tta(config.get("tta", "none"), "checkpoint config tta")


def save_checkpoint(path: str | os.PathLike, model: nn.Module, config: dict, epoch: int, metrics: dict,
                    **extra) -> None:
    """Atomically write a checkpoint (a crash mid-write never leaves a truncated best.pt).

    Raises:
        CheckpointError: the write failed (disk full, read-only); the temp file is removed and the
            previous checkpoint at ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in base_model(model).state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save({"state_dict": state, "config": config, "epoch": int(epoch), "metrics": metrics, **extra}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise CheckpointError(f"could not save {path}: {_why(err)}; the previous {path.name} (if any) is intact") \
            from None


def _why(err: BaseException) -> str:
    """torch reports ENOSPC as ``RuntimeError ... unexpected pos``; say what it is."""
    code = getattr(err, "errno", None)
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    if code in (errno.ENOSPC, errno.EDQUOT) or "unexpected pos" in text or "No space left" in text:
        return "disk full"
    return getattr(err, "strerror", None) or text[:200]


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The raw checkpoint dict (weights_only); raises ValueError if it is not one of ours."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--checkpoint {str(path)!r}: no such file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file, not a checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - EOFError, UnpicklingError, zip/RuntimeError: all mean "not ours"
        kind = "truncated or corrupt" if isinstance(err, (EOFError, zipfile.BadZipFile)) else "not a readable checkpoint"
        raise CheckpointError(f"{path}: {kind} ({type(err).__name__}: {_why(err)})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "config" not in ckpt:
        raise CheckpointError(f"{path}: not a training checkpoint (expected keys state_dict, config; "
                              f"got {sorted(map(str, ckpt))[:8] if isinstance(ckpt, dict) else type(ckpt).__name__})")
    if not isinstance(ckpt["config"], dict):
        raise CheckpointError(f"{path}: checkpoint config is a {type(ckpt['config']).__name__}, expected a dict")
    missing = [k for k in REQUIRED_CONFIG if k not in ckpt["config"]]
    if missing:
        raise CheckpointError(f"{path}: checkpoint config lacks {', '.join(missing)}")
    from datasets.io_safety import check_img_size
    try:
        check_img_size(ckpt["config"]["img_size"], f"{path} config img_size")
        crop_rows_of(ckpt["config"])
        tta_of(ckpt["config"])
    except ValueError as err:
        raise CheckpointError(str(err)) from None
    return ckpt


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model of a checkpoint in eval mode on ``device``; returns ``(model, config)``.

    The architecture comes from the name-keyed factory (no pretrained download: ``weights="none"``)
    and the stored state dict is loaded strictly. A checkpoint with ``config["tta"] == "hflip"`` comes
    back wrapped in :class:`training.models.FlipAverage`; its weights are stored unwrapped.
    """
    ckpt = read_checkpoint(path)
    cfg = ckpt["config"]
    try:
        model = create_model(cfg["arch"], num_classes=cfg["num_classes"], dropout=cfg["dropout"], weights="none")
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path}: cannot build its model ({str(err).splitlines()[0][:200]})") from None
    load_state_dict_checked(model, ckpt["state_dict"], f"{path} (arch {cfg['arch']})")
    return with_tta(model, tta_of(cfg)).to(device).eval(), cfg


def load_state_dict_checked(model: nn.Module, state_dict: dict, what: str) -> None:
    """``model.load_state_dict(state_dict)`` (strict) with a one-line CheckpointError on any mismatch.

    The message counts missing/unexpected/mis-shaped tensors and names the first of each instead of
    torch's multi-kilobyte list.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shaped = [k for k in own if k in state_dict and hasattr(state_dict[k], "shape")
              and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shaped:
        parts = [f"{len(v)} {name} (first: {v[0]})" for name, v in
                 (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shaped)) if v]
        raise CheckpointError(f"{what}: weights do not fit the {type(model).__name__} model: " + ", ".join(parts)
                              + "; it was saved by another architecture or number of classes")
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as err:
        raise CheckpointError(f"{what}: weights do not load: {str(err).splitlines()[0][:200]}") from None


# ------------------------------------------------------------------------------------- RNG state
def capture_rng_state(generators: dict[str, torch.Generator] | None = None, augment=None) -> dict:
    """Every random stream a training epoch draws from, as plain types and tensors (weights_only-loadable).

    Args:
        generators: named torch generators (e.g. ``{"sampler": loader.generator}``); the
            DataLoader's generator decides both the shuffle order and the workers' base seed.
        augment: an object with ``get_state()`` / ``set_state()`` or an albumentations Compose
            (its ``py_random``/``random_generator`` streams), optional.

    Returns:
        ``{"python", "numpy", "torch", "cuda", "generators", "augment"}`` for the checkpoint's ``rng``.
    """
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [py[0], torch.tensor(py[1], dtype=torch.int64), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": {k: g.get_state() for k, g in (generators or {}).items()},
        "augment": _augment_state(augment),
    }
    return state


def restore_rng_state(state: dict, generators: dict[str, torch.Generator] | None = None, augment=None) -> None:
    """Put back what :func:`capture_rng_state` saved (same names); missing parts are left as they are.

    Raises:
        CheckpointError: the state names a generator that is not given (the run changed shape).
    """
    if not state:
        return
    if "python" in state:
        v, internal, gauss = state["python"]
        random.setstate((int(v), tuple(int(x) for x in internal.tolist()), gauss))
    if "numpy" in state:
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    gens = generators or {}
    for k, g_state in state.get("generators", {}).items():
        if k not in gens:
            raise CheckpointError(f"resume state has RNG {k!r} but this run has only {sorted(gens) or 'none'}")
        gens[k].set_state(g_state)
    if augment is not None and state.get("augment") is not None:
        _set_augment_state(augment, state["augment"])


def _random_nodes(augment) -> list:
    """Every object in an albumentations pipeline that owns random streams, in a fixed (depth-first) order.

    albumentations gives the Compose and each transform its own generators, so all must be saved.
    """
    root = getattr(augment, "augment", augment)  # ClassificationPresetTrain wraps a Compose
    out, stack = [], [root]
    while stack:
        node = stack.pop(0)
        if getattr(node, "py_random", None) is not None or getattr(node, "random_generator", None) is not None:
            out.append(node)
        stack[:0] = list(getattr(node, "transforms", None) or [])
    return out


def _augment_state(augment):
    if augment is None:
        return None
    if hasattr(augment, "get_state"):
        return augment.get_state()
    states = []
    for node in _random_nodes(augment):
        v, internal, gauss = node.py_random.getstate()
        states.append({"py": [v, torch.tensor(internal, dtype=torch.int64), gauss],
                       "np": _bitgen_to_plain(node.random_generator.bit_generator.state)})
    return states or None


def _set_augment_state(augment, state) -> None:
    if hasattr(augment, "set_state"):
        augment.set_state(state)
        return
    nodes = _random_nodes(augment)
    if len(nodes) != len(state):
        raise CheckpointError(f"resume state has {len(state)} augmentation RNGs, this pipeline has {len(nodes)}; "
                              "the augmentation flags changed")
    for node, st in zip(nodes, state):
        v, internal, gauss = st["py"]
        node.py_random.setstate((int(v), tuple(int(x) for x in internal.tolist()), gauss))
        node.random_generator.bit_generator.state = _plain_to_bitgen(st["np"])


def _bitgen_to_plain(d):
    """numpy bit-generator state -> ints/str only (PCG64 state ints exceed int64: stored as strings)."""
    if isinstance(d, dict):
        return {k: _bitgen_to_plain(v) for k, v in d.items()}
    if isinstance(d, int) and not -2**63 <= d < 2**63:
        return f"int:{d}"
    return d


def _plain_to_bitgen(d):
    if isinstance(d, dict):
        return {k: _plain_to_bitgen(v) for k, v in d.items()}
    if isinstance(d, str) and d.startswith("int:"):
        return int(d[4:])
    return d
