"""The float model's outputs on the calibration frames, kept for the `ptq` recipe's range learning.

Why: the default `ptq` recipe calibrates, then learns the RPN + head ranges by distillation from the FP32 model on
the same frames. In calibration mode the quantized model computes exactly the float model (its quantizers pass
their inputs through), so the distillation targets are already computed once per frame; running the FP32 model
again was a full network pass per frame (a third of the recipe's time at nuScenes size). The float model here has
BatchNorm folded and its sparse weights rounded to FP16, as the deployed FP32 files (`scn.fp16.onnx`) have them.
They are kept on disk, one file per frame (about 9 MB a nuScenes-size frame), not in memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

__all__ = ["CalibrationOutputs"]


class CalibrationOutputs:
    """`save(k, outputs)` during calibration (k: position in the calibration frames); calling it with frame
    indices of the data's frame list (a QAT step's) returns their outputs, batched, or None if one is missing."""

    def __init__(self, folder: str | Path, frame_indices: list[int]):
        self.folder = Path(folder)
        self.frame_indices = list(frame_indices)  # calibration frame k is frame frame_indices[k] of the data
        self.saved: set[int] = set()

    def _path(self, index: int) -> Path:
        return self.folder / f"frame_{index}.pt"

    def save(self, k: int, outputs: list[dict[str, torch.Tensor]]) -> None:
        index = self.frame_indices[k]
        torch.save([{name: t.detach().cpu().clone() for name, t in task.items()} for task in outputs],
                   self._path(index))
        self.saved.add(index)

    def __call__(self, idx: np.ndarray) -> list[dict[str, torch.Tensor]] | None:
        indices = [int(i) for i in np.asarray(idx).reshape(-1)]
        if not indices or any(i not in self.saved for i in indices):
            return None
        frames = [torch.load(self._path(i), weights_only=True) for i in indices]
        if len(frames) == 1:
            return frames[0]
        return [{name: torch.cat([f[t][name] for f in frames]) for name in frames[0][t]} for t in range(len(frames[0]))]
