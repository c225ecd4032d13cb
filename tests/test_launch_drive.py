"""Smoke tests of the closed loop on the embedded simulator (tiny camera, few frames).

State is restored and actors destroyed after every drive; the tests check that too.
"""
import json
import math
import time

import numpy as np
import pytest

import carla

from launch.loop import DriveConfig, WorldContext, open_world, run_drive, run_episode
from launch.video import probe

RES = (160, 120)


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    """An untrained simple_cnn exported with our metadata: exercises the real classifier path end to end."""
    import torch
    from perception.export import export_onnx
    from perception.meta import ModelMeta
    from training.models import create_model

    d = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    model = create_model("simple_cnn", num_classes=2, dropout=0.0, weights="none").eval()
    config = {"arch": "simple_cnn", "num_classes": 2, "classes": ["curve", "straight"], "img_size": 64,
              "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "color_order": "RGB",
              "dropout": 0.0, "recipe": {}}
    torch.save({"state_dict": model.state_dict(), "config": config}, d / "tiny_best.pt")
    meta = ModelMeta.from_checkpoint_config(config, path=str(d / "tiny_best.pt"))
    export_onnx(model, meta, d / "tiny.onnx")
    return d / "tiny.onnx"


@pytest.fixture(scope="module")
def ctx():
    return open_world(DriveConfig(town="Town02", sim="embedded", gate="oracle"))


def _cfg(**kw):
    base = dict(town="Town02", sim="embedded", gate="oracle", res=RES, display=False, seed=3, warmup=2)
    base.update(kw)
    return DriveConfig(**base)


def _our_actors(world):
    return [a for a in world.get_actors() if a.type_id.startswith(("vehicle.", "sensor."))]


def test_headless_drive_writes_one_video_frame_per_tick_and_metrics(tmp_path, tiny_onnx, ctx):
    from launch.loop import load_classifier
    cfg = _cfg(model=str(tiny_onnx), gate="hard", frames=25, record=str(tmp_path / "d.mp4"),
               metrics=str(tmp_path / "d.json"))
    settings_before = ctx.world.get_settings().synchronous_mode
    result = run_episode(ctx, cfg, load_classifier(cfg.model, "onnxruntime", 2))
    info = probe(tmp_path / "d.mp4")
    assert info["frames"] == 25 == result.metrics["ticks"]
    assert info["fps"] == pytest.approx(20.0) and info["codec"] == "h264"
    m = json.loads((tmp_path / "d.json").read_text())
    for key in ("gate_accuracy", "route_completion", "loop_fps", "inference_p50_ms", "inference_p99_ms"):
        assert key in m and m[key] is not None
    assert 0.0 < m["route_completion"] < 1.0 and m["loop_fps"] > 0 and m["inference_p50_ms"] > 0
    assert m["end_reason"] == "frames"
    assert _our_actors(ctx.world) == []
    assert ctx.world.get_settings().synchronous_mode == settings_before
    for r in result.records:
        assert all(math.isfinite(v) for v in (r.steer, r.throttle, r.brake))
        assert -1 <= r.steer <= 1 and 0 <= r.throttle <= 1 and 0 <= r.brake <= 1


def test_ctrl_c_finalises_video_and_metrics(tmp_path, ctx):
    k = 7

    def interrupt(i, rec):
        if i == k:
            raise KeyboardInterrupt

    cfg = _cfg(frames=50, record=str(tmp_path / "c.mp4"), metrics=str(tmp_path / "c.json"))
    result = run_episode(ctx, cfg, on_tick=interrupt)
    assert result.interrupted and result.end_reason == "interrupted"
    assert probe(tmp_path / "c.mp4")["frames"] == k
    assert json.loads((tmp_path / "c.json").read_text())["ticks"] == k
    assert _our_actors(ctx.world) == []
    assert not ctx.world.get_settings().synchronous_mode


@pytest.mark.parametrize("cpus, before, during", [(2, 2, 1), (4, 4, 3), (4, 2, 2), (1, 1, 1)])
def test_recording_leaves_the_encoder_a_core_and_gives_it_back(cpus, before, during, tmp_path, ctx, monkeypatch):
    """While a video records, OpenCV may not take every CPU (the encoder thread needs one); after it, or
    after a Ctrl-C, the caller's setting is back."""
    import os

    import cv2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    old = cv2.getNumThreads()
    seen = []

    def watch(i, rec):
        seen.append(cv2.getNumThreads())
        if i == 4:
            raise KeyboardInterrupt

    try:
        run_episode(ctx, _cfg(frames=1))           # the renderer sets its own count when it starts: let it first
        cv2.setNumThreads(before)
        run_episode(ctx, _cfg(frames=10, record=str(tmp_path / "t.mp4")), on_tick=watch)
        assert seen == [during] * 4
        assert cv2.getNumThreads() == before
        seen.clear()
        run_episode(ctx, _cfg(frames=3), on_tick=watch)          # no video: nothing changes
        assert seen == [before] * 3
    finally:
        cv2.setNumThreads(old)


