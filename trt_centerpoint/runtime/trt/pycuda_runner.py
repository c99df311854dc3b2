"""A lean TensorRT runner for deployment targets: ``tensorrt`` + ``pycuda`` + numpy, no torch, no Polygraphy.

    with PycudaEngineRunner("rpn_head.int8.plan") as head:
        outputs = head.infer({"input": bev})  # {output name: numpy array}
        head.last_gpu_ms                      # execute_async_v3 alone, CUDA events
        head.last_total_ms                    # host->device copies + execute + device->host copies
        head.time_gpu(iterations=100, warmup=10)   # per-iteration GPU ms on the bound buffers

I/O is by name (``num_io_tensors``, ``get_tensor_name``, ``get_tensor_mode``, ``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``). Buffers are page-locked on the host and grow on demand;
dynamic input dimensions are set per call. The runner works in the device's primary CUDA context (the one
TensorRT's runtime API uses), pushed around each call, so it lives alongside other CUDA users in the process.
Inputs are cast to the engine's types (float32 -> FP16 for an ``--fp16-io`` engine); outputs come back in
the engine's types, as copies.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trt_centerpoint.errors import UserError
from trt_centerpoint.runtime.trt.env import require_pycuda, require_tensorrt
from trt_centerpoint.runtime.trt.io import SpecNames, TensorSpec, io_specs, prepare_feed


class _Buffer:
    """One tensor's page-locked host array and device allocation, reallocated when it must grow."""

    def __init__(self, cuda):
        self._cuda = cuda
        self.capacity = 0
        self.device = None
        self.host = None

    def ensure(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        nbytes = max(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize, 1)
        if nbytes > self.capacity:
            self.free()
            self.device = self._cuda.mem_alloc(nbytes)
            self.capacity = nbytes
        if self.host is None or self.host.shape != tuple(shape) or self.host.dtype != dtype:
            self.host = self._cuda.pagelocked_empty(tuple(shape), dtype)
        return self.host

    @property
    def address(self) -> int:
        return int(self.device)

    def free(self) -> None:
        if self.device is not None:
            self.device.free()
        self.device, self.capacity = None, 0


class PycudaEngineRunner(SpecNames):
    """A serialized engine as ``feed -> {output: array}`` with CUDA-event timing."""

    def __init__(self, plan_path, device: int = 0):
        self.path = Path(plan_path)
        if not self.path.is_file():
            raise UserError(f"{self.path}: no such engine file")
        self._trt = trt = require_tensorrt(f"run {self.path.name}")
        self._cuda = cuda = require_pycuda(f"run {self.path.name}")
        cuda.init()
        self._ctx = cuda.Device(device).retain_primary_context()
        self._ctx.push()
        try:  # on failure: release what was made, give the context back, re-raise
            self._logger = trt.Logger(trt.Logger.WARNING)
            self._runtime = trt.Runtime(self._logger)
            self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
            if self.engine is None:
                raise UserError(f"{self.path}: TensorRT {trt.__version__} cannot deserialize this engine "
                                f"(built by another TensorRT version, or not an engine)")
            self.context = self.engine.create_execution_context()
            if self.context is None:
                raise UserError(f"{self.path}: cannot create an execution context (out of GPU memory?)")
            self.specs: list[TensorSpec] = io_specs(self.engine, trt)
            self._buffers = {s.name: _Buffer(cuda) for s in self.specs}
            self.stream = cuda.Stream()
            self._events = [cuda.Event() for _ in range(4)]
        except BaseException:
            self.engine = self.context = self._runtime = None
            self._ctx.pop()
            self._ctx.detach()
            raise
        self._ctx.pop()
        self.last_gpu_ms: float | None = None
        self.last_total_ms: float | None = None
        self._closed = False

    def _bind(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Set shapes and addresses, stage inputs in pinned memory; return the output host arrays."""
        for spec in self.specs:
            if spec.is_input:
                array = arrays[spec.name]
                if spec.dynamic and not self.context.set_input_shape(spec.name, tuple(array.shape)):
                    raise UserError(f"{self.path}: input '{spec.name}' shape {tuple(array.shape)} is outside "
                                    f"the engine's optimization profile")
                host = self._buffers[spec.name].ensure(array.shape, spec.dtype)
                np.copyto(host, array)
        outputs = {}
        for spec in self.specs:
            if not spec.is_input:
                shape = tuple(int(d) for d in self.context.get_tensor_shape(spec.name))
                if any(d < 0 for d in shape):
                    raise UserError(f"{self.path}: output '{spec.name}' has a data-dependent shape {shape}, "
                                    f"which this runner does not support")
                outputs[spec.name] = self._buffers[spec.name].ensure(shape, spec.dtype)
        for spec in self.specs:
            if not self.context.set_tensor_address(spec.name, self._buffers[spec.name].address):
                raise UserError(f"{self.path}: TensorRT refused the buffer of tensor '{spec.name}'")
        return outputs

    def infer(self, feed) -> dict[str, np.ndarray]:
        """``{"input": array}`` (or the array alone) -> ``{output name: array}``; sets the two timings."""
        self._check_open()
        cuda = self._cuda
        arrays = prepare_feed(feed, [s for s in self.specs if s.is_input], str(self.path))
        self._ctx.push()
        try:
            outputs = self._bind(arrays)
            start, before, after, end = self._events
            start.record(self.stream)
            for name in arrays:
                buf = self._buffers[name]
                cuda.memcpy_htod_async(buf.device, buf.host, self.stream)
            before.record(self.stream)
            if not self.context.execute_async_v3(self.stream.handle):
                raise UserError(f"{self.path}: TensorRT failed to enqueue the engine")
            after.record(self.stream)
            for name, host in outputs.items():
                cuda.memcpy_dtoh_async(host, self._buffers[name].device, self.stream)
            end.record(self.stream)
            self.stream.synchronize()
            end.synchronize()
            self.last_gpu_ms = float(after.time_since(before))
            self.last_total_ms = float(end.time_since(start))
            return {name: np.array(host, copy=True) for name, host in outputs.items()}
        finally:
            self._ctx.pop()


    def time_gpu(self, iterations: int = 100, warmup: int = 10, feed=None) -> list[float]:
        """GPU milliseconds of ``execute_async_v3`` per iteration, on the buffers bound by the last ``infer``
        (or by ``feed``, run once first). Warm-up iterations are run and not returned."""
        self._check_open()
        if feed is not None or self.last_total_ms is None:
            if feed is None:
                raise UserError(f"{self.path}: call infer() or pass feed= before time_gpu()")
            self.infer(feed)
        times = []
        self._ctx.push()
        try:
            start, _, _, end = self._events
            for i in range(int(warmup) + int(iterations)):
                start.record(self.stream)
                if not self.context.execute_async_v3(self.stream.handle):
                    raise UserError(f"{self.path}: TensorRT failed to enqueue the engine")
                end.record(self.stream)
                end.synchronize()
                if i >= warmup:
                    times.append(float(end.time_since(start)))
        finally:
            self._ctx.pop()
        return times

    def _check_open(self):
        if self._closed:
            raise UserError(f"{self.path}: the runner was closed")

    def close(self) -> None:
        """Free device memory and TensorRT objects, release the primary context. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._ctx.push()
        try:
            for buf in self._buffers.values():
                buf.free()
            self.context = None
            self.engine = None
            self._runtime = None
            self.stream = None
            self._events = []
        finally:
            self._ctx.pop()
            self._ctx.detach()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
