"""The MoE-vs-monolithic study: vision experts under the MoE, the tiny matrix end to end, shard + merge,
and the statistics of the report (computed from the numbers)."""
import json
import math

import numpy as np
import pytest

from launch.study import POLICIES, StudyConfig, merge, parse_shard, plan, run_study, shard_cells
from launch.study_report import findings, mean_ci, paired_test, strip_timing, summarise
from tests.policy_data import make_tiny_classifier, make_tiny_policy

RES = (160, 120)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return {"classifier": str(make_tiny_classifier(d / "cls.pt")),
            "curve": str(make_tiny_policy(d / "curve.pt", seed=1, camera=RES)),
            "straight": str(make_tiny_policy(d / "straight.pt", seed=2, camera=RES)),
            "monolithic": str(make_tiny_policy(d / "mono.pt", seed=3, camera=RES))}


def _cfg(models, out, **kw):
    base = dict(towns=("Town02",), weathers=("ClearNoon",), routes=2, route_length_m=40.0, max_duration_s=3.0,
                backend="onnxruntime", videos=False, out=str(out), **models)
    base.update(kw)
    return StudyConfig(**base)


def test_shards_partition_the_plan_and_bad_shards_are_refused(models, tmp_path):
    cfg = _cfg(models, tmp_path, towns=("Town02", "Town05"), weathers=("ClearNoon", "WetNoon"), routes=3)
    cells = plan(cfg)
    assert len(cells) == 2 * 2 * 3 * len(POLICIES)
    parts = [shard_cells(cells, f"{i}/4") for i in range(4)]
    assert sorted(c.key for p in parts for c in p) == sorted(c.key for c in cells)
    for bad in ("4/4", "1", "a/b", "0/0"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(bad)
    with pytest.raises(ValueError, match="needs --monolithic"):
        _cfg({**models, "monolithic": None}, tmp_path)
    with pytest.raises(ValueError, match="valid: monolithic, moe_hard"):
        _cfg(models, tmp_path, policies=("mono",))


def test_tiny_study_end_to_end_and_shard_merge_equals_unsharded(models, tmp_path):
    whole = run_study(_cfg(models, tmp_path / "whole"))
    report = (whole / "report.md").read_text()
    for policy in POLICIES:
        assert f"| {policy} |" in report
    cells = sorted((whole / "cells").glob("*.json"))
    assert len(cells) == 2 * len(POLICIES)
    rec = json.loads(cells[0].read_text())
    for key in ("route_completion", "driving_score", "lateral_deviation_mean_m", "lateral_deviation_p95_m",
                "deviation_per_km", "lane_invasions_per_km", "off_road_events_per_km", "steer_rate_p95_per_s",
                "gate_accuracy", "gate_switches_per_km"):
        assert key in rec["metrics"]
    summary = json.loads((whole / "summary.json").read_text())
    mono = [json.loads(p.read_text()) for p in cells if p.name.endswith("monolithic.json")]
    assert summary["policies"]["monolithic"]["route_completion"]["mean"] == pytest.approx(
        np.mean([m["metrics"]["route_completion"] for m in mono]))
    vision = [json.loads(p.read_text()) for p in cells if "moe_soft" in p.name]
    assert all(v["timing"]["policy_p99_ms"] > 0 for v in vision)          # experts ran and were timed
    assert "MoE-oracle vs monolithic" in report and "## What to try next" in report
    assert (whole / "trajectories_Town02.png").stat().st_size > 5000 and "trajectories_Town02.png" in report

    for i in range(2):
        run_study(_cfg(models, tmp_path / f"shard{i}", shard=f"{i}/2"))
        assert not (tmp_path / f"shard{i}" / "report.md").exists()
    with pytest.raises(ValueError, match="cells missing"):
        merge([tmp_path / "shard0"], tmp_path / "partial")
    merged = merge([tmp_path / "shard0", tmp_path / "shard1"], tmp_path / "merged")
    assert strip_timing(merged.read_text()) == strip_timing(report)
    assert "<!-- timing:begin -->" in merged.read_text()


def test_study_cli_bad_policy_is_one_line(capsys):
    from launch.study import main
    assert main(["run", "--policies", "mono", "--out", "/tmp/never"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "mono" in err and "moe_oracle" in err


def test_statistics_are_computed_from_the_numbers():
    m, lo, hi, n = mean_ci([1.0, 2.0, 3.0])
    assert (m, n) == (2.0, 3) and lo == pytest.approx(2 - 4.303 / math.sqrt(3), abs=1e-3) and hi > 3
    assert math.isnan(mean_ci([1.0])[1])
    same = paired_test([1, 2, 3], [1, 2, 3])
    assert same["p"] == 1.0 and same["mean_diff"] == 0.0
    a = np.linspace(0.5, 1.0, 12)
    t = paired_test(a, a - 0.3)
    assert t["mean_diff"] == pytest.approx(0.3) and t["p"] < 0.01 and t["ci_low"] <= 0.3 <= t["ci_high"]


def _records(dev_mono, dev_oracle, rc_mono=1.0):
    recs = []
    for r, (dm, do) in enumerate(zip(dev_mono, dev_oracle)):
        for pol, dev, rc in (("monolithic", dm, rc_mono), ("moe_oracle", do, 1.0)):
            recs.append({"cell": {"policy": pol, "town": "Town02", "weather": "ClearNoon", "route": r},
                         "metrics": {"route_completion": rc, "driving_score": rc, "lateral_deviation_mean_m": dev,
                                     "deviation_per_km": dev * 100}, "timing": {}})
    return recs


def test_findings_say_whether_the_experts_beat_the_monolithic_policy():
    worse = summarise(_records([0.2 + 0.01 * i for i in range(10)], [0.5 + 0.02 * i for i in range(10)]))
    shown, nxt = findings(worse)
    text = " ".join(shown)
    assert "100.0%" in text and "target is met" in text
    assert "mean lateral deviation +0.3" in text and "significantly worse" in text
    assert any("Initialise the experts from the monolithic" in s for s in nxt)
    better = summarise(_records([0.5 + 0.02 * i for i in range(10)], [0.2 + 0.01 * i for i in range(10)], rc_mono=0.5))
    shown, nxt = findings(better)
    assert "**not** met" in " ".join(shown) and "significantly better" in " ".join(shown)
    assert any("the gate is where the mixture loses" in s for s in nxt)
