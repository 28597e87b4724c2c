"""Data-parallel runs under `torchrun --nproc_per_node N`: who this process is, and waiting for the others.

Rank and world size come from the environment torchrun sets, so a single-process run never
imports torch.distributed and pays nothing.
"""

from __future__ import annotations

import atexit
import gc
import os
import sys
from typing import NoReturn


def _group():
    """torch.distributed when a process group is up, else None (also when torch was never imported)."""
    if "torch" not in sys.modules:
        return None
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def world_size() -> int:
    dist = _group()
    return dist.get_world_size() if dist is not None else int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    dist = _group()
    return dist.get_rank() if dist is not None else int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_distributed() -> bool:
    return world_size() > 1


def is_main() -> bool:
    return rank() == 0


def init() -> bool:
    """Join torchrun's process group unless there is none or it is joined already; True if this call joined it."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or _group() is not None:
        return False
    import torch
    import torch.distributed as dist

    if torch.cuda.is_available():
        per_node, gpus = int(os.environ.get("LOCAL_WORLD_SIZE", "1")), torch.cuda.device_count()
        if per_node > gpus:
            from edgepress.core.errors import UserError

            raise UserError(f"torchrun started {per_node} processes on this machine, which has {gpus} GPU(s)",
                            fix=f"use --nproc_per_node {gpus}, or CUDA_VISIBLE_DEVICES= to train on the CPU")
        torch.cuda.set_device(local_rank())
        # NCCL for the CUDA gradients; gloo beside it for the CPU-side collectives (barriers, a stage run on CPU).
        dist.init_process_group(backend="cpu:gloo,cuda:nccl")
    else:
        dist.init_process_group(backend="gloo")
    # A process that exits with the group up can die of "terminate called without an active exception"
    # (SIGABRT) while the interpreter tears down under gloo's threads (pytorch/pytorch#190489); it did in
    # CI after fit() had finished. Destroying the group at exit, while Python is still whole, avoids it.
    atexit.register(teardown)
    return True


# How long a rank waits at teardown for the others (rank 0 still writes the report and gates).
TEARDOWN_WAIT_S = 300.0


def teardown() -> None:
    dist = _group()
    if dist is None:
        return
    # A DDP wrapper left in a reference cycle holds the group's C++ object; collected later, at interpreter
    # teardown, its gloo threads abort the process. Collect it now, while the group and Python are whole.
    gc.collect()
    # Every rank leaves together: a rank that destroys its gloo group and exits while another still
    # holds it died with SIGABRT at exit ("terminate called without an active exception").
    try:
        barrier(timeout_s=TEARDOWN_WAIT_S)
    except Exception:  # a rank that failed or timed out must still release the group
        pass
    dist.destroy_process_group()


def exit_rank(code: int) -> NoReturn:
    """End a torchrun rank whose group is torn down without the interpreter's own teardown. Even after
    `teardown()` a rank died of SIGABRT at exit in a full test run ("terminate called without an active
    exception": gloo's threads meeting a finalising interpreter); everything a run owes is written by then."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def barrier(*, timeout_s: float | None = None) -> None:
    """Wait until every rank gets here (at most `timeout_s`, default the group's); a no-op in one process."""
    dist = _group()
    if dist is None or dist.get_world_size() == 1:
        return
    import inspect
    from datetime import timedelta

    if timeout_s is not None and "timeout" in inspect.signature(dist.barrier).parameters:
        dist.barrier(timeout=timedelta(seconds=timeout_s))
    else:  # older torch has no per-barrier timeout: the group's default (30 minutes) applies
        dist.barrier()


def from_main(value):
    """Rank 0's `value` (any picklable object) on every rank; `value` itself in a single process."""
    dist = _group()
    if dist is None or dist.get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shard(count: int, *, rank: int, world: int) -> slice:
    """This rank's contiguous share of `count` items; shares differ in size by at most one."""
    return slice(rank * count // world, (rank + 1) * count // world)


def sum_across(values: list[float], *, device) -> list[float]:
    """Each value summed over all ranks (float64, so counts stay exact); unchanged in a single process."""
    dist = _group()
    if dist is None or dist.get_world_size() == 1:
        return list(values)
    import torch

    total = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return total.tolist()


def broadcast_state(module) -> None:
    """Rank 0's parameters and buffers on every rank, so all ranks start from the same weights."""
    dist = _group()
    if dist is None:
        return
    import torch

    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=0)


def average_gradients(parameters) -> None:
    """What DDP does for the wrapped model, for parameters outside it (e.g. distillation hint adapters)."""
    dist = _group()
    if dist is None:
        return
    for parameter in parameters:
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad)
            parameter.grad.div_(dist.get_world_size())


def sync_buffers(module) -> None:
    """Make every rank's buffers equal after an epoch in which each rank updated them from its own share.

    BatchNorm running statistics are averaged: the running mean is linear in the batch means, so with
    equal shares the average is the running mean of the global batches; the running variance is an
    approximation (it misses the spread between the shares' means). Other buffers are rank 0's.
    """
    dist = _group()
    if dist is None:
        return
    import torch
    from torch.nn.modules.batchnorm import _BatchNorm

    averaged = set()
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, _BatchNorm) and layer.running_mean is not None:
                for buffer in (layer.running_mean, layer.running_var):
                    dist.all_reduce(buffer)
                    buffer.div_(dist.get_world_size())
                    averaged.add(id(buffer))
        for buffer in module.buffers():
            if id(buffer) not in averaged:
                dist.broadcast(buffer, src=0)
