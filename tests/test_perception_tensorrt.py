"""TensorRT engine build / cache / run logic against a STAND-IN ``tensorrt`` module (TRT-10-like and
TRT-11-like), plus real-TensorRT tests that run wherever tensorrt and a CUDA GPU exist.

The stand-in parses the real ONNX (to learn tensor names, shapes and precision), records every
call, and its execution context really reads the input from, and writes logits to, the buffer
addresses it was given, so the device-buffer plumbing is exercised too.
"""
from __future__ import annotations

import ctypes
import json
import logging
import sys
import types

import numpy as np
import onnx
import pytest
import torch

from perception import tensorrt_engine as te
from perception.backends.tensorrt_backend import TensorRTBackend
from perception.classifier import CurveClassifier
from perception.export import ExportConfig, export
from test_perception_support import IMG, frames_and_labels, trained_ckpt  # noqa: F401  (session fixture)

FAKE_GPU = ("NVIDIA Stand-in H100", "9.0")


def make_fake_trt(major: int, calls: list) -> types.ModuleType:
    """A module with the slice of the TensorRT Python API we use; TRT 11 has no BuilderFlag.FP16."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.13.0.35" if major == 10 else "11.4.0.106"

    class Logger:
        ERROR, WARNING, INFO = 1, 2, 3

        def __init__(self, severity=2):
            self.severity = severity

    class NetworkDefinitionCreationFlag:
        STRONGLY_TYPED = 1

    BuilderFlag = types.SimpleNamespace(TF32=7, **({"FP16": 0} if major == 10 else {}))

    class MemoryPoolType:
        WORKSPACE = 0

    class TensorIOMode:
        NONE, INPUT, OUTPUT = 0, 1, 2

    class DataType:
        FLOAT = "float32"

    class Tensor:
        def __init__(self, name, shape):
            self.name, self.shape = name, shape

    class Network:
        def __init__(self, flags):
            self.flags, self.inputs, self.outputs, self.fp16_weights = flags, [], [], False

        @property
        def num_inputs(self):
            return len(self.inputs)

        def get_input(self, i):
            return self.inputs[i]

    class OnnxParser:
        def __init__(self, network, logger):
            self.network, self.num_errors = network, 0

        def parse(self, data: bytes) -> bool:
            model = onnx.load_from_string(data)
            calls.append(("parse", len(data)))

            def shape(vi):
                return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim)
            self.network.inputs = [Tensor(v.name, shape(v)) for v in model.graph.input]
            self.network.outputs = [Tensor(v.name, shape(v)) for v in model.graph.output]
            self.network.fp16_weights = any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
            return True

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            calls.append(("set_shape", name, tuple(lo), tuple(opt), tuple(hi)))

    class TimingCache:
        def __init__(self, blob):
            self.blob = bytes(blob)

        def serialize(self):
            return self.blob + b"entry;"

    class Config:
        def __init__(self):
            self.flags, self.cache = set(), None

        def set_memory_pool_limit(self, pool, size):
            calls.append(("set_memory_pool_limit", pool, size))

        def set_flag(self, flag):
            calls.append(("set_flag", flag))
            self.flags.add(flag)

        def add_optimization_profile(self, profile):
            calls.append(("add_optimization_profile",))

        def create_timing_cache(self, blob):
            calls.append(("create_timing_cache", bytes(blob)))
            return TimingCache(blob)

        def set_timing_cache(self, cache, ignore_mismatch):
            calls.append(("set_timing_cache", ignore_mismatch))
            self.cache = cache

        def get_timing_cache(self):
            return self.cache

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags=0):
            calls.append(("create_network", flags))
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            strong = bool(network.flags & (1 << NetworkDefinitionCreationFlag.STRONGLY_TYPED))
            fp16 = network.fp16_weights if strong else BuilderFlag.__dict__.get("FP16") in config.flags
            calls.append(("build_serialized_network", {"strong": strong, "fp16": fp16}))
            inp, out = network.inputs[0], network.outputs[0]
            return json.dumps({"trt": trt.__version__, "in": [inp.name, inp.shape], "out": [out.name, out.shape],
                               "fp16": fp16}).encode()

    class Context:
        def __init__(self, plan):
            self.plan, self.addr, self.shape = plan, {}, tuple(plan["in"][1])

        def set_input_shape(self, name, shape):
            calls.append(("set_input_shape", name, tuple(shape)))
            self.shape = tuple(shape)
            return True

        def set_tensor_address(self, name, ptr):
            calls.append(("set_tensor_address", name))
            self.addr[name] = ptr

        def execute_async_v3(self, stream):
            calls.append(("execute_async_v3", stream))
            n = int(np.prod(self.shape))
            x = np.ctypeslib.as_array((ctypes.c_float * n).from_address(self.addr[self.plan["in"][0]]))
            means = x.reshape(self.shape[0], -1).mean(1)
            y = np.ctypeslib.as_array((ctypes.c_float * (2 * self.shape[0])).from_address(
                self.addr[self.plan["out"][0]])).reshape(self.shape[0], 2)
            y[:, 0], y[:, 1] = 10 * means, -10 * means
            return True

    class Engine:
        def __init__(self, plan):
            self.plan = plan
            self.num_io_tensors = 2

        def get_tensor_name(self, i):
            return (self.plan["in"][0], self.plan["out"][0])[i]

        def get_tensor_mode(self, name):
            return TensorIOMode.INPUT if name == self.plan["in"][0] else TensorIOMode.OUTPUT

        def get_tensor_shape(self, name):
            return tuple(self.plan["in"][1] if name == self.plan["in"][0] else self.plan["out"][1])

        def get_tensor_dtype(self, name):
            return DataType.FLOAT

        def create_execution_context(self):
            return Context(self.plan)

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, blob):
            plan = json.loads(bytes(blob))
            calls.append(("deserialize_cuda_engine", plan["trt"]))
            return Engine(plan) if plan["trt"] == trt.__version__ else None

    for obj in (Logger, NetworkDefinitionCreationFlag, MemoryPoolType, TensorIOMode, DataType, OnnxParser,
                Builder, Runtime):
        setattr(trt, obj.__name__, obj)
    trt.BuilderFlag = BuilderFlag
    trt.nptype = lambda dt: np.dtype(dt).type
    return trt


def fake_mean_logits(x: np.ndarray) -> np.ndarray:
    means = x.reshape(len(x), -1).mean(1)
    return np.stack([10 * means, -10 * means], 1)


@pytest.fixture(params=[10, 11], ids=["trt10", "trt11"])
def fake_trt(request, monkeypatch, tmp_path):
    calls: list = []
    trt = make_fake_trt(request.param, calls)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(te, "gpu_identity", lambda device=0: FAKE_GPU)
    monkeypatch.setenv("CARLA_PERCEPTION_CACHE", str(tmp_path / "cache"))
    trt.calls = calls
    trt.major = request.param
    return trt


@pytest.fixture(scope="module")
def onnx_files(trained_ckpt, tmp_path_factory):
    d = tmp_path_factory.mktemp("trt_onnx")
    files = {}
    for name, fp16, dyn in [("fp32_static", False, False), ("fp32_dynamic", False, True), ("fp16_dynamic", True, True)]:
        files[name] = d / f"{name}.onnx"
        export(ExportConfig(checkpoint=trained_ckpt, out=files[name], fp16=fp16, dynamic_batch=dyn, parity_frames=0))
    return files


def _copy(src, dst_dir):
    dst = dst_dir / src.name
    dst.write_bytes(src.read_bytes())
    return dst


def _names(calls):
    return [c[0] for c in calls]


def test_fp16_build_uses_the_api_of_the_installed_version(fake_trt, onnx_files, tmp_path):
    onnx_path = _copy(onnx_files["fp16_dynamic"], tmp_path)
    key = te.build_engine(onnx_path, tmp_path / "m.engine", te.EngineBuildConfig(workspace=256 << 20))
    calls = fake_trt.calls
    if fake_trt.major == 10:
        assert ("create_network", 0) in calls and ("set_flag", 0) in calls        # weak typing + BuilderFlag.FP16
    else:
        assert ("create_network", 1 << 1) in calls                               # 1 << STRONGLY_TYPED
        assert "set_flag" not in _names(calls)
    assert ("build_serialized_network", {"strong": fake_trt.major == 11, "fp16": True}) in calls
    assert ("set_memory_pool_limit", 0, 256 << 20) in calls
    assert ("set_shape", "input", (1, 3, IMG, IMG), (1, 3, IMG, IMG), (8, 3, IMG, IMG)) in calls
    order = _names(calls)
    assert order.index("parse") < order.index("set_shape") < order.index("create_timing_cache") \
        < order.index("build_serialized_network")
    side = te.read_sidecar(tmp_path / "m.engine")
    assert side["key"] == {"onnx_sha256": te.sha256_file(onnx_path), "trt_version": fake_trt.__version__,
                           "gpu_name": FAKE_GPU[0], "compute_capability": "9.0", "precision": "fp16", "max_batch": 8}
    assert side["meta"]["classes"] == ["curve", "straight"] and side["meta"]["img_size"] == IMG
    assert side["api"] == ("builder-flag" if fake_trt.major == 10 else "strongly-typed")
    assert key.precision == "fp16"


def test_fp16_engine_from_fp32_onnx(fake_trt, onnx_files, tmp_path):
    onnx_path = _copy(onnx_files["fp32_dynamic"], tmp_path)
    cfg = te.EngineBuildConfig(precision="fp16")
    if fake_trt.major == 10:
        assert te.build_engine(onnx_path, tmp_path / "m.engine", cfg).precision == "fp16"
        assert ("set_flag", 0) in fake_trt.calls
    else:
        with pytest.raises(ValueError, match="strongly typed.*re-export.*--fp16"):
            te.build_engine(onnx_path, tmp_path / "m.engine", cfg)


def test_static_batch_onnx_needs_no_profile(fake_trt, onnx_files, tmp_path):
    key = te.build_engine(_copy(onnx_files["fp32_static"], tmp_path), tmp_path / "m.engine")
    assert "set_shape" not in _names(fake_trt.calls) and key.max_batch == 1 and key.precision == "fp32"
    assert "set_flag" not in _names(fake_trt.calls)


def test_timing_cache_is_persisted_and_reused(fake_trt, onnx_files, tmp_path):
    te.build_engine(_copy(onnx_files["fp32_static"], tmp_path), tmp_path / "a.engine")
    te.build_engine(_copy(onnx_files["fp32_dynamic"], tmp_path), tmp_path / "b.engine")
    blobs = [c[1] for c in fake_trt.calls if c[0] == "create_timing_cache"]
    assert blobs == [b"", b"entry;"], "second build must start from the first build's serialized cache"
    caches = list((tmp_path / "cache" / "tensorrt").glob("timing-trt*-sm90.cache"))
    assert len(caches) == 1 and fake_trt.__version__ in caches[0].name and "Stand-in-H100" in caches[0].name


def test_engine_cache_hit_then_one_line_rebuild_on_gpu_change(fake_trt, onnx_files, tmp_path, monkeypatch, caplog):
    onnx_path = _copy(onnx_files["fp32_dynamic"], tmp_path)
    engine = te.ensure_engine(onnx_path)
    assert engine == tmp_path / "fp32_dynamic.engine"
    builds = lambda: _names(fake_trt.calls).count("build_serialized_network")   # noqa: E731
    with caplog.at_level(logging.INFO, logger="perception.tensorrt_engine"):
        caplog.clear()
        te.ensure_engine(onnx_path)
        assert builds() == 1 and not caplog.records, "a matching engine is reused silently"
        monkeypatch.setattr(te, "gpu_identity", lambda device=0: ("NVIDIA RTX 4090", "8.9"))
        te.ensure_engine(onnx_path)
    assert builds() == 2
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0].getMessage()
    assert "gpu_name: engine has 'NVIDIA Stand-in H100', wanted 'NVIDIA RTX 4090'" in warnings[0].getMessage()
    assert te.read_sidecar(engine)["key"]["compute_capability"] == "8.9"


def test_engine_rebuilt_when_onnx_changes(fake_trt, onnx_files, tmp_path, caplog):
    onnx_path = _copy(onnx_files["fp32_dynamic"], tmp_path)
    te.ensure_engine(onnx_path)
    onnx_path.write_bytes(onnx_files["fp16_dynamic"].read_bytes())
    with caplog.at_level(logging.WARNING, logger="perception.tensorrt_engine"):
        te.ensure_engine(onnx_path)
    assert len(caplog.records) == 1 and "onnx_sha256" in caplog.records[0].getMessage()
    assert te.read_sidecar(onnx_path.with_suffix(".engine"))["key"]["precision"] == "fp16"


def test_stale_engine_rebuilt_from_sibling_onnx_or_explained(fake_trt, onnx_files, tmp_path, monkeypatch):
    onnx_path = _copy(onnx_files["fp32_static"], tmp_path)
    engine = te.ensure_engine(onnx_path)
    monkeypatch.setattr(fake_trt, "__version__", "99.0.0")        # "another TensorRT version"
    assert te.validate_engine(engine) == engine
    assert te.read_sidecar(engine)["key"]["trt_version"] == "99.0.0"
    monkeypatch.setattr(te, "gpu_identity", lambda device=0: ("Tesla T4", "7.5"))
    onnx_path.unlink()
    with pytest.raises(te.EngineMismatchError, match=r"gpu_name: engine has 'NVIDIA Stand-in H100', wanted 'Tesla T4'.*"
                                                     r"cannot be rebuilt: source ONNX .* not found; re-export"):
        te.validate_engine(engine)


def test_runner_binds_device_buffers_and_enqueues(fake_trt, onnx_files, tmp_path):
    engine = te.ensure_engine(_copy(onnx_files["fp32_dynamic"], tmp_path))
    runner = te.TensorRTRunner(engine.read_bytes(), max_batch=8, device="cpu")
    x = np.random.default_rng(0).standard_normal((3, 3, IMG, IMG), dtype=np.float32)
    fake_trt.calls.clear()
    np.testing.assert_allclose(runner.infer(x), fake_mean_logits(x), rtol=1e-5)
    assert fake_trt.calls == [("set_input_shape", "input", (3, 3, IMG, IMG)), ("set_tensor_address", "input"),
                              ("set_tensor_address", "logits"), ("execute_async_v3", 0)]
    fake_trt.calls.clear()
    runner.infer(x)
    assert fake_trt.calls == [("execute_async_v3", 0)], "same batch: no re-binding"
    np.testing.assert_allclose(runner.infer(x[:1]), fake_mean_logits(x[:1]), rtol=1e-5)
    assert ("set_input_shape", "input", (1, 3, IMG, IMG)) in fake_trt.calls
    with pytest.raises(ValueError, match="batch 9 exceeds the engine's max batch 8"):
        runner.infer(np.zeros((9, 3, IMG, IMG), np.float32))


def test_classifier_on_stand_in_tensorrt_end_to_end(fake_trt, onnx_files, tmp_path, monkeypatch):
    monkeypatch.setattr(TensorRTBackend, "unavailable_reason", staticmethod(lambda: None))
    onnx_path = _copy(onnx_files["fp32_static"], tmp_path)
    clf = CurveClassifier.load(onnx_path, warmup=2, device="cpu")       # auto -> tensorrt
    assert clf.backend_name == "tensorrt" and clf.source == onnx_path.with_suffix(".engine")
    assert _names(fake_trt.calls).count("execute_async_v3") == 3, "warm-up (2 + the frame path) happens at load"
    frame = frames_and_labels(1, seed=5)[0][0]
    logits = fake_mean_logits(clf.preprocess(frame))[0]
    p_curve = 1 / (1 + np.exp(logits[1] - logits[0]))
    fake_trt.calls.clear()
    assert clf.takes_frame(frame), "the raw frame goes to the engine's own preprocessing"
    assert clf.predict(frame).p_curve == pytest.approx(p_curve, rel=1e-5)
    assert fake_trt.calls == [("execute_async_v3", 0)], "static batch 1, already bound: one enqueue per frame"
    again = CurveClassifier.load(clf.source, backend="tensorrt", warmup=0, device="cpu")
    assert again.meta.img_size == IMG and again.predict(frame).p_curve == pytest.approx(p_curve, rel=1e-5)


def test_stand_in_tensorrt_frame_path_uploads_only_the_models_band(fake_trt, onnx_files, tmp_path, monkeypatch):
    """A model trained on a band of rows (``crop_rows`` in its metadata): the engine's frame path stages
    and preprocesses only those rows, and agrees with the host path."""
    import onnx
    monkeypatch.setattr(TensorRTBackend, "unavailable_reason", staticmethod(lambda: None))
    model = onnx.load(str(onnx_files["fp32_static"]))
    for prop in model.metadata_props:
        if prop.key == "crop_rows":
            prop.value = "[0.3, 0.8]"
    onnx_path = tmp_path / "band.onnx"
    onnx.save(model, str(onnx_path))
    clf = CurveClassifier.load(onnx_path, warmup=0, device="cpu")
    assert clf.backend_name == "tensorrt" and clf.meta.crop_rows == (0.3, 0.8)
    frame = frames_and_labels(1, seed=5)[0][0]
    logits = fake_mean_logits(clf.preprocess(frame))[0]
    assert clf.takes_frame(frame)
    assert clf.predict(frame).p_curve == pytest.approx(1 / (1 + np.exp(logits[1] - logits[0])), rel=1e-5)
    assert clf.backend.runner._frame_key[0] == (round(0.8 * frame.shape[0]) - round(0.3 * frame.shape[0]),
                                                *frame.shape[1:])


def test_engine_file_without_tensorrt_says_what_to_do(onnx_files, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)      # import tensorrt -> ImportError
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    (tmp_path / "m.engine.json").write_text(json.dumps({"meta": {"arch": "simple_cnn", "img_size": IMG}}))
    with pytest.raises(RuntimeError, match="backend 'tensorrt' is unavailable: tensorrt not importable; available "
                                           "here: .*onnxruntime"):
        CurveClassifier.load(engine, backend="tensorrt")
    with pytest.raises(RuntimeError, match="TensorRT engine but backend 'tensorrt' is unavailable.*load the .onnx"):
        CurveClassifier.load(engine)


# --- real TensorRT: runs wherever tensorrt and a CUDA GPU exist, else an explicit skip -------------

def _require_real_tensorrt():
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pytest.skip("tensorrt not importable")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")


@pytest.mark.parametrize("variant", ["fp32_dynamic", "fp16_dynamic"])
def test_real_tensorrt_engine_agrees_with_torch(onnx_files, trained_ckpt, tmp_path, monkeypatch, variant):
    _require_real_tensorrt()
    monkeypatch.setenv("CARLA_PERCEPTION_CACHE", str(tmp_path / "cache"))
    onnx_path = _copy(onnx_files[variant], tmp_path)
    clf = CurveClassifier.load(onnx_path, backend="tensorrt", warmup=3)
    ref = CurveClassifier.load(trained_ckpt, backend="torch", warmup=0)
    frames = frames_and_labels(32, seed=11)[0]
    got, want = clf.predict_batch(frames), ref.predict_batch(frames)
    assert np.mean([a.label == b.label for a, b in zip(got, want)]) >= 0.995
    tol = 1e-3 if variant.startswith("fp32") else 2e-2
    assert max(abs(a.p_curve - b.p_curve) for a, b in zip(got, want)) <= tol
    assert te.read_sidecar(clf.source)["key"]["gpu_name"] == torch.cuda.get_device_name(0)
