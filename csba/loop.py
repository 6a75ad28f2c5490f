"""The epoch loop of :func:`csba.train.train` (docs/design.md §2), read top to bottom:
:meth:`Loop.run` runs epochs until the method says the run is finished; each epoch shuffles in
the method's order (:meth:`Loop.train_epoch`), validates and keeps weights
(:meth:`Loop.validate`), then asks the method what comes next (``Method.after_epoch``: stop,
or a new phase such as LDAM's re-weighting or cRT's stage 2). Everything ``--resume`` needs is
one :class:`csba.resume.LoopState`, written by :meth:`Loop.save_state` after every epoch and
restored by :meth:`Loop.restore`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict

import torch
from torch import nn

from .config import TrainConfig
from .data import DatasetBundle, augment_batch, normalize
from .evaluate import evaluate_split
from .losses import class_weights
from .methods import Phases, get_method
from .resume import LoopState
from .step import TrainStep

__all__ = ["Loop", "TrainingError", "TrainingStopped", "config_key", "method_loss"]


class TrainingStopped(Exception):
    """Raised inside the loop when a cancel is requested; the best weights are still saved."""


class TrainingError(ValueError):
    """Training cannot go on (non-finite loss, out of memory); the message says what to change."""


def config_key(cfg: TrainConfig) -> dict:
    """The config fields a resumed run must share with the one that wrote its state."""
    skip = {"resume", "out", "run_dir"}
    return {k: v for k, v in asdict(cfg).items() if k not in skip}


def method_loss(method: str, phase: str, counts, weight, cfg, model):
    """The training loss of ``method`` in ``phase`` (its unit in csba/methods)."""
    return get_method(method).loss(phase, counts, weight, cfg, model)


class Loop:
    """One run's training state and the epoch loop over it (built by csba.train.train).

    ``model`` is already on ``device``; ``dist`` a csba.distributed.DistContext under torchrun
    or None; ``emit`` receives progress events; ``should_stop()`` is polled every batch.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        model: nn.Module,
        bundle: DatasetBundle,
        device,
        precision: str,
        channels_last: bool,
        *,
        dist=None,
        emit=None,
        should_stop=None,
    ):
        self.cfg, self.model, self.bundle, self.device = cfg, model, bundle, device
        self.precision, self.channels_last, self.dist = precision, channels_last, dist
        self.emit: Callable[[dict], None] = emit or (lambda event: None)
        self.batch_events, self.should_stop = emit is not None, should_stop
        self.method = get_method(model.method)
        self.phases = Phases(model.method)
        self.counts = bundle.train.counts(bundle.num_classes)  # (C,) training images per class
        self.weight = class_weights(self.counts).to(device)  # (C,) the pinned class weights
        # Steps on per-class losses depend on which classes a batch holds, and phase changes
        # swap the loss: the method says whether a CUDA graph captured once stays right.
        self.graphed = cfg.cuda_graph and device.type == "cuda" and self.method.cuda_graph
        self.graphed = self.graphed and dist is None
        self.opt = self.make_optimizer(model.parameters(), cfg.lr)
        self.ema = self._new_ema()
        self.sched = self._new_scheduler()
        # uint8 data on the device once (GPU: no host->device copies per batch)
        self.train_x = bundle.train.images.to(device)
        self.train_y = bundle.train.labels.to(device)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        # PCGrad's task orders: a generator of their own, so the data order is the baseline's
        self.task_gen = torch.Generator().manual_seed(cfg.seed + 1_000_003)
        self.step = self._new_step()
        self.tracker = self._new_tracker()
        self.history: list[dict] = []
        self.best: dict = {"epoch": 0, "state": None}  # the kept weights (cfg.keep), their epoch
        self.best_f1 = -1.0  # best validation macro-F1 in the current phase
        self.finished, self.stop_reason = False, ""
        self.backbone_frozen = False  # cRT stage 2: BatchNorm statistics of the backbone stay
        self.start_epoch, self.elapsed, self.resumed_at = 1, 0.0, []
        self.t_start = time.perf_counter()  # this session's start (csba.train sets it anew)
        n = len(self.train_y)
        # drop_last: a ragged final batch costs a kernel set-up every epoch for 0-31 images; the
        # dropped few change each epoch (reshuffled), so no image is left out systematically
        self.num_batches = max(1, n // cfg.batch_size)
        self.sampler = (
            None if dist is None else dist.setup(model.method, n, cfg.batch_size, cfg.seed)
        )
        self.evaluate = evaluate_split if dist is None else dist.main_only(evaluate_split)

    # ---- parts the methods' hooks use ---------------------------------------------------------

    def make_optimizer(self, params, lr: float) -> torch.optim.Optimizer:
        """Adam; fused on a GPU (one kernel per step), the default on the CPU (the shipped
        runs' arithmetic); a CUDA graph bakes a float lr in at capture, so it gets a tensor."""
        cuda = self.device.type == "cuda"
        return torch.optim.Adam(
            params,
            lr=torch.tensor(lr, device=self.device) if self.graphed else lr,
            weight_decay=self.cfg.weight_decay,
            fused=True if cuda else None,
            capturable=self.graphed,
        )

    def _new_ema(self):
        if self.cfg.ema_decay <= 0:
            return None
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        avg = get_ema_multi_avg_fn(self.cfg.ema_decay)
        return AveragedModel(self.model, multi_avg_fn=avg, use_buffers=True)

    def _new_scheduler(self):
        cfg = self.cfg
        if cfg.lr_schedule == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=cfg.epochs)
        return torch.optim.lr_scheduler.StepLR(self.opt, step_size=cfg.lr_step, gamma=cfg.lr_gamma)

    def _new_step(self) -> TrainStep:
        dist = self.dist
        return TrainStep(
            self.model if dist is None else dist.wrap(self.model),
            self._loss(self.phases.phase),
            self.opt,
            self.device,
            bf16=self.precision == "bf16",
            graph=self.graphed,
            mode=self.method.step_mode,
            task_generator=self.task_gen,
            global_batch=dist.global_batch_loss if dist is not None else None,
        )

    def _new_tracker(self):
        if self.cfg.conflict_every <= 0:
            return None
        from .diagnostics import ConflictTracker

        b, cfg = self.bundle, self.cfg
        C = b.num_classes
        return ConflictTracker.from_split(
            b.train, b.mean, b.std, C, cfg.conflict_per_class, cfg.seed
        )

    def _loss(self, phase: str):
        return method_loss(self.model.method, phase, self.counts, self.weight, self.cfg, self.model)

    def set_loss(self, phase: str) -> None:
        """The step trains with the method's loss of ``phase`` from now on."""
        self.step.loss_fn = self._loss(phase)

    def enter(self, phase: str, start: int) -> None:
        """Begin ``phase`` at epoch ``start``: early stopping counts from there; the method
        sets the loop up for it (``Method.enter_phase``)."""
        self.phases.phase, self.phases.start = phase, start
        self.best_f1 = -1.0
        self.method.enter_phase(self, phase)

    def finish(self, reason: str) -> None:
        """End the run after this epoch."""
        self.finished, self.stop_reason = True, reason

    def stop_rule(self, epoch: int) -> str:
        """Why the current phase stops after ``epoch`` (no validation macro-F1 gain for
        ``patience`` epochs when keeping the best, or the last epoch), or ""."""
        cfg = self.cfg
        plateau = cfg.keep == "best" and epoch - self.best["epoch"] >= cfg.patience
        if epoch >= cfg.epochs:
            return f"reached {cfg.epochs} epochs"
        if plateau:
            return f"early stop: no validation macro-F1 gain for {cfg.patience} epochs"
        return ""

    def phase_f1(self) -> list[float]:
        """Validation macro-F1 of each epoch of the current phase."""
        return [h["val_macro_f1"] for h in self.history[self.phases.start - 1 :]]

    def retrain_classifier(self, lr: float, resuming: bool = False) -> None:
        """From the best weights so far, re-initialise the head's classifier, freeze the rest
        (BatchNorm statistics too) and optimise the classifier alone at a constant ``lr``
        (cRT's stage 2)."""
        model = self.model
        model.load_state_dict(self.best["state"])
        if not resuming:
            self.phases.stage1_best_epoch = self.best["epoch"]
        model.reset_classifier()
        head = set(model.classifier_parameter_names())
        for name, p in model.named_parameters():
            p.requires_grad_(name in head)
        self.opt = self.make_optimizer([p for p in model.parameters() if p.requires_grad], lr)
        self.sched = None  # constant learning rate (pinned)
        self.step.opt = self.opt
        self.backbone_frozen = True
        self.ema = self._new_ema()

    # ---- the loop -----------------------------------------------------------------------------

    def run(self, write_state: Callable[[int], None] | None) -> None:
        """Epochs until the method finishes the run; ``write_state(epoch)`` after each."""
        epoch = self.start_epoch - 1
        while not self.finished:
            epoch += 1
            t0 = time.perf_counter()
            train_loss, lr = self.train_epoch(epoch)
            record, improved = self.validate(epoch, train_loss, lr, t0)
            self.emit(
                {"type": "epoch", **record, "best_epoch": self.best["epoch"], "improved": improved}
            )
            self.method.after_epoch(self, epoch)
            if write_state is not None:
                write_state(epoch)

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        order = self.method.epoch_order(self.phases.phase, self.bundle.train.labels, self.gen)
        order = order.to(self.device)
        if self.sampler is not None:  # the same order on every rank; augmentation per rank
            order, self.gen = (
                self.sampler.set_epoch(epoch).to(self.device),
                self.dist.epoch_generator(epoch),
            )
        return order

    def train_epoch(self, epoch: int) -> tuple[float, float]:
        """One pass over the training images: mean loss per image and the epoch's lr."""
        cfg, b = self.cfg, self.bundle
        self.model.train()
        if self.backbone_frozen:
            self.model.backbone.eval()
        order = self._epoch_order(epoch)
        loss_sum = torch.zeros((), device=self.device)
        for i in range(self.num_batches):
            if self.should_stop is not None and self.should_stop():
                raise TrainingStopped("cancelled")
            idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            idx = idx if self.sampler is None else self.sampler.local(idx)
            xb = self.train_x[idx]
            if cfg.augment:
                xb = augment_batch(xb, self.gen, b.rot90)
            x = normalize(xb, b.mean, b.std)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            loss = self.step(x, self.train_y[idx])
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            self._check_batch(loss, epoch, i)
            loss_sum += loss * len(idx)
        return self._epoch_loss(loss_sum, epoch)

    def _check_batch(self, loss: torch.Tensor, epoch: int, i: int) -> None:
        # Checked every batch on the CPU (free there); once an epoch on a GPU.
        if self.device.type == "cpu" and not math.isfinite(loss.item()):
            raise TrainingError(
                f"training loss became {loss.item()} at epoch {epoch}, batch {i + 1}; "
                "lower the learning rate (--lr) or use --precision fp32"
            )
        # A batch event reads the loss, which syncs a GPU: there, only every 10th batch.
        n = self.num_batches
        if self.batch_events and (self.device.type == "cpu" or (i + 1) % 10 == 0 or i + 1 == n):
            self.emit(
                {
                    "type": "batch",
                    "epoch": epoch,
                    "batch": i + 1,
                    "num_batches": n,
                    "loss": float(loss),
                }
            )

    def _epoch_loss(self, loss_sum: torch.Tensor, epoch: int) -> tuple[float, float]:
        n = len(self.train_y)
        loss_sum = loss_sum if self.dist is None else self.dist.all_sum(loss_sum)
        train_loss = float(loss_sum) / min(n, self.num_batches * self.cfg.batch_size)
        if not math.isfinite(train_loss):
            raise TrainingError(
                f"training loss became {train_loss} at epoch {epoch}; lower the learning rate "
                "or use --precision fp32"
            )
        lr = float(self.opt.param_groups[0]["lr"])
        if self.sched is not None:
            self.sched.step()
        return train_loss, lr

    def validate(self, epoch: int, train_loss: float, lr: float, t0: float) -> tuple[dict, bool]:
        """Validation of the weights to keep, the epoch's history record, the conflict
        tracker, and the kept weights (best macro-F1 of the phase, or the last); returns the
        record and whether macro-F1 improved."""
        b, t_train = self.bundle, time.perf_counter() - t0
        kept_model = self.model if self.ema is None else self.ema.module
        # Early stopping validates in the training precision (bf16: about half the cost); the
        # stored val/test metrics of the kept weights are recomputed in float32.
        val, probs = self.evaluate(
            kept_model,
            b.val,
            b.classes,
            b.mean,
            b.std,
            device=self.device,
            bf16=self.precision == "bf16",
        )
        # every method's loss is invariant to a per-row shift, so log-probabilities do
        log_p = torch.log(torch.from_numpy(probs).clamp_min(1e-12)).float()
        record = {
            "epoch": epoch,
            "train_loss": train_loss,
            "val_loss": float(self.step.loss_fn(log_p, b.val.labels)),
            "val_accuracy": val["accuracy"],
            "val_macro_f1": val["macro_f1"],
            "lr": lr,
            "seconds": time.perf_counter() - t0,
            "train_seconds": t_train,
        }
        if self.phases.phase != "train":
            record["phase"] = self.phases.phase
        self._track_conflict(epoch)
        self.history.append(record)
        return record, self._keep(kept_model, epoch, val["macro_f1"])

    def _track_conflict(self, epoch: int) -> None:
        if self.tracker is None or not (epoch % self.cfg.conflict_every == 0 or epoch == 1):
            return
        frozen = [p for p in self.model.parameters() if not p.requires_grad]
        for p in frozen:  # the instrument is the same for every run: all parameters
            p.requires_grad_(True)
        self.tracker.record(self.model, epoch)
        for p in frozen:
            p.requires_grad_(False)

    def _keep(self, kept_model: nn.Module, epoch: int, f1: float) -> bool:
        improved = f1 > self.best_f1
        self.best_f1 = max(self.best_f1, f1)
        keep_last = self.cfg.keep == "last" or self.method.keeps_last(self.phases.phase)
        if improved or keep_last:
            state = {k: v.detach().clone() for k, v in kept_model.state_dict().items()}
            self.best = {"epoch": epoch, "state": state}
        return improved

    # ---- resume -------------------------------------------------------------------------------

    def save_state(self, run_dir, epoch: int) -> None:
        """Write the resume state after ``epoch`` (csba.resume.LoopState)."""
        rng = {
            "torch": torch.get_rng_state(),
            "gen": self.gen.get_state(),
            "task": self.task_gen.get_state(),
        }
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state()
        LoopState(
            epoch=epoch,
            config=config_key(self.cfg),
            phases=self.phases.state(),
            model=self.model.state_dict(),
            optimizer=self.opt.state_dict(),
            rng=rng,
            scheduler=self.sched.state_dict() if self.sched is not None else None,
            best_epoch=self.best["epoch"],
            best=self.best["state"],
            best_f1=self.best_f1,
            ema=self.ema.state_dict() if self.ema is not None else None,
            history=self.history,
            conflict_history=self.tracker.history if self.tracker is not None else [],
            finished=self.finished,
            stop_reason=self.stop_reason,
            train_seconds=self.elapsed + time.perf_counter() - self.t_start,
            resumed_at=self.resumed_at,
            threads=torch.get_num_threads(),
        ).save(run_dir)

    def restore(self, r: LoopState) -> None:
        """Continue from a resume state: the phase (set up by its method as when it began),
        weights, optimiser, scheduler, moving average, kept weights, history and RNGs."""
        self.phases.load(r.phases)
        if r.best_epoch:
            self.best = {"epoch": r.best_epoch, "state": r.best}
        self.method.enter_phase(self, self.phases.phase, resuming=True)
        self.model.load_state_dict(r.model)
        self.opt.load_state_dict(r.optimizer)  # moves the state to each parameter's device
        if self.graphed:  # a tensor learning rate, as the CUDA graph needs
            for g in self.opt.param_groups:
                g["lr"] = torch.tensor(float(g["lr"]), device=self.device)
        if self.sched is not None and r.scheduler:
            self.sched.load_state_dict(r.scheduler)
        if self.ema is not None:
            self.ema.load_state_dict(r.ema)
        self.best_f1, self.history = r.best_f1, r.history
        if self.tracker is not None:
            self.tracker.history = r.conflict_history
        torch.set_rng_state(r.rng["torch"])
        self.gen.set_state(r.rng["gen"])
        self.task_gen.set_state(r.rng["task"])
        if self.device.type == "cuda" and "cuda" in r.rng:
            torch.cuda.set_rng_state(r.rng["cuda"])
        self.finished, self.stop_reason = r.finished, r.stop_reason
        self.start_epoch, self.elapsed = r.epoch + 1, r.train_seconds
        self.resumed_at = [*r.resumed_at, r.epoch]
