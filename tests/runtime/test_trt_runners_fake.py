"""TensorRT runners without TensorRT: one-line errors, feed checking, and the pycuda runner's name-based I/O
binding run against a fake engine and fake CUDA memory."""

import sys
import types

import numpy as np
import pytest
from trt_facts import NO_GPU_ERROR

from trt_centerpoint.errors import UserError
from trt_centerpoint.runtime.trt.io import TensorSpec, prepare_feed
from trt_centerpoint.runtime.trt.pycuda_runner import PycudaEngineRunner
from trt_centerpoint.runtime.trt.runner import TrtEngineRunner


@pytest.fixture
def plan(tmp_path):
    path = tmp_path / "rpn_head.int8.plan"
    path.write_bytes(b"FAKE-PLAN")
    return path


def test_runners_without_tensorrt_raise_one_line(plan, no_tensorrt):
    for runner in (TrtEngineRunner, PycudaEngineRunner):
        with pytest.raises(UserError) as err:
            runner(plan)
        assert str(err.value) == ("TensorRT is not installed (pip install 'trt-centerpoint[trt]' on a machine "
                                  "with an NVIDIA GPU): cannot run rpn_head.int8.plan")


def test_pycuda_runner_without_pycuda(plan, fake_trt, monkeypatch):
    fake_trt("10.8.0")
    monkeypatch.setitem(sys.modules, "pycuda", None)
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    with pytest.raises(UserError, match=r"^pycuda is not installed \(pip install .*\): cannot run rpn_head"):
        PycudaEngineRunner(plan)


def test_missing_plan(tmp_path):
    for runner in (TrtEngineRunner, PycudaEngineRunner):
        with pytest.raises(UserError, match="no such engine file"):
            runner(tmp_path / "missing.plan")


# ------------------------------------------------------------------------------------------------ feed checks

SPECS = [TensorSpec("input", True, np.dtype(np.float16), (1, 4, -1, 8))]


def test_prepare_feed_casts_and_checks():
    x = np.ones((1, 4, 6, 8), np.float32)
    out = prepare_feed(x, SPECS, "e.plan")  # one input: the array alone
    assert out["input"].dtype == np.float16 and out["input"].flags.c_contiguous
    assert prepare_feed({"input": x}, SPECS, "e.plan")["input"].shape == (1, 4, 6, 8)
    with pytest.raises(UserError, match=r"e.plan: the engine's inputs are input; missing input; unknown bev"):
        prepare_feed({"bev": x}, SPECS, "e.plan")
    with pytest.raises(UserError, match=r"must have shape 1x4x\?x8, got 1x4x6x9"):
        prepare_feed(np.ones((1, 4, 6, 9), np.float32), SPECS, "e.plan")
    with pytest.raises(UserError, match="must be float16, got int64"):
        prepare_feed(np.ones((1, 4, 6, 8), np.int64), SPECS, "e.plan")
    two = SPECS + [TensorSpec("extra", True, np.dtype(np.float32), (1,))]
    with pytest.raises(UserError, match="pass a dict by name"):
        prepare_feed(x, two, "e.plan")


# ------------------------------------------------------------------------------------------ pycuda, with fakes


def test_pycuda_runner_binds_by_name_and_times(plan, fake_cuda_runtime):
    device = fake_cuda_runtime(np.float32)
    x = np.arange(1 * 4 * 6 * 8, dtype=np.float32).reshape(1, 4, 6, 8) / 100
    with PycudaEngineRunner(plan) as runner:
        assert runner.input_names == ["input"] and runner.output_names == ["hm", "reg"]
        out = runner.infer({"input": x})
        np.testing.assert_allclose(out["hm"], 2 * x + 1)
        np.testing.assert_allclose(out["reg"], [[x.sum(), x.max()]], rtol=1e-6)
        assert runner.context.shapes["input"] == (1, 4, 6, 8)  # dynamic dimension set per call
        addresses = dict(runner.context.addresses)
        assert set(addresses) == {"input", "hm", "reg"} and len(set(addresses.values())) == 3
        assert runner.last_gpu_ms == 5.0  # the fake clock: execute = 5
        assert runner.last_total_ms == 8.0  # + 1 copy in + 2 copies out

        # a second, larger call reallocates; a smaller one reuses
        big = np.ones((1, 4, 10, 8), np.float32)
        np.testing.assert_allclose(runner.infer(big)["hm"], 3.0)
        assert runner.context.addresses["input"] != addresses["input"]
        kept = dict(runner.context.addresses)
        small = np.zeros((1, 4, 2, 8), np.float32)
        np.testing.assert_allclose(runner.infer(small)["hm"], 1.0)
        assert runner.context.addresses == kept

        assert out["hm"].base is None or not np.shares_memory(out["hm"], runner._buffers["hm"].host)
        times = runner.time_gpu(iterations=3, warmup=2)
        assert times == [5.0, 5.0, 5.0] and runner.context.executions == 3 + 5
        with pytest.raises(UserError, match="outside the engine's optimization profile"):
            runner.infer(np.zeros((1, 4, 100, 8), np.float32))
    assert device.contexts[-1] == "detach" and device.contexts.count("push") == device.contexts.count("pop")
    assert not device.memory  # every allocation freed
    with pytest.raises(UserError, match="closed"):
        runner.infer(x)


