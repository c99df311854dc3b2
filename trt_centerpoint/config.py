"""Model configs: dataclasses loaded from YAML, bundled configs addressable by name.

A config describes one CenterPoint model (voxelization, sparse backbone, RPN, head, post-processing).
Loading is strict: an unknown key or a wrong type is a `ConfigError` naming the file and the key,
because a silently ignored typo in a deployment config costs hours.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from trt_centerpoint.errors import UserError

BUNDLED_DIR = Path(__file__).parent / "configs"


class ConfigError(UserError):
    """A config file or name that cannot be used."""


@dataclass
class VoxelConfig:
    point_cloud_range: list[float]  # [x_min, y_min, z_min, x_max, y_max, z_max] in metres
    voxel_size: list[float]  # [x, y, z] in metres
    max_points_per_voxel: int = 10
    max_voxels: int = 160000  # inference (det3d's test setting)
    max_voxels_train: int = 120000
    num_point_features: int = 5  # 4: KITTI (x, y, z, intensity); 5: nuScenes (+ time lag)

    @property
    def grid_size(self) -> list[int]:
        """Voxel grid [x, y, z], as det3d computes it."""
        r, v = self.point_cloud_range, self.voxel_size
        return [int(round((r[i + 3] - r[i]) / v[i])) for i in range(3)]

    @property
    def sparse_shape(self) -> list[int]:
        """spconv spatial shape [z + 1, y, x] (det3d pads z by one)."""
        gx, gy, gz = self.grid_size
        return [gz + 1, gy, gx]


@dataclass
class BackboneConfig:
    """SpMiddleResNetFHD: conv_input + four stages + extra_conv; `channels` is the plan per stage."""

    channels: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    blocks_per_stage: int = 2
    bn_eps: float = 1e-3
    bn_momentum: float = 0.01
    # The residual blocks' SubM convs carry a bias (det3d, OpenPCDet); MMDetection3D's have none (BN only).
    block_bias: bool = True


@dataclass
class NeckConfig:
    """det3d RPN: a downsampling conv block per level, one upsampling block per level, Concat."""

    layer_nums: list[int] = field(default_factory=lambda: [5, 5])
    ds_layer_strides: list[int] = field(default_factory=lambda: [1, 2])
    ds_num_filters: list[int] = field(default_factory=lambda: [128, 256])
    us_layer_strides: list[int] = field(default_factory=lambda: [1, 2])
    us_num_filters: list[int] = field(default_factory=lambda: [256, 256])
    bn_eps: float = 1e-3
    bn_momentum: float = 0.01


@dataclass
class HeadConfig:
    """CenterHead: shared conv, then one SepHead per task (class group)."""

    tasks: list[list[str]] = field(
        default_factory=lambda: [
            ["car"],
            ["truck", "construction_vehicle"],
            ["bus", "trailer"],
            ["barrier"],
            ["motorcycle", "bicycle"],
            ["pedestrian", "traffic_cone"],
        ]
    )
    share_conv_channel: int = 64
    head_conv: int = 64
    final_kernel: int = 3
    init_bias: float = -2.19
    out_size_factor: int = 8
    # The shared conv and the first conv of every head branch carry a bias (det3d, OpenPCDet); MMDetection3D's
    # have none (ConvModule with BN). The last conv of a branch always has one.
    conv_bias: bool = True
    # Output name -> channels, in det3d's order; "hm" (one channel per class) always comes last.
    common_heads: dict[str, int] = field(
        default_factory=lambda: {"reg": 2, "height": 1, "dim": 3, "rot": 2, "vel": 2}
    )

    @property
    def class_names(self) -> list[str]:
        return [name for task in self.tasks for name in task]


@dataclass
class PostProcessConfig:
    score_threshold: float = 0.1
    post_center_range: list[float] = field(default_factory=lambda: [-61.2, -61.2, -10.0, 61.2, 61.2, 10.0])
    nms_type: str = "rotate"  # "rotate" (BEV IoU) or "circle" (center distance)
    nms_iou_threshold: float = 0.2
    nms_pre_max: int = 1000
    nms_post_max: int = 83
    # OpenPCDet / MMDetection3D decode only the top `max_candidates` (class, cell) pairs of a task's heatmap
    # (their MAX_OBJ_PER_SAMPLE / max_num, 500) before the score threshold; 0: every cell (det3d).
    max_candidates: int = 0
    # Circle NMS per task: det3d's `min_radius`, compared (as det3d does) with the *squared* centre
    # distance in m^2, so 4.0 suppresses within 2 m. Used when nms_type == "circle".
    circle_radius: list[float] = field(default_factory=lambda: [4.0, 12.0, 10.0, 1.0, 0.85, 0.175])


@dataclass
class EvalConfig:
    """How `eval` scores the detections (no effect on the model)."""

    # Class name -> range in metres (BEV distance of the box centre from the ego origin, or from the sensor where
    # the frame's pose is unknown): ground truth and predictions at or beyond it are not scored, as the nuScenes
    # devkit does (its detection_cvpr_2019: 50 m vehicles, 40 m pedestrian / cycles, 30 m cones / barriers).
    # A class not listed is scored at every distance; empty: no range filter.
    class_range: dict[str, float] = field(default_factory=dict)
    # Distance bands for AP by distance (metres, the same distance as class_range): their upper edges, ascending,
    # the first band starting at 0; .inf for "and beyond". [20, 40, .inf]: 0-20, 20-40, 40+ m. Empty: no bands.
    distance_bands: list[float] = field(default_factory=list)
    # `--metric nuscenes`: class name -> the attribute a detection of it gets when not moving (0.2 m/s or
    # slower), in place of the default rule (vehicles `vehicle.parked`, ...). OpenPCDet and MMDetection3D write
    # `vehicle.stopped` for a stationary bus.
    stationary_attribute: dict[str, str] = field(default_factory=dict)


@dataclass
class ExportConfig:
    """How `export` writes the deployment files (no effect on the model)."""

    # The least output_bound any sparse conv of the exported backbone gets. The bounds already scale with
    # voxel.max_voxels (export.scn.output_bound); a floor matters only for a layer whose calibration frames gave a
    # tiny ratio. 0: no floor.
    output_bound_floor: int = 0


@dataclass
class ModelConfig:
    name: str
    voxel: VoxelConfig
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    neck: NeckConfig = field(default_factory=NeckConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    post: PostProcessConfig = field(default_factory=PostProcessConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    description: str = ""
    # Which project's checkpoints the config takes: det3d, openpcdet or mmdetection3d (file layout, key names,
    # head conventions; model.sources maps them onto this model).
    source: str = "det3d"

    @property
    def class_names(self) -> list[str]:
        return self.head.class_names

    @property
    def backbone_out_depth(self) -> int:
        """z extent of the sparse backbone output (2 for nuScenes: 41 -> 21 -> 11 -> 5 -> 2)."""
        z = self.voxel.sparse_shape[0]
        z = (z - 1) // 2 + 1  # conv2: k3 s2 p1
        z = (z - 1) // 2 + 1  # conv3: k3 s2 p1
        z = (z - 3) // 2 + 1  # conv4: k3 s2 p0 in z
        return (z - 3) // 2 + 1  # extra_conv: k3 s2 p0 in z

    @property
    def bev_channels(self) -> int:
        return self.backbone.channels[-1] * self.backbone_out_depth

    @property
    def bev_shape(self) -> list[int]:
        """[H, W] of the BEV map the RPN sees (spatial shape divided by the backbone's stride 8)."""
        _, gy, gx = self.voxel.sparse_shape
        for _ in range(3):
            gy, gx = (gy - 1) // 2 + 1, (gx - 1) // 2 + 1
        return [gy, gx]

    def validate(self, source: str) -> None:
        v = self.voxel
        if len(v.point_cloud_range) != 6 or len(v.voxel_size) != 3:
            raise ConfigError(f"{source}: voxel.point_cloud_range needs 6 values and voxel.voxel_size 3")
        check_bounds(dataclasses.asdict(self), source)
        for key, box in (("voxel.point_cloud_range", v.point_cloud_range),
                         ("post.post_center_range", self.post.post_center_range)):
            if len(box) != 6:
                raise ConfigError(f"{source}: {key} needs 6 values [x_min, y_min, z_min, x_max, y_max, z_max], "
                                  f"got {box}")
            for axis, name in enumerate("xyz"):
                if not box[axis] < box[axis + 3]:
                    raise ConfigError(f"{source}: {key}: {name}_min {box[axis]:g} must be below {name}_max "
                                      f"{box[axis + 3]:g}")
        if any(s <= 0 for s in v.voxel_size) or any(g <= 0 for g in v.grid_size):
            raise ConfigError(f"{source}: voxel grid is empty: range {v.point_cloud_range}, size {v.voxel_size}")
        if v.num_point_features not in (4, 5):
            raise ConfigError(f"{source}: voxel.num_point_features must be 4 or 5, got {v.num_point_features}")
        if self.backbone_out_depth < 1:
            raise ConfigError(
                f"{source}: sparse z extent {v.sparse_shape[0]} is too small for SpMiddleResNetFHD "
                "(needs at least 25 after four z-downsampling convs)"
            )
        if len(self.backbone.channels) != 4:
            raise ConfigError(f"{source}: backbone.channels needs 4 values (conv1..conv4), "
                              f"got {self.backbone.channels}")
        n = self.neck
        if not (len(n.layer_nums) == len(n.ds_layer_strides) == len(n.ds_num_filters)):
            raise ConfigError(f"{source}: neck.layer_nums, ds_layer_strides and ds_num_filters differ in length")
        if len(n.us_layer_strides) != len(n.us_num_filters) or len(n.us_layer_strides) > len(n.layer_nums):
            raise ConfigError(f"{source}: neck.us_layer_strides / us_num_filters do not fit layer_nums")
        names = self.class_names
        if not names or len(set(names)) != len(names):
            raise ConfigError(f"{source}: head.tasks must name each class once, got {self.head.tasks}")
        if self.post.nms_type not in ("rotate", "circle"):
            raise ConfigError(f"{source}: post.nms_type must be 'rotate' or 'circle', got {self.post.nms_type!r}")
        if self.post.nms_type == "circle" and len(self.post.circle_radius) != len(self.head.tasks):
            raise ConfigError(f"{source}: post.circle_radius needs one radius per task ({len(self.head.tasks)})")
        bands = self.eval.distance_bands
        if any(b <= a for a, b in zip(bands, bands[1:])):
            raise ConfigError(f"{source}: eval.distance_bands must ascend (upper band edges), got {bands}")
        if self.source not in SOURCES:
            raise ConfigError(f"{source}: source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        for key, mapping in (("class_range", self.eval.class_range),
                             ("stationary_attribute", self.eval.stationary_attribute)):
            unknown = [c for c in mapping if c not in names]
            if unknown:
                raise ConfigError(f"{source}: eval.{key} names {', '.join(unknown)}, not a class of head.tasks "
                                  f"({', '.join(names)})")


@dataclass(frozen=True)
class Bounds:
    """Allowed values of a numeric key (every element, for a list or mapping): low / high, open or closed."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False

    def admits(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or value <= self.high

    def describe(self) -> str:
        low = "" if self.low is None else f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.high is None:
            return low
        if self.low is None:
            return f"<= {self.high:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"


SOURCES = ("det3d", "openpcdet", "mmdetection3d")
POSITIVE, AT_LEAST_ONE, FRACTION = Bounds(0, low_open=True), Bounds(1), Bounds(0, 1)
# Every numeric key with a meaningful range. A value outside it would not fail at once but later, far from the
# file (an empty grid, no detection ever passing the threshold, NMS that keeps overlapping boxes).
BOUNDS: dict[str, Bounds] = {
    "voxel.voxel_size": POSITIVE, "voxel.max_points_per_voxel": AT_LEAST_ONE, "voxel.max_voxels": AT_LEAST_ONE,
    "voxel.max_voxels_train": AT_LEAST_ONE, "export.output_bound_floor": Bounds(0),
    "backbone.channels": AT_LEAST_ONE, "backbone.blocks_per_stage": AT_LEAST_ONE, "backbone.bn_eps": POSITIVE,
    "backbone.bn_momentum": Bounds(0, 1, low_open=True),
    "neck.layer_nums": Bounds(0), "neck.ds_layer_strides": AT_LEAST_ONE, "neck.ds_num_filters": AT_LEAST_ONE,
    "neck.us_layer_strides": AT_LEAST_ONE, "neck.us_num_filters": AT_LEAST_ONE, "neck.bn_eps": POSITIVE,
    "neck.bn_momentum": Bounds(0, 1, low_open=True),
    "head.share_conv_channel": AT_LEAST_ONE, "head.head_conv": AT_LEAST_ONE, "head.final_kernel": AT_LEAST_ONE,
    "head.out_size_factor": AT_LEAST_ONE, "head.common_heads": AT_LEAST_ONE,
    "post.score_threshold": FRACTION, "post.nms_iou_threshold": FRACTION, "post.nms_pre_max": AT_LEAST_ONE,
    "post.nms_post_max": AT_LEAST_ONE, "post.max_candidates": Bounds(0), "post.circle_radius": POSITIVE,
    "eval.class_range": POSITIVE, "eval.distance_bands": POSITIVE,
}


def check_bounds(data: dict, source: str) -> None:
    """`ConfigError` naming file, key, value and allowed range for the first value outside `BOUNDS`."""
    for key, bounds in BOUNDS.items():
        section, name = key.split(".")
        value = data[section][name]
        items = (value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list)
                 else [(None, value)])
        for index, item in items:
            if not bounds.admits(item):
                where = key if index is None else f"{key}[{index!r}]" if isinstance(index, str) else f"{key}[{index}]"
                raise ConfigError(f"{source}: {where} = {item!r} is out of range (allowed: {bounds.describe()})")


def bundled_names() -> list[str]:
    return sorted(p.stem for p in BUNDLED_DIR.glob("*.yaml"))


def _build(cls, data, where: str, source: str):
    """Build dataclass `cls` from a mapping, refusing unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: '{where or 'top level'}' must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(prefix + k for k in unknown)} (known: {', '.join(sorted(known))})"
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        kwargs[name] = _convert(hints[name], value, key, source)
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required key is missing
        raise ConfigError(f"{source}: {where or 'top level'}: {exc}") from None