def test_encoder_failure_ends_the_drive_after_the_metrics_and_keeps_the_frames_before_it(tmp_path, ctx, monkeypatch):
    from launch.video import VideoWriter
    write = VideoWriter.write

    def failing(self, frame):
        if self.frames_written == 6:
            raise OSError(28, "No space left on device")
        write(self, frame)

    monkeypatch.setattr(VideoWriter, "write", failing)
    import cv2
    cfg = _cfg(frames=40, record=str(tmp_path / "f.mp4"), metrics=str(tmp_path / "f.json"))
    run_episode(ctx, _cfg(frames=1))                  # the renderer sets its own count when it starts
    threads = cv2.getNumThreads()
    with pytest.raises(OSError, match="No space left"):
        run_episode(ctx, cfg)
    assert cv2.getNumThreads() == threads            # recording's thread count given back after the error
    m = json.loads((tmp_path / "f.json").read_text())
    assert m["end_reason"].startswith("error: OSError") and 6 < m["ticks"] < 40
    assert probe(tmp_path / "f.mp4")["frames"] == 6
    assert _our_actors(ctx.world) == []


def test_recording_changes_neither_the_drive_nor_the_frames_hud(tmp_path, ctx):
    """The HUD is drawn on the recording thread: same controls as without video, HUD in the file."""
    plain = run_episode(ctx, _cfg(frames=30))
    recorded = run_episode(ctx, _cfg(frames=30, record=str(tmp_path / "h.mp4")))
    run_episode(ctx, _cfg(frames=30, record=str(tmp_path / "n.mp4"), hud=False))  # the video without HUD
    key = lambda r: (r.frame - plain.records[0].frame, r.x, r.y, r.steer, r.throttle, r.brake)  # noqa: E731
    start = recorded.records[0].frame
    assert [key(r) for r in plain.records] == [(r.frame - start, r.x, r.y, r.steer, r.throttle, r.brake)
                                               for r in recorded.records]
    import av
    def panel(path):  # mean brightness of the HUD panel's area (top left) over the video
        with av.open(str(path)) as c:
            return np.mean([f.to_ndarray(format="bgr24")[:60, :40].mean() for f in c.decode(video=0)])
    assert panel(tmp_path / "h.mp4") < 0.6 * panel(tmp_path / "n.mp4")


def test_oracle_gate_follows_the_map_label_along_the_route(ctx):
    # lights ignored: seed 1 starts at a red light, and this test is about the gate along the whole route
    result = run_episode(ctx, _cfg(gate="oracle", frames=400, seed=1, minimap=False, hud=False,
                                   route_length_m=150.0, extend_route=False, traffic_lights="ignore"))
    labelled = [r for r in result.records if r.truth in ("curve", "straight")]
    assert {r.truth for r in labelled} == {"curve", "straight"}, "route should contain a turn"
    assert all(r.expert == r.truth for r in labelled)
    assert result.metrics["gate_accuracy"] == 1.0
    m = result.metrics
    assert m["route_completion"] == pytest.approx(m["distance_m"] / m["route_length_m"], rel=0.1)
    assert m["route_completion"] > 0.25


def test_nan_inference_falls_back_and_controls_stay_finite(ctx, tiny_onnx):
    calls = {"n": 0}

    def flaky(frame):
        calls["n"] += 1
        return (None, float("nan")) if 10 <= calls["n"] < 20 else ("straight", 0.1)

    result = run_episode(ctx, _cfg(gate="hard", frames=30, model=str(tiny_onnx), hud=False), predict=flaky)
    fb = [r.fallback for r in result.records]
    assert fb[9:19] == [True] * 10 and not any(fb[:9]) and not any(fb[19:])
    assert all(r.throttle == 0.0 and r.brake > 0 for r in result.records[9:19])
    assert result.metrics["fallback_frames"] == 10


