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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from datasets.preprocess import to_rgb_resized
from datasets.schema import CLASSES, INFO_NAME, MANIFEST_COLUMNS, MANIFEST_NAME

log = logging.getLogger(__name__)

CACHE_VERSION = 1
_SHOW_FIRST = 5


class DatasetError(ValueError):
    """A dataset on disk cannot be used as given (one-line message naming the file and value)."""


def read_manifest(data_dir: str | os.PathLike) -> list[dict[str, str]]:
    """Read ``<data_dir>/manifest.csv`` as a list of row dicts, validating its header.

    Raises:
        DatasetError: directory or manifest missing, a required column missing, or no rows.
    """
    data_dir = Path(data_dir)
    path = data_dir / MANIFEST_NAME
    if not data_dir.is_dir():
        raise DatasetError(f"--data {str(data_dir)!r}: no such directory")
    if not path.is_file():
        raise DatasetError(f"{path}: not found; a dataset directory holds {MANIFEST_NAME} and {INFO_NAME} "
                           "(written by carla-collect)")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in MANIFEST_COLUMNS if c not in header]
        if missing:
            raise DatasetError(f"{path}: missing column(s) {', '.join(missing)}; expected columns: "
                               f"{', '.join(MANIFEST_COLUMNS)}")
        rows = list(reader)
    if not rows:
        raise DatasetError(f"{path}: empty dataset (no frames in the manifest)")
    return rows


def read_info(data_dir: str | os.PathLike) -> dict:
    """The collection config ``dataset.json`` ({} when absent: it documents, training does not need it)."""
    path = Path(data_dir) / INFO_NAME
    if not path.is_file():
        log.warning("%s: not found; continuing without the collection config", path)
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


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

    def __len__(self) -> int:
        return len(self.label)

    def subset(self, sel: np.ndarray) -> "FrameTable":
        """Rows selected by a boolean mask or an index array, roots shared."""
        cols = {k: getattr(self, k)[sel] for k in ("source", "row", "image", "label", "town", "weather", "episode")}
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


def load_frames(data_dirs: Sequence[str | os.PathLike], check_files: bool = True) -> FrameTable:
    """Read and validate the manifests of ``data_dirs`` into one :class:`FrameTable`.

    Raises:
        DatasetError: bad manifest (see :func:`read_manifest`), an unknown label, or images missing
            from disk (count and the first few paths).
    """
    if not data_dirs:
        raise DatasetError("no dataset given; pass --data DIR [DIR ...]")
    roots, cols = [], {k: [] for k in ("source", "row", "image", "label", "town", "weather", "episode")}
    class_index = {c: i for i, c in enumerate(CLASSES)}
    for si, d in enumerate(data_dirs):
        root = Path(d).resolve()
        rows = read_manifest(root)
        roots.append(root)
        for ri, r in enumerate(rows):
            if r["label"] not in class_index:
                raise DatasetError(f"{root / MANIFEST_NAME} row {ri + 2}: unknown label {r['label']!r}; "
                                   f"valid: {', '.join(CLASSES)}")
            cols["source"].append(si)
            cols["row"].append(ri)
            cols["image"].append(r["image"])
            cols["label"].append(class_index[r["label"]])
            cols["town"].append(r["town"])
            cols["weather"].append(r["weather"])
            cols["episode"].append(str(r["episode"]))
    table = FrameTable(
        roots=roots,
        source=np.asarray(cols["source"], dtype=np.int64), row=np.asarray(cols["row"], dtype=np.int64),
        image=np.asarray(cols["image"], dtype=object), label=np.asarray(cols["label"], dtype=np.int64),
        town=np.asarray(cols["town"], dtype=object), weather=np.asarray(cols["weather"], dtype=object),
        episode=np.asarray(cols["episode"], dtype=object))
    if check_files:
        missing = [str(p) for p in table.paths() if not p.is_file()]
        if missing:
            raise DatasetError(f"{len(missing)} of {len(table)} images listed in the manifest are missing from disk, "
                               f"e.g. {', '.join(missing[:_SHOW_FIRST])}")
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


def _decode(path: Path, img_size: int) -> np.ndarray | None:
    """Decode one image file to the cached form (uint8 RGB, img_size^2); None when unreadable."""
    data = np.fromfile(str(path), dtype=np.uint8)
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if bgr is None:
        return None
    return to_rgb_resized(bgr, img_size, "BGR")


def cache_paths(root: Path, img_size: int, cache_dir: Path | None = None) -> tuple[Path, Path]:
    """(frames .npy, index .json) for one dataset directory and image size."""
    base = cache_dir / hashlib.sha1(str(root).encode()).hexdigest()[:12] if cache_dir else root / "cache"
    return base / f"frames_{img_size}.npy", base / f"frames_{img_size}.json"


