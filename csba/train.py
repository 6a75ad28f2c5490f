"""Training (docs/design.md §2): one function, :func:`train`, driven by a :class:`TrainConfig`.

Data stay uint8 tensors (on the device when it is a GPU); each batch is augmented, normalised and
cast on the fly. bfloat16 autocast + channels_last where supported (``precision="auto"``), float32
otherwise. Early stopping on validation macro-F1 keeps the best weights in memory; Ctrl-C or a
cancel request stops after the current batch and still saves the best weights so far.
"""

from __future__ import annotations

import copy
import datetime as _dt
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .backbones import BackboneError, load_pretrained
from .config import KEEP_RULES, LR_SCHEDULES, WEIGHT_DTYPE_NAMES, TrainConfig
from .data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DatasetBundle,
    augment_batch,
    load_dataset,
    normalize,
    with_normalisation,
)
from .evaluate import evaluate_split, prediction_record
from .losses import class_weights
from .methods import Phases, get_method, method_record
from .models import count_parameters, create_model
from .resume import LoopState, ResumeError, resume_dir
from .step import TrainStep
from .store import config_run_dir, save_run

__all__ = [
    "TrainConfig",
    "TrainingError",
    "TrainingStopped",
    "resolve_device",
    "resolve_precision",
    "train",
]


# Storage dtypes of the kept weights (TrainConfig.weights_dtype names them).
WEIGHT_DTYPES = {"float16": torch.float16, "float32": torch.float32}
assert tuple(WEIGHT_DTYPES) == WEIGHT_DTYPE_NAMES


class TrainingStopped(Exception):
    """Raised inside the loop when a cancel is requested; the best weights are still saved."""


class TrainingError(ValueError):
    """Training cannot go on (non-finite loss, out of memory); the message says what to change."""


