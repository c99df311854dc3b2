"""Which nuScenes samples a command reads: a dataroot, a version, a split, and how many sweeps each sample stacks.

A dataroot is a folder with `v1.0-*/sample.json` (the devkit's table folders, next to `samples/`, `sweeps/`,
`maps/`). `NuScenesSelection` checks the cheap things at once (the folder, the version, the split, every table
file present), so a wrong option fails before any work; the devkit loads the tables on first use (once per
process and dataroot version). The split's samples are the key frames of its scenes (the split names and scene
lists are the devkit's, `create_splits_scenes`), sorted by token: the order in which a converted folder lists
its `<token>.bin` files, so a dataroot and its converted folder give the same frames in the same order (and
`--frames N` picks the same N).

Its frames (`NuScenesFrame`) stand where a point file would: `stem` / `name` is the sample token, `read` gives
the points as a `PointCloud`, `labels` / `pose` the boxes and poses (`reader`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from trt_centerpoint._compat.nuscenes import devkit
from trt_centerpoint.data.nuscenes.reader import (
    DEFAULT_POINT_SOURCE,
    POINT_SOURCES,
    SWEEP_COLUMNS,
    sample_labels,
    sample_points,
    sample_pose,
)
from trt_centerpoint.data.points import PointCloud, ReadStats, describe_layout
from trt_centerpoint.errors import UserError
from trt_centerpoint.manifest import file_sha256, json_sha256

__all__ = ["DEFAULT_POINT_SOURCE", "DEFAULT_SWEEPS", "META_FORMAT", "POINT_SOURCES", "SPLITS", "TABLES",
           "NuScenesFrame", "NuScenesSelection", "is_dataroot", "versions_in"]

DEFAULT_SWEEPS = 10  # CenterPoint's nuScenes models stack 10 sweeps (0.45 s)
META_FORMAT = "trt_centerpoint.nuscenes/1"  # meta.json of a converted folder
# the devkit's splits per version (its evaluation refuses any other pairing)
SPLITS = {"v1.0-mini": ("mini_train", "mini_val"), "v1.0-trainval": ("train", "val"), "v1.0-test": ("test",)}
TABLES = ("attribute", "calibrated_sensor", "category", "ego_pose", "instance", "log", "map", "sample",
          "sample_annotation", "sample_data", "scene", "sensor", "visibility")
POINT_FEATURES = 5  # x, y, z, intensity, time lag


def versions_in(dataroot: str | Path) -> list[str]:
    """The table folders of a dataroot: `v1.0-*` folders holding a sample.json."""
    root = Path(dataroot)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.glob("v1.0-*") if (p / "sample.json").is_file())


def is_dataroot(path: str | Path) -> bool:
    """A nuScenes dataroot: a folder with `v1.0-*/sample.json`."""
    return bool(versions_in(path))


def _list(names) -> str:
    return ", ".join(names)


@functools.lru_cache(maxsize=2)
def _load(dataroot: str, version: str):
    """The devkit's `NuScenes` for one dataroot version (loading trainval takes tens of seconds: once)."""
    nuscenes = devkit("nuscenes").NuScenes
    try:
        return nuscenes(version=version, dataroot=dataroot, verbose=False)
    except Exception as exc:  # the user's tables: whatever the devkit trips over is one line naming them
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"{Path(dataroot) / version}: the nuScenes devkit cannot load these tables: "
                        f"{type(exc).__name__}: {first}") from None


