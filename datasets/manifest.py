"""The one reader and the crash-safe writer of ``manifest.csv`` (format: ``datasets/schema.py``).

Invariant, kept across crashes, SIGINT/SIGTERM, disk full and several worker processes:
every manifest row has its image and every image has its row.

* an image is encoded in memory, written to ``<name>.tmp`` and renamed into place (a reader
  never sees half a JPEG); only then is its row appended to ``manifest.csv`` and flushed, in
  one ``write`` under an exclusive ``flock`` (workers append to the same file safely);
* a crash between the two steps leaves an image without a row, and a crash inside the
  append a truncated last line: :meth:`DatasetWriter.reconcile` (run once before
  collecting) drops both, plus leftover ``*.tmp`` files and route files no row refers to.

The collector deletes only files it can prove it wrote. Before it writes an image or a route
file it appends the file's name (and, for an image, its manifest row) to ``ledger.jsonl``;
reconcile deletes only ledger-listed files, so a user's own files in the folder are never
touched. :meth:`DatasetWriter.prepare` refuses a non-empty folder that is not a collector
dataset (``adopt=True`` collects into it, keeping its files), and never deletes anything when
``manifest.csv`` is missing: :func:`rebuild_manifest` (``python -m datasets.manifest rebuild
DIR``) writes it back from the ledger and the images on disk.

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
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from datasets.schema import CLASSES, INFO_NAME, MANIFEST_COLUMNS, MANIFEST_COLUMNS_V1, MANIFEST_NAME

logger = logging.getLogger(__name__)

IMAGE_FORMATS = ("jpg", "png")
ROUTES_DIR = "routes"
IMAGES_DIR = "images"
CONTACT_SHEET_NAME = "contact_sheet.png"
LEDGER_NAME = "ledger.jsonl"
"""One JSON object per line, appended before the file it names is written:
``{"path": "images/curve/<episode>_<frame>.jpg", "row": {manifest row}}`` or ``{"path": "routes/<episode>.json"}``."""
ORPHAN_LIMIT = 64
"""A crash leaves at most one image without its row per worker; more orphans than this means the
manifest was replaced or truncated, and reconcile refuses to delete them (rebuild instead)."""
_OWN_FILES = {".collect.lock", LEDGER_NAME, INFO_NAME, MANIFEST_NAME, CONTACT_SHEET_NAME}
_IMAGE_NAME = re.compile(r"^images/(?P<label>[^/]+)/(?P<episode>[^/]+)_(?P<frame>\d+)\.(?:jpg|png)$")


class DiskFullError(OSError):
    """The disk filled up; everything written before is intact."""


@dataclass(frozen=True)
class ReconcileReport:
    rows_kept: int
    rows_dropped: int
    images_dropped: int
    routes_dropped: int


class DatasetError(ValueError):
    """A dataset on disk cannot be used as given (one-line message naming the file and value)."""


class ForeignDirectoryError(DatasetError):
    """``--out`` holds files but no collector dataset; collecting there needs an explicit adopt."""


class ManifestMissingError(DatasetError):
    """The collector's images are there but ``manifest.csv`` is not (or lists far fewer): rebuild it."""


def rebuild_command(out_dir) -> str:
    return f"python -m datasets.manifest rebuild {str(out_dir)!r}"


def resolve_inside(root: Path, rel: str, what: str) -> Path:
    """``root / rel`` resolved, or DatasetError when ``rel`` is absolute, has ``..`` or a symlink leaves ``root``.

    A manifest is input: a row ``../../etc/passwd`` must never be opened.
    """
    root = Path(root).resolve()
    if not rel or os.path.isabs(rel) or rel.startswith(("~", "\\")) or ".." in Path(rel).parts:
        raise DatasetError(f"{what}: path {rel!r} is not a relative path inside the dataset {root}")
    path = (root / rel).resolve()
    if path != root and root not in path.parents:
        raise DatasetError(f"{what}: path {rel!r} leaves the dataset {root} (through a symlink)")
    return path


V2_DEFAULTS = {"command": "", "recovery": "0", "route_dependent": "0"}
"""Values of the columns added in format version 2, for rows of version-1 manifests."""


