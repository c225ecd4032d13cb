"""Collector robustness: SIGINT + resume, errors restore the world, disk full, bad inputs, towns, workers."""
import errno
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

import carla_client
from carla_client import collector as collect_mod
from datasets import manifest as dataset_writer
from carla_client.collect import main
from carla_client.collector import CollectConfig, collect
from datasets.manifest import DatasetWriter
from datasets.schema import LabelParams

from test_collect import assert_consistent, audit_labels, rows_of

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--sim", "embedded", "--res", "160x120", "--no-progress"]


def small_config(out, **kw):
    kw = {"out": out, "sim": "embedded", "res": (160, 120), "frames": 20, "seed": 3, "progress": False, **kw}
    return CollectConfig(**kw)


def test_sigint_mid_run_then_resume_reaches_target(tmp_path):
    out = tmp_path / "ds"
    cmd = [sys.executable, "-m", "carla_client.collect", *SMALL, "--town", "Town02", "--frames", "600",
           "--out", str(out), "--seed", "5"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    manifest = out / "manifest.csv"
    deadline = time.time() + 120
    while time.time() < deadline:
        if manifest.exists() and manifest.read_text().count("\n") > 30:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    rows = assert_consistent(out)            # consistent right after the interrupt, before any reconcile
    assert 30 <= len(rows) < 600
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = assert_consistent(out)
    assert Counter(r["label"] for r in rows) == {"curve": 300, "straight": 300}


def test_sigterm_stops_cleanly(tmp_path):
    out = tmp_path / "ds"
    cmd = [sys.executable, "-m", "carla_client.collect", *SMALL, "--frames", "2000", "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not ((out / "manifest.csv").exists()
                                          and (out / "manifest.csv").read_text().count("\n") > 5):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err
    assert_consistent(out)


def test_sigterm_stops_background_workers_that_ignore_sigint(tmp_path):
    """Started as ``nohup collect --workers 2 &`` runs (SIGINT ignored, inherited by the workers), a
    SIGTERM to the collector must still stop its workers at once, each saving what it had."""
    out = tmp_path / "ds"
    cmd = [sys.executable, "-m", "carla_client.collect", *SMALL, "--town", "Town01,Town02", "--frames", "4000",
           "--workers", "2", "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: (os.setpgrp(), signal.signal(signal.SIGINT, signal.SIG_IGN)))
    deadline = time.time() + 180
    while time.time() < deadline and not ((out / "manifest.csv").exists()
                                          and (out / "manifest.csv").read_text().count("\n") > 10):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=25)   # before: the workers drove on until two 30 s joins ran out
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)     # a failing run must not leave its workers driving
        raise
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert "interrupted" in err
    assert_consistent(out)


def test_world_settings_weather_and_actors_restored_after_an_error(tmp_path, monkeypatch):
    client = carla_client.connect("embedded")
    world = client.load_world("Town02")
    before = world.get_settings()
    weather_before = world.get_weather()
    calls = Counter()
    real_write = DatasetWriter.write_frame

    def failing_write(self, encoded, row):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("injected failure")
        return real_write(self, encoded, row)

    monkeypatch.setattr(DatasetWriter, "write_frame", failing_write)
    with pytest.raises(RuntimeError, match="injected"):
        collect(small_config(tmp_path / "ds", weather=("HardRainNoon",)), client=client)
    world = client.get_world()
    after = world.get_settings()
    assert after.synchronous_mode == before.synchronous_mode is False
    assert after.fixed_delta_seconds == before.fixed_delta_seconds
    assert after == before
    assert world.get_weather() == weather_before
    assert not [a for a in world.get_actors() if a.type_id.startswith(("vehicle.", "sensor."))]
    rows = assert_consistent(tmp_path / "ds")
    assert len(rows) == 3


