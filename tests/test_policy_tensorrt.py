"""The policy runtime's TensorRT backend against the classifier tests' STAND-IN ``tensorrt`` module.

TensorRT cannot be installed here, so nothing below is a TensorRT result. The stand-in is the one of
``test_perception_tensorrt`` (TRT-10-like and TRT-11-like builder, parser, flags, recorded calls),
given an engine with several inputs whose execution context runs the parsed ONNX in ONNX Runtime on
the very buffers bound to it: the controls it writes are what the network computes from whatever the
runner put at the addresses it bound under each name, so a swapped or missing binding shows.
"""
from __future__ import annotations

import base64
import ctypes
import json
import logging
import sys

import numpy as np
import onnxruntime as ort
import pytest

from carla_client.route_command import COMMANDS
from perception import tensorrt_engine as te
from perception import policy_runtime as pr
from perception.policy_runtime import PolicyRuntime, export_policy_onnx
from test_perception_tensorrt import FAKE_GPU, make_fake_trt
from tests.policy_data import make_tiny_policy

pytestmark = pytest.mark.unit


def make_fake_policy_trt(major: int, calls: list):
    """``make_fake_trt`` with a many-input engine whose context runs the ONNX on its bound buffers."""
    trt = make_fake_trt(major, calls)

    class OnnxParser(trt.OnnxParser):
        def parse(self, data: bytes) -> bool:
            self.network.onnx = bytes(data)
            return super().parse(data)

    class Builder(trt.Builder):
        def build_serialized_network(self, network, config):
            plan = json.loads(super().build_serialized_network(network, config))
            plan["inputs"] = [[t.name, list(t.shape)] for t in network.inputs]
            plan["outputs"] = [[t.name, list(t.shape)] for t in network.outputs]
            plan["onnx"] = base64.b64encode(network.onnx).decode()
            return json.dumps(plan).encode()

    class Context:
        def __init__(self, engine):
            self.engine, self.addr = engine, {}
            self.shapes = {n: tuple(s) for n, s in engine.plan["inputs"]}

        def set_input_shape(self, name, shape):
            calls.append(("set_input_shape", name, tuple(shape)))
            self.shapes[name] = tuple(shape)
            return True

        def set_tensor_address(self, name, ptr):
            calls.append(("set_tensor_address", name))
            self.addr[name] = ptr

        def execute_async_v3(self, stream):
            calls.append(("execute_async_v3", stream))
            assert all(d > 0 for s in self.shapes.values() for d in s), f"input shape never set: {self.shapes}"
            feeds = {n: np.ctypeslib.as_array((ctypes.c_float * int(np.prod(s))).from_address(self.addr[n]))
                     .reshape(s).copy() for n, s in self.shapes.items()}
            (out,) = self.engine.session.run(None, feeds)
            name = self.engine.plan["outputs"][0][0]
            dst = np.ctypeslib.as_array((ctypes.c_float * out.size).from_address(self.addr[name]))
            dst[:] = out.reshape(-1)
            return True

    class Engine:
        def __init__(self, plan):
            self.plan = plan
            self.io = [(n, tuple(s), trt.TensorIOMode.INPUT) for n, s in plan["inputs"]] + \
                      [(n, tuple(s), trt.TensorIOMode.OUTPUT) for n, s in plan["outputs"]]
            self.num_io_tensors = len(self.io)
            self.session = ort.InferenceSession(base64.b64decode(plan["onnx"]), providers=["CPUExecutionProvider"])

        def _find(self, name):
            return next(t for t in self.io if t[0] == name)

        def get_tensor_name(self, i):
            return self.io[i][0]

        def get_tensor_mode(self, name):
            return self._find(name)[2]

        def get_tensor_shape(self, name):
            return self._find(name)[1]

        def get_tensor_dtype(self, name):
            return trt.DataType.FLOAT

        def create_execution_context(self):
            return Context(self)

    class Runtime(trt.Runtime):
        def deserialize_cuda_engine(self, blob):
            return None if super().deserialize_cuda_engine(blob) is None else Engine(json.loads(bytes(blob)))

    trt.OnnxParser, trt.Builder, trt.Runtime = OnnxParser, Builder, Runtime
    return trt


@pytest.fixture(params=[10, 11], ids=["trt10", "trt11"])
def fake_trt(request, monkeypatch, tmp_path):
    calls: list = []
    trt = make_fake_policy_trt(request.param, calls)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(te, "gpu_identity", lambda device=0: FAKE_GPU)
    monkeypatch.setenv("CARLA_PERCEPTION_CACHE", str(tmp_path / "cache"))
    trt.calls, trt.major = calls, request.param
    return trt


