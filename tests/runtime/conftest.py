"""Engine tests: the `tensorrt` / `tensorrt_rtx` markers' skips, ONNX models, and fakes of TensorRT / pycuda.

Tests marked ``@pytest.mark.tensorrt`` need a real TensorRT (and a GPU): they are skipped, with the reason,
where TensorRT cannot be imported or cannot create a builder. Tests marked ``@pytest.mark.tensorrt_rtx``
build with the real TensorRT-RTX (no GPU needed; the `rtx` extra) and are skipped only where it is missing.
The fakes (injected into ``sys.modules`` by monkeypatch) stand in for what TensorRT-RTX cannot show: TensorRT
proper's version rules, its engine inspector, and running an engine.
"""

from __future__ import annotations

import copy
import itertools
import json
import sys
import types

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

# ----------------------------------------------------------------------------------------------- the marker

_TRT_STATUS: tuple[bool, str] | None = None


def _tensorrt_status() -> tuple[bool, str]:
    global _TRT_STATUS
    if _TRT_STATUS is None:
        from trt_centerpoint.runtime.trt.env import tensorrt_available

        _TRT_STATUS = tensorrt_available(check_gpu=True)
    return _TRT_STATUS


def pytest_configure(config):
    config.addinivalue_line("markers", "tensorrt_rtx: builds with the real TensorRT-RTX (skipped where it is missing)")


def _tensorrt_rtx_missing() -> str | None:
    from trt_centerpoint.runtime.trt.env import tensorrt_rtx_status

    rtx, reason = tensorrt_rtx_status()
    return None if rtx is not None else reason


def pytest_runtest_setup(item):
    if item.get_closest_marker("tensorrt") is not None:
        ok, reason = _tensorrt_status()
        if not ok:
            pytest.skip(f"needs TensorRT and a GPU: {reason}")
    if item.get_closest_marker("tensorrt_rtx") is not None:
        missing = _tensorrt_rtx_missing()
        if missing:
            pytest.skip(f"needs TensorRT-RTX: {missing}")


# ------------------------------------------------------------------------------------------ small ONNX models


