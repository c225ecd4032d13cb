"""Loading collected datasets for training: manifest validation, the uint8 frame cache, the torch Dataset.

The columns of ``manifest.csv`` are documented once, in :mod:`datasets.schema`.

Decoding JPEGs every epoch would starve a GPU, so each dataset directory gets a cache per image
size: ``<data>/cache/frames_<size>.npy`` (a ``N x size x size x 3`` uint8 RGB array, memory-mapped
by every DataLoader worker) and ``frames_<size>.json`` (index: image list, fingerprint, corrupt rows).
A read-only dataset folder (a shared drive, CI's ``../shared``) gets its cache in the user's cache
directory instead (``$XDG_CACHE_HOME`` or ``~/.cache``, ``carla_curve/frames/<name>-<key>``, keyed
by the folder's path and content), with no flag needed; ``--cache-dir`` overrides both.
The cache is built once with :func:`datasets.preprocess.to_rgb_resized` -- the same function the
inference path uses -- and rebuilt automatically when the images or the manifest change.

Example::

    table = load_frames(["data/town123"])
    frames = build_cache(table, img_size=224)
    table = table.subset(~frames.corrupt_mask(table))
    ds = FrameDataset(frames, table, transform=ClassificationPresetEval())
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from datasets.preprocess import FULL_FRAME, check_crop_rows, to_rgb_resized
from datasets.io_safety import check_img_size, write_json_atomic
from datasets.manifest import DatasetError, read_manifest, resolve_inside  # noqa: F401  (re-exported: the one manifest reader)
from datasets.schema import CLASSES, INFO_NAME, MANIFEST_NAME, Contract, ContractError, describe_differences

log = logging.getLogger(__name__)

CACHE_VERSION = 1
_SHOW_FIRST = 5
MAX_IMAGE_BYTES = 64 * 2**20
"""Largest image file a manifest row may point to; a camera frame is well under 10 MiB, so a larger
file is not a frame (and reading it whole would cost memory and time)."""
DISK_MARGIN_BYTES = 256 * 2**20
"""Free space kept on top of the cache size, so building it does not fill the disk for everything else."""


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/carla-curvature`` (default ``~/.cache/carla-curvature``): frame caches of read-only datasets."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "carla-curvature"


def read_info(data_dir: str | os.PathLike) -> dict:
    """The collection config ``dataset.json`` ({} when absent: it documents, training does not need it)."""
    path = Path(data_dir) / INFO_NAME
    if not path.is_file():
        log.warning("%s: not found; continuing without the collection config", path)
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _for_classifier(contract: Contract) -> Contract:
    """``flag`` and ``skip`` give a classifier the same frames (flagged rows are dropped): one policy to it."""
    if contract.label.junction_policy != "flag":
        return contract
    from dataclasses import replace
    return replace(contract, label=replace(contract.label, junction_policy="skip"))


def load_contract(data_dirs: Sequence[str | os.PathLike]) -> Contract | None:
    """The camera/label contract shared by ``data_dirs`` (from each ``dataset.json``).

    Returns None when no directory records one (hand-made datasets); training then stores none.

    Raises:
        ContractError: two directories were collected with different cameras or label definitions
            (one line naming the differing fields): a model must see one camera and one label definition.
    """
    found: list[tuple[Path, Contract]] = []
    for d in data_dirs:
        contract = Contract.from_json(read_info(d))
        if contract is None:
            continue
        for other_dir, other in found:
            if _for_classifier(contract).differences(_for_classifier(other)):
                raise ContractError(f"datasets differ in their camera/label contract: "
                                    f"{describe_differences(contract, other, str(d), str(other_dir))}; "
                                    "train on datasets collected with the same settings")
        found.append((Path(d), contract))
    return found[0][1] if found else None


@dataclass
class FrameTable:
    """Frames of one or more dataset directories, column-wise (one numpy array per field).

    ``source`` indexes ``roots``; ``row`` is the frame's row in its own manifest (and cache).
    """
    roots: list[Path]
    source: np.ndarray      # int, index into roots
    row: np.ndarray         # int, row in that root's manifest
    image: np.ndarray       # str, path relative to its root
    label: np.ndarray       # int64, index into CLASSES
    town: np.ndarray        # str
    weather: np.ndarray     # str
    episode: np.ndarray     # str
    route_dependent: np.ndarray = None  # bool: label hangs on an unseen route choice (classifiers drop these)

    def __post_init__(self):
        if self.route_dependent is None:
            self.route_dependent = np.zeros(len(self.label), dtype=bool)

    def __len__(self) -> int:
        return len(self.label)

    def subset(self, sel: np.ndarray) -> "FrameTable":
        """Rows selected by a boolean mask or an index array, roots shared."""
        cols = {k: getattr(self, k)[sel] for k in _TABLE_COLUMNS}
        return FrameTable(roots=self.roots, **cols)

    def paths(self) -> list[Path]:
        return [self.roots[s] / p for s, p in zip(self.source, self.image)]

    def episode_keys(self) -> np.ndarray:
        """Episode identity across directories: episode ids are only unique inside one dataset."""
        if len(self.roots) == 1:
            return self.episode.copy()
        names = [r.name for r in self.roots]
        if len(set(names)) < len(names):  # two datasets named alike: fall back to full paths
            names = [str(r) for r in self.roots]
        return np.array([f"{names[s]}:{e}" for s, e in zip(self.source, self.episode)], dtype=object)

    def towns(self) -> list[str]:
        return sorted(set(self.town.tolist()))

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.label, minlength=len(CLASSES))
        return {c: int(n) for c, n in zip(CLASSES, counts)}


_TABLE_COLUMNS = ("source", "row", "image", "label", "town", "weather", "episode", "route_dependent")


def load_frames(data_dirs: Sequence[str | os.PathLike], check_files: bool = True) -> FrameTable:
    """Read and validate the manifests of ``data_dirs`` into one :class:`FrameTable`.

    Every row is kept, so ``row`` indexes the manifest and its cache; a classifier selects
    ``table.subset(~table.route_dependent)`` (rows saved with ``--junction-policy flag``).

    Raises:
        DatasetError: bad manifest (see :func:`read_manifest`), an unknown label, or images missing
            from disk (count and the first few paths).
    """
    if not data_dirs:
        raise DatasetError("no dataset given; pass --data DIR [DIR ...]")
    roots, cols = [], {k: [] for k in _TABLE_COLUMNS}
    class_index = {c: i for i, c in enumerate(CLASSES)}
    for si, d in enumerate(data_dirs):
        root = Path(d).resolve()
        rows = read_manifest(root)
        roots.append(root)
        for ri, r in enumerate(rows):
            where = f"{root / MANIFEST_NAME} row {ri + 2}"
            if r["label"] not in class_index:
                raise DatasetError(f"{where}: unknown label {r['label']!r}; valid: {', '.join(CLASSES)}")
            resolve_inside(root, r["image"], where)
            cols["source"].append(si)
            cols["row"].append(ri)
            cols["image"].append(r["image"])
            cols["label"].append(class_index[r["label"]])
            cols["town"].append(r["town"])
            cols["weather"].append(r["weather"])
            cols["episode"].append(str(r["episode"]))
            cols["route_dependent"].append(r["route_dependent"] == "1")
    table = FrameTable(
        roots=roots,
        source=np.asarray(cols["source"], dtype=np.int64), row=np.asarray(cols["row"], dtype=np.int64),
        image=np.asarray(cols["image"], dtype=object), label=np.asarray(cols["label"], dtype=np.int64),
        town=np.asarray(cols["town"], dtype=object), weather=np.asarray(cols["weather"], dtype=object),
        episode=np.asarray(cols["episode"], dtype=object),
        route_dependent=np.asarray(cols["route_dependent"], dtype=bool))
    if check_files:
        missing, huge = [], []
        for p in table.paths():
            try:
                st = p.stat()
            except OSError:
                missing.append(str(p))
                continue
            if st.st_size > MAX_IMAGE_BYTES or not p.is_file():
                huge.append((str(p), st.st_size))
        if missing:
            raise DatasetError(f"{len(missing)} of {len(table)} images listed in the manifest are missing from disk, "
                               f"e.g. {', '.join(missing[:_SHOW_FIRST])}")
        if huge:
            raise DatasetError(f"{len(huge)} manifest row(s) point to files that are not camera frames (not a file or "
                               f"over {MAX_IMAGE_BYTES >> 20} MiB), e.g. {huge[0][0]} ({huge[0][1] >> 20} MiB)")
    return table


def check_classes(table: FrameTable, what: str = "dataset") -> None:
    """Raise DatasetError unless every class of CLASSES has at least one frame in ``table``."""
    if len(table) == 0:
        raise DatasetError(f"{what} is empty (no usable frames)")
    counts = table.class_counts()
    absent = [c for c, n in counts.items() if n == 0]
    if absent:
        raise DatasetError(f"{what} has one class only ({counts}); a classifier needs frames of "
                           f"{', '.join(CLASSES)} -- collect more routes or add a dataset with --data")


# --------------------------------------------------------------------------------------------- cache

def _fingerprint(root: Path, images: Sequence[str]) -> str:
    """Hash of image names, sizes and mtimes: a re-collected frame with the same name invalidates the cache."""
    h = hashlib.sha1()
    for rel in images:
        st = os.stat(root / rel)
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _decode(path: Path, img_size: int, crop_rows: tuple[float, float] = FULL_FRAME) -> np.ndarray | None:
    """Decode one image file to the cached form (uint8 RGB, img_size^2); None when unreadable."""
    data = np.fromfile(str(path), dtype=np.uint8)
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if bgr is None:
        return None
    return to_rgb_resized(bgr, img_size, "BGR", crop_rows=crop_rows)


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def _disk_why(e: OSError) -> str:
    import errno
    return "disk full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else (e.strerror or str(e))


def _reserve(path: Path) -> None:
    """Allocate the blocks of ``path`` now (ENOSPC here, not SIGBUS later through the memmap)."""
    size = path.stat().st_size
    fd = os.open(path, os.O_RDWR)
    try:
        if hasattr(os, "posix_fallocate"):
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as e:
                if e.errno not in (95, 22):  # EOPNOTSUPP/EINVAL: filesystem without fallocate; free space was checked
                    raise
    finally:
        os.close(fd)


def _dir_writable(path: Path) -> bool:
    """True when files can be created in ``path`` or, if it does not exist, in its nearest existing ancestor.
    A folder without any write permission bit counts as read-only even for root, who could write there
    but should not (a dataset shipped read-only, e.g. ../shared in CI)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    if not path.stat().st_mode & 0o222:
        return False
    probe = path / f".write_probe_{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
        return True
    except OSError:
        return False