def _convert(hint, value, key: str, source: str):
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key, source)
    origin = typing.get_origin(hint)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {key} must be a list, got {value!r}")
        (inner,) = typing.get_args(hint)
        return [_convert(inner, v, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key} must be a mapping, got {value!r}")
        kt, vt = typing.get_args(hint)
        return {_convert(kt, k, key, source): _convert(vt, v, f"{key}.{k}", source) for k, v in value.items()}
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is str and isinstance(value, str):
        return value
    if hint is bool and isinstance(value, bool):
        return value
    raise ConfigError(f"{source}: {key} must be {hint.__name__}, got {value!r}")


def config_from_dict(data: dict, source: str = "<dict>") -> ModelConfig:
    cfg = _build(ModelConfig, data, "", source)
    cfg.validate(source)
    return cfg


# sections of a config that do not change the model: a quantized checkpoint or a sensitivity file made under one
# value still fits the model under another
MODEL_NEUTRAL = ("name", "description", "eval", "export")


# Keys added for OpenPCDet / MMDetection3D models, left out of `config_to_dict` at their default (det3d) value
# for the same reason as the eval / export sections.
ADDED_DEFAULTS = {"source": "det3d", "backbone.block_bias": True, "head.conv_bias": True, "post.max_candidates": 0}


def config_to_dict(cfg: ModelConfig) -> dict:
    """The config as plain data. The `eval` and `export` sections are left out while they hold only defaults, so a
    config without them records (and hashes, for the build's up-to-date checks) exactly as before they existed."""
    data = dataclasses.asdict(cfg)
    for path, default in ADDED_DEFAULTS.items():
        *sections, key = path.split(".")
        where = data
        for section in sections:
            where = where[section]
        if where[key] == default:
            del where[key]
    if cfg.eval == EvalConfig():
        del data["eval"]
    if cfg.export == ExportConfig():
        del data["export"]
    return data


def load_config(name_or_path: str | Path) -> ModelConfig:
    """Load a bundled config by name (`nuscenes_voxel0075`) or a YAML file by path."""
    text = str(name_or_path)
    path = Path(text)
    if not path.suffix and (BUNDLED_DIR / f"{text}.yaml").is_file():
        path = BUNDLED_DIR / f"{text}.yaml"
    if not path.is_file():
        raise ConfigError(f"{text}: no such config file or bundled config (bundled: {', '.join(bundled_names())})")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if isinstance(data, dict):
        data.setdefault("name", path.stem)
    return config_from_dict(data, str(path))
