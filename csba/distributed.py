"""One run across processes with torchrun (docs/scale.md): ``torchrun --nproc_per_node N -m
csba train ...`` trains one run with DistributedDataParallel, and ``torchrun ... -m csba
diagnose RUN`` computes the Gradient Conflict Matrix across ranks.

Outside torchrun nothing here runs: :func:`torchrun_session` yields None and training is the
single-process path, unchanged. Under torchrun (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` in the
environment) a :class:`DistContext` is handed to :func:`csba.train.train`:

* gloo on the CPU, NCCL on CUDA (one GPU per process, ``cuda:LOCAL_RANK``);
* ``--batch-size`` is the global batch, fixed whatever the number of processes; each process
  takes ``global / N`` of it; the learning rate is unchanged (scale it yourself with ``--lr``);
* the data order comes from a seeded sampler set per epoch (:class:`GlobalBatchSampler`): every
  rank draws the same permutation of the training split and takes its slice of each global
  batch, so the global batches are those of a one-process run under torchrun with the same
  seed; augmentation and dropout draw from per-rank, per-epoch seeds, so a resumed run goes on
  exactly as an uninterrupted one;
* the loss of each process is normalised by the sum over the whole global batch (the summed
  class weights of its labels for the weighted losses, its size otherwise; all-reduced), so the
  averaged DDP gradient is the single-process gradient of the global batch;
* BatchNorm becomes SyncBatchNorm on CUDA by default (it needs CUDA tensors, so a CPU run keeps
  per-process batch statistics);
* validation and early stopping are decided on rank 0 and broadcast, so every rank stops at the
  same epoch; only rank 0 writes the run folder (atomically, csba.store), at the end.
"""

from __future__ import annotations

import datetime as _dt
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .methods import METHODS

__all__ = [
    "DistConfig",
    "DistContext",
    "DistributedError",
    "GlobalBatchSampler",
    "torchrun_session",
    "under_torchrun",
]

# Methods whose step is one backward of one loss: DDP's gradient all-reduce applies. PCGrad and
# its control take per-class gradients (autograd.grad, outside DDP); cRT refreezes the model.
SUPPORTED_METHODS = tuple(
    n for n, m in METHODS.items() if m.torchrun
)  # weighted, logit_adjust, ...


class DistributedError(ValueError):
    """A distributed run cannot start; the message says what to change (one line)."""


@dataclass
class DistConfig:
    """Options of a torchrun run (``train --no-sync-bn``)."""

    sync_batchnorm: bool = True  # CUDA only: BatchNorm statistics over the global batch
    timeout_s: float = 1800.0  # a collective waiting longer than this fails the run
    backend: str | None = None  # None: nccl on CUDA, gloo on the CPU


def under_torchrun() -> bool:
    """True in a process started by torchrun (it sets RANK, WORLD_SIZE and LOCAL_RANK)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def _mix(*values: int) -> int:
    """A 63-bit seed from integers (seed, epoch, stream), the same on every platform."""
    h = 1469598103934665603
    for v in values:
        h = ((h ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) * 1099511628211) % 2**64
    return h % 2**63


class GlobalBatchSampler:
    """Seeded distributed sampler over ``n`` examples in global batches of ``global_batch``.

    :meth:`set_epoch` draws the epoch's permutation, the same on every rank (seed, epoch);
    :meth:`local` cuts this rank's contiguous ``global_batch / world_size`` slice out of a
    global batch of indices. The union of the ranks' slices is the global batch, in order.
    """

    def __init__(self, n: int, global_batch: int, rank: int, world_size: int, seed: int):
        if global_batch % world_size:
            raise DistributedError(
                f"--batch-size {global_batch} (the global batch) is not divisible by the "
                f"{world_size} processes; choose a multiple of {world_size}"
            )
        self.n, self.global_batch, self.rank, self.world_size = n, global_batch, rank, world_size
        self.seed = seed
        self.per_process = global_batch // world_size

    def set_epoch(self, epoch: int) -> Tensor:
        """The permutation of epoch ``epoch`` (1-based), int64 on the CPU."""
        g = torch.Generator().manual_seed(_mix(self.seed, epoch, 0))
        return torch.randperm(self.n, generator=g)

    def local(self, batch: Tensor) -> Tensor:
        """This rank's slice of a global batch of indices."""
        k = self.per_process
        return batch[self.rank * k : (self.rank + 1) * k]