def resolve_cache_dir(root: Path, cache_dir: Path | None) -> Path | None:
    """Where the cache of ``root`` goes: ``cache_dir`` if given, ``<root>/cache`` if writable, else the user cache.

    A dataset folder the user can only read (a shared or mounted dataset) is never written into.
    """
    if cache_dir is not None:
        return cache_dir
    if _dir_writable(root / "cache"):
        return None
    fallback = user_cache_dir() / "frames"
    log.warning("%s is not writable: the frame cache goes to %s", root, fallback)
    return fallback


def cache_paths(root: Path, img_size: int, cache_dir: Path | None = None,
                crop_rows: tuple[float, float] = FULL_FRAME) -> tuple[Path, Path]:
    """(frames .npy, index .json) for one dataset directory, image size and row band."""
    base = cache_dir / hashlib.sha1(str(root).encode()).hexdigest()[:12] if cache_dir else root / "cache"
    stem = f"frames_{img_size}"
    if tuple(crop_rows) != FULL_FRAME:
        stem += f"_rows{crop_rows[0]:.4f}-{crop_rows[1]:.4f}"
    return base / f"{stem}.npy", base / f"{stem}.json"


def _fresh(npy: Path, index: Path, fp: str, images: list[str], img_size: int,
           crop_rows: tuple[float, float] = FULL_FRAME) -> list[int] | None:
    """Corrupt rows of an up-to-date cache at (npy, index); None when absent or stale."""
    if not (npy.is_file() and index.is_file()):
        return None
    try:
        meta = json.loads(index.read_text())
        if (meta.get("version") == CACHE_VERSION and meta.get("fingerprint") == fp
                and meta.get("images") == images and meta.get("img_size") == img_size
                and tuple(meta.get("crop_rows", FULL_FRAME)) == tuple(crop_rows)):
            return list(meta["corrupt"])
    except (OSError, ValueError, KeyError):
        pass
    return None