def read_manifest(data_dir, strict: bool = True) -> list[dict]:
    """Rows of ``<data_dir>/manifest.csv``, every column of :data:`MANIFEST_COLUMNS` filled.

    A truncated last line (the append in flight when a crash hit) is skipped. Version-1
    manifests get :data:`V2_DEFAULTS`.

    Args:
        strict: raise :class:`DatasetError` on a missing directory/manifest, a missing column or an
            empty manifest (readers of a finished dataset); False returns what is there, ``[]`` when
            nothing is (the collector resuming its own dataset).
    """
    data_dir = Path(data_dir)
    path = data_dir / MANIFEST_NAME
    if not path.is_file():
        if not strict:
            return []
        if not data_dir.is_dir():
            raise DatasetError(f"--data {str(data_dir)!r}: no such directory")
        raise DatasetError(f"{path}: not found; a dataset directory holds {MANIFEST_NAME} and {INFO_NAME} "
                           "(written by carla-collect)")
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines = lines[:-1]
    reader = csv.DictReader(io.StringIO("".join(lines)))
    header = reader.fieldnames or []
    missing = [c for c in MANIFEST_COLUMNS_V1 if c not in header]
    if missing and strict:
        raise DatasetError(f"{path}: missing column(s) {', '.join(missing)}; expected columns: "
                           f"{', '.join(MANIFEST_COLUMNS)}")
    rows = [{**V2_DEFAULTS, **r} for r in reader
            if None not in r and all(r.get(c) not in (None, "") for c in ("image", "label"))]
    if strict and not rows:
        raise DatasetError(f"{path}: empty dataset (no frames in the manifest)")
    return rows