def test_disk_full_stops_cleanly_with_everything_saved_intact(tmp_path, monkeypatch, capsys):
    real_open = open
    written = Counter()

    def full_disk_open(path, mode="r", *a, **kw):
        if "w" in mode and str(path).endswith(".tmp") and "/images/" in str(path):
            written["n"] += 1
            if written["n"] > 6:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, mode, *a, **kw)

    monkeypatch.setattr(dataset_writer, "open", full_disk_open, raising=False)
    out = tmp_path / "ds"
    rc = main([*SMALL, "--frames", "40", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1
    assert "disk full" in err and "Traceback" not in err
    rows = assert_consistent(out)
    assert len(rows) == 6
    assert not list(out.rglob("*.tmp"))


def test_several_towns_share_one_dataset(tmp_path):
    out = tmp_path / "ds"
    assert main([*SMALL, "--town", "Town01,Town02", "--frames", "20", "--out", str(out),
                 "--weather", "WetNoon,ClearSunset"]) == 0
    assert main([*SMALL, "--town", "Town03", "--frames", "32", "--out", str(out)]) == 0
    rows = assert_consistent(out)
    by = Counter((r["town"], r["label"]) for r in rows)
    assert by == {("Town01", "curve"): 5, ("Town01", "straight"): 5, ("Town02", "curve"): 5,
                  ("Town02", "straight"): 5, ("Town03", "curve"): 6, ("Town03", "straight"): 6}
    assert {r["weather"] for r in rows} >= {"WetNoon", "ClearSunset", "ClearNoon"}
    assert sum(audit_labels(out).values()) == 32


def test_workers_write_one_dataset_without_clashes(tmp_path):
    out = tmp_path / "ds"
    assert main([*SMALL, "--town", "Town02", "--frames", "24", "--workers", "2", "--out", str(out)]) == 0
    rows = assert_consistent(out)
    assert Counter(r["label"] for r in rows) == {"curve": 12, "straight": 12}
    episodes = {r["episode"] for r in rows}
    assert {e.split("-j")[1][:2] for e in episodes} == {"00", "01"}  # both workers contributed


def test_recovery_perturbations_are_never_saved(tmp_path, monkeypatch):
    log = []

    class RecordingPerturbation(collect_mod.Perturbation):
        def apply(self, control, allowed=True):
            active = super().apply(control, allowed)
            log.append(("tick", active))
            return active

    real_save = collect_mod._save

    def spy_save(*args):
        log.append(("save", None))
        return real_save(*args)

    monkeypatch.setattr(collect_mod, "Perturbation", RecordingPerturbation)
    monkeypatch.setattr(collect_mod, "_save", spy_save)
    result = collect(small_config(tmp_path / "ds", recovery=2.0, frames=40, label=LabelParams(junction_policy="skip")))
    assert sum(result.added.values()) == 40
    ticks = [active for kind, active in log if kind == "tick"]
    assert sum(ticks) > 0.2 * len(ticks)          # perturbations really happened (about half the time)
    saves_after = [log[i - 1] for i, (kind, _) in enumerate(log) if kind == "save"]
    assert len(saves_after) == 40
    assert all(prev == ("tick", False) for prev in saves_after)  # never while perturbed
    # recovery frames: saved frames with the car visibly off the lane centre exist
    assert max(abs(float(r["steer"])) for r in rows_of(tmp_path / "ds")) > 0.05
    # and they are flagged, for the driving policies that learn from them
    rows = rows_of(tmp_path / "ds")
    recovering = [r for r in rows if r["recovery"] == "1"]
    assert 0 < len(recovering) < len(rows)


@pytest.mark.parametrize("argv,needle", [
    (["--town", "Town99"], "unknown town 'Town99'; valid: "),
    (["--weather", "Sunny"], "unknown weather preset Sunny; valid: all, "),
    (["--frames", "3"], "--frames must be an even number"),
    (["--frames", "0"], "--frames must be an even number"),
    (["--out", "/proc/forbidden/ds"], "is not writable"),
    (["--junction-policy", "drop"], "--junction-policy: invalid choice: 'drop'"),
])
def test_bad_inputs_give_one_line_errors(tmp_path, capsys, argv, needle):
    args = [*SMALL, "--out", str(tmp_path / "ds"), *argv]
    try:
        rc = main(args)
    except SystemExit as exc:  # argparse's parser.error
        rc = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert any(needle in line for line in err), err
    assert not any("Traceback" in line for line in err)
    if "town" in needle:
        assert "Town02" in err[-1]
    if "weather" in needle:
        assert "HardRainNoon" in err[-1]


def test_summary_counts_skipped_frames(tmp_path, capsys):
    assert main([*SMALL, "--town", "Town02", "--frames", "40", "--out", str(tmp_path / "ds"), "--seed", "2",
                 "--junction-policy", "skip"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("skipped: "))
    n_amb, n_dep = (int(w) for w in line.split() if w.isdigit())
    assert line == f"skipped: {n_amb} ambiguous, {n_dep} route-dependent at junctions"
    assert n_dep > 0  # Town02's T-junctions: straight on or turn along every bar


def test_summary_counts_flagged_frames_and_they_stay_outside_the_quotas(tmp_path, capsys):
    out = tmp_path / "ds"
    assert main([*SMALL, "--town", "Town02", "--frames", "40", "--out", str(out), "--seed", "2"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("skipped: "))
    n_flag = int(line.split("saved flagged: ")[1].split()[0])
    everything = rows_of(out, flagged=True)
    assert n_flag > 0 and sum(r["route_dependent"] == "1" for r in everything) == n_flag
    assert Counter(r["label"] for r in rows_of(out)) == {"curve": 20, "straight": 20}
    assert {r["command"] for r in everything} <= {"LANEFOLLOW", "LEFT", "RIGHT", "STRAIGHT", "CHANGELANELEFT",
                                                   "CHANGELANERIGHT"}
    assert {r["command"] for r in everything} - {"LANEFOLLOW"}  # junction commands recorded before junctions


def test_dataset_from_before_the_junction_policy_resumes_only_as_keep(tmp_path, capsys):
    import json

    out = tmp_path / "ds"
    assert main([*SMALL, "--frames", "10", "--out", str(out), "--junction-policy", "keep"]) == 0
    info = json.loads((out / "dataset.json").read_text())
    del info["label"]["junction_policy"]          # what the collector wrote before the flag existed
    (out / "dataset.json").write_text(json.dumps(info))
    capsys.readouterr()
    assert main([*SMALL, "--frames", "20", "--out", str(out)]) == 2
    assert "--junction-policy keep" in capsys.readouterr().err
    assert main([*SMALL, "--frames", "20", "--out", str(out), "--junction-policy", "keep"]) == 0
    assert len(rows_of(out)) == 20
    assert "junction_policy" not in json.loads((out / "dataset.json").read_text())["label"]


def test_workers_with_more_jobs_than_processes_finish_and_report_every_job(tmp_path, capsys):
    """Three towns on two workers: one worker runs two jobs. The parent must keep reading events
    until every worker has exited (it once stopped after one job per worker and deadlocked)."""
    out = tmp_path / "ds"
    argv = [*SMALL, "--town", "Town01,Town02,Town03", "--frames", "60", "--workers", "2", "--out", str(out)]
    assert main(argv) == 0
    rows = assert_consistent(out)
    assert Counter(r["label"] for r in rows) == {"curve": 30, "straight": 30}
    assert {r["town"] for r in rows} == {"Town01", "Town02", "Town03"}
    summary = capsys.readouterr().out
    assert "added 60 frames" in summary  # counted from every job's own report, not from the manifest


def test_weather_changes_within_an_episode_so_no_preset_gets_one_class_only(tmp_path):
    out = tmp_path / "ds"
    presets = ("ClearNoon", "WetNoon", "HardRainNight")
    collect(small_config(out, towns=("Town02",), frames=48, weather=presets, weather_every=4))
    rows = assert_consistent(out)
    by_episode = {}
    for r in rows:
        by_episode.setdefault(r["episode"], set()).add(r["weather"])
    assert any(len(w) > 1 for w in by_episode.values())            # the preset changed inside an episode
    by = Counter((r["weather"], r["label"]) for r in rows)
    assert all(by[w, c] > 0 for w in presets for c in ("curve", "straight")), by
    with pytest.raises(ValueError, match="--weather-every must be >= 0"):
        small_config(out, weather_every=-1)


@pytest.mark.parametrize("sim, workers, cpus, preset, want", [
    ("embedded", 2, 2, None, "1"), ("embedded", 2, 8, None, "4"), ("embedded", 3, 2, None, "1"),
    ("embedded", 2, 2, "3", "3"), ("embedded", 1, 2, None, None), ("carla", 2, 2, None, None)])
def test_embedded_workers_split_the_cores_for_rendering(sim, workers, cpus, preset, want, tmp_path, monkeypatch):
    """Each embedded renderer takes two OpenCV threads by default; parallel workers share the machine instead
    of fighting over it, and a thread count the user set wins."""
    from carla_embedded import threads
    monkeypatch.setattr(threads, "usable_cpus", lambda: cpus)
    monkeypatch.setenv(threads.ENV, preset or "")      # recorded, so whatever the test sets is undone
    if preset is None:
        monkeypatch.delenv(threads.ENV)
    kw = {"ports": (2000, 2001, 2002)} if sim == "carla" else {}
    collect_mod._share_cores_with_siblings(small_config(tmp_path / "d", sim=sim, workers=workers, **kw))
    assert os.environ.get(threads.ENV) == want
