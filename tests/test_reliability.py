"""Regression tests of issue 15 (reliability): data is never deleted or lost, sizes are bounded, errors are one line.

Each test reproduces a failure the issue reports and fails on the code before the fix.
"""
from __future__ import annotations

import csv
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from datasets import dataset as ds_mod
from datasets.dataset import DatasetError, build_cache, check_hygiene, load_frames
from datasets.io_safety import (IMG_SIZE_RANGE, OutputPathError, check_img_size, check_output_path, cli_errors,
                                write_json_atomic)
from datasets.manifest import (LEDGER_NAME, ORPHAN_LIMIT, DatasetWriter, ForeignDirectoryError, ManifestMissingError,
                               read_manifest, rebuild_manifest)
from datasets.schema import INFO_NAME, MANIFEST_COLUMNS
from tests.synthetic_data import make_dataset

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


# ------------------------------------------------------------------------------------ collector writer
def _row(writer, label, episode, frame):
    r = {c: "0" for c in MANIFEST_COLUMNS}
    r.update(image=writer.image_path(label, episode, frame), label=label, episode=episode, frame=str(frame),
             town="Town02", sim="embedded", weather="ClearNoon", command="LANEFOLLOW")
    return r


def _frame():
    return np.full((24, 32, 4), 128, np.uint8)


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


FOREIGN = {"images/holiday/photo1.jpg": b"\xff\xd8jpeg", "images/README.txt": b"my notes",
           "routes/my_route_plan.json": b"{}"}


def test_foreign_out_is_refused_and_adopting_keeps_every_foreign_file(tmp_path):
    for rel, data in FOREIGN.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    with pytest.raises(ForeignDirectoryError, match="--adopt") as exc:
        DatasetWriter(tmp_path, "png").prepare()
    assert "\n" not in str(exc.value)
    assert {rel for rel in FOREIGN} <= _files(tmp_path)

    w = DatasetWriter(tmp_path, "png")
    w.prepare(adopt=True)
    for i in range(3):
        w.write_frame(w.encode(_frame()), _row(w, "curve", "Town02-r000-j00-e0000", i))
    w.write_route("Town02-r000-j00-e0000", {"points": []})
    w.write_route("Town02-r000-j00-e0001", {"points": []})        # episode without frames: its route goes
    report = DatasetWriter(tmp_path, "png").prepare()            # a rerun reconciles
    assert report.routes_dropped == 1
    for rel, data in FOREIGN.items():
        assert (tmp_path / rel).read_bytes() == data, rel
    assert len(read_manifest(tmp_path)) == 3


def test_lost_manifest_deletes_nothing_and_rebuild_restores_it(tmp_path):
    w = DatasetWriter(tmp_path, "png")
    w.prepare()
    rows = [_row(w, label, "Town02-r000-j00-e0000", i) for i, label in enumerate(["curve", "straight"] * 10)]
    for r in rows:
        w.write_frame(w.encode(_frame()), r)
    w.write_route("Town02-r000-j00-e0000", {"points": []})
    before = _files(tmp_path)
    original = (tmp_path / "manifest.csv").read_text()
    (tmp_path / "manifest.csv").unlink()
    with pytest.raises(ManifestMissingError, match="python -m datasets.manifest rebuild") as exc:
        DatasetWriter(tmp_path, "png").prepare(adopt=True)      # not even --adopt deletes
    assert "\n" not in str(exc.value)
    assert _files(tmp_path) == before - {"manifest.csv"}
    out = subprocess.run([PY, "-m", "datasets.manifest", "rebuild", str(tmp_path)], capture_output=True, text=True,
                         env=_env(), timeout=120)
    assert out.returncode == 0, out.stderr
    assert "20 rows" in out.stdout
    assert (tmp_path / "manifest.csv").read_text() == original
    assert DatasetWriter(tmp_path, "png").prepare().images_dropped == 0


def test_truncated_manifest_with_many_orphans_is_not_reconciled_away(tmp_path):
    w = DatasetWriter(tmp_path, "png")
    w.prepare()
    for i in range(ORPHAN_LIMIT + 5):
        w.write_frame(w.encode(_frame()), _row(w, "curve", "Town02-r000-j00-e0000", i))
    (tmp_path / "manifest.csv").write_text(",".join(MANIFEST_COLUMNS) + "\n")   # header only
    n = len(_files(tmp_path))
    with pytest.raises(ManifestMissingError, match="rebuild"):
        DatasetWriter(tmp_path, "png").prepare()
    assert len(_files(tmp_path)) == n


