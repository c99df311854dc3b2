"""distributed: the frame steps every rank walks through together, and the helpers being the identity without
torchrun (the collectives themselves run in tests/stages/test_distributed.py)."""

import pytest

from trt_centerpoint.distributed import DistContext, all_gather, all_reduce, broadcast, gather, lockstep, rank_device


@pytest.mark.parametrize("world, items", [(2, 5), (3, 3), (4, 2), (1, 3)])
def test_every_rank_takes_the_same_steps_and_every_item_runs_once(world, items):
    steps = {rank: list(lockstep(list("abcdefgh"[:items]), DistContext(rank=rank, world_size=world)))
             for rank in range(world)}
    assert len({len(s) for s in steps.values()}) == 1  # no rank leaves a collective early
    ran = []
    for step in range(len(steps[0])):
        indices = steps[0][step][0]
        assert all(steps[rank][step][0] == indices for rank in range(world))  # all agree on the step's frames
        mine = [steps[rank][step][1] for rank in range(world)]
        assert [m for m in mine if m is not None] == indices  # rank order is frame order
        ran += indices
    assert ran == list(range(items))


def test_single_process_helpers_are_the_identity(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = DistContext()
    assert all_gather(3, ctx) == [3] and gather(3, ctx) == [3] and broadcast({"a": 1}, ctx) == {"a": 1}
    assert all_reduce([1.5, 2.0], ctx, "max") == [1.5, 2.0]
    assert rank_device("cuda") == "cuda"


def test_cuda_is_the_local_rank_gpu_under_torchrun(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert rank_device("cuda") == "cuda:3" and rank_device("cpu") == "cpu" and rank_device("cuda:1") == "cuda:1"
