"""DatasetWriter: crash leftovers are reconciled; images are written in true colour; format checks."""
import cv2
import numpy as np
import pytest

from datasets.manifest import DatasetWriter, merge_info, read_manifest
from datasets.schema import MANIFEST_COLUMNS


def row(writer, label, episode, frame):
    r = {c: "0" for c in MANIFEST_COLUMNS}
    r.update(image=writer.image_path(label, episode, frame), label=label, episode=episode, frame=frame,
             town="Town02", sim="embedded", weather="ClearNoon")
    return r


def bgra(h=24, w=32):
    img = np.zeros((h, w, 4), np.uint8)
    img[..., 2] = 255  # pure red in BGRA
    return img


def test_reconcile_drops_orphans_and_truncated_rows(tmp_path):
    w = DatasetWriter(tmp_path, "png")
    w.prepare()
    for i in range(3):
        w.write_frame(w.encode(bgra()), row(w, "curve", "ep", i))
    orphan = row(w, "straight", "ep", 7)                                     # image without row: crash after
    w._record({"path": orphan["image"], "row": orphan})                      # the rename, before the append
    (tmp_path / orphan["image"]).write_bytes(b"x")
    half = row(w, "curve", "ep", 8)                                          # write in flight
    w._record({"path": half["image"], "row": half})
    (tmp_path / (half["image"] + ".tmp")).write_bytes(b"x")
    (tmp_path / "images/curve/mine.png").write_bytes(b"x")                  # not the collector's: kept
    (tmp_path / row(w, "curve", "ep", 1)["image"]).unlink()                 # row without image
    with open(tmp_path / "manifest.csv", "a") as f:
        f.write("images/curve/ep_0000009.png,curve,Town0")                  # append in flight
    report = DatasetWriter(tmp_path, "png").prepare()
    assert (report.rows_kept, report.rows_dropped, report.images_dropped) == (2, 2, 2)
    rows = read_manifest(tmp_path)
    assert [int(r["frame"]) for r in rows] == [0, 2]
    assert sorted(p.name for p in (tmp_path / "images").rglob("*") if p.is_file()) == \
        ["ep_0000000.png", "ep_0000002.png", "mine.png"]
    assert (tmp_path / "manifest.csv").read_text().endswith("\n")


@pytest.mark.parametrize("fmt", ["jpg", "png"])
def test_images_are_true_colour(tmp_path, fmt):
    w = DatasetWriter(tmp_path, fmt, jpeg_quality=90)
    w.prepare()
    r = row(w, "straight", "e", 1)
    w.write_frame(w.encode(bgra()), r)
    decoded = cv2.imread(str(tmp_path / r["image"]))            # cv2 decodes to BGR
    rgb = cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB).reshape(-1, 3).mean(axis=0)
    assert rgb[0] > 240 and rgb[1] < 15 and rgb[2] < 15         # red stays red


def test_bad_format_and_incompatible_dataset(tmp_path):
    with pytest.raises(ValueError, match="valid: jpg, png"):
        DatasetWriter(tmp_path, "bmp")
    info = {"label": {"lookahead_m": 25.0}, "camera": {"width": 800}}
    merge_info(tmp_path, info, {"run": 0})
    with pytest.raises(ValueError, match="label"):
        merge_info(tmp_path, {**info, "label": {"lookahead_m": 20.0}}, {"run": 1})
