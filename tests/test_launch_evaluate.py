"""launch.evaluate: every gate on the same routes; metrics.json, report.md, plots, one video per town."""
import json
from pathlib import Path

import pytest

from launch.evaluate import CONFIG_DIR, EvalConfig, TownSettings, findings, main, run_evaluation
from launch.video import probe


def _town_cfg(d: Path, town="Town02"):
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{town}.yaml").write_text(
        f"town: {town}\nroute_length_m: 50\nepisodes: 1\nseeds: [4, 5]\nweather: [ClearNoon, WetNoon]\n"
        "fps: 20\nmax_duration_s: 4\nexperts:\n  straight: {cruise_speed_kmh: 40}\n")
    return d


@pytest.mark.parametrize("town", ["Town01", "Town02", "Town03", "Town04", "Town05"])
def test_shipped_town_configs_load(town):
    ts = TownSettings.load(town)
    assert ts.town == town and ts.episodes >= 1 and len(ts.seeds) >= ts.episodes
    assert set(ts.experts) <= {"curve", "straight"}


def test_town_config_errors(tmp_path):
    (tmp_path / "Town02.yaml").write_text("town: Town02\nroute_len: 5\n")
    with pytest.raises(ValueError, match="unknown key.*route_len.*valid: .*route_length_m"):
        TownSettings.load("Town02", tmp_path)
    with pytest.raises(ValueError, match="unknown gate.*'fancy'.*valid: hard, soft, oracle, curve, straight"):
        EvalConfig(towns=["Town02"], gates=["oracle", "fancy"])
    with pytest.raises(ValueError, match="hard need --model"):
        EvalConfig(towns=["Town02"], gates=["hard"])


def test_evaluation_report_compares_every_gate_on_the_same_route(tmp_path):
    cfg_dir = _town_cfg(tmp_path / "cfg")
    out = tmp_path / "eval"
    cfg = EvalConfig(towns=["Town02"], gates=["oracle", "curve", "straight"], episodes=1, out=str(out),
                     sim="embedded", res=(160, 120), config_dir=str(cfg_dir))
    result = run_evaluation(cfg)
    metrics = json.loads((out / "metrics.json").read_text())
    eps = metrics["episodes"]
    assert sorted(e["gate"] for e in eps) == ["curve", "oracle", "straight"]
    assert len({e["seed"] for e in eps}) == 1 and len({e["weather"] for e in eps}) == 1  # same episode for all
    assert set(metrics["summary"]["Town02"]) == {"oracle", "curve", "straight"}
    assert metrics["summary"]["Town02"]["curve"]["gate_accuracy"] < 1.0 or \
        metrics["summary"]["Town02"]["straight"]["gate_accuracy"] < 1.0
    report = (out / "report.md").read_text()
    for gate in ("oracle", "curve", "straight"):
        assert f"| {gate} |" in report
    assert "CARLA Leaderboard 1.0" in report and "## What the comparison shows" in report
    best = max(metrics["summary"]["Town02"].items(), key=lambda kv: kv[1]["driving_score"])[0]
    assert f"best driving score **{best}**" in report
    assert (out / "trajectories_Town02.png").stat().st_size > 10_000
    assert "trajectories_Town02.png" in report
    video = result.videos["Town02"]
    assert video.name == "Town02_oracle.mp4" and "videos/Town02_oracle.mp4" in report
    oracle_ticks = next(e["ticks"] for e in eps if e["gate"] == "oracle")
    assert probe(video)["frames"] == oracle_ticks


def test_findings_are_computed_from_the_numbers():
    row = dict(driving_score=0.5, gate_accuracy=0.9, speed_mean_kmh=20.0, off_road_events_per_km=0.0,
               steer_rate_mean_per_s=0.1, gate_switches_per_km=3.0, route_time_s=60.0, lateral_deviation_mean_m=0.2,
               lateral_deviation_max_m=1.0, lane_invasions_per_km=4.0)
    summary = {"TownX": {"hard": {**row, "driving_score": 0.8}, "oracle": {**row, "driving_score": 0.9},
                         "straight": {**row, "driving_score": 0.4}, "soft": row}}
    text = "\n".join(findings(summary, ["hard", "soft", "oracle", "straight"]))
    assert "best driving score **oracle** (0.900)" in text
    assert "hard reaches 89% of the oracle" in text
    assert "(oracle) beats the best single expert (straight) by +0.500" in text
    assert "- hard: vs straight: route time 60 vs 60 s" in text
    summary["TownX"]["straight"]["driving_score"] = 0.95
    text = "\n".join(findings(summary, ["hard", "soft", "oracle", "straight"]))
    assert "best driving score **straight**" in text and "loses to the best single expert" in text


def test_cli_bad_town_list_is_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--towns", "", "--gates", "oracle"])
    assert e.value.code == 2
    assert "--towns is empty" in capsys.readouterr().err
