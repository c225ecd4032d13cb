"""The classifier API over every backend available here, on frames through a TRAINED checkpoint."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from perception.backends import available_backends
from perception.backends.onnxruntime_backend import (BF16_CPU_FLAGS, OnnxRuntimeBackend, best_providers, cpu_flags,
                                                     physical_cores, resolve_precision)
from perception.backends.torch_backend import TorchBackend
from perception.classifier import CurveClassifier, Prediction, resolve_backend
from perception.export import ExportConfig, export
from test_perception_support import frames_and_labels, trained_ckpt  # noqa: F401  (session fixture)

HAS_CUDA = torch.cuda.is_available()
OPENVINO = "OpenVINOExecutionProvider"
BF16_HERE = best_providers()[0] == OPENVINO and bool(BF16_CPU_FLAGS & cpu_flags())


@pytest.fixture(scope="module")
def onnx_path(trained_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("clf") / "model.onnx"
    export(ExportConfig(checkpoint=trained_ckpt, out=out, parity_frames=0))
    return out


@pytest.fixture(scope="module")
def frames():
    return frames_and_labels(12, seed=21)


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CARLA_PERCEPTION_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _reference_labels(trained_ckpt, frames):
    clf = CurveClassifier.load(trained_ckpt, backend="torch", warmup=0)
    return [p.label for p in clf.predict_batch(frames)]


def test_predict_returns_label_probability_and_timings(onnx_path, frames):
    clf = CurveClassifier.load(onnx_path, backend="onnxruntime")
    pred = clf.predict(frames[0][0])
    assert isinstance(pred, Prediction)
    assert pred.label in ("curve", "straight") and pred.p_curve == pred.probs[0]
    assert sum(pred.probs) == pytest.approx(1.0)
    assert set(pred.timings_ms) == {"preprocess", "infer", "total"}
    assert pred.timings_ms["total"] >= pred.timings_ms["infer"] > 0


def test_classifier_is_right_on_simulator_frames(onnx_path):
    """Town02 frames the model never trained on (it saw Town01): the map labels, mostly."""
    frames, truth = frames_and_labels(200, seed=21)
    clf = CurveClassifier.load(onnx_path)
    labels = [p.label for p in clf.predict_batch(frames)]
    assert np.mean([a == b for a, b in zip(labels, truth)]) >= 0.85


@pytest.mark.parametrize("source", ["pt", "onnx"])
def test_every_available_backend_gives_the_same_class(trained_ckpt, onnx_path, frames, cache, source):
    path = trained_ckpt if source == "pt" else onnx_path
    want = _reference_labels(trained_ckpt, frames[0])
    ref = CurveClassifier.load(trained_ckpt, backend="torch", warmup=0).predict_batch(frames[0])
    backends = available_backends()
    assert {"torch", "onnxruntime"} <= set(backends)
    runs = [(n, {}) for n in backends] + [("onnxruntime", {"precision": "fp32"})]
    for name, options in runs:
        clf = CurveClassifier.load(path, backend=name, warmup=1, **options)
        got = clf.predict_batch(frames[0])
        assert [p.label for p in got] == want, (name, clf.backend.precision)
        tol = 1e-4 if clf.backend.precision == "fp32" else 0.02       # fp16 (GPU) / bf16 (OpenVINO CPU)
        assert max(abs(a.p_curve - b.p_curve) for a, b in zip(got, ref)) <= tol, (name, clf.backend.precision)


def test_pt_on_onnxruntime_exports_once_into_the_cache(trained_ckpt, cache):
    clf = CurveClassifier.load(trained_ckpt, backend="onnxruntime", warmup=0)
    assert clf.source.parent == cache / "onnx" and clf.source.suffix == ".onnx"
    mtime = clf.source.stat().st_mtime_ns
    assert CurveClassifier.load(trained_ckpt, backend="onnxruntime", warmup=0).source.stat().st_mtime_ns == mtime


@pytest.mark.parametrize("cls, name", [(OnnxRuntimeBackend, "onnxruntime"), (TorchBackend, "torch")])
def test_warmup_runs_at_load(onnx_path, frames, monkeypatch, cls, name):
    calls = []
    original = cls.infer
    monkeypatch.setattr(cls, "infer", lambda self, x: calls.append(x.shape) or original(self, x))
    clf = CurveClassifier.load(onnx_path, backend=name, warmup=4)
    assert len(calls) == 4, "the warm-up calls must happen inside load(), before the first frame"
    assert calls[0] == (1, 3, clf.meta.img_size, clf.meta.img_size)
    clf.predict(frames[0][0])
    assert len(calls) == 5


def test_predict_batch_matches_predict(onnx_path, frames):
    clf = CurveClassifier.load(onnx_path, backend="onnxruntime", warmup=0)
    single = [clf.predict(f) for f in frames[0][:5]]
    many = clf.predict_batch(frames[0][:5])
    assert [p.label for p in single] == [p.label for p in many]
    assert np.allclose([p.p_curve for p in single], [p.p_curve for p in many], atol=1e-6)


@pytest.mark.parametrize("order, code", [("BGR", cv2.COLOR_BGRA2BGR), ("RGB", cv2.COLOR_BGRA2RGB),
                                         ("RGBA", cv2.COLOR_BGRA2RGBA)])
def test_colour_orders_agree(onnx_path, frames, order, code):
    clf = CurveClassifier.load(onnx_path, backend="onnxruntime", warmup=0)
    frame = frames[0][1]
    assert clf.predict(cv2.cvtColor(frame, code), color_order=order).p_curve == \
        pytest.approx(clf.predict(frame).p_curve, abs=1e-6)


def test_auto_backend_on_this_machine(onnx_path, trained_ckpt):
    if HAS_CUDA:
        assert resolve_backend("auto", onnx_path) in ("tensorrt", "onnxruntime", "torch-cuda")
    else:
        assert resolve_backend("auto", onnx_path) == "onnxruntime"
        assert resolve_backend("auto", trained_ckpt) == "onnxruntime"


def test_onnxruntime_session_is_tuned(onnx_path, cache):
    clf = CurveClassifier.load(onnx_path, backend="onnxruntime", warmup=0)
    decision = clf.backend.decision
    if best_providers()[0] == OPENVINO:      # two or more CPU candidates: auto measured them, thread counts too
        chosen = decision.chosen
        assert (clf.backend.providers[0], clf.backend.precision, clf.backend.threads) == \
            (chosen.provider, chosen.precision, chosen.threads)
        assert {m.candidate.threads for m in decision.measurements} == {1, max(1, physical_cores())}
    else:
        assert decision is None and clf.backend.providers[0] == best_providers()[0]
        assert clf.backend.threads == max(1, physical_cores())      # nothing measured: every physical core


def test_threads_from_the_environment(onnx_path, cache, monkeypatch):
    monkeypatch.setenv("CARLA_PERCEPTION_THREADS", "1")
    assert CurveClassifier.load(onnx_path, backend="onnxruntime", warmup=0).backend.threads == 1
    monkeypatch.setenv("CARLA_PERCEPTION_THREADS", "two")
    with pytest.raises(ValueError, match=r"CARLA_PERCEPTION_THREADS='two': want a positive integer"):
        CurveClassifier.load(onnx_path, backend="onnxruntime", warmup=0)


def test_onnxruntime_fp32_is_exact_on_the_default_provider(onnx_path, trained_ckpt):
    """precision='fp32' pins FP32 on whichever provider auto picks (OpenVINO EP included)."""
    frames, _ = frames_and_labels(40, seed=5)
    ref = CurveClassifier.load(trained_ckpt, backend="torch", warmup=0)
    clf = CurveClassifier.load(onnx_path, backend="onnxruntime", warmup=0, precision="fp32")
    assert clf.backend.precision == "fp32" and clf.backend.providers[0] == best_providers()[0]
    x = np.concatenate([clf.preprocess(f) for f in frames])
    assert np.abs(clf.logits(x) - ref.logits(x)).max() <= 1e-3


@pytest.mark.skipif(best_providers()[0] != OPENVINO, reason="needs onnxruntime-openvino (one CPU candidate only)")
def test_auto_measures_once_then_reuses_and_decides_like_fp32(onnx_path, trained_ckpt, cache):
    """The default session is the measured choice, cached on disk; whatever it is, it decides like FP32 torch."""
    from perception import cpu_tune
    first = CurveClassifier.load(onnx_path, warmup=0)
    decision = first.backend.decision
    assert not decision.cached and decision.chosen in [m.candidate for m in decision.measurements]
    assert list(cache.glob("cpu-tune/*.json")), "decision not cached on disk"
    chosen = next(m for m in decision.measurements if m.candidate == decision.chosen)
    assert chosen.agrees() and decision.chosen == cpu_tune.choose(decision.measurements, decision.measurements[0].candidate)
    fewer = [m.median_ms for m in decision.measurements if m.agrees() and m.candidate.threads < decision.chosen.threads]
    assert all(chosen.median_ms <= (1 - cpu_tune.THREAD_GAIN) * ms for ms in fewer)   # more threads only if they pay
    second = CurveClassifier.load(onnx_path, warmup=0)
    assert second.backend.decision.cached and second.backend.decision.chosen == decision.chosen
    assert "(auto: cached decision)" in second.backend.describe()
    if BF16_HERE:
        assert (OPENVINO, "bf16") in [(m.candidate.provider, m.candidate.precision) for m in decision.measurements]
    frames, _ = frames_and_labels(200, seed=21)
    ref = CurveClassifier.load(trained_ckpt, backend="torch", warmup=0)
    x = np.concatenate([second.preprocess(f) for f in frames])
    got, want = second.logits(x), ref.logits(x)
    agreement = np.mean(got.argmax(1) == want.argmax(1))
    assert agreement >= 0.995, f"{second.backend.describe()} agrees with torch FP32 on only {agreement:.1%}"


@pytest.mark.parametrize("requested, provider, model, flags, want", [
    ("auto", OPENVINO, "fp32", {"avx512_bf16"}, "fp32"),       # no flag rule: auto is measured (cpu_tune)
    ("auto", OPENVINO, "fp32", {"amx_bf16", "avx2"}, "fp32"),
    ("auto", "CPUExecutionProvider", "fp32", {"avx512_bf16"}, "fp32"),
    ("auto", "CUDAExecutionProvider", "fp16", set(), "fp16"),
    ("fp32", OPENVINO, "fp32", {"avx512_bf16"}, "fp32"),
    ("bf16", OPENVINO, "fp32", {"avx512_bf16"}, "bf16"),
])
def test_precision_resolution(requested, provider, model, flags, want):
    assert resolve_precision(requested, provider, model, frozenset(flags)) == want


@pytest.mark.parametrize("requested, provider, model, flags, match", [
    ("int8", OPENVINO, "fp32", set(), r"unknown onnxruntime precision 'int8'; valid: auto, fp32, bf16"),
    ("bf16", "CPUExecutionProvider", "fp32", {"avx512_bf16"},
     r"'bf16' needs ONNX Runtime's OpenVINOExecutionProvider.*runs CPUExecutionProvider.*'auto' or 'fp32'"),
    ("bf16", OPENVINO, "fp32", {"avx2"}, r"'bf16' needs a CPU with native bf16"),
    ("fp32", OPENVINO, "fp16", set(), r"'fp32' asked of an FP16 ONNX: export without --fp16"),
])
def test_precision_errors_say_why_and_what_works(requested, provider, model, flags, match):
    with pytest.raises(ValueError, match=match):
        resolve_precision(requested, provider, model, frozenset(flags))


def test_bad_precision_fails_at_load_in_one_line(onnx_path):
    with pytest.raises(ValueError, match=r"unknown onnxruntime precision 'half'; valid: auto, fp32, bf16"):
        CurveClassifier.load(onnx_path, backend="onnxruntime", precision="half")


def test_preprocess_thread_gives_the_training_pixels(onnx_path, frames):
    """The classifier's two-band resize must equal the single-call resize training cached."""
    from datasets.preprocess import preprocess
    threaded = CurveClassifier.load(onnx_path, backend="onnxruntime", warmup=0, preprocess_threads=2)
    single = CurveClassifier.load(onnx_path, backend="onnxruntime", warmup=0, preprocess_threads=1)
    assert threaded._pool is not None and single._pool is None
    for frame, _ in zip(*frames):
        want = preprocess(frame, threaded.meta.img_size)
        np.testing.assert_array_equal(threaded.preprocess(frame), want)
        np.testing.assert_array_equal(single.preprocess(frame), want)
    with pytest.raises(ValueError, match="preprocess_threads must be >= 1, got 0"):
        CurveClassifier.load(onnx_path, backend="onnxruntime", warmup=0, preprocess_threads=0)