def _build_one(root: Path, img_size: int, cache_dir: Path | None, workers: int, progress: bool,
               crop_rows: tuple[float, float] = FULL_FRAME) -> tuple[Path, list[int]]:
    """Reuse or build one directory's cache: ``--cache-dir``, else ``<root>/cache``, else (read-only
    dataset, e.g. a shared drive) the user's cache directory (:func:`resolve_cache_dir`)."""
    from tqdm import tqdm

    images = [r["image"] for r in read_manifest(root)]
    npy, index = cache_paths(root, img_size, resolve_cache_dir(root, cache_dir), crop_rows)
    fp = _fingerprint(root, images)
    corrupt = _fresh(npy, index, fp, images, img_size, crop_rows)
    if corrupt is not None:
        log.info("frame cache %s is up to date (%d frames)", npy, len(images))
        return npy, corrupt
    nbytes = len(images) * img_size * img_size * 3
    tmp = npy.with_name(npy.stem + f".tmp{os.getpid()}.npy")
    try:
        npy.parent.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(npy.parent).free
        if nbytes + DISK_MARGIN_BYTES > free:
            raise DatasetError(f"the frame cache {npy} needs {_gib(nbytes)} ({len(images)} frames at {img_size} px) "
                               f"but {npy.parent} has {_gib(free)} free; free space, pass --cache-dir on another "
                               "disk, or a smaller --img-size")
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(images), img_size, img_size, 3))
        _reserve(tmp)  # a sparse file on a full disk would SIGBUS at the first page written
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise DatasetError(f"cannot write the frame cache {npy} ({_disk_why(e)}); pass --cache-dir to a writable "
                           "directory with free space") from None
    corrupt: list[int] = []
    try:
        with ThreadPoolExecutor(max(1, workers)) as pool:  # cv2 decode/resize release the GIL
            it = pool.map(lambda rel: _decode(root / rel, img_size, crop_rows), images, chunksize=16)
            for i, frame in enumerate(tqdm(it, total=len(images), desc=f"caching {root.name} @{img_size}px",
                                           unit="img", disable=None if progress else True, leave=False)):
                if frame is None:
                    corrupt.append(i)
                else:
                    arr[i] = frame
        arr.flush()
        del arr
        os.replace(tmp, npy)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise DatasetError(f"cannot write the frame cache {npy} ({_disk_why(e)}); the partial file was "
                               "removed") from None
        raise
    meta = {"version": CACHE_VERSION, "img_size": img_size, "crop_rows": list(crop_rows), "color_order": "RGB",
            "fingerprint": fp, "images": images, "corrupt": corrupt}
    try:
        write_json_atomic(index, meta, indent=None)
    except OSError as e:
        raise DatasetError(f"cannot write the frame cache index {index} ({_disk_why(e)})") from None
    log.info("built frame cache %s (%d frames, %d corrupt)", npy, len(images), len(corrupt))
    return npy, corrupt


