"""Crash-safe writer of the dataset format in ``datasets/schema.py``.

Invariant, kept across crashes, SIGINT/SIGTERM, disk full and several worker processes:
every manifest row has its image and every image has its row.

* an image is encoded in memory, written to ``<name>.tmp`` and renamed into place (a reader
  never sees half a JPEG); only then is its row appended to ``manifest.csv`` and flushed, in
  one ``write`` under an exclusive ``flock`` (workers append to the same file safely);
* a crash between the two steps leaves an image without a row, and a crash inside the
  append a truncated last line: :meth:`DatasetWriter.reconcile` (run once before
  collecting) drops both, plus leftover ``*.tmp`` files and route files no row refers to.

Per-episode route files (``routes/<episode>.json``) keep the lane coordinates of the route
each frame was labelled from, so an auditor can recompute every label from the map.
"""
from __future__ import annotations

import csv
import errno
import fcntl
import io
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from datasets.schema import CLASSES, INFO_NAME, MANIFEST_COLUMNS, MANIFEST_NAME

logger = logging.getLogger(__name__)

IMAGE_FORMATS = ("jpg", "png")
ROUTES_DIR = "routes"
IMAGES_DIR = "images"
CONTACT_SHEET_NAME = "contact_sheet.png"


class DiskFullError(OSError):
    """The disk filled up; everything written before is intact."""


@dataclass(frozen=True)
class ReconcileReport:
    rows_kept: int
    rows_dropped: int
    images_dropped: int
    routes_dropped: int


def read_manifest(out_dir: Path) -> list[dict]:
    """Complete rows of ``manifest.csv`` (a truncated last line is skipped)."""
    path = Path(out_dir) / MANIFEST_NAME
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):  # the append in flight when a crash hit
        lines = lines[:-1]
    rows = list(csv.DictReader(io.StringIO("".join(lines))))
    return [r for r in rows if None not in r and all(r.get(c) not in (None, "") for c in ("image", "label"))]


def check_writable(out_dir: Path) -> None:
    """Raise PermissionError (one line, naming the path) unless ``out_dir`` can be created and written."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write_probe_{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        raise PermissionError(f"--out {out_dir} is not writable: {err.strerror or err}") from None


class DatasetWriter:
    """Appends frames to a dataset directory (shared by runs, towns and worker processes).

    Args:
        out_dir: dataset root.
        image_format: ``jpg`` or ``png``.
        jpeg_quality: 1..100, for ``jpg``.
    """

    def __init__(self, out_dir, image_format: str = "jpg", jpeg_quality: int = 95):
        if image_format not in IMAGE_FORMATS:
            raise ValueError(f"unknown image format {image_format!r}; valid: {', '.join(IMAGE_FORMATS)}")
        if not 1 <= int(jpeg_quality) <= 100:
            raise ValueError(f"jpeg quality must be in [1, 100], got {jpeg_quality}")
        self.out_dir = Path(out_dir)
        self.image_format = image_format
        self._params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if image_format == "jpg" else \
            [cv2.IMWRITE_PNG_COMPRESSION, 1]
        self.manifest_path = self.out_dir / MANIFEST_NAME

    # ------------------------------------------------------------------ set-up
    def prepare(self) -> ReconcileReport:
        """Create the layout and the manifest header, then reconcile. Call once, before workers start."""
        check_writable(self.out_dir)
        for label in CLASSES:
            (self.out_dir / IMAGES_DIR / label).mkdir(parents=True, exist_ok=True)
        (self.out_dir / ROUTES_DIR).mkdir(exist_ok=True)
        if not self.manifest_path.exists() or self.manifest_path.stat().st_size == 0:
            self.manifest_path.write_text(",".join(MANIFEST_COLUMNS) + "\n", encoding="utf-8")
        else:
            header = self.manifest_path.open(encoding="utf-8").readline().strip().split(",")
            if tuple(header) != MANIFEST_COLUMNS:
                raise ValueError(f"{self.manifest_path} has columns {header}, expected {list(MANIFEST_COLUMNS)}")
        return self.reconcile()

    def reconcile(self) -> ReconcileReport:
        """Drop rows without an image, images without a row, temp files and unused route files."""
        raw = self.manifest_path.read_text(encoding="utf-8") if self.manifest_path.exists() else ""
        rows = read_manifest(self.out_dir)
        kept = [r for r in rows if (self.out_dir / r["image"]).is_file()]
        referenced = {r["image"] for r in kept}
        images_dropped = 0
        img_root = self.out_dir / IMAGES_DIR
        for path in img_root.rglob("*") if img_root.exists() else []:
            if not path.is_file():
                continue
            rel = path.relative_to(self.out_dir).as_posix()
            if path.suffix == ".tmp" or rel not in referenced:
                path.unlink()
                images_dropped += 1
        episodes = {r["episode"] for r in kept}
        routes_dropped = 0
        route_root = self.out_dir / ROUTES_DIR
        for path in route_root.glob("*") if route_root.exists() else []:
            if path.suffix == ".tmp" or path.stem not in episodes:
                path.unlink()
                routes_dropped += 1
        n_data_lines = max(0, len([ln for ln in raw.splitlines() if ln.strip()]) - 1)  # minus the header
        if len(kept) != n_data_lines or (raw and not raw.endswith("\n")):
            self._rewrite(kept)
        report = ReconcileReport(rows_kept=len(kept), rows_dropped=n_data_lines - len(kept),
                                 images_dropped=images_dropped, routes_dropped=routes_dropped)
        if report.rows_dropped or report.images_dropped:
            logger.warning("reconciled %s: dropped %d rows without image, %d images without row",
                           self.out_dir, report.rows_dropped, report.images_dropped)
        return report

    def _rewrite(self, rows: list[dict]) -> None:
        tmp = self.manifest_path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.manifest_path)

    def counts(self) -> Counter:
        """Rows per label currently in the manifest."""
        return Counter(r["label"] for r in read_manifest(self.out_dir))

    # ------------------------------------------------------------------ writing
    def image_path(self, label: str, episode: str, frame: int) -> str:
        """Path (relative to the dataset root) for one frame; unique per (episode, frame)."""
        return f"{IMAGES_DIR}/{label}/{episode}_{frame:07d}.{self.image_format}"

    def encode(self, bgra: np.ndarray) -> bytes:
        """BGRA (CARLA raw_data layout) -> encoded bytes. cv2 encoders take BGR, so the files hold true RGB."""
        ok, buf = cv2.imencode("." + self.image_format, cv2.cvtColor(bgra, cv2.COLOR_BGRA2BGR), self._params)
        if not ok:
            raise RuntimeError(f"cv2 could not encode a {bgra.shape} image as {self.image_format}")
        return buf.tobytes()

    def write_frame(self, encoded: bytes, row: dict) -> None:
        """Write the image, then append its row (flushed). Raises DiskFullError on ENOSPC, leaving no partial file."""
        rel = row["image"]
        path = self.out_dir / rel
        tmp = path.with_name(path.name + ".tmp")
        line = _csv_line(row)
        try:
            with open(tmp, "wb") as f:
                f.write(encoded)
            os.replace(tmp, path)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise _disk_error(err, path) from None
        try:
            self._append(line)
        except OSError as err:
            path.unlink(missing_ok=True)  # keep the invariant: no image without its row
            raise _disk_error(err, self.manifest_path) from None

    def _append(self, line: str) -> None:
        fd = os.open(self.manifest_path, os.O_WRONLY | os.O_APPEND)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            data = line.encode("utf-8")
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(errno.ENOSPC, "short write to manifest")
        finally:
            os.close(fd)  # closing releases the lock

    def write_route(self, episode: str, payload: dict) -> None:
        """Store (atomically) the route an episode's labels were computed from."""
        path = self.out_dir / ROUTES_DIR / f"{episode}.json"
        tmp = path.with_suffix(".json.tmp")
        try:
            tmp.write_text(json.dumps(payload, separators=(",", ":")), encoding="utf-8")
            os.replace(tmp, path)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise _disk_error(err, path) from None


