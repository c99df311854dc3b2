"""DistributedDataParallel's option for "do not sync buffers every forward", under either of its names.

QAT's quantizer amax buffers are constant while the weights train, so syncing them every forward is wasted
work. torch >= 2.x spells the option `forward_sync_buffers` in newer releases and `broadcast_buffers` in
older ones; the constructor's signature says which one this torch has.
"""

from __future__ import annotations

import inspect

from torch.nn.parallel import DistributedDataParallel


def no_buffer_sync_option(ddp_class: type = DistributedDataParallel) -> dict[str, bool]:
    """The keyword argument that turns off DDP's per-forward buffer sync in this torch."""
    if "forward_sync_buffers" in inspect.signature(ddp_class.__init__).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}