def read_ledger(out_dir) -> list[dict]:
    """Entries of ``ledger.jsonl`` (``[]`` when absent); a torn last line and entries whose path is
    not a plain relative path under ``images/`` or ``routes/`` are skipped (the ledger is input too)."""
    path = Path(out_dir) / LEDGER_NAME
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        rel = entry.get("path") if isinstance(entry, dict) else None
        if (isinstance(rel, str) and rel.startswith((IMAGES_DIR + "/", ROUTES_DIR + "/"))
                and ".." not in Path(rel).parts and not os.path.isabs(rel)):
            out.append(entry)
    return out


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
    def prepare(self, adopt: bool = False) -> ReconcileReport:
        """Check the folder is ours, create the layout and the manifest header, then reconcile.

        Call once, before workers start.

        Args:
            adopt: collect into a non-empty folder that is not a collector dataset; its files are kept.

        Raises:
            ForeignDirectoryError: the folder holds files but no dataset, and ``adopt`` is False.
            ManifestMissingError: images the collector wrote are there but ``manifest.csv`` is not;
                nothing is deleted, the message gives the rebuild command.
        """
        check_writable(self.out_dir)
        self._check_ownership(adopt)
        for label in CLASSES:
            (self.out_dir / IMAGES_DIR / label).mkdir(parents=True, exist_ok=True)
        (self.out_dir / ROUTES_DIR).mkdir(exist_ok=True)
        if not self.manifest_path.exists() or self.manifest_path.stat().st_size == 0:
            self.manifest_path.write_text(",".join(MANIFEST_COLUMNS) + "\n", encoding="utf-8")
        else:
            header = self.manifest_path.open(encoding="utf-8").readline().strip().split(",")
            if tuple(header) == MANIFEST_COLUMNS_V1:  # format 1: add the policy columns, rows keep their values
                logger.info("%s: adding the format-2 columns %s", self.manifest_path, ", ".join(V2_DEFAULTS))
                self._rewrite(read_manifest(self.out_dir, strict=False))
            elif tuple(header) != MANIFEST_COLUMNS:
                raise ValueError(f"{self.manifest_path} has columns {header}, expected {list(MANIFEST_COLUMNS)}")
        return self.reconcile()

    def _check_ownership(self, adopt: bool) -> None:
        if self.manifest_path.is_file() and self.manifest_path.stat().st_size > 0:
            return
        ledger_files = [e["path"] for e in read_ledger(self.out_dir) if e["path"].startswith(IMAGES_DIR + "/")
                        and (self.out_dir / e["path"]).is_file()]
        if ledger_files:
            raise ManifestMissingError(
                f"{self.manifest_path} is missing but {len(ledger_files)} images written by the collector are in "
                f"{self.out_dir}; nothing was deleted. Rebuild the manifest with: {rebuild_command(self.out_dir)}")
        foreign = _foreign_files(self.out_dir)
        if foreign and not adopt:
            ours = sum(1 for f in foreign if _IMAGE_NAME.match(f))
            hint = (f"; if these are collector images whose manifest was lost, rebuild it with: "
                    f"{rebuild_command(self.out_dir)}") if ours else ""
            raise ForeignDirectoryError(
                f"--out {self.out_dir} is not empty and is not a collector dataset (no {MANIFEST_NAME}): "
                f"{len(foreign)} file(s), e.g. {', '.join(foreign[:3])}; use another --out, or pass --adopt to "
                f"collect into it (its files are kept){hint}")
        if foreign:
            logger.info("adopting %s: its %d file(s) are kept", self.out_dir, len(foreign))

    def reconcile(self) -> ReconcileReport:
        """Drop rows without an image; delete only ledger-listed files: images without a row, temp files,
        route files no row refers to. Files the collector did not write are never touched.

        Raises:
            ManifestMissingError: more than :data:`ORPHAN_LIMIT` ledger images have no row (the manifest
                was replaced or truncated); nothing is deleted.
        """
        if not self.manifest_path.is_file():
            self._check_ownership(adopt=True)  # raises ManifestMissingError when any ledger image exists
        raw = self.manifest_path.read_text(encoding="utf-8") if self.manifest_path.exists() else ""
        rows = read_manifest(self.out_dir, strict=False)
        kept = [r for r in rows if _inside_file(self.out_dir, r["image"])]
        referenced = {r["image"] for r in kept}
        episodes = {r["episode"] for r in kept}
        ledger = {e["path"] for e in read_ledger(self.out_dir)}
        doomed_images, doomed_routes = [], []
        for rel in sorted(ledger):
            path = self.out_dir / rel
            tmp = path.with_name(path.name + ".tmp")
            is_image = rel.startswith(IMAGES_DIR + "/")
            if tmp.is_file():
                (doomed_images if is_image else doomed_routes).append(tmp)
            if not path.is_file():
                continue
            if is_image and rel not in referenced:
                doomed_images.append(path)
            elif not is_image and path.suffix == ".json" and path.stem not in episodes:
                doomed_routes.append(path)
        orphans = [p for p in doomed_images if p.suffix != ".tmp"]
        if len(orphans) > ORPHAN_LIMIT:
            raise ManifestMissingError(
                f"{self.manifest_path} lists {len(kept)} frames but {len(orphans)} images written by the collector "
                f"have no row (a crash leaves at most one per worker): the manifest looks replaced or truncated; "
                f"nothing was deleted. Rebuild it with: {rebuild_command(self.out_dir)}")
        for path in doomed_images + doomed_routes:
            path.unlink(missing_ok=True)
        n_data_lines = max(0, len([ln for ln in raw.splitlines() if ln.strip()]) - 1)  # minus the header
        if len(kept) != n_data_lines or (raw and not raw.endswith("\n")):
            self._rewrite(kept)
        report = ReconcileReport(rows_kept=len(kept), rows_dropped=n_data_lines - len(kept),
                                 images_dropped=len(doomed_images), routes_dropped=len(doomed_routes))
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
        """Rows per label currently in the manifest, flagged ``route_dependent`` rows left out (they are
        outside the class quotas)."""
        return Counter(r["label"] for r in read_manifest(self.out_dir, strict=False) if r["route_dependent"] != "1")

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
            self._record({"path": rel, "row": {c: str(row[c]) for c in MANIFEST_COLUMNS}})
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

    def _record(self, entry: dict) -> None:
        """Append one ledger line (before the file it names is written): proof the collector made that file."""
        _locked_append(self.out_dir / LEDGER_NAME, json.dumps(entry, separators=(",", ":")) + "\n", create=True)

    def _append(self, line: str) -> None:
        _locked_append(self.manifest_path, line)

    def write_route(self, episode: str, payload: dict) -> None:
        """Store (atomically) the route an episode's labels were computed from."""
        path = self.out_dir / ROUTES_DIR / f"{episode}.json"
        tmp = path.with_name(path.name + ".tmp")
        try:
            self._record({"path": f"{ROUTES_DIR}/{episode}.json"})
            tmp.write_text(json.dumps(payload, separators=(",", ":")), encoding="utf-8")
            os.replace(tmp, path)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise _disk_error(err, path) from None


