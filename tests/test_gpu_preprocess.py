"""GPU preprocessing (perception.gpu_preprocess) against the CPU reference, and the torch-cuda frame path.

The torch implementation runs on the CPU too, so equivalence with datasets.preprocess is pinned
here on real embedded-simulator frames; the ``gpu``-marked tests repeat it on CUDA and skip
without a GPU.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from datasets.preprocess import preprocess
from perception.backends.torch_backend import TorchCudaBackend
from perception.classifier import CurveClassifier
from perception.frames import road_frames
from perception.gpu_preprocess import MAX_ABS_DIFF, FramePreprocessor, area_weights, preprocess_torch, supports_shape
from test_perception_support import IMG, MEAN, STD, frames_and_labels, trained_ckpt  # noqa: F401  (session fixture)

HAS_CUDA = torch.cuda.is_available()
gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (torch.cuda.is_available() is False)")


@pytest.fixture(scope="module")
def sim_frames():
    return frames_and_labels(24, seed=5)


def _diff(frames, size, order="BGRA", device="cpu"):
    worst, changed = 0.0, 0.0
    for f in frames:
        d = np.abs(preprocess(f, size, order, MEAN, STD) - preprocess_torch(f, size, order, MEAN, STD, device))
        worst, changed = max(worst, float(d.max())), changed + float((d > 1e-6).mean())
    return worst, changed / len(frames)


@pytest.mark.parametrize("size", [IMG, 224, 100])
def test_simulator_frames_match_the_cpu_reference(sim_frames, size):
    """320x240 embedded frames to 64 (integer-ish), 224 (upscale) and 100 px: within one uint8 step, rarely off."""
    worst, changed = _diff(sim_frames[0], size)
    assert worst <= MAX_ABS_DIFF
    assert changed < 0.01


@pytest.mark.parametrize("hw, size", [((600, 800), 224), ((448, 448), 224), ((672, 672), 224), ((500, 700), 224),
                                      ((224, 224), 224)])
def test_camera_sized_frames_are_exact(hw, size):
    """Downscaling CARLA-sized frames (general and integer factors) gives the very same input."""
    rng = np.random.default_rng(hw[0])
    frames = [rng.integers(0, 256, (*hw, 4), dtype=np.uint8) for _ in range(2)]
    worst, _ = _diff(frames, size)
    assert worst <= 1e-6


@pytest.mark.parametrize("order", ["BGRA", "BGR", "RGB", "RGBA"])
def test_colour_orders(order):
    frames, _ = road_frames(2, seed=3, width=400, height=300)
    import cv2
    conv = {"BGRA": None, "BGR": cv2.COLOR_BGRA2BGR, "RGB": cv2.COLOR_BGRA2RGB, "RGBA": cv2.COLOR_BGRA2RGBA}[order]
    frames = [f if conv is None else cv2.cvtColor(f, conv) for f in frames]
    worst, _ = _diff(frames, 128, order)
    assert worst <= MAX_ABS_DIFF


def test_area_weights_rows_sum_to_one_and_cover_their_window():
    w = area_weights(800, 224)
    assert np.allclose(w.sum(1), 1.0)
    assert np.count_nonzero(w[0]) == 4 and w[0, 0] == pytest.approx(1 / (800 / 224))   # 3.57 source pixels per output


def test_mixed_scale_is_refused_not_approximated():
    assert not supports_shape((300, 200), 224)
    with pytest.raises(ValueError, match="shrinks one axis and grows"):
        FramePreprocessor((300, 200), 224)


def test_wrong_frame_is_named():
    pre = FramePreprocessor((240, 320), 64)
    with pytest.raises(ValueError, match="expected a 240x320x4 uint8 BGRA frame"):
        pre(torch.zeros((240, 320, 3), dtype=torch.uint8))


def test_frame_path_gives_the_cpu_class(trained_ckpt, sim_frames):
    """torch-cuda's raw-frame path (run on the CPU here: same code, no pinning/graph) agrees 100 % with torch."""
    from perception.meta import load_checkpoint
    ref = CurveClassifier.load(trained_ckpt, backend="torch", warmup=0)
    model, _ = load_checkpoint(trained_ckpt)
    clf = CurveClassifier(TorchCudaBackend(model, fp16=False, device="cpu"), ref.meta, trained_ckpt)
    frames = sim_frames[0]
    assert clf.takes_frame(frames[0])
    got, want = [clf.predict(f) for f in frames], [ref.predict(f) for f in frames]
    assert [p.label for p in got] == [p.label for p in want]
    assert max(abs(a.p_curve - b.p_curve) for a, b in zip(got, want)) < 1e-3
    stages = clf.backend.frame_breakdown(frames[0], "BGRA", ref.meta)
    assert set(stages) == {"stage", "upload", "preprocess", "infer", "download"} and all(v >= 0 for v in stages.values())


