"""launch/ building blocks without a simulator: video, timing, overlay, metrics, keys."""
import datetime as dt
import threading
import time

import numpy as np
import pytest

from launch.metrics import LEADERBOARD_1_0, PenaltyTable, TickRecord, episode_metrics, route_progress
from launch.overlay import HudState, Minimap, Overlay
from launch.timing import CycleTimer
from launch.video import FrameWorker, VideoWriter, probe, video_path


# ------------------------------------------------------------------ video

def test_video_one_frame_per_write_h264_at_sim_rate(tmp_path):
    path = tmp_path / "v.mp4"
    with VideoWriter(path, fps=20.0, size=(160, 120)) as vw:
        for i in range(17):
            frame = np.zeros((120, 160, 3), np.uint8)
            frame[:, i * 8:(i + 1) * 8] = 255
            vw.write(frame)
    info = probe(path)
    assert info["frames"] == 17
    assert info["fps"] == pytest.approx(20.0)
    assert info["codec"] == "h264"
    assert (info["width"], info["height"]) == (160, 120)


def test_video_keeps_the_colours_of_the_frames(tmp_path):
    """Blue, green, red and grey patches come back as written (a channel swap or a range error would not)."""
    import av
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (128, 128, 128), (30, 140, 220)]   # BGR
    frame = np.zeros((64, 160, 3), np.uint8)
    for i, c in enumerate(colours):
        frame[:, i * 32:(i + 1) * 32] = c
    with VideoWriter(tmp_path / "c.mp4", fps=10.0, size=(160, 64)) as vw:
        for _ in range(3):
            vw.write(frame)
    with av.open(str(tmp_path / "c.mp4")) as container:
        decoded = [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]
    assert len(decoded) == 3
    for i, c in enumerate(colours):
        patch = decoded[-1][16:48, i * 32 + 8:(i + 1) * 32 - 8].reshape(-1, 3).mean(axis=0)
        assert np.abs(patch - c).max() < 12, (c, patch.round(1))


def test_video_finalised_when_an_exception_escapes(tmp_path):
    path = tmp_path / "crash.mp4"
    with pytest.raises(KeyboardInterrupt):
        with VideoWriter(path, fps=10.0, size=(64, 48)) as vw:
            for i in range(5):
                vw.write(np.full((48, 64, 3), i * 40, np.uint8))
            raise KeyboardInterrupt
    assert probe(path)["frames"] == 5


def test_video_path_naming():
    when = dt.datetime(2025, 1, 2, 3, 4, 5)
    assert str(video_path("out/x.mp4", "Town02", "hard", when)).endswith("out/x.mp4")
    assert video_path("runs/v", "Town02", "soft", when).name == "Town02_soft_20250102-030405.mp4"


def test_video_rejects_bad_frame(tmp_path):
    with VideoWriter(tmp_path / "b.mp4", fps=20, size=(64, 48)) as vw:
        with pytest.raises(ValueError, match="expected a >= 64x48 BGR frame"):
            vw.write(np.zeros((48, 64, 4), np.uint8))


def test_frame_worker_runs_jobs_in_order_and_blocks_instead_of_dropping():
    gate, done = threading.Event(), []
    worker = FrameWorker(maxsize=2, nice=0)
    worker.submit(gate.wait)                     # the worker is stuck on this job ...
    worker.submit(done.append, 0)
    worker.submit(done.append, 1)                # ... and the queue is full
    third = threading.Thread(target=worker.submit, args=(done.append, 2))
    third.start()
    third.join(0.3)
    assert third.is_alive() and done == []       # the caller waits: nothing dropped, nothing skipped ahead
    gate.set()
    third.join(5)
    assert not third.is_alive()
    for i in range(3, 40):
        worker.submit(done.append, i, stage="append")
    worker.close()                               # close drains the queue
    assert done == list(range(40))
    assert [name for name, _ in worker.timings] == ["append"] * 37
    with pytest.raises(RuntimeError, match="closed"):
        worker.submit(done.append, 99)


def test_frame_worker_error_reaches_the_caller_and_the_video_is_still_finalised(tmp_path):
    path = tmp_path / "w.mp4"
    vw = VideoWriter(path, fps=20.0, size=(64, 48))
    worker = FrameWorker(maxsize=4, nice=0)
    for i in range(3):
        worker.submit(vw.write, np.full((48, 64, 3), i * 50, np.uint8))
    worker.submit(vw.write, np.zeros((48, 64, 4), np.uint8))           # wrong shape: raises in the worker
    worker.submit(vw.write, np.zeros((48, 64, 3), np.uint8))           # skipped after the error
    worker.submit(vw.close, always=True)                                # a finaliser still runs
    with pytest.raises(ValueError, match="expected a >= 64x48 BGR frame"):
        worker.close()
    worker.close()                                                      # reported once
    assert probe(path)["frames"] == 3
    worker = FrameWorker(maxsize=1, nice=0)
    worker.submit(int, "x")
    deadline = time.monotonic() + 5
    with pytest.raises(ValueError, match="invalid literal"):            # raised at the next submit
        while time.monotonic() < deadline:
            worker.submit(time.sleep, 0.001)
    worker.close()


