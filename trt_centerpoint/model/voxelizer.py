"""Points -> voxels, with det3d's `points_to_voxel` semantics, vectorised in torch (CPU or GPU).

Semantics (det3d `VoxelGenerator` + `VoxelFeatureExtractorV3`):

- Rows with a NaN or Inf in any feature are dropped first (det3d would produce garbage indices).
- Voxel coordinate per axis = floor((p - range_min) / voxel_size), computed in float32 like det3d
  (range and voxel size are cast to float32). A point whose coordinate falls outside [0, grid) on any
  axis is dropped, so a point exactly at the range maximum is outside.
- Voxels are numbered in order of first appearance in the point array. Each voxel keeps the first
  `max_points_per_voxel` of its points (in point order); the first `max_voxels` voxels are kept
  (`max_voxels_train` with `training=True`), the rest are dropped with all their points.
- Voxel feature = mean over all F features of the kept points (sum / count, as VoxelFeatureExtractorV3
  computes it from det3d's zero-padded [V, max_points, F] array; the same padded sum is used here, which
  makes the result deterministic on any device).

Output `coords` are [V, 4] int32 (batch, z, y, x), the order spconv and libspconv take; a single frame
has batch 0, `collate` renumbers. Nothing is dropped silently: `VoxelBatch.stats` counts every dropped
point, and a `VoxelOverflowWarning` is emitted once per call when voxels are dropped.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from trt_centerpoint.config import VoxelConfig
from trt_centerpoint.errors import UserError

__all__ = ["Voxelizer", "VoxelBatch", "VoxelStats", "VoxelOverflowWarning", "collate"]


class VoxelOverflowWarning(UserWarning):
    """More voxels in a frame than max_voxels: the surplus voxels (and their points) were dropped."""


@dataclass
class VoxelStats:
    """Where every input point went. points_in == sum of the five drop counts + points_kept."""

    points_in: int = 0  # rows given to the voxelizer
    points_nonfinite: int = 0  # dropped: NaN / Inf in some feature
    points_out_of_range: int = 0  # dropped: outside point_cloud_range
    points_voxel_full: int = 0  # dropped: their (kept) voxel already held max_points_per_voxel
    voxels_dropped: int = 0  # voxels beyond max_voxels
    points_in_dropped_voxels: int = 0  # every in-range point of those voxels
    num_voxels: int = 0  # voxels kept
    points_kept: int = 0  # == num_points.sum()

    def __add__(self, other: "VoxelStats") -> "VoxelStats":
        return VoxelStats(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in dataclasses.fields(self)})

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


@dataclass
class VoxelBatch:
    features: torch.Tensor  # [V, F] float32, mean of the voxel's kept points
    coords: torch.Tensor  # [V, 4] int32, (batch, z, y, x)
    num_points: torch.Tensor  # [V] int32, kept points per voxel (1..max_points_per_voxel)
    stats: VoxelStats = field(default_factory=VoxelStats)
    batch_size: int = 1

    @property
    def num_voxels(self) -> int:
        return int(self.features.shape[0])

    def to(self, device) -> "VoxelBatch":
        return dataclasses.replace(
            self,
            features=self.features.to(device),
            coords=self.coords.to(device),
            num_points=self.num_points.to(device),
        )


class Voxelizer:
    """`Voxelizer(cfg)(points, training=False) -> VoxelBatch`; accepts a VoxelConfig or a ModelConfig."""

    def __init__(self, cfg: VoxelConfig):
        cfg = getattr(cfg, "voxel", cfg)
        self.cfg = cfg
        self.grid_size = list(cfg.grid_size)  # [x, y, z]
        self.max_points = int(cfg.max_points_per_voxel)
        if self.max_points < 1 or cfg.max_voxels < 1 or cfg.max_voxels_train < 1:
            raise UserError(
                f"voxel config: max_points_per_voxel, max_voxels and max_voxels_train must be >= 1, got "
                f"{cfg.max_points_per_voxel}, {cfg.max_voxels}, {cfg.max_voxels_train}"
            )

    def _empty(self, num_features: int, device, stats: VoxelStats) -> VoxelBatch:
        return VoxelBatch(
            features=torch.zeros((0, num_features), dtype=torch.float32, device=device),
            coords=torch.zeros((0, 4), dtype=torch.int32, device=device),
            num_points=torch.zeros((0,), dtype=torch.int32, device=device),
            stats=stats,
        )

    def __call__(self, points, training: bool = False) -> VoxelBatch:
        cfg = self.cfg
        pts = points if isinstance(points, torch.Tensor) else torch.as_tensor(np.asarray(points))
        if pts.ndim != 2 or pts.shape[1] < 3:
            raise UserError(f"voxelizer: points must be [N, F] with F >= 3, got shape {tuple(pts.shape)}")
        num_features = int(pts.shape[1])
        if num_features != cfg.num_point_features:
            raise UserError(
                f"voxelizer: points have {num_features} features but the config expects "
                f"{cfg.num_point_features} (voxel.num_point_features)"
            )
        pts = pts.to(torch.float32)
        device = pts.device
        stats = VoxelStats(points_in=int(pts.shape[0]))

        finite = torch.isfinite(pts).all(dim=1)
        stats.points_nonfinite = int((~finite).sum())
        if stats.points_nonfinite:
            pts = pts[finite]

        # Voxel coordinates in float32 (det3d's arithmetic); range check before the integer cast.
        lo = torch.tensor(cfg.point_cloud_range[:3], dtype=torch.float32, device=device)
        size = torch.tensor(cfg.voxel_size, dtype=torch.float32, device=device)
        grid = torch.tensor(self.grid_size, dtype=torch.float32, device=device)
        cf = torch.floor((pts[:, :3] - lo) / size)
        inside = ((cf >= 0) & (cf < grid)).all(dim=1)
        stats.points_out_of_range = int(pts.shape[0] - inside.sum())
        pts, cf = pts[inside], cf[inside]
        m = int(pts.shape[0])
        if m == 0:
            return self._empty(num_features, device, stats)

        c = cf.to(torch.int64)  # [M, 3] (x, y, z)
        gx, gy, _ = self.grid_size
        key = (c[:, 2] * gy + c[:, 1]) * gx + c[:, 0]

        # Group points by voxel; a stable sort keeps point order inside each group.
        skey, perm = torch.sort(key, stable=True)
        is_start = torch.ones(m, dtype=torch.bool, device=device)
        is_start[1:] = skey[1:] != skey[:-1]
        starts = torch.nonzero(is_start).squeeze(1)  # [G] first sorted index of each group
        group = torch.cumsum(is_start.to(torch.int64), 0) - 1  # [M] group of each sorted point
        num_groups = int(starts.shape[0])
        counts = torch.diff(starts, append=torch.tensor([m], device=device))  # [G]
        slot = torch.arange(m, device=device) - starts[group]  # rank of the point inside its voxel

        # Renumber groups by first appearance (perm[starts] is each group's first point: stable sort).
        order = torch.argsort(perm[starts])  # voxel id -> group
        rank = torch.empty_like(order)
        rank[order] = torch.arange(num_groups, device=device)  # group -> voxel id
        vid = rank[group]  # [M] voxel id of each sorted point

        max_voxels = int(cfg.max_voxels_train if training else cfg.max_voxels)
        num_voxels = min(num_groups, max_voxels)
        counts_v = counts[order]  # [G] in voxel-id order
        kept_counts = counts_v[:num_voxels]
        num_points = torch.clamp(kept_counts, max=self.max_points)
        stats.num_voxels = num_voxels
        stats.points_kept = int(num_points.sum())
        stats.points_voxel_full = int((kept_counts - num_points).sum())
        stats.voxels_dropped = num_groups - num_voxels
        stats.points_in_dropped_voxels = int(counts_v[num_voxels:].sum())

        keep = (vid < num_voxels) & (slot < self.max_points)
        padded = torch.zeros((num_voxels, self.max_points, num_features), dtype=torch.float32, device=device)
        padded[vid[keep], slot[keep]] = pts[perm[keep]]
        features = padded.sum(dim=1) / num_points.to(torch.float32).unsqueeze(1)

        vkey = skey[starts][order][:num_voxels]
        coords = torch.stack([torch.zeros_like(vkey), vkey // (gx * gy), (vkey // gx) % gy, vkey % gx], dim=1).to(
            torch.int32
        )

        if stats.voxels_dropped:
            which = "max_voxels_train" if training else "max_voxels"
            warnings.warn(
                f"voxelization dropped {stats.voxels_dropped} voxels holding {stats.points_in_dropped_voxels} points: "
                f"the frame has {num_groups} voxels, {which} is {max_voxels}",
                VoxelOverflowWarning,
                stacklevel=2,
            )
        return VoxelBatch(features=features, coords=coords, num_points=num_points.to(torch.int32), stats=stats)


def collate(batches: list[VoxelBatch]) -> VoxelBatch:
    """Concatenate batches along the voxel axis, renumbering the batch column.

    Single frames (batch 0) become batches 0, 1, 2, ...; an already collated batch keeps its frames in
    order (its batch indices are offset). Stats are summed, `batch_size` is the total frame count.
    """
    if not batches:
        raise ValueError("collate needs at least one VoxelBatch")
    coords, offset = [], 0
    for b in batches:
        c = b.coords.clone()
        c[:, 0] += offset
        coords.append(c)
        offset += b.batch_size
    stats = VoxelStats()
    for b in batches:
        stats = stats + b.stats
    return VoxelBatch(
        features=torch.cat([b.features for b in batches], dim=0),
        coords=torch.cat(coords, dim=0),
        num_points=torch.cat([b.num_points for b in batches], dim=0),
        stats=stats,
        batch_size=offset,
    )