def test_cpu_preprocess_option_keeps_the_old_path(trained_ckpt, sim_frames):
    from perception.meta import load_checkpoint
    model, meta = load_checkpoint(trained_ckpt)
    clf = CurveClassifier(TorchCudaBackend(model, fp16=False, device="cpu", gpu_preprocess=False), meta, trained_ckpt)
    assert not clf.takes_frame(sim_frames[0][0])
    assert "preprocess=cpu" in clf.backend.describe()


# --- GPU ------------------------------------------------------------------------------------

@gpu
@pytest.mark.gpu
def test_gpu_preprocess_matches_on_cuda(sim_frames):
    worst, changed = _diff(sim_frames[0], IMG, device="cuda")
    assert worst <= MAX_ABS_DIFF and changed < 0.01
    frames, _ = road_frames(4, seed=1)
    worst, changed = _diff(frames, 224, device="cuda")
    print(f"800x600 -> 224 on CUDA: max |diff| {worst:.5f}, share of values off {changed:.2e}")
    assert worst <= MAX_ABS_DIFF and changed < 1e-3


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("fp16", [True, False])
def test_cuda_frame_graph_gives_the_cpu_class(trained_ckpt, sim_frames, fp16):
    ref = CurveClassifier.load(trained_ckpt, backend="torch", warmup=0)
    clf = CurveClassifier.load(trained_ckpt, backend="torch-cuda", warmup=3, fp16=fp16)
    frames = sim_frames[0]
    got, want = [clf.predict(f) for f in frames], [ref.predict(f) for f in frames]
    print(f"torch-cuda fp16={fp16}: {clf.backend.describe()}")
    assert clf.backend.frame_graph_mode in ("full", "kernels")
    assert [p.label for p in got] == [p.label for p in want]
    assert max(abs(a.p_curve - b.p_curve) for a, b in zip(got, want)) < (0.02 if fp16 else 1e-3)


def test_bench_table_names_the_variant_and_the_eager_breakdown():
    from perception.bench import BenchRecord, format_table
    st = {"p50": 1.0, "p95": 1.0, "p99": 1.0, "max": 1.0, "mean": 1.0}
    rec = lambda b, v, bd: BenchRecord(backend=b, precision="fp16", device="dev", model="m", img_size=224, runs=1,  # noqa: E731
                                       p50_ms=1, p95_ms=1, p99_ms=1, max_ms=1, mean_ms=1, fps=1000,
                                       stages={"preprocess": st, "infer": st, "total": st}, speedup_vs_torch=1,
                                       infer_speedup_vs_torch=1, variant=v, breakdown=bd)
    table = format_table([rec("torch", "", {}), rec("torch-cuda", "gpu-pre", {k: st for k in ("upload", "preprocess",
                                                                                           "infer", "download")}),
                          rec("torch-cuda", "cpu-pre", {})])
    assert "torch-cuda[gpu-pre]" in table and "torch-cuda[cpu-pre]" in table
    assert "EAGER" in table and "upload 1.000, preprocess 1.000, infer 1.000, download 1.000 = 4.000" in table


def test_bench_times_both_torch_cuda_paths_in_one_run(trained_ckpt, monkeypatch, tmp_path):
    """The bench's torch-cuda rows (GPU-preprocess frame path and the old CPU path) and the eager breakdown,
    driven on the CPU by running the torch-cuda backend with device='cpu'."""
    from perception.bench import BenchConfig, format_table, run_bench
    orig = TorchCudaBackend.__init__
    monkeypatch.setattr(TorchCudaBackend, "unavailable_reason", staticmethod(lambda: None))
    monkeypatch.setattr(TorchCudaBackend, "__init__",
                        lambda self, model, **kw: orig(self, model, **{"device": "cpu", "fp16": False, **kw}))
    recs = run_bench(BenchConfig(model=trained_ckpt, backends="torch-cuda", runs=3, warmup=1,
                                 json=tmp_path / "b.json", frame_size=(320, 240)))
    assert [r.label for r in recs] == ["torch", "torch-cuda[gpu-pre]", "torch-cuda[cpu-pre]"]
    assert set(recs[1].breakdown) == {"stage", "upload", "preprocess", "infer", "download"} and not recs[2].breakdown
    assert "where the time goes (EAGER" in format_table(recs)
    assert '"label": "torch-cuda[gpu-pre]"' in (tmp_path / "b.json").read_text()