def test_pycuda_runner_fp16_engine_casts_inputs(plan, fake_cuda_runtime):
    fake_cuda_runtime(np.float16)
    x = np.full((1, 4, 3, 8), 0.5, np.float32)
    with PycudaEngineRunner(plan) as runner:
        out = runner.infer(x)
    assert out["hm"].dtype == np.float16
    np.testing.assert_allclose(out["hm"].astype(np.float32), 2.0)


def test_pycuda_runner_refuses_a_foreign_plan(tmp_path, fake_cuda_runtime):
    device = fake_cuda_runtime()
    bad = tmp_path / "other.plan"
    bad.write_bytes(b"built by another TensorRT")
    with pytest.raises(UserError, match="cannot deserialize this engine"):
        PycudaEngineRunner(bad)
    assert device.contexts == ["push", "pop", "detach"]


# ---------------------------------------------------------------------------- Polygraphy TrtRunner, with fakes


def test_trt_engine_runner_wraps_polygraphy(plan, fake_trt, monkeypatch):
    trt = fake_trt("10.12.0")
    seen = {}

    class FakeEngine:
        num_io_tensors = 2
        names = ["input", "hm"]

        def get_tensor_name(self, i):
            return self.names[i]

        def get_tensor_mode(self, name):
            return "INPUT" if name == "input" else "OUTPUT"

        def get_tensor_dtype(self, name):
            return np.dtype(np.float16)

        def get_tensor_shape(self, name):
            return (1, 4, 2, 2)

    class TrtRunner:
        def __init__(self, engine, name=None):
            seen["loader"], seen["name"] = engine, name
            self.is_active = False
            self._buffer = np.zeros((1, 4, 2, 2), np.float16)

        def activate(self):
            self.is_active, self.engine = True, FakeEngine()

        def deactivate(self):
            self.is_active = False

        def infer(self, feed):
            seen["feed"] = feed
            self._buffer[...] = feed["input"] * 2  # Polygraphy reuses its output buffers
            return {"hm": self._buffer}

        def last_inference_time(self):
            return 0.001

    loaders = types.ModuleType("polygraphy.backend.trt")
    loaders.TrtRunner = TrtRunner
    loaders.EngineFromBytes = lambda data: ("EngineFromBytes", data)
    common = types.ModuleType("polygraphy.backend.common")
    common.BytesFromPath = lambda path: ("BytesFromPath", path)
    monkeypatch.setitem(sys.modules, "polygraphy.backend.trt", loaders)
    monkeypatch.setitem(sys.modules, "polygraphy.backend.common", common)
    assert trt.__version__ == "10.12.0"

    with TrtEngineRunner(plan) as head:
        assert seen["loader"] == ("EngineFromBytes", ("BytesFromPath", str(plan)))
        assert seen["name"] == "rpn_head.int8"
        assert head.input_names == ["input"] and head.output_names == ["hm"]
        first = head.infer({"input": np.ones((1, 4, 2, 2), np.float32)})
        assert seen["feed"]["input"].dtype == np.float16  # cast to the engine's FP16 input
        second = head.infer(np.full((1, 4, 2, 2), 3, np.float32))
        assert float(first["hm"].max()) == 2.0 and float(second["hm"].max()) == 6.0  # copies, not views
        assert head.last_inference_time() == 0.001
    assert not head.runner.is_active


def test_trt_engine_runner_without_a_usable_gpu_is_one_line(plan, fake_trt, monkeypatch):
    """Polygraphy's EngineFromBytes makes a trt.Runtime; without a usable GPU the real bindings raise TypeError."""
    trt = fake_trt("11.4.0", builder_error=TypeError(NO_GPU_ERROR))

    class TrtRunner:
        def __init__(self, engine, name=None):
            self.is_active = False

        def activate(self):
            trt.Runtime(trt.Logger())

    loaders = types.ModuleType("polygraphy.backend.trt")
    loaders.TrtRunner, loaders.EngineFromBytes = TrtRunner, lambda data: data
    common = types.ModuleType("polygraphy.backend.common")
    common.BytesFromPath = lambda path: path
    monkeypatch.setitem(sys.modules, "polygraphy.backend.trt", loaders)
    monkeypatch.setitem(sys.modules, "polygraphy.backend.common", common)
    runner = TrtEngineRunner(plan)
    with pytest.raises(UserError) as err:
        runner.activate()
    assert "TensorRT 11.4.0 cannot create a runtime, no usable NVIDIA GPU / driver?" in str(err.value)
    assert "nullptr" in str(err.value) and "\n" not in str(err.value)