def user_cache_dir() -> Path:
    """Per-user cache root for datasets whose own folder is read-only: ``$XDG_CACHE_HOME`` or ``~/.cache``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "carla_curve" / "frames"


def fallback_cache_paths(root: Path, img_size: int, fingerprint: str) -> tuple[Path, Path]:
    """Cache files in :func:`user_cache_dir`, keyed by the dataset's resolved path and its content fingerprint."""
    key = hashlib.sha1(f"{root.resolve()}\0{fingerprint}".encode()).hexdigest()[:16]
    base = user_cache_dir() / f"{root.name}-{key}"
    return base / f"frames_{img_size}.npy", base / f"frames_{img_size}.json"


def _fresh(npy: Path, index: Path, fp: str, images: list[str], img_size: int) -> list[int] | None:
    """Corrupt rows of an up-to-date cache at (npy, index); None when absent or stale."""
    if not (npy.is_file() and index.is_file()):
        return None
    try:
        meta = json.loads(index.read_text())
        if (meta.get("version") == CACHE_VERSION and meta.get("fingerprint") == fp
                and meta.get("images") == images and meta.get("img_size") == img_size):
            return list(meta["corrupt"])
    except (OSError, ValueError, KeyError):
        pass
    return None


def _writable(folder: Path) -> bool:
    """Whether we may write in ``folder`` (or its nearest existing parent). Folders without any write
    permission bit count as read-only even for root, who could write there but should not."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o222)


def _open_cache(npy: Path, n: int, img_size: int) -> tuple[Path, np.ndarray]:
    if not _writable(npy.parent):
        raise PermissionError(13, "read-only folder")
    npy.parent.mkdir(parents=True, exist_ok=True)
    tmp = npy.with_name(npy.stem + f".tmp{os.getpid()}.npy")
    return tmp, np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, img_size, img_size, 3))


def _build_one(root: Path, img_size: int, cache_dir: Path | None, workers: int, progress: bool) -> tuple[Path, list[int]]:
    """Reuse or build one directory's cache: ``--cache-dir``, else ``<root>/cache``, else (read-only
    dataset, e.g. a shared drive) :func:`fallback_cache_paths` in the user's cache directory."""
    from tqdm import tqdm

    images = [r["image"] for r in read_manifest(root)]
    fp = _fingerprint(root, images)
    candidates = [cache_paths(root, img_size, cache_dir)]
    if cache_dir is None:
        candidates.append(fallback_cache_paths(root, img_size, fp))
    for npy, index in candidates:
        corrupt = _fresh(npy, index, fp, images, img_size)
        if corrupt is not None:
            log.info("frame cache %s is up to date (%d frames)", npy, len(images))
            return npy, corrupt
    errors = []
    for npy, index in candidates:
        try:
            tmp, arr = _open_cache(npy, len(images), img_size)
            break
        except OSError as e:
            errors.append(f"{npy.parent} ({e.strerror})")
            if cache_dir is None and len(errors) == 1:
                log.info("dataset folder %s is not writable (%s); caching frames in %s", root, e.strerror,
                         candidates[1][0].parent)
    else:
        raise DatasetError(f"cannot write the frame cache in {' nor '.join(errors)}; pass --cache-dir to a "
                           "writable directory")
    corrupt: list[int] = []
    with ThreadPoolExecutor(max(1, workers)) as pool:  # cv2 decode/resize release the GIL
        it = pool.map(lambda rel: _decode(root / rel, img_size), images, chunksize=16)
        for i, frame in enumerate(tqdm(it, total=len(images), desc=f"caching {root.name} @{img_size}px",
                                       unit="img", disable=not progress, leave=False)):
            if frame is None:
                corrupt.append(i)
            else:
                arr[i] = frame
    arr.flush()
    del arr
    os.replace(tmp, npy)
    meta = {"version": CACHE_VERSION, "img_size": img_size, "color_order": "RGB", "fingerprint": fp,
            "images": images, "corrupt": corrupt}
    tmp_index = index.with_name(index.name + f".tmp{os.getpid()}")
    tmp_index.write_text(json.dumps(meta))
    os.replace(tmp_index, index)
    log.info("built frame cache %s (%d frames, %d corrupt)", npy, len(images), len(corrupt))
    return npy, corrupt


@dataclass
class FrameCache:
    """The cached uint8 RGB frames of every dataset directory of a FrameTable (memory-mapped lazily).

    Picklable without the arrays, so DataLoader workers each open their own read-only memmap.
    """
    npy_paths: list[Path]
    corrupt: list[list[int]]
    img_size: int
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
                workers: int | None = None, progress: bool = True) -> FrameCache:
    """Build (or reuse) the uint8 frame cache of every directory in ``table`` at ``img_size``.

    Corrupt images are not fatal: they are logged with a count and the first few names, and
    :meth:`FrameCache.corrupt_mask` lets the caller drop them.
    """
    workers = workers if workers is not None else min(8, os.cpu_count() or 1)
    cdir = Path(cache_dir) if cache_dir else None
    npys, corrupt = [], []
    for root in table.roots:
        npy, bad = _build_one(root, img_size, cdir, workers, progress)
        npys.append(npy)
        corrupt.append(bad)
    cache = FrameCache(npys, corrupt, img_size)
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