@dataclass(frozen=True)
class NuScenesSelection:
    """The key-frame samples of one split of a dataroot version, `sweeps` LIDAR_TOP sweeps each, stacked as
    `point_source` stacks them ("det3d" or "devkit", `reader`).

    `version=None` takes the dataroot's only version; `split` is required (the error lists the version's splits).
    """

    dataroot: Path
    version: str | None = None
    split: str | None = None
    sweeps: int = DEFAULT_SWEEPS
    point_source: str = DEFAULT_POINT_SOURCE

    def __post_init__(self) -> None:
        root = Path(self.dataroot).expanduser().absolute()
        object.__setattr__(self, "dataroot", root)
        if not root.is_dir():
            raise UserError(f"{root}: no such nuScenes dataroot")
        present = versions_in(root)
        version = self.version
        if version is None:
            if not present:
                raise UserError(f"{root}: not a nuScenes dataroot (no v1.0-*/sample.json)")
            if len(present) > 1:
                raise UserError(f"{root}: holds several nuScenes versions ({_list(present)}); give --version")
            version = present[0]
            object.__setattr__(self, "version", version)
        if version not in SPLITS:
            raise UserError(f"{root}: unknown nuScenes version {version!r} (known: {_list(SPLITS)})")
        if not (root / version).is_dir():
            found = f"it has {_list(present)}" if present else "it has no v1.0-*/sample.json"
            raise UserError(f"{root / version}: no such nuScenes version folder ({found})")
        if self.split is None:
            raise UserError(f"{root}: a nuScenes dataroot needs --split (one of {_list(SPLITS[version])} for "
                            f"{version})")
        if self.split not in SPLITS[version]:
            raise UserError(f"{root}: unknown split {self.split!r} for {version} (one of {_list(SPLITS[version])})")
        if not isinstance(self.sweeps, int) or self.sweeps < 1:
            raise UserError(f"{root}: --sweeps must be >= 1, got {self.sweeps}")
        if self.point_source not in POINT_SOURCES:
            raise UserError(f"{root}: --point-source must be one of {_list(POINT_SOURCES)}, got {self.point_source!r}")
        missing = [root / version / f"{t}.json" for t in TABLES if not (root / version / f"{t}.json").is_file()]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise UserError(f"{missing[0]}: missing nuScenes table{more}")

    def __str__(self) -> str:
        source = "" if self.point_source == DEFAULT_POINT_SOURCE else f", {self.point_source} points"
        return f"{self.dataroot} ({self.version} {self.split}, {self.sweeps} sweeps{source})"

    @property
    def table_root(self) -> Path:
        return self.dataroot / self.version

    @property
    def labeled(self) -> bool:
        """The test split ships without annotations; every other split has them."""
        return self.split != "test"

    def load(self):
        """The devkit's `NuScenes` (loaded once per process)."""
        return _load(str(self.dataroot), self.version)

    @cached_property
    def tokens(self) -> list[str]:
        """The split's sample tokens, sorted (see the module docstring)."""
        nusc = self.load()
        names = set(devkit("nuscenes.utils.splits").create_splits_scenes()[self.split])
        scenes = [s for s in nusc.scene if s["name"] in names]
        if not scenes:
            have = _list(s["name"] for s in nusc.scene[:5]) + (", ..." if len(nusc.scene) > 5 else "")
            raise UserError(f"{self.table_root}: no scene of split {self.split} (its scenes: {have or 'none'})")
        tokens = []
        try:
            for scene in scenes:
                token = scene["first_sample_token"]
                while token:
                    tokens.append(token)
                    token = nusc.get("sample", token)["next"]
        except KeyError as exc:
            raise UserError(f"{self.table_root}: scene {scene['name']} refers to a missing sample {exc}") from None
        return sorted(tokens)

    def frames(self) -> list[NuScenesFrame]:
        return [NuScenesFrame(self, token) for token in self.tokens]

    def poses(self) -> dict[str, dict]:
        nusc = self.load()
        return {token: sample_pose(nusc, token) for token in self.tokens}

    def meta(self) -> dict:
        """What a converted folder's meta.json holds: the selection, its sample tokens (`stems`, in order) and
        each sample's poses (LiDAR -> ego -> global) and timestamp."""
        return {"format": META_FORMAT, "dataroot": str(self.dataroot), "version": self.version,
                "split": self.split, "sweeps": self.sweeps, "point_source": self.point_source,
                "stems": list(self.tokens), "poses": self.poses()}

    @cached_property
    def fingerprint(self) -> str:
        """A hash for build records: the selection and its tables' contents (poses, annotations, file names). The
        point files are not hashed (tens of GB for trainval): replaced sweep files with unchanged tables are not
        noticed."""
        tables = {t: file_sha256(self.table_root / f"{t}.json") for t in TABLES}
        return json_sha256({"format": META_FORMAT, "version": self.version, "split": self.split,
                            "sweeps": self.sweeps, "point_source": self.point_source, "tables": tables})


@dataclass(frozen=True)
class NuScenesFrame:
    """One sample of a selection, in the place of a point file: `stem` and `name` are its sample token."""

    selection: NuScenesSelection
    token: str

    @property
    def stem(self) -> str:
        return self.token

    @property
    def name(self) -> str:
        return self.token

    def __str__(self) -> str:
        return f"{self.selection.table_root} sample {self.token}"

    def read(self, num_features: int) -> PointCloud:
        """The stacked sweeps as the first `num_features` of (x, y, z, intensity, time lag); `path` is the key
        frame's file."""
        if num_features > POINT_FEATURES:
            raise UserError(f"{self}: nuScenes gives {describe_layout(POINT_FEATURES)}; the config asks for "
                            f"{num_features} features")
        points, dropped, path = sample_points(self.selection.load(), self.token, self.selection.sweeps,
                                              self.selection.point_source)
        stats = ReadStats(num_read=len(points) + dropped, num_nonfinite=dropped, file_columns=SWEEP_COLUMNS)
        return PointCloud(path, np.ascontiguousarray(points[:, :num_features]), stats)

    def labels(self) -> dict:
        return sample_labels(self.selection.load(), self.token)

    def pose(self) -> dict:
        return sample_pose(self.selection.load(), self.token)