# ------------------------------------------------------------------------------------------- hygiene
@dataclass
class HygieneReport:
    """What is wrong with a dataset but does not stop training (``strict`` makes each an error).

    Attributes:
        duplicates: rows repeating an earlier row's image (dropped from the table).
        constant: rows whose cached frame is one flat colour (all black/white: a dead camera).
        missing_info: dataset directories without ``dataset.json`` (no camera/label contract).
        examples: a few offending paths per kind, for the message.
    """
    duplicates: int = 0
    constant: int = 0
    missing_info: list[str] = field(default_factory=list)
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def problems(self) -> list[str]:
        out = []
        if self.duplicates:
            out.append(f"{self.duplicates} duplicated manifest row(s), e.g. {', '.join(self.examples['duplicates'])}")
        if self.constant:
            out.append(f"{self.constant} constant (all one colour) image(s), e.g. {', '.join(self.examples['constant'])}")
        if self.missing_info:
            out.append(f"no {INFO_NAME} in {', '.join(self.missing_info)} (camera/label settings unknown)")
        return out

    def summary(self) -> str:
        return "; ".join(self.problems) or "no problems"


def check_hygiene(table: FrameTable, cache: "FrameCache | None" = None, strict: bool = False,
                  chunk: int = 256) -> tuple[FrameTable, HygieneReport]:
    """Count duplicate rows, constant images and missing ``dataset.json``; drop the duplicates.

    Args:
        table: frames as loaded by :func:`load_frames`.
        cache: the built frame cache, to find constant frames (skipped when None).
        strict: raise instead of warning (the CLIs' ``--strict``).
        chunk: frames per vectorised min/max pass over the memmap (bounded memory).

    Returns:
        (table without duplicate rows, report). Each problem is logged as one warning line.

    Raises:
        DatasetError: ``strict`` and any problem, one line listing them all.
    """
    report = HygieneReport(examples={"duplicates": [], "constant": []})
    keys = [f"{s}:{p}" for s, p in zip(table.source.tolist(), table.image.tolist())]
    _, first = np.unique(np.asarray(keys, dtype=object), return_index=True)
    keep = np.zeros(len(table), dtype=bool)
    keep[first] = True
    dup_idx = np.flatnonzero(~keep)
    report.duplicates = int(len(dup_idx))
    report.examples["duplicates"] = [str(table.roots[table.source[i]] / table.image[i]) for i in dup_idx[:3]]
    if cache is not None and len(table):
        arrays = cache.arrays()
        constant = []
        for s, arr in enumerate(arrays):
            rows = table.row[(table.source == s) & keep]
            for a in range(0, len(rows), chunk):
                idx = np.sort(rows[a:a + chunk])
                block = arr[idx].reshape(len(idx), -1)
                flat = block.min(axis=1) == block.max(axis=1)
                constant += [(s, int(r)) for r in idx[flat]]
        report.constant = len(constant)
        report.examples["constant"] = [str(table.roots[s] / table.image[(table.source == s) & (table.row == r)][0])
                                       for s, r in constant[:3]]
    report.missing_info = [str(r) for r in table.roots if not (r / INFO_NAME).is_file()]
    if report.problems:
        if strict:
            raise DatasetError("dataset hygiene (--strict): " + report.summary())
        for line in report.problems:
            log.warning("dataset hygiene: %s", line)
    return (table.subset(keep) if report.duplicates else table), report