# ------------------------------------------------------------------ timing

def test_cycle_timer_sections_summary_and_pacing():
    timer = CycleTimer(dt=0.02)
    t0 = time.perf_counter()
    for _ in range(5):
        timer.tick()
        with timer.section("work"):
            time.sleep(0.002)
        timer.wait()
    elapsed = time.perf_counter() - t0
    s = timer.summary()
    assert s["stages"]["work"]["count"] == 5
    assert 1.5 <= s["stages"]["work"]["p50_ms"] < 15
    assert elapsed >= 4 * 0.02  # paced at dt
    assert 20 <= s["loop_fps"] <= 60
    assert "loop FPS" in timer.format_summary()
    with pytest.raises(ValueError, match="dt must be > 0"):
        CycleTimer(0)


# ------------------------------------------------------------------ overlay

def _minimap():
    img = np.full((400, 400, 3), 90, np.uint8)
    w2p = lambda x, y: (np.asarray(x) * 2 + 200, np.asarray(y) * 2 + 200)  # noqa: E731
    route = np.stack([np.linspace(-60, 60, 50), np.zeros(50)], 1)
    return Minimap(img, w2p, route, size=160)


def test_overlay_marks_the_classifiers_band_of_rows():
    state = HudState(pred_label="curve", p_curve=0.8, gate="hard", town="Town02", weather="ClearNoon")
    base = np.full((600, 800, 3), 128, np.uint8)
    out = Overlay((800, 600), crop_rows=(0.3, 0.8)).draw(base.copy(), state)
    for row in (180, 480):
        marked = (out[row, 400:] != 128).any(axis=1)
        assert 0.4 < marked.mean() < 0.6                   # dotted across the view
    assert (out[300:420, 300:500] == 128).all() and (out[470:479, 300:] == 128).all()
    whole = Overlay((800, 600), crop_rows=(0.0, 1.0)).draw(base.copy(), state)
    assert (whole[180, 400:] == 128).all() and (whole[480, 400:] == 128).all()


def test_overlay_draws_hud_and_is_cheap():
    ov = Overlay((800, 600), _minimap())
    state = HudState(pred_label="curve", p_curve=0.8, truth="straight", gate="hard",
                     weights={"curve": 1.0, "straight": 0.0}, in_charge="curve", speed_kmh=30, steer=-0.4,
                     throttle=0.5, town="Town02", weather="ClearNoon", sim_time=3.0, x=0.0, y=0.0, yaw=90.0,
                     recording=True)
    base = np.full((600, 800, 3), 128, np.uint8)
    out = ov.draw(base.copy(), state)
    assert (out[:300, :200] != 128).any()                  # panel drawn
    assert (out[-170:, -170:] != 128).any()                # minimap drawn
    assert (out[300:420, 300:500] == 128).all()            # the middle of the road view stays clean
    hidden = ov.draw(base.copy(), state, show_hud=False)
    assert (hidden[:300, :200] == 128).all()
    t0 = time.perf_counter()
    for _ in range(50):
        ov.draw(base.copy(), state)
    assert (time.perf_counter() - t0) / 50 < 0.010         # a few ms at 800x600


def test_minimap_is_centred_on_car_and_points_along_heading():
    mm = _minimap()
    crop = mm.render(0.0, 0.0, yaw_deg=0.0)                # heading +x = right in the raster
    red = (crop[..., 2] > 200) & (crop[..., 0] < 80) & (crop[..., 1] < 80)
    ys, xs = np.nonzero(red)
    assert abs(ys.mean() - 80) < 3 and xs.mean() > 80 - 3  # arrow centred, nose to the right
    assert xs.max() - 80 > 80 - xs.min()


# ------------------------------------------------------------------ metrics

def _rec(i, progress, on_road=True, inv=0, truth="straight", expert="straight", steer=0.0, x=None, infer=3.0):
    return TickRecord(frame=i, t=i * 0.05, x=progress if x is None else x, y=0.0, yaw=0.0, speed_kmh=36.0,
                      steer=steer, throttle=0.5, brake=0.0, progress_m=progress, route_dist_m=0.1 * (i % 3),
                      on_road=on_road, lane_invasions=inv, truth=truth, pred=truth, p_curve=0.1, expert=expert,
                      w_curve=0.0, fallback=False, gate="hard", infer_ms=infer)