def _csv_line(row: dict) -> str:
    missing = [c for c in MANIFEST_COLUMNS if c not in row]
    if missing:
        raise ValueError(f"manifest row lacks columns {missing}")
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow([row[c] for c in MANIFEST_COLUMNS])
    return buf.getvalue()


def _disk_error(err: OSError, path: Path) -> OSError:
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(err.errno, f"disk full while writing {path}; everything saved before is intact")
    return err


# ---------------------------------------------------------------------- dataset.json
def merge_info(out_dir: Path, info: dict, run: dict) -> dict:
    """Write ``dataset.json``: the collection config plus a list of runs.

    Runs sharing a directory must agree on what makes frames comparable (label parameters,
    camera); anything else (towns, weather, sim) may differ per run and is kept per run.

    Raises:
        ValueError: the existing dataset was collected with different label or camera settings.
    """
    path = Path(out_dir) / INFO_NAME
    old = json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
    if old is not None:
        for key in ("label", "camera"):
            if old.get(key) != info.get(key):
                raise ValueError(f"{path} was collected with {key}={old.get(key)}, this run has {info.get(key)}; "
                                 f"use another --out or the same settings")
        runs = old.get("runs", [])
    else:
        runs = []
    merged = {**(old or {}), **info, "runs": runs + [run]}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(merged, indent=2), encoding="utf-8")
    os.replace(tmp, path)
    return merged


def previous_runs(out_dir: Path) -> int:
    path = Path(out_dir) / INFO_NAME
    if not path.exists():
        return 0
    return len(json.loads(path.read_text(encoding="utf-8")).get("runs", []))


# ---------------------------------------------------------------------- contact sheet
def write_contact_sheet(out_dir: Path, per_class: int = 6, seed: int = 0, thumb_width: int = 240) -> Path | None:
    """Random samples per class (one row each) with their label and heading change; None if empty or no matplotlib."""
    try:
        import matplotlib
    except ImportError:
        logging.getLogger(__name__).warning("matplotlib is not installed: no contact sheet")
        return None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    rows = read_manifest(out_dir)
    if not rows:
        return None
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(len(CLASSES), per_class, figsize=(per_class * 2.4, len(CLASSES) * 2.4), squeeze=False)
    for r, label in enumerate(CLASSES):
        items = [row for row in rows if row["label"] == label]
        picks = rng.choice(len(items), size=min(per_class, len(items)), replace=False) if items else []
        for c in range(per_class):
            ax = axes[r][c]
            ax.axis("off")
            if c >= len(picks):
                continue
            row = items[int(picks[c])]
            img = cv2.imread(str(out_dir / row["image"]), cv2.IMREAD_COLOR)
            if img is None:
                continue
            h, w = img.shape[:2]
            img = cv2.resize(img, (thumb_width, max(1, int(h * thumb_width / w))), interpolation=cv2.INTER_AREA)
            ax.imshow(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
            ax.set_title(f"{label}  {float(row['heading_change_deg']):.0f}°\n{row['town']} {row['weather']}", fontsize=7)
    fig.suptitle(f"{out_dir.name}: {len(rows)} frames (random samples per class)", fontsize=9)
    fig.tight_layout()
    path = out_dir / CONTACT_SHEET_NAME
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