def test_torch_backend_from_onnx_finds_the_checkpoint(onnx_path, trained_ckpt, frames):
    clf = CurveClassifier.load(onnx_path, backend="torch", warmup=0)
    assert clf.backend_name == "torch"
    assert [p.label for p in clf.predict_batch(frames[0])] == _reference_labels(trained_ckpt, frames[0])


# --- errors: one clear line naming the bad value and the valid choices ------------------------

def test_unknown_file_type(tmp_path):
    bad = tmp_path / "model.h5"
    bad.write_bytes(b"x")
    with pytest.raises(ValueError, match=r"unknown model file type '\.h5'.*\.pt.*\.onnx.*\.engine"):
        CurveClassifier.load(bad)


def test_onnx_without_our_metadata(tmp_path):
    import onnx
    from onnx import TensorProto, helper
    foreign = tmp_path / "foreign.onnx"
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])])
    onnx.save(helper.make_model(graph), str(foreign))
    with pytest.raises(ValueError, match="no carla-perception metadata.*perception.export"):
        CurveClassifier.load(foreign)


@pytest.mark.parametrize("frame, order, match", [
    (np.zeros((600, 800, 3), np.uint8), "BGRA", r"expected an HxWx4 uint8 BGRA frame.*shape=\(600, 800, 3\)"),
    (np.zeros((600, 800, 4), np.float32), "BGRA", r"dtype=float32"),
    (np.zeros((600, 800), np.uint8), "BGRA", r"shape=\(600, 800\)"),
    (np.zeros((600, 800, 4), np.uint8), "ARGB", r"unknown color_order 'ARGB'; valid: BGRA, BGR, RGB, RGBA"),
])
def test_wrong_frame(onnx_path, frame, order, match):
    clf = CurveClassifier.load(onnx_path, backend="onnxruntime", warmup=0)
    with pytest.raises(ValueError, match=match):
        clf.predict(frame, color_order=order)


