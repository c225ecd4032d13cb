"""Data collection on the embedded simulator: acceptance, resume, balance, labels audited against the map."""
import csv
import json
import math
import os
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

import carla
from carla_client.collect import main
from datasets.schema import INFO_NAME, MANIFEST_COLUMNS, MANIFEST_NAME


def rows_of(out, flagged=False):
    """The classifier's rows (``flagged=True``: also the route-dependent rows saved with ``--junction-policy flag``)."""
    with open(Path(out) / MANIFEST_NAME, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == MANIFEST_COLUMNS
        return [r for r in reader if flagged or r["route_dependent"] != "1"]


def assert_consistent(out):
    """Every row has its image, every image has its row, no temp files; returns the classifier's rows."""
    rows = rows_of(out, flagged=True)
    listed = {r["image"] for r in rows}
    on_disk = {p.relative_to(out).as_posix() for p in (Path(out) / "images").rglob("*") if p.is_file()}
    assert listed == on_disk
    assert len(listed) == len(rows)  # unique file per row
    for r in rows:
        assert r["image"].startswith(f"images/{r['label']}/")
    return [r for r in rows if r["route_dependent"] != "1"]


def audit_labels(out, tolerance_deg=1.0):
    """Recompute every label from the map, the saved pose, the episode's route lanes and dataset.json.

    Independent of the collector's code: route points are re-derived from the OpenDRIVE map by
    lane coordinates (road, lane, s), headings come from the map, the pose is projected with
    plain numpy, and the heading change is evaluated on a dense 0.1 m grid.
    """
    info = json.loads((Path(out) / INFO_NAME).read_text())
    L, th_c, th_s = (info["label"][k] for k in ("lookahead_m", "curve_deg", "straight_deg"))
    maps = {}
    checked = Counter()
    for r in rows_of(out):
        town = r["town"]
        if town not in maps:
            with open(os.path.join(os.environ["CARLA_MAPS_DIR"], f"{town}.xodr"), encoding="utf-8") as f:
                maps[town] = carla.Map(town, f.read())
        wmap = maps[town]
        route = json.loads((Path(out) / "routes" / f"{r['episode']}.json").read_text())
        pts = []
        for road, _section, lane, s, *_ in route["points"]:
            # carla rejects s exactly at a lane's end: nudge by 1 mm
            wp = next(w for w in (wmap.get_waypoint_xodr(int(road), int(lane), float(s) + e)
                                  for e in (0.0, -1e-3, 1e-3)) if w is not None)
            pts.append((wp.transform.location.x, wp.transform.location.y, wp.transform.rotation.yaw))
        xy = np.array([(p[0], p[1]) for p in pts])
        keep = np.r_[True, np.hypot(*np.diff(xy, axis=0).T) > 0.05]
        xy, yaw = xy[keep], np.unwrap(np.radians([p[2] for p, k in zip(pts, keep) if k]))
        s = np.r_[0, np.cumsum(np.hypot(*np.diff(xy, axis=0).T))]
        dense = np.arange(0, s[-1], 0.1)
        dx, dy = np.interp(dense, s, xy[:, 0]), np.interp(dense, s, xy[:, 1])
        d = np.hypot(dx - float(r["x"]), dy - float(r["y"]))
        i = int(np.argmin(d))
        assert d[i] < 1.5, f"pose of {r['image']} is {d[i]:.2f} m from its route"
        s0 = dense[i]
        grid = np.arange(s0, s0 + L + 1e-9, 0.1)
        psi = np.interp(grid, s, yaw)
        dpsi = math.degrees(np.max(np.abs(psi - psi[0])))
        assert dpsi == pytest.approx(float(r["heading_change_deg"]), abs=tolerance_deg), r["image"]
        if r["label"] == "curve":
            assert dpsi >= th_c - tolerance_deg
        else:
            assert dpsi <= th_s + tolerance_deg
        assert float(r["lookahead_m"]) == L
        checked[r["label"]] += 1
    return checked


def route_dependent_rows(out, margin_m=0.25):
    """Rows whose label depends on a junction choice, recomputed from the saved pose and route file.

    The route is rebuilt from the route file (lane coordinates and positions), the pose projected
    on it with plain numpy, and the library's junction search + route_dependent applied (that
    function is checked on real junctions in test_labels.py). A row counts only when it is
    route-dependent over the whole +-``margin_m`` around the projection, so that a frame saved right at
    the border of a route-dependent stretch is not blamed on projection round-off.
    """
    from carla_client.labels import JunctionChoices, LabelParams, route_dependent
    from carla_client.route import RoutePath

    info = json.loads((Path(out) / INFO_NAME).read_text())
    params = LabelParams(*(info["label"][k] for k in ("lookahead_m", "curve_deg", "straight_deg")))
    maps, paths, flagged = {}, {}, []
    for r in rows_of(out):
        town = r["town"]
        if town not in maps:
            with open(os.path.join(os.environ["CARLA_MAPS_DIR"], f"{town}.xodr"), encoding="utf-8") as f:
                maps[town] = JunctionChoices(carla.Map(town, f.read()), params.lookahead_m)
        if r["episode"] not in paths:
            pts = np.array(json.loads((Path(out) / "routes" / f"{r['episode']}.json").read_text())["points"])
            path = RoutePath.from_points(pts[:, 4], pts[:, 5], pts[:, 6], ids=pts[:, :4])
            paths[r["episode"]] = (path, maps[town].along(path))
        path, choices = paths[r["episode"]]
        s0, _, dist = path.project(float(r["x"]), float(r["y"]), window=None)
        assert dist < 1.5
        if all(route_dependent(path, s0 + d, params, choices) for d in (-margin_m, 0.0, margin_m)):
            flagged.append(r)
    return flagged


@pytest.fixture(scope="module")
def acceptance_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("accept") / "ds"
    rc = main(["--sim", "embedded", "--town", "Town02", "--frames", "200", "--out", str(out), "--seed", "1",
               "--no-progress"])
    assert rc == 0
    return out


def test_acceptance_balanced_decodable_800x600(acceptance_dir):
    rows = assert_consistent(acceptance_dir)
    assert Counter(r["label"] for r in rows) == {"curve": 100, "straight": 100}
    for r in rows:
        img = cv2.imread(str(acceptance_dir / r["image"]), cv2.IMREAD_COLOR)
        assert img is not None and img.shape == (600, 800, 3)
        assert r["sim"] == "embedded" and r["town"] == "Town02" and r["weather"] == "ClearNoon"
        assert 0.0 <= float(r["speed"]) < 35.0
    assert 15.0 < np.median([float(r["speed"]) for r in rows]) < 33.0  # town speeds
    info = json.loads((acceptance_dir / INFO_NAME).read_text())
    assert info["label"] == {"lookahead_m": 25.0, "curve_deg": 20.0, "straight_deg": 5.0, "junction_policy": "flag"}
    assert info["camera"]["width"] == 800 and info["camera"]["fov"] == 90.0 and info["camera"]["mount"]["z"] == 2.0
    assert info["runs"][0]["sim"] == "embedded" and info["runs"][0]["server_version"]
    assert (acceptance_dir / "contact_sheet.png").is_file()


def test_acceptance_labels_agree_with_the_map(acceptance_dir):
    assert audit_labels(acceptance_dir) == {"curve": 100, "straight": 100}


def test_the_road_beyond_the_label_horizon_comes_from_the_stored_routes(acceptance_dir, tmp_path):
    """training.horizon: heading change over 2L from routes/<episode>.json, exact for every frame the route
    reproduces; a frame it does not reproduce, or an episode without a readable route, is unknown."""
    import shutil

    from datasets.dataset import load_frames
    from datasets.schema import CLASSES
    from carla_client.labels import heading_change_deg
    from training.horizon import (CLEAR, CURVE, TURN_AHEAD, UNKNOWN, _route, horizon_weights, road_ahead,
                                  road_ahead_deg, road_ahead_groups)

    table = load_frames([acceptance_dir])
    table = table.subset(~table.route_dependent)
    rows = rows_of(acceptance_dir, flagged=True)                  # table.row indexes the whole manifest
    ahead = road_ahead_deg(table)
    recorded = np.array([float(rows[int(r)]["heading_change_deg"]) for r in table.row])
    assert not np.isnan(ahead).any()
    assert (ahead >= recorded - 0.01).all()                      # 2L holds the first L (manifest: 4 decimals)
    groups = road_ahead_groups(table, ahead)
    curve = table.label == CLASSES.index("curve")
    assert (groups[curve] == CURVE).all() and (ahead[curve] >= 20.0).all()
    assert {CLEAR, TURN_AHEAD} <= set(groups[~curve])            # Town02 has both kinds of straight
    assert (ahead[groups == TURN_AHEAD] >= 20.0).all() and (ahead[groups == CLEAR] < 20.0).all()
    w = horizon_weights(table, 3.0)
    assert set(np.unique(w[groups == TURN_AHEAD])) == {3.0} and set(np.unique(w[groups != TURN_AHEAD])) == {1.0}

    # how far past L each of those turns reaches 20 deg: exactly where the route's heading change crosses it
    deg2, past = road_ahead(table)
    np.testing.assert_array_equal(deg2, ahead)
    turn = groups == TURN_AHEAD
    assert np.isfinite(past[turn]).all() and np.isnan(past[~turn]).all()
    lookahead = np.array([float(rows[int(r)]["lookahead_m"]) for r in table.row])
    assert (past[turn] >= 0).all() and (past[turn] <= lookahead[turn] + 1e-6).all()
    routes: dict = {}
    for i in np.flatnonzero(turn):
        r = rows[int(table.row[i])]
        path = _route(acceptance_dir, r["episode"], routes)
        s0 = path.project(float(r["x"]), float(r["y"]), window=None)[0]
        reach = lookahead[i] + past[i]                    # metres from the car
        assert heading_change_deg(path, s0, reach + 0.01) >= 20.0 > heading_change_deg(path, s0, reach - 0.05)

    # training.evaluate's report: a model wrong only on the turns beyond the horizon is named weak there
    from training.evaluate import write_robustness
    labels = table.label.astype(np.int64)
    wrong = groups == TURN_AHEAD
    pred = np.where(wrong, 1 - labels, labels)
    probs = np.where(pred[:, None] == np.arange(2)[None], 0.9, 0.1)
    report = write_robustness(tmp_path, {"index": np.arange(len(table)), "labels": labels, "probs": probs}, table, "t")
    assert report["weakest"][0]["group"] in ("road ahead", "turn past L")
    assert {"group": "road ahead", "value": TURN_AHEAD} in [{k: c[k] for k in ("group", "value")} for c in report["weakest"]]
    assert "road ahead = straight, turn beyond L" in (tmp_path / "robustness.md").read_text()
    bands = report["groups"]["turn past L"]             # only those frames, by metres past L; every one wrong
    assert sum(c["frames"] for c in bands.values()) == int(turn.sum())
    assert set(bands) <= {"< 5 m", "5-10 m", ">= 10 m"} and all(c["accuracy"] == 0.0 for c in bands.values())
    assert (tmp_path / "turn_past_l.png").stat().st_size > 10_000        # and a plot of them by metres past L
    with open(tmp_path / "predictions.csv", newline="") as f:
        pred_rows = list(csv.DictReader(f))
    n_wrong = int(wrong.sum())
    assert [r["road_ahead"] for r in pred_rows[:n_wrong]] == [TURN_AHEAD] * n_wrong
    assert all(float(r["road_ahead_deg"]) >= 20.0 for r in pred_rows[:n_wrong])
    assert all(0.0 <= float(r["turn_past_l_m"]) <= 25.0 for r in pred_rows[:n_wrong])
    assert all(r["turn_past_l_m"] == "" for r in pred_rows[n_wrong:])

    copy = shutil.copytree(acceptance_dir, tmp_path / "copy", ignore=shutil.ignore_patterns("cache", "images"))
    episode = rows[0]["episode"]
    (copy / "routes" / f"{episode}.json").write_text("{not json")
    with open(copy / "manifest.csv", newline="") as f:
        edited = list(csv.DictReader(f))
    other = next(i for i, r in enumerate(edited) if r["episode"] != episode and r["label"] == "straight")
    edited[other]["heading_change_deg"] = str(float(edited[other]["heading_change_deg"]) + 7.0)
    with open(copy / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(edited[0]))
        writer.writeheader()
        writer.writerows(edited)
    table2 = load_frames([copy], check_files=False)
    table2 = table2.subset(~table2.route_dependent)
    groups2 = road_ahead_groups(table2)
    lost = np.array([edited[int(r)]["episode"] == episode for r in table2.row])
    lost[np.flatnonzero(table2.row == other)] = True
    assert (groups2[lost & (table2.label != CLASSES.index("curve"))] == UNKNOWN).all()
    assert (groups2[~lost] == groups[~lost]).all()


def test_saved_frames_are_spaced_and_true_colour(acceptance_dir):
    rows = rows_of(acceptance_dir)
    by_episode = {}
    for r in rows:
        by_episode.setdefault(r["episode"], []).append(r)
    for ep in by_episode.values():
        ep.sort(key=lambda r: int(r["frame"]))
        for a, b in zip(ep, ep[1:]):
            # driven distance >= straight-line distance >= 2 m minus projection noise
            assert math.hypot(float(a["x"]) - float(b["x"]), float(a["y"]) - float(b["y"])) > 1.5
    # sky is blue at noon: in true RGB the blue channel of the top rows dominates red
    img = cv2.imread(str(acceptance_dir / rows[0]["image"]))  # BGR as decoded by cv2
    top = img[:40].reshape(-1, 3).mean(axis=0)
    assert top[0] > top[2]


def test_resume_adds_exactly_the_difference(acceptance_dir, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(acceptance_dir, out)
    before = rows_of(out)
    rc = main(["--sim", "embedded", "--town", "Town02", "--frames", "300", "--out", str(out), "--seed", "1",
               "--no-progress"])
    assert rc == 0
    rows = assert_consistent(out)
    assert Counter(r["label"] for r in rows) == {"curve": 150, "straight": 150}
    assert rows[:200] == before                                  # existing rows kept, in order
    new_eps = {r["episode"] for r in rows[200:]}
    assert not new_eps & {r["episode"] for r in before}          # the resumed run drove new episodes
    assert len(json.loads((out / INFO_NAME).read_text())["runs"]) == 2
    # a smaller target adds nothing
    assert main(["--sim", "embedded", "--frames", "100", "--out", str(out), "--no-progress"]) == 0
    assert len(rows_of(out)) == 300


def test_flag_keeps_route_dependent_frames_out_of_the_classes_and_keep_mixes_them_in(acceptance_dir, tmp_path):
    """With the default --junction-policy flag no classifier row's label hinges on a junction choice, and
    the route-dependent frames are saved flagged for the driving policies; the same run with keep saves
    such frames as ordinary rows (so the check above is not vacuous) and otherwise labels alike."""
    assert route_dependent_rows(acceptance_dir) == []
    flagged = [r for r in rows_of(acceptance_dir, flagged=True) if r["route_dependent"] == "1"]
    assert len(flagged) >= 5 and {r["label"] for r in flagged} <= {"curve", "straight"}
    keep = tmp_path / "keep"
    assert main(["--sim", "embedded", "--town", "Town02", "--frames", "200", "--out", str(keep), "--seed", "1",
                 "--res", "160x120", "--no-progress", "--junction-policy", "keep"]) == 0
    rows = rows_of(keep)
    assert Counter(r["label"] for r in rows) == {"curve": 100, "straight": 100}
    assert json.loads((keep / INFO_NAME).read_text())["label"]["junction_policy"] == "keep"
    flagged = route_dependent_rows(keep)
    assert len(flagged) >= 0.05 * len(rows)
    assert audit_labels(keep) == {"curve": 100, "straight": 100}


def test_traffic_keeps_labels_map_true_and_leaves_no_npc_behind(tmp_path):
    """--traffic/--walkers spawn NPCs through the Traffic Manager; labels still come from the map."""
    import carla_embedded
    from carla_client.collector import CollectConfig, collect

    out = tmp_path / "traffic"
    client = carla_embedded.Client()
    spawned = []
    original = client.apply_batch_sync

    def recording(commands, *args):
        responses = original(commands, *args)
        spawned.extend(r.actor_id for r in responses if not r.error)
        return responses

    client.apply_batch_sync = recording
    collect(CollectConfig(out=out, sim="embedded", towns=("Town03",), frames=20, res=(160, 120), seed=2, traffic=30,
                          walkers=5, progress=False), client=client)
    assert len(spawned) >= 30                                 # the NPCs really were there
    assert audit_labels(out) == {"curve": 10, "straight": 10}
    world = client.get_world()
    assert not [a for a in world.get_actors() if a.type_id.startswith(("vehicle.", "walker.", "controller."))]


def test_domain_randomization_records_every_saved_frame_and_keeps_labels_map_true(tmp_path):
    out = tmp_path / "dr"
    assert main(["--sim", "embedded", "--town", "Town02", "--frames", "12", "--res", "160x120", "--out", str(out),
                 "--seed", "3", "--domain-randomization", "--no-progress"]) == 0
    records = [json.loads(line) for line in (out / "randomization.jsonl").read_text().splitlines()]
    rows = rows_of(out, flagged=True)
    assert sorted(r["image"] for r in records) == sorted(r["image"] for r in rows)
    assert len({r["dr_cam_fov"] for r in records}) == len(records)      # a new draw per frame
    assert audit_labels(out) == {"curve": 6, "straight": 6}             # mount jitter never moves the label
