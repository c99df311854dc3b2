"""Labeled frames on disk: `DIR/points/<stem>.bin` with `DIR/labels/<stem>.json` (the `synth` layout)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trt_centerpoint.data.points import list_point_files, read_points
from trt_centerpoint.data.synth.dataset import read_labels
from trt_centerpoint.errors import UserError


class LabeledFrames:
    """Indexable frames with labels: item i is (stem, points [N, F] float32, boxes [K, 9] float64, names)."""

    def __init__(self, root: str | Path, num_features: int, class_names: list[str] | None = None):
        self.root = Path(root)
        self.num_features = num_features
        self.class_names = class_names
        self.files = list_point_files(self.root)
        label_dir = self.root / "labels"
        self.labels = [label_dir / f"{f.stem}.json" for f in self.files]
        missing = [p for p in self.labels if not p.is_file()]
        if missing:
            raise UserError(f"{self.root}: {len(missing)} frame(s) have no label file, e.g. {missing[0]}")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[str, np.ndarray, np.ndarray, list[str]]:
        cloud = read_points(self.files[i], self.num_features)
        labels = read_labels(self.labels[i])
        boxes = np.asarray(labels["boxes"], np.float64).reshape(-1, 9)
        names = list(labels["names"])
        if self.class_names is not None:
            keep = [j for j, n in enumerate(names) if n in self.class_names]
            boxes, names = boxes[keep], [names[j] for j in keep]
        return cloud.stem, cloud.points, boxes, names

    def ground_truth(self) -> dict[str, dict]:
        """{stem: {"boxes": [...], "names": [...]}} for evaluation (labels only, no points read)."""
        out = {}
        for f, lab in zip(self.files, self.labels):
            data = read_labels(lab)
            out[f.stem] = {"boxes": [list(map(float, b)) for b in data["boxes"]], "names": list(data["names"])}
        return out