def test_keys_gate_cycle_record_pause_quit(tmp_path, monkeypatch, ctx):
    pygame = pytest.importorskip("pygame")
    monkeypatch.chdir(tmp_path)

    def key(k):
        pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=k, mod=0, unicode="", scancode=0))

    def on_tick(i, rec):
        if i == 3:
            key(pygame.K_g)         # oracle -> curve
        elif i == 5:
            key(pygame.K_r)         # start recording (no --record: runs/drive/<town>_<gate>_<date>.mp4)
            key(pygame.K_h)         # hide the HUD
        elif i == 8:
            key(pygame.K_p)         # pause; a timer un-pauses 0.3 s later
            pygame.time.set_timer(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_p, mod=0, unicode="",
                                                     scancode=0), 300, loops=1)
        elif i == 12:
            key(pygame.K_ESCAPE)

    t0 = time.perf_counter()
    result = run_episode(ctx, _cfg(gate="oracle", display=True, realtime=False, frames=100), on_tick=on_tick)
    assert time.perf_counter() - t0 >= 0.3                      # it really paused
    assert result.end_reason == "quit" and len(result.records) == 12
    frames = [r.frame for r in result.records]
    assert frames == list(range(frames[0], frames[0] + 12))     # no tick skipped or doubled by the pause
    assert [r.gate for r in result.records] == ["oracle"] * 3 + ["curve"] * 9
    assert [r.expert for r in result.records[3:]] == ["curve"] * 9
    assert len(result.videos) == 1 and result.videos[0].parent == tmp_path / "runs" / "drive"
    assert probe(result.videos[0])["frames"] == 12 - 5           # ticks 6..12


def test_drive_cli_bad_input_is_one_line(capsys, tmp_path):
    from launch.drive import main
    with pytest.raises(SystemExit) as e:
        main(["--gate", "hard", "--sim", "embedded", "--no-display"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "gate 'hard' needs --model" in err
    with pytest.raises(SystemExit):
        main(["--gate", "oracle", "--weather", "Sunny", "--sim", "embedded"])
    assert "unknown weather preset 'Sunny'; valid: " in capsys.readouterr().err


def test_drive_cli_acceptance_shape(tmp_path, tiny_onnx):
    """The issue's acceptance command, shortened (same flags, fewer frames)."""
    from launch.drive import main
    rc = main(["--sim", "embedded", "--town", "Town02", "--model", str(tiny_onnx), "--gate", "hard",
               "--frames", "20", "--no-display", "--record", str(tmp_path / "d.mp4"), "--metrics",
               str(tmp_path / "d.json"), "--seed", "3", "--res", "160x120", "--warmup", "2"])
    assert rc == 0
    assert probe(tmp_path / "d.mp4")["frames"] == 20
    assert json.loads((tmp_path / "d.json").read_text())["ticks"] == 20


def _all_lights(world, state, frozen: bool) -> None:
    for light in world.get_actors().filter("*traffic_light*"):
        light.set_state(state)
        light.freeze(frozen)


@pytest.mark.parametrize("rule", ["stop", "ignore"])
def test_red_lights_hold_the_car_or_are_run_and_counted(ctx, rule):
    """Every light red and frozen from the first tick; the one the car waits at green at tick 200.
    Route seed 4 meets a light at about tick 70. 'stop' (the default) holds the car before the junction,
    the wait does not count as blocked (blocked_s is 3 s, the wait ~6 s) and it drives on at green;
    'ignore' runs the light, counted."""
    def lights(i, rec):
        if i == 0:
            _all_lights(ctx.world, carla.TrafficLightState.Red, True)
        elif i == 200:                                      # the light the car waits at turns green
            light = ctx.world.get_actors().filter("vehicle.*")[0].get_traffic_light()
            if light is not None:
                light.set_state(carla.TrafficLightState.Green)
    try:
        result = run_episode(ctx, _cfg(seed=4, frames=300, blocked_s=3.0, traffic_lights=rule), on_tick=lights)
    finally:
        ctx.world.freeze_all_traffic_lights(False)
        ctx.world.reset_all_traffic_lights()
    recs, m = result.records, result.metrics
    assert result.end_reason == "frames"
    if rule == "ignore":
        assert m["red_lights"] >= 1 and m["red_light_hold_s"] == 0.0 and not any(r.red_light_hold for r in recs)
        return
    assert m["red_lights"] == 0
    held = [i for i, r in enumerate(recs) if r.red_light_hold]
    assert held and held[-1] < 201 and m["red_light_hold_s"] > 3.0
    stopped = recs[held[-1]]
    assert stopped.speed_kmh < 0.5 and stopped.brake == 1.0 and stopped.throttle == 0.0
    where = ctx.map.get_waypoint(carla.Location(stopped.x, stopped.y, 0.0))
    assert not where.is_junction                         # it stood before the junction, not in it
    assert recs[-1].speed_kmh > 5.0 and recs[-1].progress_m > stopped.progress_m + 5.0   # and drove on at green


def test_traffic_light_rule_is_checked():
    with pytest.raises(ValueError, match="traffic_lights 'maybe'; valid: stop, ignore"):
        DriveConfig(town="Town02", sim="embedded", gate="oracle", traffic_lights="maybe")
