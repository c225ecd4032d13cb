"""The study's report: per-policy means with 95 % confidence intervals over routes, paired tests over
identical routes, plots, findings and what to try next, all computed from the cell records.

A pure function of the cell records (and the video paths), so a merged report equals the report
of an unsharded run of the same matrix; wall-clock figures (inference ms, loop rate) are the only
numbers that differ between two runs, and they sit in their own section between
``<!-- timing:begin -->`` and ``<!-- timing:end -->``.

Statistics: CI = mean +- t(0.975, n-1) * sd / sqrt(n) over the cells of a policy (one cell = one
route in one weather); paired comparisons use the cells two policies share (same town, weather,
route), a Wilcoxon signed-rank test (two-sided; p = 1 when every difference is 0) and a percentile
bootstrap CI (10 000 resamples, fixed seed) of the mean difference. "Significant" means p < 0.05.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

ALPHA = 0.05
N_BOOT = 10000

METRICS: tuple[tuple[str, str, str, bool], ...] = (
    # key, column title, format, higher is better
    ("route_completion", "route completion", ".1%", True),
    ("driving_score", "driving score", ".3f", True),
    ("lateral_deviation_mean_m", "lat. dev. mean (m)", ".3f", False),
    ("lateral_deviation_p95_m", "lat. dev. p95 (m)", ".3f", False),
    ("deviation_per_km", "deviation/km", ".1f", False),
    ("lane_invasions_per_km", "lane inv./km", ".2f", False),
    ("off_road_events_per_km", "off-road/km", ".2f", False),
    ("steer_rate_p95_per_s", "steer rate p95 (1/s)", ".2f", False),
    ("steer_jerk_mean_per_s2", "steer jerk (1/s²)", ".1f", False),
    ("gate_accuracy", "gate accuracy", ".1%", True),
    ("gate_switches_per_km", "switches/km", ".1f", False),
)
TIMING: tuple[tuple[str, str], ...] = (
    ("frame_p99_ms", "classifier + experts p99 (ms)"), ("frame_p50_ms", "classifier + experts p50 (ms)"),
    ("policy_p99_ms", "experts p99 (ms)"), ("inference_p99_ms", "classifier p99 (ms)"), ("loop_fps", "loop fps"))
PAIRS: tuple[tuple[str, str, str], ...] = (
    ("moe_hard", "monolithic", "MoE-hard vs monolithic"),
    ("moe_soft", "monolithic", "MoE-soft vs monolithic"),
    ("moe_oracle", "monolithic", "MoE-oracle vs monolithic (the experts themselves)"),
    ("moe_hard", "moe_oracle", "MoE-hard vs MoE-oracle (cost of gate errors)"),
    ("moe_soft", "moe_oracle", "MoE-soft vs MoE-oracle"),
    ("privileged", "monolithic", "privileged follower vs monolithic (headroom)"),
)
PAIR_METRICS = ("route_completion", "driving_score", "lateral_deviation_mean_m", "deviation_per_km")


def _finite(values) -> np.ndarray:
    a = np.array([v for v in values if isinstance(v, (int, float)) and v is not None], dtype=float)
    return a[np.isfinite(a)]


def mean_ci(values) -> tuple[float, float, float, int]:
    """(mean, low, high, n) with a t-based 95 % CI; NaN bounds for n < 2."""
    from scipy import stats
    a = _finite(values)
    n = len(a)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    m = float(a.mean())
    if n < 2:
        return m, math.nan, math.nan, n
    half = float(stats.t.ppf(1 - ALPHA / 2, n - 1) * a.std(ddof=1) / math.sqrt(n))
    return m, m - half, m + half, n


def paired_test(a, b, seed: int = 0) -> dict:
    """Paired comparison of equal-length samples (NaN pairs dropped): mean diff a-b, bootstrap CI, Wilcoxon p."""
    from scipy import stats
    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(a) & np.isfinite(b)
    d = a[ok] - b[ok]
    n = len(d)
    if n == 0:
        return {"n": 0, "mean_diff": math.nan, "ci_low": math.nan, "ci_high": math.nan, "p": math.nan}
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, n, size=(N_BOOT, n))].mean(axis=1)
    lo, hi = np.percentile(boots, [100 * ALPHA / 2, 100 * (1 - ALPHA / 2)])
    if np.all(d == 0):
        p = 1.0
    else:
        p = float(stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue) if n >= 2 else math.nan
    return {"n": n, "mean_diff": float(d.mean()), "ci_low": float(lo), "ci_high": float(hi), "p": p}


def _by_policy(records: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in records:
        out.setdefault(r["cell"]["policy"], []).append(r)
    return out


def rank_policies(records: list[dict]) -> list[str]:
    """Policies best first: mean driving score, then mean lateral deviation (lower better)."""
    stats_ = []
    for pol, recs in _by_policy(records).items():
        ds = mean_ci([r["metrics"].get("driving_score") for r in recs])[0]
        dev = mean_ci([r["metrics"].get("lateral_deviation_mean_m") for r in recs])[0]
        stats_.append((-(ds if math.isfinite(ds) else -1), dev if math.isfinite(dev) else 1e9, pol))
    return [p for *_, p in sorted(stats_)]


def _pair_values(records: list[dict], a: str, b: str, key: str) -> tuple[list[float], list[float]]:
    def k(r):
        c = r["cell"]
        return c["town"], c["weather"], c["route"]
    ra = {k(r): r["metrics"].get(key) for r in records if r["cell"]["policy"] == a}
    rb = {k(r): r["metrics"].get(key) for r in records if r["cell"]["policy"] == b}
    common = sorted(set(ra) & set(rb))
    f = lambda v: float(v) if isinstance(v, (int, float)) and v is not None else math.nan  # noqa: E731
    return [f(ra[c]) for c in common], [f(rb[c]) for c in common]


def summarise(records: list[dict]) -> dict:
    """Everything the report states, as plain JSON."""
    pols = _by_policy(records)
    summary = {"policies": {}, "per_town": {}, "per_weather": {}, "pairs": {}, "timing": {}, "ranking": rank_policies(records)}
    for pol, recs in pols.items():
        summary["policies"][pol] = {key: dict(zip(("mean", "ci_low", "ci_high", "n"),
                                                  mean_ci([r["metrics"].get(key) for r in recs])))
                                    for key, *_ in METRICS}
        summary["timing"][pol] = {key: float(np.median(_finite([r["timing"].get(key) for r in recs])))
                                  if len(_finite([r["timing"].get(key) for r in recs])) else math.nan
                                  for key, _ in TIMING}
        for group, field in (("per_town", "town"), ("per_weather", "weather")):
            for val in sorted({r["cell"][field] for r in recs}):
                sub = [r for r in recs if r["cell"][field] == val]
                summary[group].setdefault(val, {})[pol] = {
                    key: mean_ci([r["metrics"].get(key) for r in sub])[0]
                    for key in ("route_completion", "driving_score", "lateral_deviation_mean_m")}
    for i, (a, b, title) in enumerate(PAIRS):
        if a in pols and b in pols:
            summary["pairs"][f"{a}-{b}"] = {"title": title, **{
                key: paired_test(*_pair_values(records, a, b, key), seed=i) for key in PAIR_METRICS}}
    return summary


def _fmt(v, spec: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return format(v, spec)


def _cell(s: dict, spec: str) -> str:
    if s["n"] == 0:
        return "–"
    if not math.isfinite(s["ci_low"]):
        return _fmt(s["mean"], spec)
    return f"{_fmt(s['mean'], spec)} [{_fmt(s['ci_low'], spec)}, {_fmt(s['ci_high'], spec)}]"


def findings(summary: dict) -> tuple[list[str], list[str]]:
    """(what the numbers show, what to try next): sentences computed from the summary."""
    P, pairs = summary["policies"], summary["pairs"]
    out, nxt = [], []
    if "monolithic" in P:
        rc = P["monolithic"]["route_completion"]
        per_w = {w: v["monolithic"]["route_completion"] for w, v in summary["per_weather"].items() if "monolithic" in v}
        out.append(f"The monolithic camera policy completes {_fmt(rc['mean'], '.1%')} of the held-out routes on average "
                   f"(95 % CI {_fmt(rc['ci_low'], '.1%')}–{_fmt(rc['ci_high'], '.1%')}, {rc['n']} routes; "
                   + ", ".join(f"{w} {_fmt(v, '.1%')}" for w, v in per_w.items()) + "): the 80 % target is "
                   + ("met." if rc["mean"] >= 0.8 else "**not** met."))
        if rc["mean"] < 0.8:
            nxt.append("Monolithic completion is below 80 %: collect more data with recovery perturbations "
                       "(`--recovery`), more towns and weathers, train longer, or add DAgger rounds (relabel the "
                       "learned policy's states with the privileged follower).")

    def verdict(key: str, better_high: bool, label: str) -> str | None:
        t = pairs.get(key, {})
        res = t.get("lateral_deviation_mean_m")
        rc = t.get("route_completion")
        if not res or not rc:
            return None
        a, b = key.split("-")
        parts = []
        for name, r, hb, spec in (("route completion", rc, True, "+.1%"), ("mean lateral deviation", res, False, "+.3f")):
            sig = r["p"] < ALPHA if math.isfinite(r["p"]) else False
            good = (r["mean_diff"] > 0) == hb
            word = ("significantly " + ("better" if good else "worse")) if sig else "no significant difference"
            parts.append(f"{name} {_fmt(r['mean_diff'], spec)} (p={_fmt(r['p'], '.3f')}, {word})")
        return f"{label}: " + "; ".join(parts) + f" over {rc['n']} paired routes."

    for key, label in (("moe_oracle-monolithic", "MoE-oracle minus monolithic (are the experts themselves better?)"),
                       ("moe_hard-monolithic", "MoE-hard minus monolithic"),
                       ("moe_soft-monolithic", "MoE-soft minus monolithic"),
                       ("moe_hard-moe_oracle", "MoE-hard minus MoE-oracle (what gate errors cost)"),
                       ("privileged-monolithic", "Privileged follower minus monolithic (headroom)")):
        v = verdict(key, True, label)
        if v:
            out.append(v)
    po = pairs.get("moe_oracle-monolithic", {}).get("lateral_deviation_mean_m")
    if po and po["n"]:
        if po["mean_diff"] > 0 and po["p"] < ALPHA:
            nxt.append("The experts are worse than the monolithic network even with a perfect gate: each expert sees "
                       "about half the data. Initialise the experts from the monolithic weights and fine-tune, or "
                       "train one network with a curve/straight branch (shared trunk) instead of two networks.")
        elif po["mean_diff"] < 0 and po["p"] < ALPHA:
            nxt.append("With a perfect gate the experts beat the monolithic network: the gate is where the mixture "
                       "loses; improve the classifier on junctions, tune the hysteresis/dwell, or gate on the route "
                       "command as well.")
        else:
            nxt.append("MoE-oracle and monolithic are not significantly different on these routes: run more routes "
                       "(`--routes`) before concluding, and report the CI widths.")
    ph = pairs.get("moe_hard-moe_oracle", {}).get("lateral_deviation_mean_m")
    if ph and ph["n"] and ph["mean_diff"] > 0 and ph["p"] < ALPHA:
        nxt.append("MoE-hard is significantly worse than MoE-oracle: gate errors cost driving quality; try the soft "
                   "gate, a longer dwell, or a classifier trained at the drive's camera and speed.")
    return out, nxt


def plot_summary(summary: dict, path: Path) -> Path:
    """Bar chart per metric: mean with the 95 % CI as error bars, one bar per policy."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    keys = ("route_completion", "driving_score", "lateral_deviation_mean_m", "lateral_deviation_p95_m",
            "deviation_per_km", "steer_rate_p95_per_s")
    titles = {k: t for k, t, *_ in METRICS}
    pols = list(summary["policies"])
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, key in zip(axes.ravel(), keys):
        s = [summary["policies"][p][key] for p in pols]
        means = [v["mean"] for v in s]
        err = [[max(0.0, v["mean"] - v["ci_low"]) if math.isfinite(v["ci_low"]) else 0 for v in s],
               [max(0.0, v["ci_high"] - v["mean"]) if math.isfinite(v["ci_high"]) else 0 for v in s]]
        ax.bar(range(len(pols)), np.nan_to_num(means), yerr=err, capsize=4,
               color=["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3"][:len(pols)])
        ax.set_xticks(range(len(pols)), pols, rotation=25, fontsize=8)
        ax.set_title(titles[key], fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("mean and 95 % CI over routes (held-out towns)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_trajectories(records: list[dict], out: Path) -> dict[str, Path]:
    """Per town, route 0 of the first weather: every policy's path (x, y), one colour each."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    paths = {}
    for town in sorted({r["cell"]["town"] for r in records if "trace" in r}):
        fig, ax = plt.subplots(figsize=(6, 6))
        for r in records:
            if r["cell"]["town"] == town and "trace" in r:
                ax.plot(r["trace"]["x"], r["trace"]["y"], lw=1.2, label=r["cell"]["policy"])
        ax.set_aspect("equal")
        ax.invert_yaxis()  # CARLA's y points down on a map seen from above
        ax.legend(fontsize=8)
        ax.set_title(f"{town}: route 0, every policy")
        fig.tight_layout()
        paths[town] = out / f"trajectories_{town}.png"
        fig.savefig(paths[town], dpi=90)
        plt.close(fig)
    return paths


def render(config: dict, summary: dict, videos: dict, trajectories: dict | None = None) -> str:
    pols = list(summary["policies"])
    n_cells = sum(v["route_completion"]["n"] for v in summary["policies"].values())
    lines = ["# MoE vs monolithic: driving study", "",
             f"Towns (held out): {', '.join(config['towns'])}; weathers: {', '.join(config['weathers'])}; "
             f"{config['routes']} routes each (seeds {config['seed']}..{config['seed'] + config['routes'] - 1}, "
             f"{config['route_length_m']:.0f} m, time limit {config['max_duration_s']:.0f} s); "
             f"policies: {', '.join(pols)}; {n_cells} drives; simulator {config['sim']}, {config['fps']:g} Hz.", "",
             "Every policy drives the same routes, spawns, weathers and seeds. Cells: mean [95 % CI] over routes.", "",
             "## Results", "",
             "| policy | " + " | ".join(t for _, t, _, _ in METRICS) + " |",
             "|---|" + "---|" * len(METRICS)]
    for p in pols:
        lines.append(f"| {p} | " + " | ".join(_cell(summary["policies"][p][k], f) for k, _, f, _ in METRICS) + " |")
    lines += ["", "Gate accuracy and switches are shown only for gated policies (the monolithic policy has no gate).",
              "`deviation/km` = sum of per-tick lateral deviation (m) / km driven at the study's fixed rate (the origin's "
              "metric); steering suddenness = p95 |d steer/dt| and mean |d² steer/dt²|.", "",
              "### Per town (route completion / driving score / mean lateral deviation m)", "",
              "| town | " + " | ".join(pols) + " |", "|---|" + "---|" * len(pols)]
    for town, v in summary["per_town"].items():
        lines.append(f"| {town} | " + " | ".join(
            f"{_fmt(v[p]['route_completion'], '.0%')} / {_fmt(v[p]['driving_score'], '.2f')} / "
            f"{_fmt(v[p]['lateral_deviation_mean_m'], '.2f')}" if p in v else "–" for p in pols) + " |")
    lines += ["", "### Per weather (route completion)", "", "| weather | " + " | ".join(pols) + " |",
              "|---|" + "---|" * len(pols)]
    for w, v in summary["per_weather"].items():
        lines.append(f"| {w} | " + " | ".join(_fmt(v[p]["route_completion"], ".0%") if p in v else "–" for p in pols) + " |")
    lines += ["", "## Paired comparisons (identical routes)", "",
              "Difference A − B, bootstrap 95 % CI, Wilcoxon signed-rank p; **bold** = significant at 0.05.", "",
              "| comparison | " + " | ".join(PAIR_METRICS) + " |", "|---|" + "---|" * len(PAIR_METRICS)]
    for key, t in summary["pairs"].items():
        cells = []
        for m in PAIR_METRICS:
            r = t[m]
            txt = (f"{_fmt(r['mean_diff'], '+.3f')} [{_fmt(r['ci_low'], '+.3f')}, {_fmt(r['ci_high'], '+.3f')}] "
                   f"p={_fmt(r['p'], '.3f')} (n={r['n']})")
            cells.append(f"**{txt}**" if math.isfinite(r["p"]) and r["p"] < ALPHA else txt)
        lines.append(f"| {t['title']} | " + " | ".join(cells) + " |")
    shown, nxt = findings(summary)
    lines += ["", "## What the numbers show", ""] + [f"- {s}" for s in shown]
    lines += ["", "## What to try next", ""] + [f"- {s}" for s in nxt]
    lines += ["", "![metrics](metrics.png)", ""]
    for town, path in sorted((trajectories or {}).items()):
        lines += [f"![{town} trajectories]({path.name})", ""]
    if videos:
        lines += ["## Videos (route 0, first weather)", ""]
        for (town, role), (policy, path) in sorted(videos.items()):
            lines.append(f"- {town}, {role} policy ({policy}): [{path.name}](videos/{path.name})")
        lines.append("")
    lines += ["<!-- timing:begin -->", "## Inference time (this machine, wall clock; medians over routes)", "",
              "| policy | " + " | ".join(t for _, t in TIMING) + " |", "|---|" + "---|" * len(TIMING)]
    for p in pols:
        lines.append(f"| {p} | " + " | ".join(_fmt(summary['timing'][p][k], '.2f') for k, _ in TIMING) + " |")
    lines += ["", "The MoE policies run both experts in one batched call per frame (every gate).",
              "<!-- timing:end -->", ""]
    return "\n".join(lines)


def write_report(config: dict, records: list[dict], out: Path, videos: dict | None = None) -> Path:
    """Write ``summary.json``, ``metrics.png`` and ``report.md`` into ``out``; returns the report path."""
    out = Path(out)
    summary = summarise(records)
    (out / "summary.json").write_text(json.dumps({"config": config, **summary}, indent=1, default=float))
    plot_summary(summary, out / "metrics.png")
    trajectories = plot_trajectories(records, out)
    path = out / "report.md"
    path.write_text(render(config, summary, videos or {}, trajectories))
    return path


def strip_timing(report: str) -> str:
    """The report without its wall-clock section (what must match between sharded and unsharded runs)."""
    head, _, rest = report.partition("<!-- timing:begin -->")
    return head + rest.partition("<!-- timing:end -->")[2]