@pytest.mark.skipif(HAS_CUDA, reason="this machine has a CUDA GPU")
def test_gpu_backends_without_gpu_name_the_available_ones(onnx_path):
    for name in ("tensorrt", "torch-cuda"):
        with pytest.raises(RuntimeError, match=rf"backend '{name}' is unavailable: .*available here: onnxruntime, torch"):
            CurveClassifier.load(onnx_path, backend=name)


def test_unknown_backend(onnx_path):
    with pytest.raises(ValueError, match="unknown backend 'openvino'; valid: auto, tensorrt, onnxruntime, torch-cuda, torch"):
        CurveClassifier.load(onnx_path, backend="openvino")


def test_torch_backend_without_checkpoint(trained_ckpt, tmp_path):
    moved = tmp_path / "moved.pt"
    moved.write_bytes(trained_ckpt.read_bytes())
    out = tmp_path / "m.onnx"
    export(ExportConfig(checkpoint=moved, out=out, parity_frames=0))
    moved.unlink()
    with pytest.raises(FileNotFoundError, match="torch backends need the training checkpoint"):
        CurveClassifier.load(out, backend="torch")


# --- GPU -------------------------------------------------------------------------------------

@pytest.mark.gpu
def test_torch_cuda_fp16_channels_last_graph(trained_ckpt, frames):
    if not HAS_CUDA:
        pytest.skip("no CUDA GPU")
    clf = CurveClassifier.load(trained_ckpt, backend="torch-cuda", warmup=3)
    assert clf.backend._graph is not None, "batch-1 warm-up must capture the CUDA graph"
    assert clf.backend.dtype == torch.float16
    ref = CurveClassifier.load(trained_ckpt, backend="torch", warmup=0)
    for f in frames[0]:
        a, b = clf.predict(f), ref.predict(f)
        assert a.label == b.label and abs(a.p_curve - b.p_curve) < 0.02


@pytest.mark.parametrize("available, first", [
    (["CPUExecutionProvider"], "CPUExecutionProvider"),
    (["OpenVINOExecutionProvider", "CPUExecutionProvider"], "OpenVINOExecutionProvider"),
    (["CPUExecutionProvider", "CUDAExecutionProvider", "OpenVINOExecutionProvider"], "CUDAExecutionProvider"),
    (["CUDAExecutionProvider", "TensorrtExecutionProvider", "CPUExecutionProvider"], "TensorrtExecutionProvider"),
    (["AzureExecutionProvider"], "CPUExecutionProvider"),
])
def test_provider_preference(available, first):
    """GPU providers first, then OpenVINO (faster than the default CPU EP), CPU EP always last."""
    order = best_providers(available)
    assert order[0] == first and (order[-1] == "CPUExecutionProvider" or "CPUExecutionProvider" not in available)