class DistContext:
    """This process's place in a torchrun run: rank, world size, device and the collectives
    :func:`csba.train.train` needs. Build with :meth:`from_env` (initialises the process group);
    :meth:`close` destroys it."""

    def __init__(self, rank: int, world_size: int, local_rank: int, device, config: DistConfig):
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.device = torch.device(device)
        self.config = config
        self.backend = config.backend or ("nccl" if self.device.type == "cuda" else "gloo")
        self.sampler: GlobalBatchSampler | None = None
        self.sync_batchnorm = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that validates, logs and writes the run folder."""
        return self.rank == 0

    @classmethod
    def from_env(cls, device: torch.device, config: DistConfig | None = None) -> DistContext:
        """Join the process group torchrun set up (env:// rendezvous). ``device``: the resolved
        ``--device``; CUDA runs use ``cuda:LOCAL_RANK``."""
        config = config or DistConfig()
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ["LOCAL_RANK"])
        if device.type == "cuda":
            if local_rank >= torch.cuda.device_count():
                raise DistributedError(
                    f"local rank {local_rank} has no GPU ({torch.cuda.device_count()} visible); "
                    "use --nproc_per_node at most the number of GPUs, or --device cpu"
                )
            torch.cuda.set_device(local_rank)
            device = torch.device("cuda", local_rank)
        ctx = cls(rank, world, local_rank, device, config)
        if not dist.is_initialized():
            dist.init_process_group(ctx.backend, timeout=_dt.timedelta(seconds=config.timeout_s))
        return ctx

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()

    # ---- training ----------------------------------------------------------------------------

    def setup(self, method: str, n: int, global_batch: int, seed: int) -> GlobalBatchSampler:
        """Check that ``method`` can train distributed and make the epoch sampler."""
        if method not in SUPPORTED_METHODS:
            raise DistributedError(
                f"method {method!r} does not train under torchrun (its step is not one "
                f"backward of one loss); run it in one process, or pick a variant with a "
                f"method in {', '.join(SUPPORTED_METHODS)}"
            )
        if n < global_batch:
            raise DistributedError(
                f"the training split ({n} images) is smaller than the global batch "
                f"({global_batch}); lower --batch-size"
            )
        self.sampler = GlobalBatchSampler(n, global_batch, self.rank, self.world_size, seed)
        return self.sampler

    def epoch_generator(self, epoch: int) -> torch.Generator:
        """This rank's augmentation generator for ``epoch``; also reseeds torch's global RNG
        (dropout) per rank and epoch, so a resumed run continues as an uninterrupted one."""
        seed = self.sampler.seed if self.sampler is not None else 0
        torch.manual_seed(_mix(seed, epoch, 1 + self.rank))
        return torch.Generator().manual_seed(_mix(seed, epoch, 1 + self.world_size + self.rank))

    def wrap(self, model: nn.Module) -> nn.Module:
        """DistributedDataParallel around ``model`` (in place: SyncBatchNorm on CUDA by
        default); ``model`` itself stays the module whose weights are validated and saved."""
        from torch.nn.parallel import DistributedDataParallel as DDP

        if self.device.type == "cuda" and self.config.sync_batchnorm:
            # replaces every BatchNorm below the root in place (the root is not one)
            nn.SyncBatchNorm.convert_sync_batchnorm(model)
            self.sync_batchnorm = True
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DDP(model, device_ids=ids)

    def global_batch_loss(self, loss: Tensor, y: Tensor, norm_weight: Tensor | None) -> Tensor:
        """This process's share of the global batch's mean loss, scaled by the world size
        (DDP averages gradients over processes): ``loss * d_local * N / d_global``, d the
        summed class weights of the labels (``norm_weight``) or the number of examples."""
        if norm_weight is not None:
            d = norm_weight.to(loss.device)[y.to(loss.device)].sum().float()
        else:
            d = torch.tensor(float(y.shape[0]), device=loss.device)
        total = d.detach().clone()
        dist.all_reduce(total)
        return loss * (d.detach() * self.world_size / total)

    def all_sum(self, t: Tensor) -> Tensor:
        """The sum of ``t`` over ranks (a copy)."""
        t = t.detach().clone()
        dist.all_reduce(t)
        return t

    def main_only(self, fn: Callable) -> Callable:
        """``fn`` run on rank 0 only, its result broadcast to every rank (validation)."""

        def call(*args, **kwargs):
            box = [fn(*args, **kwargs) if self.is_main else None]
            dist.broadcast_object_list(box, src=0)
            return box[0]

        return call

    def record(self) -> dict:
        """run.json ``runtime.distributed``."""
        s = self.sampler
        return {
            "launcher": "torchrun",
            "backend": self.backend,
            "world_size": self.world_size,
            "global_batch": s.global_batch if s else None,
            "per_process_batch": s.per_process if s else None,
            "sync_batchnorm": self.sync_batchnorm,
        }


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    if "Connection closed by peer" in text or "Connection reset by peer" in text:
        return "a peer process failed (its own message says why)"
    return f"{type(e).__name__}: {text[:300]}"


@contextmanager
def torchrun_session(
    command: str, device: torch.device, config: DistConfig | None = None
) -> Iterator[DistContext | None]:
    """The process group of a torchrun run around a command, or None outside torchrun.

    A rank that fails prints one line, ``csba COMMAND: rank R of N failed: ...``, on stderr
    and exits non-zero; torchrun then stops the other ranks and the whole run fails. Rank 0
    writes the run folder only after every epoch finished, so a failed run leaves none.
    """
    if not under_torchrun():
        yield None
        return
    ctx = DistContext.from_env(device, config)
    try:
        yield ctx
    except BaseException as e:
        print(
            f"csba {command}: rank {ctx.rank} of {ctx.world_size} failed: {_one_line(e)}; "
            "the run folder was not written",
            file=sys.stderr,
            flush=True,
        )
        raise
    finally:
        ctx.close()