@pytest.fixture(scope="module")
def experts(tmp_path_factory):
    d = tmp_path_factory.mktemp("policy_trt")
    ckpts = {"curve": make_tiny_policy(d / "c.pt", seed=1), "straight": make_tiny_policy(d / "s.pt", seed=2)}
    return ckpts, export_policy_onnx(ckpts, d / "moe.onnx")


def _onnx_copy(experts, tmp_path):
    dst = tmp_path / "moe.onnx"
    dst.write_bytes(experts[1].read_bytes())
    return dst


def _inputs(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, 3, 66, 200), dtype=np.float32), rng.random((n, 1), dtype=np.float32),
            np.eye(len(COMMANDS), dtype=np.float32)[rng.integers(0, len(COMMANDS), n)])


def _names(calls):
    return [c[0] for c in calls]


def test_one_profile_covers_image_speed_and_command(fake_trt, experts, tmp_path):
    onnx_path = _onnx_copy(experts, tmp_path)
    key = pr.build_policy_engine(onnx_path, tmp_path / "moe.engine", te.EngineBuildConfig(max_batch=4))
    calls = fake_trt.calls
    assert ("create_network", 0 if fake_trt.major == 10 else 1 << 1) in calls
    shapes = {c[1]: c[2:] for c in calls if c[0] == "set_shape"}
    assert shapes == {"image": ((1, 3, 66, 200), (1, 3, 66, 200), (4, 3, 66, 200)),
                      "speed": ((1, 1), (1, 1), (4, 1)),
                      "command": ((1, len(COMMANDS)), (1, len(COMMANDS)), (4, len(COMMANDS)))}
    assert _names(calls).count("add_optimization_profile") == 1
    assert "set_flag" not in _names(calls)                                  # fp32: no FP16 flag
    side = te.read_sidecar(tmp_path / "moe.engine")
    assert side["key"] == {"onnx_sha256": te.sha256_file(onnx_path), "trt_version": fake_trt.__version__,
                           "gpu_name": FAKE_GPU[0], "compute_capability": "9.0", "precision": "fp32", "max_batch": 4}
    assert side["policy_meta"]["experts"] == ["curve", "straight"] and side["policy_meta"]["input_hw"] == [66, 200]
    assert side["input_shapes"]["command"] == [4, len(COMMANDS)] and key.max_batch == 4
    assert list((tmp_path / "cache" / "tensorrt").glob("timing-trt*-sm90.cache")), "timing cache persisted"


def test_fp16_policy_engine_on_trt10_only(fake_trt, experts, tmp_path):
    onnx_path = _onnx_copy(experts, tmp_path)
    cfg = te.EngineBuildConfig(precision="fp16")
    if fake_trt.major == 10:
        assert pr.build_policy_engine(onnx_path, tmp_path / "m.engine", cfg).precision == "fp16"
        assert ("set_flag", 0) in fake_trt.calls
    else:
        with pytest.raises(ValueError, match="strongly typed.*policy ONNX is fp32"):
            pr.build_policy_engine(onnx_path, tmp_path / "m.engine", cfg)


def test_tensorrt_runtime_binds_the_three_inputs_and_matches_torch(fake_trt, experts, tmp_path):
    ckpts = experts[0]
    rt = PolicyRuntime.load(_onnx_copy(experts, tmp_path), "tensorrt", device="cpu")
    ref = PolicyRuntime.load(ckpts, "torch")
    assert rt.backend == "tensorrt" and rt.experts == ("curve", "straight") and rt.engine_path == tmp_path / "moe.engine"
    x = _inputs(5)
    fake_trt.calls.clear()
    got = rt.run(*x)
    assert got.shape == (5, 2, 3) and np.max(np.abs(got - ref.run(*x))) <= 1e-4
    assert fake_trt.calls == [("set_input_shape", "image", (5, 3, 66, 200)), ("set_input_shape", "speed", (5, 1)),
                              ("set_input_shape", "command", (5, len(COMMANDS))),
                              ("set_tensor_address", "image"), ("set_tensor_address", "speed"),
                              ("set_tensor_address", "command"), ("set_tensor_address", "controls"),
                              ("execute_async_v3", 0)]
    fake_trt.calls.clear()
    x2 = _inputs(5, seed=1)
    assert np.max(np.abs(rt.run(*x2) - ref.run(*x2))) <= 1e-4
    assert fake_trt.calls == [("execute_async_v3", 0)], "same batch: no re-binding"
    frame = np.random.default_rng(3).integers(0, 256, (120, 160, 4), dtype=np.uint8)
    for cmd in ("LEFT", "RIGHT"):   # the command input reaches the engine: the branches differ
        assert np.max(np.abs(rt.predict(frame, 25.0, cmd) - ref.predict(frame, 25.0, cmd))) <= 1e-4
    assert not np.allclose(rt.predict(frame, 25.0, "LEFT"), rt.predict(frame, 25.0, "RIGHT"))
    with pytest.raises(ValueError, match="batch 9 exceeds the policy engine's max batch 8"):
        rt.run(*_inputs(9))