def resolve_device(device: str) -> torch.device:
    """auto -> cuda when available, else cpu; an explicit cuda without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA GPU is available")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {device!r}; choose auto, cpu or cuda")
    return torch.device(device)


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags for f in ("avx512_bf16", "amx_bf16", "avx512bw"))


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto -> bf16 on CUDA and on CPUs with AVX-512/AMX, else fp32."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"unknown precision {precision!r}; choose auto, bf16 or fp32")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if _cpu_has_bf16() else "fp32"


@torch.no_grad()
def round_weights(model: nn.Module, dtype: torch.dtype) -> torch.dtype:
    """Round a model's floating-point parameters and buffers in place to ``dtype`` (kept in
    float32), as storing them in ``dtype`` would; returns the dtype to store. A value beyond
    float16's range (|x| > 65504) keeps the whole model in float32 rather than storing an inf.
    """
    if dtype == torch.float32:
        return dtype
    tensors = [t for t in model.state_dict().values() if t.is_floating_point()]
    limit = torch.finfo(dtype).max
    if any(t.abs().max() > limit for t in tensors if t.numel()):
        return torch.float32
    for t in tensors:
        t.copy_(t.to(dtype))
    return dtype


def seed_everything(seed: int, deterministic: bool) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = True


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _config_key(cfg: TrainConfig) -> dict:
    """The config fields a resumed run must share with the one that wrote its state."""
    skip = {"resume", "out", "run_dir"}
    return {k: v for k, v in asdict(cfg).items() if k not in skip}


def _method_loss(method: str, loss: str, phase: str, counts, weight, cfg, model):
    """The training loss of a method in a phase (its unit in csba/methods)."""
    return get_method(method).loss(phase, loss, counts, weight, cfg, model)


def train(
    config: TrainConfig,
    *,
    bundle: DatasetBundle | None = None,
    callback: Callable[[dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    model_kwargs: dict | None = None,
    save: bool = True,
    dist=None,
) -> dict:
    """Train one run and store it; returns the run's metadata (what run.json holds).

    ``callback(event)`` receives dicts with ``type`` "start", "batch", "epoch" or "end" so a
    dashboard can follow progress; ``should_stop()`` is polled every batch (cancel). A
    KeyboardInterrupt or cancel ends training early and the best weights so far are kept.
    With ``config.resume`` a run whose folder holds a resume state (written at the end of
    every epoch) continues from its last finished epoch, with the same result as an
    uninterrupted run at the same thread count. ``dist``: a csba.distributed.DistContext
    under torchrun (one run across processes: global batch, rank 0 validates and writes).
    """
    from .methods import class_balanced_indices, classifier_parameters, drw_starts, reset_classifier

    cfg = copy.deepcopy(config)
    if not 0.0 <= cfg.ema_decay < 1.0:
        raise TrainingError(f"ema_decay must be in [0, 1), got {cfg.ema_decay}")
    for name, value, allowed in (
        ("lr_schedule", cfg.lr_schedule, LR_SCHEDULES),
        ("keep", cfg.keep, KEEP_RULES),
    ):
        if value not in allowed:
            raise TrainingError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    if cfg.weights_dtype not in WEIGHT_DTYPES:
        raise TrainingError(
            f"weights_dtype must be one of {', '.join(WEIGHT_DTYPES)}, got {cfg.weights_dtype!r}"
        )
    if cfg.resume and not save:
        raise TrainingError("resume needs a run folder (save=True)")
    emit = callback or (lambda event: None)
    device = resolve_device(cfg.device) if dist is None else dist.device
    precision = resolve_precision(cfg.precision, device)
    channels_last = precision == "bf16" if cfg.channels_last is None else cfg.channels_last
    seed_everything(cfg.seed, cfg.deterministic)
    run_dir = config_run_dir(cfg)
    try:
        resumed = LoopState.load(run_dir) if cfg.resume else None
    except ResumeError as e:
        raise TrainingError(str(e)) from None
    if resumed is not None and resumed.config != _config_key(cfg):
        theirs, ours = resumed.config or {}, _config_key(cfg)
        diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
        raise TrainingError(
            f"the resume state in '{resume_dir(run_dir)}' was written with other options "
            f"({', '.join(diff)}); use those or delete that folder to start over"
        )
    if bundle is None:
        bundle = load_dataset(
            cfg.dataset, cfg.image_size, data_root=cfg.data_root, split_seed=cfg.split_seed
        )
    if cfg.pretrained:  # ImageNet statistics, per RGB channel (grey images are repeated)
        bundle = with_normalisation(bundle, IMAGENET_MEAN, IMAGENET_STD)
    C = bundle.num_classes
    counts = bundle.train.counts(C)
    weight = class_weights(counts).to(device)
    model_kwargs = dict(model_kwargs or {})
    if cfg.backbone != "trifire":
        model_kwargs["backbone"] = cfg.backbone  # run.json "model": what rebuilds the model
    try:
        model = create_model(cfg.variant, C, **model_kwargs)
        pretrained = load_pretrained(model.backbone, cfg.pretrained) if cfg.pretrained else None
    except BackboneError as e:
        raise TrainingError(str(e)) from None
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    method = model.method
    phases = Phases(method)
    loss_fn = _method_loss(method, model.loss, phases.phase, counts, weight, cfg, model)
    # Steps on per-class losses (pcgrad, its control) depend on which classes a batch holds, and
    # phase changes swap the loss: both rule out a CUDA graph captured once.
    graphed = cfg.cuda_graph and device.type == "cuda" and get_method(method).cuda_graph
    graphed = graphed and dist is None

    def make_optimizer(params, lr: float):
        # fused: one kernel for the whole Adam step on a GPU, where this small model's step is
        # bound by kernel launches; the CPU keeps the default (the shipped runs' arithmetic).
        return torch.optim.Adam(
            params,
            # a CUDA graph bakes a float lr in at capture; a tensor lr is updated in place
            lr=torch.tensor(lr, device=device) if graphed else lr,
            weight_decay=cfg.weight_decay,
            fused=True if device.type == "cuda" else None,
            capturable=graphed,
        )

    opt = make_optimizer(model.parameters(), cfg.lr)
    ema = None
    if cfg.ema_decay > 0:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(
            model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True
        )
    if cfg.lr_schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    else:
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.lr_step, gamma=cfg.lr_gamma)

    # uint8 data on the device once (GPU: no host->device copies per batch).
    train_x = bundle.train.images.to(device)
    train_y = bundle.train.labels.to(device)
    gen = torch.Generator().manual_seed(cfg.seed)
    # PCGrad's task orders: a generator of their own, so the data order is the baseline's.
    task_gen = torch.Generator().manual_seed(cfg.seed + 1_000_003)
    step_mode = get_method(method).step_mode
    step = TrainStep(
        model if dist is None else dist.wrap(model),
        loss_fn,
        opt,
        device,
        bf16=precision == "bf16",
        graph=graphed,
        mode=step_mode,
        task_generator=task_gen,
        global_batch=dist.global_batch_loss if dist is not None else None,
    )
    evaluate = evaluate_split if dist is None else dist.main_only(evaluate_split)

    tracker = None
    if cfg.conflict_every > 0:
        from .diagnostics import ConflictTracker

        tracker = ConflictTracker.from_split(
            bundle.train, bundle.mean, bundle.std, C, cfg.conflict_per_class, cfg.seed
        )

    def enter_stage2(resuming: bool = False) -> None:
        """cRT stage 2: the best stage-1 weights, a fresh classifier, the backbone frozen."""
        nonlocal opt, ema, sched
        model.load_state_dict(best["state"])
        if not resuming:
            phases.stage1_best_epoch = best["epoch"]
        reset_classifier(model)
        head = set(classifier_parameters(model))
        for name, p in model.named_parameters():
            p.requires_grad_(name in head)
        opt = make_optimizer([p for p in model.parameters() if p.requires_grad], cfg.crt_lr)
        sched = None  # constant learning rate (pinned)
        step.opt = opt
        if ema is not None:
            ema = AveragedModel(
                model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True
            )

    history: list[dict] = []
    best = {"epoch": 0, "state": None}  # the kept weights (cfg.keep) and their epoch
    best_f1 = -1.0  # best validation macro-F1 in the current phase
    n = len(train_y)
    # drop_last: a ragged final batch costs a new kernel set-up every epoch for 0-31 images; the
    # dropped few change each epoch (reshuffled), so no image is left out systematically.
    num_batches = max(1, n // cfg.batch_size)
    sampler = dist.setup(method, n, cfg.batch_size, cfg.seed) if dist is not None else None
    write = save and (dist is None or dist.is_main)  # only rank 0 writes the run folder
    status = "completed"
    stop_reason = ""
    finished = False  # the loop's end was reached (early stop or the last epoch)
    start_epoch = 1
    elapsed = 0.0  # training seconds of earlier sessions of a resumed run
    resumed_at: list[int] = []
    if resumed is not None:
        r = resumed
        phases.load(r.phases)
        step.loss_fn = _method_loss(method, model.loss, phases.phase, counts, weight, cfg, model)
        if phases.phase == "stage2":  # freeze and re-optimise as stage 2 did, then load
            best = {"epoch": r.best_epoch, "state": r.best}
            enter_stage2(resuming=True)
        model.load_state_dict(r.model)
        opt.load_state_dict(r.optimizer)  # moves the state to each parameter's device
        if graphed:  # a tensor learning rate, as the CUDA graph needs
            for g in opt.param_groups:
                g["lr"] = torch.tensor(float(g["lr"]), device=device)
        if sched is not None and r.scheduler:
            sched.load_state_dict(r.scheduler)
        if ema is not None:
            ema.load_state_dict(r.ema)
        if r.best_epoch:
            best = {"epoch": r.best_epoch, "state": r.best}
        best_f1, history = r.best_f1, r.history
        if tracker is not None:
            tracker.history = r.conflict_history
        torch.set_rng_state(r.rng["torch"])
        gen.set_state(r.rng["gen"])
        task_gen.set_state(r.rng["task"])
        if device.type == "cuda" and "cuda" in r.rng:
            torch.cuda.set_rng_state(r.rng["cuda"])
        finished, stop_reason = r.finished, r.stop_reason
        start_epoch = r.epoch + 1
        elapsed = r.train_seconds
        resumed_at = [*r.resumed_at, r.epoch]

    def write_resume_state(epoch: int) -> None:
        rng = {"torch": torch.get_rng_state(), "gen": gen.get_state(), "task": task_gen.get_state()}
        if device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state()
        LoopState(
            epoch=epoch,
            config=_config_key(cfg),
            phases=phases.state(),
            model=model.state_dict(),
            optimizer=opt.state_dict(),
            rng=rng,
            scheduler=sched.state_dict() if sched is not None else None,
            best_epoch=best["epoch"],
            best=best["state"],
            best_f1=best_f1,
            ema=ema.state_dict() if ema is not None else None,
            history=history,
            conflict_history=tracker.history if tracker is not None else [],
            finished=finished,
            stop_reason=stop_reason,
            train_seconds=elapsed + time.perf_counter() - t_start,
            resumed_at=resumed_at,
            threads=torch.get_num_threads(),
        ).save(run_dir)

    t_start = time.perf_counter()
    emit(
        {
            "type": "start",
            "epochs": cfg.epochs,
            "num_batches": num_batches,
            "device": str(device),
            "precision": precision,
            "resumed_from": start_epoch - 1,
        }
    )
    try:
        epoch = start_epoch - 1
        while not finished:
            epoch += 1
            t0 = time.perf_counter()
            model.train()
            if phases.phase == "stage2":
                model.backbone.eval()  # frozen backbone: BatchNorm statistics stay
                perm = class_balanced_indices(bundle.train.labels, gen).to(device)
            else:
                perm = torch.randperm(n, generator=gen).to(device)
            if sampler is not None:  # the same order on every rank; augmentation per rank
                perm, gen = sampler.set_epoch(epoch).to(device), dist.epoch_generator(epoch)
            loss_sum = torch.zeros((), device=device)
            for b in range(num_batches):
                if should_stop is not None and should_stop():
                    raise TrainingStopped("cancelled")
                idx = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
                idx = idx if sampler is None else sampler.local(idx)
                xb = train_x[idx]
                if cfg.augment:
                    xb = augment_batch(xb, gen, bundle.rot90)
                x = normalize(xb, bundle.mean, bundle.std)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                loss = step(x, train_y[idx])
                if ema is not None:
                    ema.update_parameters(model)
                if device.type == "cpu" and not math.isfinite(loss.item()):
                    # Checked every batch on the CPU (free there); once an epoch on a GPU.
                    raise TrainingError(
                        f"training loss became {loss.item()} at epoch {epoch}, batch {b + 1}; "
                        "lower the learning rate (--lr) or use --precision fp32"
                    )
                loss_sum += loss * len(idx)
                # A batch event reads the loss, which syncs a GPU: there, only every 10th batch.
                if callback is not None and (
                    device.type == "cpu" or (b + 1) % 10 == 0 or b + 1 == num_batches
                ):
                    emit(
                        {
                            "type": "batch",
                            "epoch": epoch,
                            "batch": b + 1,
                            "num_batches": num_batches,
                            "loss": float(loss),
                        }
                    )
            loss_sum = loss_sum if dist is None else dist.all_sum(loss_sum)
            train_loss = float(loss_sum) / min(n, num_batches * cfg.batch_size)
            if not math.isfinite(train_loss):
                raise TrainingError(
                    f"training loss became {train_loss} at epoch {epoch}; lower the learning rate "
                    "or use --precision fp32"
                )
            lr = float(opt.param_groups[0]["lr"])
            if sched is not None:
                sched.step()
            t_train = time.perf_counter() - t0
            kept_model = model if ema is None else ema.module
            # Validation for early stopping runs in the training precision (bf16: about half the
            # cost); the stored val/test metrics of the kept weights are recomputed in float32.
            val_metrics, val_probs = evaluate(
                kept_model,
                bundle.val,
                bundle.classes,
                bundle.mean,
                bundle.std,
                device=device,
                bf16=precision == "bf16",
            )
            # every method's loss is invariant to a per-row shift, so log-probabilities do
            val_loss = float(
                step.loss_fn(
                    torch.log(torch.from_numpy(val_probs).clamp_min(1e-12)).float(),
                    bundle.val.labels,
                )
            )
            record = {
                "epoch": epoch,
                "train_loss": train_loss,
                "val_loss": val_loss,
                "val_accuracy": val_metrics["accuracy"],
                "val_macro_f1": val_metrics["macro_f1"],
                "lr": lr,
                "seconds": time.perf_counter() - t0,
                "train_seconds": t_train,
            }
            if phases.phase != "train":
                record["phase"] = phases.phase
            if tracker is not None and (epoch % cfg.conflict_every == 0 or epoch == 1):
                frozen = [p for p in model.parameters() if not p.requires_grad]
                for p in frozen:  # the instrument is the same for every run: all parameters
                    p.requires_grad_(True)
                tracker.record(model, epoch)
                for p in frozen:
                    p.requires_grad_(False)
            history.append(record)
            improved = val_metrics["macro_f1"] > best_f1
            best_f1 = max(best_f1, val_metrics["macro_f1"])
            keep_last = cfg.keep == "last" or phases.phase == "stage2"
            if improved or keep_last:
                best = {
                    "epoch": epoch,
                    "state": {k: v.detach().clone() for k, v in kept_model.state_dict().items()},
                }
            emit({"type": "epoch", **record, "best_epoch": best["epoch"], "improved": improved})
            phase_f1 = [h["val_macro_f1"] for h in history[phases.start - 1 :]]
            if phases.phase == "stage2":
                if epoch - phases.start + 1 >= cfg.crt_epochs:
                    finished = True
                    stop_reason = f"cRT: {cfg.crt_epochs} classifier epochs after stage 1"
            elif phases.phase == "ldam" and epoch >= cfg.epochs:
                finished, stop_reason = True, f"reached {cfg.epochs} epochs before re-weighting"
            elif phases.phase == "ldam" and drw_starts(phase_f1, cfg.drw_patience):
                # re-weighting from the next epoch on; early stopping counts from there
                phases.phase, phases.start, phases.drw_epoch = "drw", epoch + 1, epoch + 1
                step.loss_fn = _method_loss(method, model.loss, "drw", counts, weight, cfg, model)
                best_f1 = -1.0
            elif (cfg.keep == "best" and epoch - best["epoch"] >= cfg.patience) or (
                epoch >= cfg.epochs
            ):
                stop_reason = (
                    f"early stop: no validation macro-F1 gain for {cfg.patience} epochs"
                    if epoch < cfg.epochs
                    else f"reached {cfg.epochs} epochs"
                )
                if phases.phase == "stage1":
                    phases.phase, phases.start = "stage2", epoch + 1
                    enter_stage2()
                    step.loss_fn = _method_loss(
                        method, model.loss, "stage2", counts, weight, cfg, model
                    )
                    best_f1 = -1.0
                else:
                    finished = True
            if write:
                write_resume_state(epoch)
    except torch.cuda.OutOfMemoryError:
        raise TrainingError(
            f"CUDA ran out of memory at batch size {cfg.batch_size} and {cfg.image_size} px; "
            "lower --batch-size or --image-size, or train on the CPU (--device cpu)"
        ) from None
    except KeyboardInterrupt:
        status, stop_reason = "interrupted", "interrupted (Ctrl-C)"
    except TrainingStopped:
        status, stop_reason = "cancelled", "cancelled"
    if best["state"] is None:
        raise TrainingStopped(f"{stop_reason or 'stopped'} before the first epoch finished")
    train_seconds = elapsed + time.perf_counter() - t_start
    if not (dist is None or dist.is_main):
        return {"status": status, "rank": dist.rank, "run_dir": str(run_dir)}
    model.load_state_dict(best["state"])
    for p in model.parameters():
        p.requires_grad_(True)
    weights_dtype = round_weights(model, WEIGHT_DTYPES[cfg.weights_dtype])
    model = model.to(memory_format=torch.contiguous_format).eval()
    test_metrics, test_probs = evaluate_split(
        model, bundle.test, bundle.classes, bundle.mean, bundle.std, device=device
    )
    val_metrics, _ = evaluate_split(
        model, bundle.val, bundle.classes, bundle.mean, bundle.std, device=device
    )
    model = model.cpu()
    kept = history[best["epoch"] - 1]
    meta = {
        "variant": cfg.variant,
        "num_classes": C,
        "classes": bundle.classes,
        "config": asdict(cfg),
        "model": model_kwargs,
        "method": method_record(method, phases, counts, cfg, model),
        "backbone": {
            "name": cfg.backbone,
            "feature_channels": model.feature_channels,
            "stages": model.backbone.stage_names(),
            "pretrained": pretrained,
        },
        "dataset": {**bundle.describe(), "data_root": bundle.data_root},
        "split_indices": bundle.split_indices,
        "parameters": count_parameters(model),
        "weights_dtype": str(weights_dtype).removeprefix("torch."),  # as stored
        "status": status,
        "stop_reason": stop_reason or f"reached {cfg.epochs} epochs",
        "best_epoch": best["epoch"],
        "epochs_run": len(history),
        "history": history,
        "generalisation_gap": kept["val_loss"] - kept["train_loss"],
        "metrics": {"test": test_metrics, "val": val_metrics},
        "predictions": {"test": prediction_record(bundle.test.labels, test_probs)},
        "conflict_history": tracker.history if tracker is not None else [],
        "runtime": {
            "device": str(device),
            "precision": precision,
            "channels_last": channels_last,
            "cuda_graph": step.graphed,
            **({"cuda_graph_error": step.graph_error} if step.graph_error else {}),
            "train_seconds": train_seconds,
            **({"resumed_at_epochs": resumed_at} if resumed_at else {}),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "threads": torch.get_num_threads(),
            **({"distributed": dist.record()} if dist is not None else {}),
        },
        "created": _now(),
    }
    if write:
        save_run(run_dir, model, meta, dtype=weights_dtype)
        meta["run_dir"] = str(run_dir)
        if status == "completed":
            import shutil

            shutil.rmtree(resume_dir(run_dir), ignore_errors=True)
    emit(
        {
            "type": "end",
            "status": status,
            "run_dir": meta.get("run_dir"),
            "test_macro_f1": test_metrics["macro_f1"],
            "test_accuracy": test_metrics["accuracy"],
        }
    )
    return meta