def test_rebuild_from_image_names_without_ledger(tmp_path):
    """Datasets written before the ledger: rows come back from the collector's file names."""
    w = DatasetWriter(tmp_path, "png")
    w.prepare()
    for i in range(4):
        w.write_frame(w.encode(_frame()), _row(w, ["curve", "straight"][i % 2], "Town05-r001-j02-e0003", i))
    (tmp_path / "manifest.csv").unlink()
    (tmp_path / LEDGER_NAME).unlink()
    (tmp_path / "images/curve/holiday.jpg").write_bytes(b"x")   # not a collector name: no row
    exact, guessed = rebuild_manifest(tmp_path)
    assert (exact, guessed) == (0, 4)
    rows = read_manifest(tmp_path)
    assert {(r["label"], r["town"], r["episode"]) for r in rows} == {
        ("curve", "Town05", "Town05-r001-j02-e0003"), ("straight", "Town05", "Town05-r001-j02-e0003")}


# ------------------------------------------------------------------------------------ workers
def _claim_many(quota, n, out):
    got = sum(quota.claim("curve") for _ in range(n))
    out.put(got)


def test_quota_authority_never_exceeds_the_target_across_spawned_processes():
    from carla_client.workers import QuotaAuthority

    ctx = mp.get_context("spawn")
    quota = QuotaAuthority(ctx, {"curve": 500, "straight": 10}, have={"curve": 100})
    q = ctx.Queue()
    procs = [ctx.Process(target=_claim_many, args=(quota, 300, q)) for _ in range(3)]
    for p in procs:
        p.start()
    got = sum(q.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    assert got == 400                                   # 100 were already in the manifest
    assert quota.counts() == {"curve": 500, "straight": 0}
    assert not quota.claim("curve") and quota.remaining("straight") == 10
    quota.release("curve")
    assert quota.remaining("curve") == 1


_PARENT = r"""
import multiprocessing as mp, os, sys, time
from carla_client.workers import die_with_parent

def child(ppid, path):
    die_with_parent(ppid)
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(120)

if __name__ == "__main__":
    ctx = mp.get_context("spawn")
    p = ctx.Process(target=child, args=(os.getpid(), sys.argv[1]))
    p.start()
    time.sleep(120)
"""


def test_worker_dies_with_a_sigkilled_parent(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(_PARENT)
    pid_file = tmp_path / "child.pid"
    parent = subprocess.Popen([PY, str(script), str(pid_file)], env=_env())
    try:
        t0 = time.time()
        while not (pid_file.is_file() and pid_file.read_text()) and time.time() - t0 < 60:
            time.sleep(0.1)
        child = int(pid_file.read_text())
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        t0 = time.time()
        while _alive(child) and time.time() - t0 < 10:
            time.sleep(0.05)
        assert not _alive(child), "the worker outlived its SIGKILLed parent"
    finally:
        if parent.poll() is None:
            parent.kill()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_lock_held_by_parent_is_checked_by_workers(tmp_path):
    from carla_client.workers import CollectorBusyError, CollectorLock, LockLostError, check_lock_held

    lock = CollectorLock(tmp_path).acquire()
    check_lock_held(lock.path)                           # held: the worker goes on
    with pytest.raises(CollectorBusyError, match=f"pid {os.getpid()}"):
        CollectorLock(tmp_path).acquire()                # a second collector is refused
    lock.release()                                       # the parent is gone
    with pytest.raises(LockLostError):
        check_lock_held(lock.path)


@pytest.mark.slow
def test_kill9_two_worker_collect_then_rerun_ends_exactly_at_target(tmp_path):
    """5 trials: SIGKILL the parent at a random time, then rerun: exact, balanced, consistent, no survivor."""
    rng = np.random.default_rng(0)
    out = tmp_path / "ds"
    for trial in range(5):
        target = 120 + 40 * trial                      # each trial kills a run that has frames to add
        cmd = [PY, "-m", "carla_client.collect", "--sim", "embedded", "--town", "Town02", "--frames", str(target),
               "--out", str(out), "--workers", "2", "--no-progress", "--min-spacing", "1.0"]
        proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        time.sleep(float(rng.uniform(4, 15)))
        children = _children(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        time.sleep(3)
        survivors = [c for c in children if _alive(c)]
        for c in survivors:
            os.kill(c, signal.SIGKILL)
        assert not survivors, f"trial {trial}: workers survived the kill"
        done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        every = read_manifest(out)
        rows = [r for r in every if r["route_dependent"] != "1"]   # flagged rows are outside the quotas
        labels = [r["label"] for r in rows]
        assert len(rows) == target and labels.count("curve") == labels.count("straight") == target // 2, \
            f"trial {trial}: {len(rows)} rows for {target}"
        listed = {r["image"] for r in every}
        on_disk = {p.relative_to(out).as_posix() for p in (out / "images").rglob("*") if p.is_file()}
        assert listed == on_disk, f"trial {trial}: orphans {on_disk - listed}, missing {listed - on_disk}"


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(x) for x in out.stdout.split()]


# ------------------------------------------------------------------------------------ dataset paths and sizes
def _set_first_image(root: Path, value: str) -> None:
    path = root / "manifest.csv"
    rows = list(csv.DictReader(path.open()))
    rows[0]["image"] = value
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


@pytest.fixture
def small_ds(tmp_path):
    return make_dataset(tmp_path / "ds", towns=("Town01",), episodes=2)


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_manifest_paths_are_confined_to_the_dataset(small_ds, tmp_path, kind):
    outside = tmp_path / "outside.jpg"
    outside.write_bytes((small_ds / read_manifest(small_ds)[1]["image"]).read_bytes())
    if kind == "dotdot":
        value = "../../../../etc/passwd"
    elif kind == "absolute":
        value = str(outside)
    else:
        (small_ds / "images" / "link.jpg").symlink_to(outside)
        value = "images/link.jpg"
    _set_first_image(small_ds, value)
    with pytest.raises(DatasetError, match="row 2") as exc:
        load_frames([small_ds])
    assert value in str(exc.value) and "\n" not in str(exc.value)


def test_oversized_image_file_is_refused_naming_it(small_ds):
    big = small_ds / "images" / "big.jpg"
    with open(big, "wb") as f:
        f.truncate(ds_mod.MAX_IMAGE_BYTES + 1)              # sparse: costs no disk
    _set_first_image(small_ds, "images/big.jpg")
    with pytest.raises(DatasetError, match="big.jpg"):
        load_frames([small_ds])


def test_img_size_out_of_range_is_refused_before_any_allocation(small_ds):
    table = load_frames([small_ds])
    with pytest.raises(ValueError, match=r"100000.*\[8, 1024\]"):
        build_cache(table, 100000, progress=False)
    assert not list(small_ds.rglob("*.npy")) and not list(small_ds.rglob("*.tmp*"))
    for bad in (0, -3, 2.5, "abc", IMG_SIZE_RANGE[1] + 1):
        with pytest.raises(ValueError, match="out of range"):
            check_img_size(bad, "model.onnx metadata")
    assert check_img_size(224, "x") == 224


def test_cache_refuses_a_disk_without_room_and_leaves_no_temp(small_ds, monkeypatch):
    table = load_frames([small_ds])
    monkeypatch.setattr(ds_mod.shutil, "disk_usage", lambda p: type("U", (), {"free": 1000})())
    with pytest.raises(DatasetError, match="free") as exc:
        build_cache(table, 32, progress=False)
    assert "\n" not in str(exc.value)
    assert not [p for p in small_ds.rglob("*") if ".tmp" in p.name]


def test_cache_disk_full_at_allocation_is_one_line_and_temp_removed(small_ds, monkeypatch):
    import errno

    def full(fd, off, size):
        raise OSError(errno.ENOSPC, "No space left on device")

    table = load_frames([small_ds])
    monkeypatch.setattr(ds_mod.os, "posix_fallocate", full)
    with pytest.raises(DatasetError, match="disk full"):
        build_cache(table, 32, progress=False)
    assert not [p for p in small_ds.rglob("*") if ".tmp" in p.name]


def test_cache_of_an_unwritable_dataset_goes_to_the_user_cache(small_ds, tmp_path, monkeypatch):
    (small_ds / "cache").write_text("not a directory")   # <data>/cache cannot be written
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    before = _files(small_ds)
    cache = build_cache(load_frames([small_ds]), 32, progress=False)
    assert _files(small_ds) == before
    assert str(cache.npy_paths[0]).startswith(str(tmp_path / "xdg"))
    assert cache.get(0, 0).shape == (32, 32, 3)


def test_hygiene_report_counts_duplicates_constant_images_and_missing_info(small_ds):
    rows = list(csv.DictReader((small_ds / "manifest.csv").open()))
    import cv2
    cv2.imwrite(str(small_ds / rows[3]["image"]), np.zeros((72, 96, 3), np.uint8))   # all black
    with (small_ds / "manifest.csv").open("a", newline="") as f:
        csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n").writerows(rows[:4])  # duplicated rows
    (small_ds / INFO_NAME).unlink()
    table = load_frames([small_ds])
    cache = build_cache(table, 32, progress=False)
    clean, report = check_hygiene(table, cache)
    assert (report.duplicates, report.constant, len(report.missing_info)) == (4, 1, 1)
    assert len(clean) == len(table) - 4
    with pytest.raises(DatasetError, match="4 duplicated.*1 constant.*dataset.json"):
        check_hygiene(table, cache, strict=True)


# ------------------------------------------------------------------------------------ outputs and CLI errors
def test_output_path_checks(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(OutputPathError, match="--metrics .*is a file"):
        check_output_path(f / "run" / "metrics.json", "--metrics")
    with pytest.raises(OutputPathError, match="is a file"):
        check_output_path(f, "--out", is_dir=True)
    with pytest.raises(OutputPathError, match="is a directory"):
        check_output_path(tmp_path, "--json")
    assert check_output_path(tmp_path / "new" / "deep" / "m.json", "--json") == tmp_path / "new" / "deep" / "m.json"
    assert not (tmp_path / "new").exists()              # checked, not created


def test_write_json_atomic_is_strict_json(tmp_path):
    path = write_json_atomic(tmp_path / "m.json", {"a": float("nan"), "b": [np.float32(1.5), float("inf")],
                                                   "c": np.int64(3), "d": np.array([1.0, np.nan])})

    def no_constants(name):
        raise AssertionError(f"non-strict JSON constant {name}")

    assert json.loads(path.read_text(), parse_constant=no_constants) == {"a": None, "b": [1.5, None], "c": 3,
                                                                         "d": [1.0, None]}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


@pytest.mark.parametrize("exc, code, text", [
    (FileExistsError(17, "File exists", "/x/m.json"), 2, "FileExistsError"),
    (ValueError("bad --res '0x0'; use WxH\nmore"), 2, "bad --res '0x0'; use WxH"),
    (KeyboardInterrupt(), 130, "interrupted"),
])
def test_cli_errors_is_one_line_without_traceback(capsys, exc, code, text):
    with pytest.raises(SystemExit) as out:
        with cli_errors(prog="tool"):
            raise exc
    err = capsys.readouterr().err
    assert out.value.code == code
    assert err.count("\n") == 1 and text in err and "Traceback" not in err


def test_bench_rejects_bad_res_and_unwritable_json_before_work(tmp_path):
    model = tmp_path / "m.pt"
    model.write_bytes(b"")
    f = tmp_path / "file.txt"
    f.write_text("x")
    for extra, needle in ((["--res", "0x0"], "--res 0x0"), (["--json", str(f / "b.json")], "--json")):
        out = subprocess.run([PY, "-m", "perception.bench", "--model", str(model), *extra], capture_output=True,
                             text=True, env=_env(), timeout=120)
        assert out.returncode == 2 and needle in out.stderr and "Traceback" not in out.stderr, out.stderr
        assert "host:" not in out.stdout                   # refused before benchmarking


# ------------------------------------------------------------------------------------ checkpoints
def _ckpt(tmp_path, arch="simple_cnn"):
    from training.checkpoint import save_checkpoint
    from training.models import create_model

    model = create_model(arch, num_classes=2, dropout=0.0, weights="none")
    cfg = {"arch": arch, "num_classes": 2, "classes": ["curve", "straight"], "img_size": 32,
           "mean": [0.5] * 3, "std": [0.25] * 3, "color_order": "RGB", "dropout": 0.0, "recipe": {}}
    path = tmp_path / "best.pt"
    save_checkpoint(path, model, cfg, 1, {})
    return path, model, cfg


@pytest.mark.parametrize("content, needle", [(b"", "empty"), (os.urandom(4096), "not a readable checkpoint"),
                                             (b"PK\x03\x04" + os.urandom(100), "checkpoint")])
def test_bad_checkpoint_is_one_line(tmp_path, content, needle):
    from training.checkpoint import CheckpointError, load_checkpoint

    path = tmp_path / "x.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=needle) as exc:
        load_checkpoint(path)
    assert "\n" not in str(exc.value) and str(path) in str(exc.value)


def test_checkpoint_of_another_architecture_is_one_short_line(tmp_path):
    from training.checkpoint import CheckpointError, load_checkpoint

    path, _, cfg = _ckpt(tmp_path, "resnet18")
    ckpt = torch.load(path, weights_only=True)
    ckpt["config"]["arch"] = "mobilenet_v3_small"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="missing") as exc:
        load_checkpoint(path)
    assert "\n" not in str(exc.value) and len(str(exc.value)) < 400


def test_evaluate_cli_bad_checkpoint_and_out_under_a_file_are_one_line(tmp_path, small_ds):
    f = tmp_path / "file.txt"
    f.write_text("x")
    empty = tmp_path / "e.pt"
    empty.write_bytes(b"")
    for args, needle in (([str(empty), "--out", str(tmp_path / "o")], "empty"),
                         ([str(empty), "--out", str(f / "o")], "--out")):
        out = subprocess.run([PY, "-m", "training.evaluate", "--checkpoint", args[0], "--data", str(small_ds),
                              *args[1:], "--no-progress"], capture_output=True, text=True, env=_env(), timeout=300)
        lines = [ln for ln in out.stderr.splitlines() if "error" in ln]
        assert out.returncode == 2 and len(lines) == 1 and needle in lines[0], out.stderr
        assert "Traceback" not in out.stderr


def test_disk_full_while_saving_keeps_the_previous_checkpoint_and_no_temp(tmp_path, monkeypatch):
    import errno

    from training import checkpoint as ck

    path, model, cfg = _ckpt(tmp_path)
    before = path.read_bytes()
    real_save = torch.save

    def full(obj, f, *a, **k):
        f.write(b"x" * 1000)
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 6848 vs 6742")

    monkeypatch.setattr(ck.torch, "save", full)
    with pytest.raises(ck.CheckpointError, match="disk full") as exc:
        ck.save_checkpoint(path, model, cfg, 2, {})
    assert "\n" not in str(exc.value)
    monkeypatch.setattr(ck.torch, "save", real_save)

    def enospc(obj, f, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck.torch, "save", enospc)
    with pytest.raises(ck.CheckpointError, match="disk full"):
        ck.save_checkpoint(path, model, cfg, 2, {})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]


# ------------------------------------------------------------------------------------ --resume RNG
def _epoch(model, opt, loader, augment):
    total, n = 0.0, 0
    for x, y in loader:
        x = torch.stack([augment(img) for img in x.numpy()])
        x = torch.nn.functional.dropout(x, 0.1)           # the model's own RNG (torch)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        total += float(loss.detach()) * len(y)
        n += len(y)
    return total / n


def _setup(seed):
    from torch.utils.data import DataLoader, RandomSampler, TensorDataset

    from datasets.presets import ClassificationPresetTrain
    from training.train import seed_everything

    seed_everything(seed)                                  # what train.py does at start, resumed or not
    rng = np.random.default_rng(123)
    data = TensorDataset(torch.from_numpy(rng.integers(0, 255, (64, 16, 16, 3), dtype=np.uint8)),
                         torch.from_numpy(rng.integers(0, 2, 64)))
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(data, batch_size=8, sampler=RandomSampler(data, generator=gen), generator=gen)
    augment = ClassificationPresetTrain(img_size=16, seed=seed)
    torch.manual_seed(7)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return model, opt, loader, gen, augment


def test_resume_restores_every_rng_so_the_next_epoch_matches(tmp_path):
    from training.checkpoint import capture_rng_state, read_checkpoint, restore_rng_state, save_checkpoint

    model, opt, loader, gen, augment = _setup(0)
    _epoch(model, opt, loader, augment)
    cfg = {"arch": "simple_cnn", "num_classes": 2, "classes": ["curve", "straight"], "img_size": 16,
           "mean": [0.5] * 3, "std": [0.25] * 3, "color_order": "RGB", "dropout": 0.0, "recipe": {}}
    save_checkpoint(tmp_path / "last.pt", model, cfg, 1, {}, optimizer=opt.state_dict(),
                    rng=capture_rng_state({"sampler": gen}, augment))
    uninterrupted = _epoch(model, opt, loader, augment)

    def resumed(restore: bool) -> float:
        model, opt, loader, gen, augment = _setup(0)       # a fresh process: every RNG re-seeded
        ckpt = read_checkpoint(tmp_path / "last.pt")       # weights_only=True: the state must be plain
        model.load_state_dict(ckpt["state_dict"])
        opt.load_state_dict(ckpt["optimizer"])
        if restore:
            restore_rng_state(ckpt["rng"], {"sampler": gen}, augment)
        return _epoch(model, opt, loader, augment)

    assert resumed(True) == pytest.approx(uninterrupted, rel=1e-6, abs=1e-7)
    assert resumed(False) != pytest.approx(uninterrupted, rel=1e-4)   # the bug this guards against


# ------------------------------------------------------------------------------------ video
_RECORD = r"""
import os, signal, sys
import numpy as np
from launch.video import VideoWriter
w = VideoWriter(sys.argv[1], 20, (64, 48))
for i in range(100):
    w.write(np.full((48, 64, 3), (i * 5) % 255, np.uint8))
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_sigkilled_recording_plays_up_to_the_kill(tmp_path):
    pytest.importorskip("av")
    from launch.video import probe

    path = tmp_path / "run.mp4"
    proc = subprocess.run([PY, "-c", _RECORD, str(path)], env=_env(), timeout=120)
    assert proc.returncode == -signal.SIGKILL
    info = probe(path)                                     # raised "moov atom not found" before
    assert info["frames"] >= 60 and (info["width"], info["height"]) == (64, 48)


def test_evaluate_strict_refuses_a_dataset_with_duplicates(tmp_path, small_ds):
    path, _, _ = _ckpt(tmp_path)
    rows = list(csv.DictReader((small_ds / "manifest.csv").open()))
    with (small_ds / "manifest.csv").open("a", newline="") as f:
        csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n").writerows(rows[:2])
    base = [PY, "-m", "training.evaluate", "--checkpoint", str(path), "--data", str(small_ds), "--workers", "0",
            "--no-progress", "--out", str(tmp_path / "ev")]
    strict = subprocess.run(base + ["--strict"], capture_output=True, text=True, env=_env(), timeout=300)
    assert strict.returncode == 2 and "2 duplicated manifest row(s)" in strict.stderr, strict.stderr
    lenient = subprocess.run(base, capture_output=True, text=True, env=_env(), timeout=300)
    assert lenient.returncode == 0, lenient.stderr
    data = json.loads((tmp_path / "ev" / "metrics.json").read_text())["data"]
    assert data["duplicates_dropped"] == 2 and data["frames"] == len(rows)


def test_bench_refuses_an_absurd_img_size_in_onnx_metadata(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from perception.bench import BenchConfig, run_bench
    from perception.meta import ModelMeta

    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["logits"])], "tiny",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, 8, 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ValueError, match=r"img_size.*30000.*out of range"):   # bounded where it is made, too
        ModelMeta(arch="simple_cnn", img_size=30000)
    props = ModelMeta(arch="simple_cnn", img_size=8).to_props()
    props = {k: (v.replace("8", "30000") if k == "img_size" else v) for k, v in props.items()}
    assert props.get("img_size") == "30000", props
    helper.set_model_props(model, props)
    path = tmp_path / "huge.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ValueError, match=r"img_size.*30000.*out of range"):   # tried 17.9 GiB before
        run_bench(BenchConfig(model=path, backends="onnxruntime", runs=1, warmup=0))
