"""Helpers for the calibration tests (imported by the test files; pytest puts this folder on sys.path)."""

import torch

from trt_centerpoint.model.centerpoint import CenterPoint


def randomize_batchnorm(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial BN statistics and affine parameters, so folding BN changes the weights."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
    return model


def make_tiny_model(cfg, seed: int = 0) -> CenterPoint:
    torch.manual_seed(seed)
    return randomize_batchnorm(CenterPoint(cfg), seed).eval()


def frame_points(data_dir, num_features=5):
    from trt_centerpoint.quant.calibrate import iter_points, select_calibration_files

    return list(iter_points(select_calibration_files(data_dir), num_features))


def run_model(model, points):
    """Head outputs of one frame, flattened to {task_i.name: tensor}."""
    voxels = model.voxelize([points])
    with torch.no_grad():
        preds = model(voxels.features, voxels.coords, 1)
    return {f"{i}.{k}": v for i, task in enumerate(preds) for k, v in task.items()}


def assert_reload_is_bit_exact(model, path, data_dir, work_dir) -> None:
    """Reload the quantized checkpoint `path` in a fresh process and compare its outputs with `model`'s,
    both at one thread (so the comparison can be exact)."""
    import os
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = [run_model(model, p) for p in frame_points(data_dir)]
    finally:
        torch.set_num_threads(threads)
    out_file = Path(work_dir) / "reloaded_outputs.pt"
    script = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from calib_helpers import frame_points, run_model
        from trt_centerpoint.quant.ptq import load_quantized_model
        model = load_quantized_model({str(path)!r})
        torch.save([run_model(model, p) for p in frame_points({str(data_dir)!r})], {str(out_file)!r})
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", script], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = torch.load(out_file, weights_only=True)
    assert len(out) == len(ref) > 0
    for a, b in zip(out, ref):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