def _locked_append(path: Path, line: str, create: bool = False) -> None:
    """One ``write`` of ``line`` under an exclusive flock (workers append to the same file safely)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | (os.O_CREAT if create else 0), 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        data = line.encode("utf-8")
        written = os.write(fd, data)
        if written != len(data):
            raise OSError(errno.ENOSPC, f"short write to {path}")
    finally:
        os.close(fd)  # closing releases the lock


def _inside_file(root: Path, rel: str) -> bool:
    try:
        return resolve_inside(root, rel, "manifest").is_file()
    except DatasetError:
        return False


def _foreign_files(out_dir: Path) -> list[str]:
    """Files under ``out_dir`` other than the collector's own bookkeeping (sorted, relative)."""
    out = []
    for path in sorted(Path(out_dir).rglob("*")):
        if path.is_dir() and not path.is_symlink():
            continue
        rel = path.relative_to(out_dir).as_posix()
        if rel in _OWN_FILES or rel.startswith(".write_probe_"):
            continue
        out.append(rel)
    return out


def rebuild_manifest(out_dir) -> tuple[int, int]:
    """Write ``manifest.csv`` back from ``ledger.jsonl`` and the images on disk; deletes nothing.

    Rows come from the ledger (every column as written) for images that exist; collector-named
    images that the ledger does not know (datasets written before the ledger) get a row from
    their name (label, episode, frame, town) with the other columns empty and weather ``unknown``.
    Rows of an existing manifest are kept; the old file is kept as ``manifest.csv.bak``.

    Returns:
        (rows from the ledger or the old manifest, rows from file names).
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise DatasetError(f"{out_dir}: no such directory")
    rows: dict[str, dict] = {}
    if (out_dir / MANIFEST_NAME).is_file():
        for r in read_manifest(out_dir, strict=False):
            if _inside_file(out_dir, r["image"]):
                rows[r["image"]] = r
    for entry in read_ledger(out_dir):
        row = entry.get("row")
        if isinstance(row, dict) and entry["path"] not in rows and (out_dir / entry["path"]).is_file():
            rows[entry["path"]] = {**V2_DEFAULTS, **{c: str(row.get(c, "")) for c in MANIFEST_COLUMNS},
                                   "image": entry["path"]}
    from_names = 0
    img_root = out_dir / IMAGES_DIR
    for path in sorted(img_root.rglob("*")) if img_root.is_dir() else []:
        rel = path.relative_to(out_dir).as_posix()
        m = _IMAGE_NAME.match(rel)
        if rel in rows or not m or m["label"] not in CLASSES or not path.is_file():
            continue
        row = {c: "" for c in MANIFEST_COLUMNS}
        row.update(V2_DEFAULTS, image=rel, label=m["label"], episode=m["episode"], frame=str(int(m["frame"])),
                   town=m["episode"].split("-")[0], weather="unknown")
        rows[rel] = row
        from_names += 1
    manifest = out_dir / MANIFEST_NAME
    if manifest.is_file():
        os.replace(manifest, manifest.with_name(MANIFEST_NAME + ".bak"))
    writer = DatasetWriter.__new__(DatasetWriter)
    writer.manifest_path = manifest
    writer._rewrite(list(rows.values()))
    return len(rows) - from_names, from_names


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
        logger.warning("matplotlib is not installed: no contact sheet")
        return None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    rows = read_manifest(out_dir, strict=False)
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


def main(argv=None) -> int:
    """``python -m datasets.manifest rebuild DIR``: write a lost manifest.csv back (see :func:`rebuild_manifest`)."""
    import argparse

    from datasets.io_safety import cli_errors

    p = argparse.ArgumentParser(prog="python -m datasets.manifest", description="Dataset manifest tools.")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("rebuild", help="rebuild manifest.csv from ledger.jsonl and the images on disk")
    r.add_argument("dir", type=Path, help="dataset directory")
    p.add_argument("-v", "--debug", action="store_true", help="show tracebacks")
    args = p.parse_args(argv)
    with cli_errors(debug=args.debug, prog="manifest"):
        t0 = time.perf_counter()
        exact, guessed = rebuild_manifest(args.dir)
        print(f"rebuilt {args.dir / MANIFEST_NAME}: {exact + guessed} rows ({exact} from the ledger or the old "
              f"manifest, {guessed} from image names) in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
