"""Labeled frames: `DIR/points/<stem>.bin` with `DIR/labels/<stem>.json` (the `synth` and `convert` layout), or
an annotated split of a nuScenes dataroot read on the fly (`data.nuscenes.NuScenesSelection`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from trt_centerpoint.data.nuscenes.selection import NuScenesSelection
from trt_centerpoint.data.points import list_point_files
from trt_centerpoint.data.sampling import evenly_spaced_indices
from trt_centerpoint.data.source import DataSource, frame_stem, list_frames, read_frame
from trt_centerpoint.data.synth.dataset import read_labels
from trt_centerpoint.errors import UserError


def check_against_meta(root: Path, files: list[Path]) -> None:
    """A folder whose meta.json lists its frames (`synth` writes one) must hold exactly those frames: anything
    else is a mix of two data sets (stale frames of an earlier run) and would be scored as one."""
    meta_path = Path(root) / "meta.json"
    if not meta_path.is_file():
        return
    try:
        listed = json.loads(meta_path.read_text()).get("stems")
    except (OSError, ValueError, AttributeError):
        raise UserError(f"{meta_path}: not a readable meta.json") from None
    if not isinstance(listed, list):
        return  # a meta.json of another tool: nothing to compare
    found = {frame_stem(f) for f in files}
    extra, missing = sorted(found - set(listed)), sorted(set(listed) - found)
    if extra or missing:
        what = [f"{len(extra)} not listed (e.g. {extra[0]})" if extra else "",
                f"{len(missing)} listed but missing (e.g. {missing[0]})" if missing else ""]
        raise UserError(f"{root}: the frames disagree with its meta.json ({len(listed)} frames): "
                        f"{'; '.join(w for w in what if w)}; regenerate the folder (`synth --force`)")


class LabeledFrames:
    """Indexable frames with labels: item i is (stem, points [N, F] float32, boxes [K, 9] float64, names).

    `root` is a labeled folder or a `NuScenesSelection` (then `files` are its samples and `labels` is None);
    `limit` keeps that many frames, evenly spread (None: all)."""

    def __init__(self, root: DataSource, num_features: int, class_names: list[str] | None = None,
                 limit: int | None = None):
        self.num_features = num_features
        self.class_names = class_names
        if isinstance(root, NuScenesSelection):
            if not root.labeled:
                raise UserError(f"{root}: the {root.split} split has no annotations (labels)")
            self.root, self.files, self.labels = root, list_frames(root), None
            self._keep(limit)
            return
        self.root = Path(root)
        self.files = list_point_files(self.root)
        check_against_meta(self.root, self.files)
        label_dir = self.root / "labels"
        self.labels = [label_dir / f"{frame_stem(f)}.json" for f in self.files]
        missing = [p for p in self.labels if not p.is_file()]
        if missing:
            raise UserError(f"{self.root}: {len(missing)} frame(s) have no label file, e.g. {missing[0]}")
        self._keep(limit)

    def _keep(self, limit: int | None) -> None:
        picked = evenly_spaced_indices(len(self.files), limit)
        self.files = [self.files[i] for i in picked]
        if self.labels is not None:
            self.labels = [self.labels[i] for i in picked]

    def __len__(self) -> int:
        return len(self.files)

    def _read_labels(self, i: int) -> dict:
        return self.files[i].labels() if self.labels is None else read_labels(self.labels[i])

    def __getitem__(self, i: int) -> tuple[str, np.ndarray, np.ndarray, list[str]]:
        cloud = read_frame(self.files[i], self.num_features)
        labels = self._read_labels(i)
        boxes = np.asarray(labels["boxes"], np.float64).reshape(-1, 9)
        names = list(labels["names"])
        if self.class_names is not None:
            keep = [j for j, n in enumerate(names) if n in self.class_names]
            boxes, names = boxes[keep], [names[j] for j in keep]
        return frame_stem(self.files[i]), cloud.points, boxes, names

    def ground_truth(self) -> dict[str, dict]:
        """{stem: {"boxes": [...], "names": [...]}} for evaluation (labels only, no points read), with
        "num_lidar_pts" where the labels have it (`synth` and `convert` write it)."""
        out = {}
        for i, f in enumerate(self.files):
            data = self._read_labels(i)
            out[frame_stem(f)] = {"boxes": [list(map(float, b)) for b in data["boxes"]], "names": list(data["names"])}
            if "num_lidar_pts" in data:
                out[frame_stem(f)]["num_lidar_pts"] = list(data["num_lidar_pts"])
        return out