def test_episode_metrics_on_a_clean_drive():
    recs = [_rec(i, i * 0.5) for i in range(201)]          # 100 m at 0.5 m / tick
    m = episode_metrics(recs, route_length_m=200.0, dt=0.05)
    assert m["route_completion"] == pytest.approx(0.5)
    assert m["driving_score"] == pytest.approx(0.5)
    assert m["distance_m"] == pytest.approx(100.0)
    assert m["gate_accuracy"] == 1.0 and m["gate_switches"] == 0
    assert m["lateral_deviation_max_m"] == pytest.approx(0.2)
    assert m["inference_p50_ms"] == pytest.approx(3.0)
    assert m["penalty_table"] == "CARLA Leaderboard 1.0"


def test_off_road_distance_excluded_and_penalised_like_a_layout_collision():
    recs = [_rec(i, i * 1.0, on_road=not 20 <= i < 40) for i in range(101)]
    m = episode_metrics(recs, route_length_m=100.0, dt=0.05)
    assert m["route_completion_raw"] == pytest.approx(1.0)
    assert m["route_completion"] == pytest.approx(0.8)       # the 20 m off-road do not count
    assert m["infractions"]["off_road_events"] == 1
    assert m["driving_score"] == pytest.approx(0.8 * LEADERBOARD_1_0.collision_layout)
    assert m["off_road_events_per_km"] == pytest.approx(10.0)
    lenient = episode_metrics(recs, 100.0, 0.05, PenaltyTable(off_road_as_layout_collision=False))
    assert lenient["driving_score"] == pytest.approx(0.8)


def test_gate_accuracy_switches_and_steering_suddenness():
    truth = ["straight"] * 10 + ["curve"] * 10 + [None] * 5
    expert = ["straight"] * 12 + ["curve"] * 13
    steer = [0.0, 0.5] * 12 + [0.0]
    recs = [_rec(i, i * 1.0, truth=t, expert=e, steer=s) for i, (t, e, s) in enumerate(zip(truth, expert, steer))]
    m = episode_metrics(recs, 100.0, dt=0.05)
    assert m["gate_accuracy"] == pytest.approx(18 / 20)     # ambiguous frames are not scored
    assert m["gate_switches"] == 1
    assert m["gate_switches_per_km"] == pytest.approx(1 / 0.024)
    assert m["steer_rate_mean_per_s"] == pytest.approx(0.5 / 0.05)


def test_frames_held_at_a_red_light_are_timed_and_not_scored_for_the_gate():
    from dataclasses import replace
    # 40 moving frames, the gate right; then 60 held at a red light in front of a junction, the gate wrong
    recs = [_rec(i, i * 0.5) for i in range(40)]
    recs += [replace(_rec(i, 20.0, truth="curve", expert="straight"), speed_kmh=0.0, red_light_hold=True)
             for i in range(40, 100)]
    m = episode_metrics(recs, 100.0, dt=0.05)
    assert m["red_light_hold_s"] == pytest.approx(3.0)
    assert m["gate_accuracy"] == 1.0 and m["gate_accuracy_frames"] == 40
    assert m["route_time_s"] == pytest.approx(5.0)            # the wait is part of the route's time


def test_episode_time_limit_grows_with_the_route():
    from launch.evaluate import TownSettings
    assert TownSettings("TownX", route_length_m=400.0).max_duration_s == pytest.approx(325.0)
    assert TownSettings("TownX", route_length_m=400.0, max_duration_s=60.0).max_duration_s == 60.0
    assert TownSettings.load("Town02").max_duration_s == pytest.approx(325.0)


def test_route_progress_ignores_going_backwards():
    recs = [_rec(i, p) for i, p in enumerate([0, 5, 10, 4, 8, 12, 20])]
    assert route_progress(recs, 40.0) == (pytest.approx(0.5), pytest.approx(0.5))


def test_penalty_table_validation():
    with pytest.raises(ValueError, match="collision_layout=1.5"):
        PenaltyTable(collision_layout=1.5)


# ------------------------------------------------------------------ keys

def test_keys_map_to_actions_with_sdl_dummy_driver():
    pygame = pytest.importorskip("pygame")
    from launch.display import Action, open_display
    disp = open_display((160, 120), enabled=True)
    assert disp is not None, "SDL dummy driver should give a (virtual) window"
    try:
        for key in (pygame.K_h, pygame.K_r, pygame.K_p, pygame.K_g, pygame.K_x, pygame.K_ESCAPE, pygame.K_q):
            pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=key, mod=0, unicode="", scancode=0))
        pygame.event.post(pygame.event.Event(pygame.QUIT))
        assert disp.poll() == [Action.TOGGLE_HUD, Action.TOGGLE_RECORD, Action.PAUSE, Action.CYCLE_GATE,
                               Action.QUIT, Action.QUIT, Action.QUIT]
        disp.show(np.zeros((120, 160, 3), np.uint8))
    finally:
        disp.close()
    assert open_display((160, 120), enabled=False) is None
