"""torchrun process groups: rank facts, joining the group, and the few collectives training needs.

Only the main process writes anything. Every collective runs under the group's timeout; one that fails
(a peer stalled past the timeout, or died) becomes a one-line :class:`UserError` naming this rank.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from ganforge.errors import UserError

T = TypeVar("T")
_timeout_s = 0.0


def rank() -> int:
    """Global rank of this process (0 when not launched by torchrun)."""
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    """Rank of this process on its node (0 when not launched by torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    """Number of processes in the job (1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """True on the one process that writes logs, checkpoints, metrics and outs."""
    return rank() == 0


def rank_seed(base_seed: int) -> int:
    """A per-rank seed derived from the base seed, so ranks draw different latents and augmentations."""
    return base_seed + 1_000_003 * rank()


def resolve_device(kind: str) -> torch.device:
    """``auto`` -> this rank's CUDA device when torch sees one, else CPU; ``cuda`` without CUDA is an error."""
    if kind == "cpu" or (kind == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError("train.device: 'cuda' requested but torch sees no CUDA device (use auto or cpu)")
    torch.cuda.set_device(local_rank())
    return torch.device("cuda", local_rank())


@contextlib.contextmanager
def process_group(device: torch.device, timeout_s: float) -> Iterator[None]:
    """Join torchrun's process group for the block: gloo on CPU, nccl on CUDA. A no-op for one process."""
    global _timeout_s
    if world_size() == 1:
        yield
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    _timeout_s = timeout_s
    timeout = datetime.timedelta(seconds=timeout_s)
    dist.init_process_group(backend, timeout=timeout, device_id=device if device.type == "cuda" else None,
                            store=_attempt_store(timeout), rank=rank(), world_size=world_size())
    try:
        yield
    finally:
        dist.destroy_process_group()


def _attempt_store(timeout: datetime.timedelta) -> dist.Store:
    """torchrun's rendezvous store, under a prefix unique to this restart attempt.

    After ``--max-restarts`` relaunches the workers, torchrun's agent keeps serving the same store, so keys
    of the failed attempt (such as gloo's peer addresses) are still there; a prefix per attempt keeps the
    new workers from connecting to the dead ones.
    """
    agent_hosts_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size(),
                          is_master=not agent_hosts_store and rank() == 0, timeout=timeout)
    return dist.PrefixStore(f"ganforge/attempt{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def _collective(what: str, call: Callable[[], T]) -> T:
    try:
        return call()
    except (RuntimeError, dist.DistError) as e:
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"rank {rank()} of {world_size()}: {what} failed within the {_timeout_s:.0f} s collective "
                        f"timeout; another rank stalled or died ({detail})") from None


def sync_gradients(params: list[nn.Parameter], *scalars: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Average the gradients of ``params`` and the given scalars over all ranks, in one all-reduce.

    Returns (the scalars' global means as a 1-D tensor, seconds spent waiting in the collective). With one
    process the scalars come back unchanged and nothing waits. Parameters without a gradient count as zero.
    """
    values = torch.stack([s.detach().float().reshape(()) for s in scalars])  # (S,)
    if world_size() == 1:
        return values, 0.0
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads] + [values.to(grads[0].device)])  # (P + S,)
    start = time.perf_counter()
    _collective("gradient all-reduce", lambda: dist.all_reduce(flat))
    waited_s = time.perf_counter() - start
    flat /= world_size()
    offset = 0
    for p, g in zip(params, grads, strict=True):
        p.grad = flat[offset:offset + g.numel()].view_as(g).clone()
        offset += g.numel()
    return flat[offset:].cpu(), waited_s


def broadcast_state(*modules: nn.Module) -> None:
    """Copy rank 0's parameters and buffers (BatchNorm statistics) to every rank."""
    if world_size() == 1:
        return
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            _collective("broadcast from rank 0", lambda t=tensor: dist.broadcast(t.data, src=0))


def gather_all(obj: Any) -> list[Any]:
    """``obj`` from every rank, in rank order, on every rank."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    _collective("all-gather", lambda: dist.all_gather_object(out, obj))
    return out


def all_gather_float(value: float) -> list[float]:
    """``value`` from every rank, in rank order."""
    return [float(v) for v in gather_all(value)]


def gather_to_main(obj: Any) -> list[Any] | None:
    """Every rank's ``obj`` on rank 0 (in rank order); None elsewhere."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size() if is_main_process() else None
    _collective("gather to rank 0", lambda: dist.gather_object(obj, out, dst=0))
    return out


def scatter_from_main(objs: list[Any] | None) -> Any:
    """Rank 0 hands ``objs[r]`` to rank r; returns this rank's item."""
    if world_size() == 1:
        assert objs is not None
        return objs[0]
    out = [None]
    _collective("scatter from rank 0", lambda: dist.scatter_object_list(out, objs, src=0))
    return out[0]


def barrier() -> None:
    """Wait for every rank."""
    if world_size() > 1:
        _collective("barrier", dist.barrier)