@dataclass
class FrameCache:
    """The cached uint8 RGB frames of every dataset directory of a FrameTable (memory-mapped lazily).

    Picklable without the arrays, so DataLoader workers each open their own read-only memmap.
    """
    npy_paths: list[Path]
    corrupt: list[list[int]]
    img_size: int
    crop_rows: tuple[float, float] = FULL_FRAME
    _arrays: list[np.ndarray] | None = field(default=None, repr=False, compare=False)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_arrays"] = None
        return state

    def arrays(self) -> list[np.ndarray]:
        if self._arrays is None:
            self._arrays = [np.load(p, mmap_mode="r") for p in self.npy_paths]
        return self._arrays

    def get(self, source: int, row: int) -> np.ndarray:
        """One frame, uint8 HxWx3 RGB (a copy: augmentations write in place)."""
        return np.array(self.arrays()[source][row])

    def corrupt_mask(self, table: FrameTable) -> np.ndarray:
        """Boolean per table row: True where the image could not be decoded."""
        bad = {(s, r) for s, rows in enumerate(self.corrupt) for r in rows}
        return np.array([(int(s), int(r)) in bad for s, r in zip(table.source, table.row)], dtype=bool)


def build_cache(table: FrameTable, img_size: int, cache_dir: str | os.PathLike | None = None,
                workers: int | None = None, progress: bool = True,
                crop_rows: tuple[float, float] = FULL_FRAME) -> FrameCache:
    """Build (or reuse) the uint8 frame cache of every directory in ``table`` at ``img_size``, from the
    band ``crop_rows`` of every frame (:func:`datasets.preprocess.crop_band`; default the whole frame).

    Corrupt images are not fatal: they are logged with a count and the first few names, and
    :meth:`FrameCache.corrupt_mask` lets the caller drop them.
    """
    img_size = check_img_size(img_size, "--img-size")
    crop_rows = check_crop_rows(crop_rows)
    workers = workers if workers is not None else min(8, os.cpu_count() or 1)
    cdir = Path(cache_dir) if cache_dir else None
    npys, corrupt = [], []
    for root in table.roots:
        npy, bad = _build_one(root, img_size, cdir, workers, progress, crop_rows)
        npys.append(npy)
        corrupt.append(bad)
    cache = FrameCache(npys, corrupt, img_size, crop_rows)
    n_bad = sum(len(b) for b in corrupt)
    if n_bad:
        names = [str(table.roots[s] / table.image[(table.source == s) & (table.row == r)][0])
                 for s, rows in enumerate(corrupt) for r in rows[:_SHOW_FIRST]][:_SHOW_FIRST]
        log.warning("skipped %d corrupt image(s) that could not be decoded, e.g. %s", n_bad, ", ".join(names))
    return cache


class FrameDataset(Dataset):
    """(image tensor, label, table index) per frame, read from a :class:`FrameCache`.

    The dataset never builds a transform: callers pass one of :mod:`datasets.presets`, so the
    training and evaluation paths differ only in that argument.
    """

    def __init__(self, cache: FrameCache, table: FrameTable,
                 transform: Callable[[np.ndarray], torch.Tensor]) -> None:
        self.cache = cache
        self.table = table
        self.transform = transform

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int):
        frame = self.cache.get(int(self.table.source[i]), int(self.table.row[i]))
        return self.transform(frame), int(self.table.label[i]), i

    def frame(self, i: int) -> np.ndarray:
        """The untransformed uint8 RGB frame (for plots)."""
        return self.cache.get(int(self.table.source[i]), int(self.table.row[i]))
