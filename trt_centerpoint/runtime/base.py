"""The two parts every pipeline is made of, as interfaces: a backbone runner and a head runner.

- `BackboneRunner.run(features [N, C], coords [N, 4]) -> BEV [1, C*D, H, W]` (float32 torch tensor): the
  sparse part, on voxels (torch tensors, as spconv and the voxelizer use them).
- `HeadRunner`: the 2D part, a Polygraphy runner (`activate()`, `infer(feed_dict)`, `deactivate()`, `name`),
  so that `Comparator.run` takes any head as it is: `infer({"input": BEV as numpy}) -> {output name: array}`
  in CUDA-CenterPoint's names (`reg_0`, `height_0`, ..., `hm_0`, `reg_1`, ...). Every head here is a
  Polygraphy `BaseRunner`.

`split_tasks` turns the head's flat outputs into the per-task dicts `model.decode` takes.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch

from trt_centerpoint.errors import UserError

__all__ = ["BackboneRunner", "HeadRunner", "split_tasks"]


@runtime_checkable
class BackboneRunner(Protocol):
    name: str

    def run(self, features: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """Voxel features [N, C] and coords [N, 4] (batch, z, y, x) of one frame -> BEV [1, C*D, H, W]."""
        ...


@runtime_checkable
class HeadRunner(Protocol):
    name: str
    is_active: bool

    def activate(self) -> None: ...

    def infer(self, feed_dict: dict[str, np.ndarray], check_inputs: bool = True) -> dict[str, np.ndarray]:
        """{input name: BEV [1, C, H, W]} -> {output name: array}."""
        ...

    def deactivate(self) -> None: ...


def split_tasks(outputs: dict[str, np.ndarray], device="cpu") -> list[dict[str, torch.Tensor]]:
    """Flat `{reg_0: ..., hm_0: ..., reg_1: ...}` -> decode's per-task dicts."""
    tasks: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in outputs.items():
        head, _, index = name.rpartition("_")
        if not index.isdigit():
            raise UserError(f"head output {name!r} is not named <head>_<task> (e.g. hm_0)")
        tasks.setdefault(int(index), {})[head] = torch.as_tensor(value, device=device)
    return [tasks[i] for i in sorted(tasks)]