def test_engine_cached_across_loads_then_rebuilt_once_on_gpu_change(fake_trt, experts, tmp_path, monkeypatch,
                                                                    caplog):
    builds = lambda: _names(fake_trt.calls).count("build_serialized_network")   # noqa: E731
    ckpts = experts[0]
    first = PolicyRuntime.load(ckpts, "tensorrt", device="cpu")   # checkpoints: exported once into the cache dir
    assert first.engine_path.parent == tmp_path / "cache" / "policy"
    with caplog.at_level(logging.INFO, logger="perception.policy_runtime"):
        caplog.clear()
        again = PolicyRuntime.load(ckpts, "tensorrt", device="cpu")
        assert builds() == 1 and again.engine_path == first.engine_path and not caplog.records
        direct = PolicyRuntime.load(first.engine_path, "tensorrt", device="cpu")   # the .engine itself
        assert builds() == 1 and direct.experts == ("curve", "straight")
        monkeypatch.setattr(te, "gpu_identity", lambda device=0: ("NVIDIA RTX 4090", "8.9"))
        PolicyRuntime.load(ckpts, "tensorrt", device="cpu")
    assert builds() == 2
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0].getMessage()
    assert "gpu_name: engine has 'NVIDIA Stand-in H100', wanted 'NVIDIA RTX 4090'" in warnings[0].getMessage()
    x = _inputs(2)
    np.testing.assert_allclose(direct.run(*x), PolicyRuntime.load(ckpts, "torch").run(*x), atol=1e-4)


def test_stale_engine_without_its_onnx_and_foreign_engines_are_explained(fake_trt, experts, tmp_path, monkeypatch):
    onnx_path = _onnx_copy(experts, tmp_path)
    engine = PolicyRuntime.load(onnx_path, "tensorrt", device="cpu").engine_path
    monkeypatch.setattr(fake_trt, "__version__", "99.0.0")               # another TensorRT: rebuilt from the ONNX
    assert PolicyRuntime.load(engine, "tensorrt", device="cpu").engine_path == engine
    assert te.read_sidecar(engine)["key"]["trt_version"] == "99.0.0"
    monkeypatch.setattr(te, "gpu_identity", lambda device=0: ("Tesla T4", "7.5"))
    onnx_path.unlink()
    with pytest.raises(te.EngineMismatchError, match=r"gpu_name: engine has 'NVIDIA Stand-in H100', wanted 'Tesla T4'"
                                                     r".*cannot be rebuilt: source ONNX .* not found; re-export"):
        PolicyRuntime.load(engine, "tensorrt", device="cpu")
    clf = tmp_path / "clf.engine"
    clf.write_bytes(b"plan")
    (tmp_path / "clf.engine.json").write_text(json.dumps({"key": {}, "meta": {"arch": "simple_cnn"}}))
    with pytest.raises(ValueError, match="not a policy engine"):
        PolicyRuntime.load(clf, "tensorrt", device="cpu")
    with pytest.raises(ValueError, match="is a TensorRT engine: load it with backend tensorrt"):
        PolicyRuntime.load(engine, "onnxruntime")


def test_without_tensorrt_the_backend_says_so_in_one_line(experts, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorrt", None)      # import tensorrt -> ImportError
    with pytest.raises(RuntimeError, match="policy backend 'tensorrt' is unavailable: tensorrt not importable"):
        PolicyRuntime.load(experts[0], "tensorrt")
    argv = ["bench", "--backend", "tensorrt", "--frames", "2"] + [f"--expert={k}={v}" for k, v in experts[0].items()]
    assert pr.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "tensorrt not importable" in err