def make_head_onnx(path, *, qdq: bool = True, fp16_io: bool = False, channels: int = 4, size: int = 8):
    """A tiny rpn_head-like ONNX: input 'input' [1, C, S, S] -> conv 3x3 + ReLU -> outputs 'hm' and 'reg'.

    With ``qdq`` every conv input (activation per-tensor, weight per-channel axis 0) gets a symmetric int8
    Q/DQ pair, TensorRT's explicit-quantization placement. With ``fp16_io`` the graph I/O is FLOAT16 (Casts
    inside). Returns the numpy weights so a reference can be computed.
    """
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 0.3, (8, channels, 3, 3)).astype(np.float32)
    w_hm = rng.normal(0, 0.3, (2, 8, 1, 1)).astype(np.float32)
    w_reg = rng.normal(0, 0.3, (3, 8, 1, 1)).astype(np.float32)
    nodes, inits = [], []
    io_type = TensorProto.FLOAT16 if fp16_io else TensorProto.FLOAT

    def const(name, array):
        inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def qdq_act(x, scale):
        if not qdq:
            return x
        s, z = const(f"{x}_s", np.float32(scale)), const(f"{x}_z", np.int8(0))
        nodes.append(helper.make_node("QuantizeLinear", [x, s, z], [f"{x}_q"]))
        nodes.append(helper.make_node("DequantizeLinear", [f"{x}_q", s, z], [f"{x}_dq"]))
        return f"{x}_dq"

    def weight(name, w):
        if not qdq:
            return const(name, w)
        scale = np.abs(w).reshape(w.shape[0], -1).max(axis=1) / 127.0
        q = np.clip(np.round(w / scale[:, None, None, None]), -127, 127).astype(np.int8)
        nodes.append(helper.make_node("DequantizeLinear", [const(f"{name}_q", q),
                                                           const(f"{name}_s", scale.astype(np.float32)),
                                                           const(f"{name}_z", np.zeros(w.shape[0], np.int8))],
                                      [name], axis=0))
        return name

    x = "input"
    if fp16_io:
        nodes.append(helper.make_node("Cast", ["input"], ["input_f32"], to=TensorProto.FLOAT))
        x = "input_f32"
    nodes.append(helper.make_node("Conv", [qdq_act(x, 0.03), weight("w1", w1)], ["c1"], pads=[1, 1, 1, 1]))
    nodes.append(helper.make_node("Relu", ["c1"], ["r1"]))
    r1 = qdq_act("r1", 0.05)
    outs = []
    for name, w in (("hm", w_hm), ("reg", w_reg)):
        out = f"{name}_f32" if fp16_io else name
        nodes.append(helper.make_node("Conv", [r1, weight(f"w_{name}", w)], [out]))
        if fp16_io:
            nodes.append(helper.make_node("Cast", [out], [name], to=TensorProto.FLOAT16))
        outs.append(helper.make_tensor_value_info(name, io_type, [1, w.shape[0], size, size]))
    inputs = [helper.make_tensor_value_info("input", io_type, [1, channels, size, size])]
    graph = helper.make_graph(nodes, "tiny_head", inputs, outs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return {"w1": w1, "w_hm": w_hm, "w_reg": w_reg}


@pytest.fixture
def make_head():
    """``make_head_onnx`` for tests that name their files."""
    return make_head_onnx


@pytest.fixture
def qdq_onnx(tmp_path):
    path = tmp_path / "rpn_head.int8.onnx"
    make_head_onnx(path, qdq=True)
    return path


@pytest.fixture
def fp32_onnx(tmp_path):
    path = tmp_path / "rpn_head.onnx"
    make_head_onnx(path, qdq=False)
    return path


@pytest.fixture
def fp16_io_onnx(tmp_path):
    path = tmp_path / "rpn_head.int8.fp16io.onnx"
    make_head_onnx(path, qdq=True, fp16_io=True)
    return path


@pytest.fixture
def no_tensorrt(monkeypatch):
    """TensorRT and pycuda absent, even on a machine that has them (None in sys.modules: import fails)."""
    for name in ("tensorrt", "pycuda", "pycuda.driver"):
        monkeypatch.setitem(sys.modules, name, None)


# --------------------------------------------------------------------------------------------- fake TensorRT

# inspector JSON as TensorRT 10.x writes it with DETAILED verbosity (trimmed to the fields read)
ENGINE_INFO_10 = {
    "Layers": [
        {"Name": "Reformatting CopyNode for Input Tensor 0 to conv1", "LayerType": "Reformat",
         "Inputs": [{"Name": "input", "Format/Datatype": "Row major linear FP32"}],
         "Outputs": [{"Name": "input_q",
                      "Format/Datatype": "Thirty-two wide channel vectorized row major Int8 format"}]},
        {"Name": "conv1 + relu", "LayerType": "CaskConvolution",
         "Inputs": [{"Name": "input_q", "Format/Datatype": "Thirty-two wide channel vectorized row major Int8 format"}],
         "Outputs": [{"Name": "r1", "Format/Datatype": "Thirty-two wide channel vectorized row major Int8 format"}],
         "TacticName": "sm80_xmma_fprop_implicit_gemm_interleaved_i8i8"},
        {"Name": "conv_hm", "LayerType": "CaskConvolution",
         "Inputs": [{"Name": "r1", "Format/Datatype": "Thirty-two wide channel vectorized row major Int8 format"}],
         "Outputs": [{"Name": "hm", "Format/Datatype": "Row major linear FP32"}]},
        {"Name": "conv_reg", "LayerType": "CaskConvolution",
         "Inputs": [{"Name": "r1h", "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}],
         "Outputs": [{"Name": "reg", "Format/Datatype": "Row major linear FP32"}]},
    ],
    "Bindings": ["input", "hm", "reg"],
}




@pytest.fixture
def engine_info_10():
    return copy.deepcopy(ENGINE_INFO_10)


def make_fake_trt(version: str, *, strongly_typed_flag: bool = True, builder_error: Exception | None = None):
    """A fake ``tensorrt`` with what the code reads. As the real 10.x and 11.x bindings (11.0 and 11.4 still
    define the deprecated, ignored STRONGLY_TYPED flag), it has the creation flag unless `strongly_typed_flag`
    is False (a later TensorRT that may drop it). `builder_error` is raised by ``Builder`` and ``Runtime``: the
    real bindings raise ``TypeError(NO_GPU_ERROR)`` there without a usable GPU."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.ProfilingVerbosity = types.SimpleNamespace(DETAILED="DETAILED", LAYER_NAMES_ONLY="LAYER_NAMES_ONLY")
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.NetworkDefinitionCreationFlag = (types.SimpleNamespace(STRONGLY_TYPED=1) if strongly_typed_flag
                                         else types.SimpleNamespace())
    trt.LayerInformationFormat = types.SimpleNamespace(JSON="JSON", ONELINE="ONELINE")
    trt.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT", NONE="NONE")
    trt.nptype = lambda dtype: np.dtype(dtype).type  # the fake's TensorRT dtypes are numpy dtypes

    class Logger:
        ERROR, WARNING, INFO = 1, 2, 3

        def __init__(self, severity=None):
            self.severity = severity

    class Builder:
        def __init__(self, logger):
            if builder_error is not None:
                raise builder_error

    class Runtime(Builder):
        pass

    trt.Logger, trt.Builder, trt.Runtime = Logger, Builder, Runtime
    return trt


@pytest.fixture
def fake_trt(monkeypatch):
    """Install a fake ``tensorrt`` of the given version: ``fake_trt("10.8.0")`` -> the module."""

    def install(version: str = "10.12.0.36", **kwargs):
        trt = make_fake_trt(version, **kwargs)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        return trt

    return install


class FakeBuild:
    """A fake ``polygraphy.backend.trt`` (loaders only) that records what the build asked for."""

    def __init__(self, engine_info=None, cache_out=b"CACHE-v2", fail=None, inspect_fail=None):
        self.calls: dict = {}
        self.engine_info = ENGINE_INFO_10 if engine_info is None else engine_info
        self.cache_out, self.fail, self.inspect_fail = cache_out, fail, inspect_fail
        self.module = self._module()

    def _module(self):
        rec = self
        mod = types.ModuleType("polygraphy.backend.trt")

        class NetworkFromOnnxPath:
            def __init__(self, path, strongly_typed=None, **kwargs):
                rec.calls["network"] = {"path": path, "strongly_typed": strongly_typed, **kwargs}

            def __call__(self):
                return "builder", "network", "parser"

        class TimingCache:
            def serialize(self):
                return bytearray(rec.cache_out)  # stands in for IHostMemory (buffer protocol)

        class Config:
            def get_timing_cache(self):
                return TimingCache()

        class CreateConfig:
            def __init__(self, **kwargs):
                cache = kwargs.get("load_timing_cache")
                rec.calls["config"] = dict(kwargs)
                rec.calls["cache_in"] = cache.read() if cache is not None else None

            def __call__(self, builder, network):
                assert (builder, network) == ("builder", "network")
                return Config()

        class EngineBytesFromNetwork:
            def __init__(self, network, config=None, save_timing_cache=None):
                self.network, self.config = network, config
                rec.calls["save_timing_cache"] = save_timing_cache

            def __call__(self):
                from polygraphy.logger import G_LOGGER

                builder, network, _ = self.network  # build_engine parses first, then hands the tuple over
                self.config(builder, network)
                G_LOGGER.warning("fake TensorRT: a build warning")
                G_LOGGER.verbose("fake TensorRT: tactic chosen")
                if rec.fail is not None:
                    G_LOGGER.error("fake TensorRT: unsupported operator Foo")
                    rec.fail()
                return bytearray(b"FAKE-ENGINE")

        class Inspector:
            def get_engine_information(self, fmt):
                rec.calls["inspector_format"] = fmt
                if rec.inspect_fail is not None:
                    raise rec.inspect_fail
                return json.dumps(rec.engine_info)

        class Engine:
            def create_engine_inspector(self):
                return Inspector()

        class EngineFromBytes:
            def __init__(self, data):
                rec.calls["engine_bytes"] = bytes(data)

            def __call__(self):
                return Engine()

        mod.NetworkFromOnnxPath, mod.CreateConfig = NetworkFromOnnxPath, CreateConfig
        mod.EngineBytesFromNetwork, mod.EngineFromBytes = EngineBytesFromNetwork, EngineFromBytes
        return mod


@pytest.fixture
def fake_build(monkeypatch):
    """Install a fake Polygraphy TensorRT backend: ``fake_build(**FakeBuild kwargs)`` -> the recorder."""

    def install(**kwargs):
        rec = FakeBuild(**kwargs)
        monkeypatch.setitem(sys.modules, "polygraphy.backend.trt", rec.module)
        return rec

    return install


# ---------------------------------------------------------------------------------- fake engine + pycuda


class FakeDevice:
    """Fake device memory and a clock that advances with every operation on the stream."""

    def __init__(self):
        self.memory: dict[int, bytearray] = {}
        self.freed: list[int] = []
        self._addresses = itertools.count(0x1000, 0x1000)
        self.clock = 0.0
        self.contexts = []  # push / pop log


class FakeEngine:
    """Engine with input 'input' [1, 4, -1, 8] (dynamic H) and outputs hm = 2 x + 1, reg = [sum, max]."""

    def __init__(self, device: FakeDevice, dtype=np.float32):
        self.device, self.dtype = device, np.dtype(dtype)
        self.tensors = [("input", "INPUT", (1, 4, -1, 8)), ("hm", "OUTPUT", (1, 4, -1, 8)), ("reg", "OUTPUT", (1, 2))]

    num_io_tensors = property(lambda self: len(self.tensors))

    def get_tensor_name(self, i):
        return self.tensors[i][0]

    def _spec(self, name):
        return next(t for t in self.tensors if t[0] == name)

    def get_tensor_mode(self, name):
        return self._spec(name)[1]

    def get_tensor_dtype(self, name):
        return self.dtype

    def get_tensor_shape(self, name):
        return self._spec(name)[2]

    def create_execution_context(self):
        return FakeContext(self)


class FakeContext:
    def __init__(self, engine: FakeEngine):
        self.engine, self.shapes, self.addresses, self.executions = engine, {}, {}, 0

    def set_input_shape(self, name, shape):
        if shape[2] > 64:  # the profile's max
            return False
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        if name == "hm":
            return self.shapes.get("input", (1, 4, -1, 8))
        return self.engine.get_tensor_shape(name)

    def set_tensor_address(self, name, address):
        self.addresses[name] = address
        return True

    def execute_async_v3(self, stream_handle):
        mem, dt = self.engine.device.memory, self.engine.dtype
        shape = self.shapes["input"]
        n = int(np.prod(shape))
        x = np.frombuffer(bytes(mem[self.addresses["input"]][: n * dt.itemsize]), dt).reshape(shape)
        hm = (2 * x.astype(np.float32) + 1).astype(dt)
        reg = np.array([[x.astype(np.float32).sum(), x.astype(np.float32).max()]], dt)
        for name, value in (("hm", hm), ("reg", reg)):
            mem[self.addresses[name]][: value.nbytes] = value.tobytes()
        self.engine.device.clock += 5.0
        self.executions += 1
        return True


def make_fake_cuda(device: FakeDevice):
    cuda = types.ModuleType("pycuda.driver")

    class Allocation:
        def __init__(self, nbytes):
            self.address = next(device._addresses)
            device.memory[self.address] = bytearray(nbytes)

        def __int__(self):
            return self.address

        def free(self):
            device.freed.append(self.address)
            device.memory.pop(self.address, None)

    class Context:
        def push(self):
            device.contexts.append("push")

        def pop(self):
            device.contexts.append("pop")

        def detach(self):
            device.contexts.append("detach")

    class Device:
        def __init__(self, index):
            self.index = index

        def retain_primary_context(self):
            return Context()

    class Stream:
        handle = 0xBEEF

        def synchronize(self):
            pass

    class Event:
        t = None

        def record(self, stream=None):
            self.t = device.clock

        def synchronize(self):
            pass

        def time_since(self, other):
            return self.t - other.t

    def memcpy_htod_async(dest, src, stream=None):
        data = np.ascontiguousarray(src).tobytes()
        device.memory[int(dest)][: len(data)] = data
        device.clock += 1.0

    def memcpy_dtoh_async(dest, src, stream=None):
        raw = bytes(device.memory[int(src)][: dest.nbytes])
        dest[...] = np.frombuffer(raw, dest.dtype).reshape(dest.shape)
        device.clock += 1.0

    cuda.init = lambda: None
    cuda.Device, cuda.Stream, cuda.Event, cuda.mem_alloc = Device, Stream, Event, Allocation
    cuda.pagelocked_empty = lambda shape, dtype: np.empty(shape, dtype)
    cuda.memcpy_htod_async, cuda.memcpy_dtoh_async = memcpy_htod_async, memcpy_dtoh_async
    return cuda


@pytest.fixture
def fake_cuda_runtime(monkeypatch, fake_trt):
    """Fake tensorrt (Runtime deserializing into FakeEngine) + fake pycuda.driver; returns (device, install)."""

    def install(dtype=np.float32, version="10.8.0"):
        device = FakeDevice()
        trt = fake_trt(version)

        class Runtime:
            def __init__(self, logger):
                pass

            def deserialize_cuda_engine(self, data):
                return FakeEngine(device, dtype) if data == b"FAKE-PLAN" else None

        trt.Runtime = Runtime
        cuda = make_fake_cuda(device)
        package = types.ModuleType("pycuda")
        package.driver = cuda
        monkeypatch.setitem(sys.modules, "pycuda", package)
        monkeypatch.setitem(sys.modules, "pycuda.driver", cuda)
        return device

    return install


# ------------------------------------------------------------------------------- real head files, quick PTQ


def export_head_files(out, config: str, checkpoint=None) -> dict:
    """rpn_head.fp32.onnx + rpn_head.int8.onnx of `config` in `out`: the float model (random init, or
    `checkpoint`), its 2D part calibrated (max) on two random non-negative BEV tensors. Returns the paths."""
    import copy

    import torch
    from pytorch_quantization.nn import TensorQuantizer

    from trt_centerpoint.config import load_config
    from trt_centerpoint.export.head.export import RpnHeadModule, bev_input_shape, export_rpn_head
    from trt_centerpoint.export.head.int8 import export_rpn_head_int8
    from trt_centerpoint.model.centerpoint import CenterPoint
    from trt_centerpoint.model.checkpoint import load_checkpoint
    from trt_centerpoint.quant.ptq import prepare_model
    from trt_centerpoint.quant.quantize import DEFAULT_SKIP

    cfg = load_config(config)
    torch.manual_seed(0)
    model = CenterPoint(cfg).eval()
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    qmodel, _ = prepare_model(cfg, DEFAULT_SKIP, "max", bn_fused=True, model=copy.deepcopy(model))
    head = RpnHeadModule(qmodel).eval()
    quantizers = [m for m in head.modules() if isinstance(m, TensorQuantizer) and m._calibrator is not None]
    for q in quantizers:
        q.disable_quant()
        q.enable_calib()
    with torch.no_grad():
        for _ in range(2):
            head(torch.relu(torch.randn(bev_input_shape(cfg))))
    for q in quantizers:
        q.load_calib_amax()
        q.enable_quant()
        q.disable_calib()
    paths = {"fp32": out / "rpn_head.fp32.onnx", "int8": out / "rpn_head.int8.onnx"}
    onnx.save(export_rpn_head(model, cfg).model, str(paths["fp32"]))
    onnx.save(export_rpn_head_int8(qmodel, cfg).model, str(paths["int8"]))
    return paths


@pytest.fixture(scope="session")
def tiny_heads(tmp_path_factory) -> dict:
    """The tiny config's head files (random init, 2D part calibrated on random BEV)."""
    return export_head_files(tmp_path_factory.mktemp("tiny_heads"), "tiny")


@pytest.fixture(scope="session")
def sample_heads(tmp_path_factory) -> dict:
    """The bundled sample's head files (samples/synthetic_small.pth, 2D part calibrated on random BEV)."""
    from trt_centerpoint.stages.build import SAMPLE_CHECKPOINT, SAMPLE_CONFIG

    if not SAMPLE_CHECKPOINT.is_file():
        pytest.skip(f"the bundled sample is not here ({SAMPLE_CHECKPOINT})")
    return export_head_files(tmp_path_factory.mktemp("sample_heads"), SAMPLE_CONFIG, SAMPLE_CHECKPOINT)
