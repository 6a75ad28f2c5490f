"""One optimisation step (docs/design.md §2): forward under autocast, the method's loss or
per-class losses, backward (PCGrad's combination for ``mode="pcgrad"``), Adam; optionally
captured once as a CUDA graph and replayed."""

from __future__ import annotations

import torch

from .losses import per_class_mean_losses

__all__ = ["TrainStep"]


class TrainStep:
    """One optimisation step on a batch: forward (autocast), loss, backward, Adam.

    With ``graph=True`` on CUDA the step is captured once as a CUDA graph and then replayed:
    the first ``warmup`` steps run eagerly on a side stream (cuDNN set-up, Adam's state), the
    next is captured with static input tensors, and every later step copies its batch in and
    replays (PyTorch CUDA-graph docs, "whole network capture"). The optimizer must then be
    ``capturable`` with a tensor learning rate, so that schedulers still reach the graph. If the
    capture fails the step stays eager and ``graph_error`` says why.
    """

    def __init__(
        self,
        model,
        loss_fn,
        opt,
        device,
        bf16: bool,
        graph: bool,
        warmup: int = 3,
        mode: str = "loss",
        task_generator: torch.Generator | None = None,
        global_batch=None,
    ):
        self.model, self.loss_fn, self.opt, self.device = model, loss_fn, opt, device
        self.bf16 = bf16
        # "loss": backward of loss_fn; "class_sum": of the sum of the per-class mean losses;
        # "pcgrad": per-class gradients combined by csba.methods.pcgrad (task_generator orders).
        if mode not in ("loss", "class_sum", "pcgrad"):
            raise ValueError(f"unknown step mode {mode!r}")
        self.mode, self.task_generator = mode, task_generator
        # torchrun: (loss, y, norm_weight) -> this process's share of the global batch's loss
        # (csba.distributed.DistContext.global_batch_loss), so DDP's averaged gradient is the
        # single-process gradient of the whole global batch
        self.global_batch = global_batch
        graph = graph and mode == "loss"
        self.graphed = graph and device.type == "cuda"
        self.warmup = warmup
        self.graph_error: str | None = None
        self._graph = None
        self._steps = 0
        self._side = torch.cuda.Stream() if self.graphed else None

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # cache_enabled=False under graphs: autocast's cast cache must not outlive a capture
        with torch.autocast(
            self.device.type,
            dtype=torch.bfloat16,
            enabled=self.bf16,
            cache_enabled=not self.graphed,
        ):
            logits = self.model(x)
        self.opt.zero_grad(set_to_none=True)
        if self.mode == "loss":
            loss = self.loss_fn(logits, y)
            if self.global_batch is not None:
                loss = self.global_batch(loss, y, getattr(self.loss_fn, "norm_weight", None))
            loss.backward()
        else:
            losses, _ = per_class_mean_losses(logits, y)  # (P,) classes present in the batch
            if self.mode == "class_sum":
                losses.sum().backward()
            else:
                self._pcgrad_backward(losses)
            loss = losses.mean()  # reported on the scale of a mean loss
        self.opt.step()
        return loss.detach()

    def _pcgrad_backward(self, losses: torch.Tensor) -> None:
        """Set .grad to PCGrad's combination of the per-class gradients (one backward each)."""
        from .methods import pcgrad

        params = [p for p in self.model.parameters() if p.requires_grad]
        flat = []
        for i in range(len(losses)):
            grads = torch.autograd.grad(
                losses[i], params, retain_graph=i + 1 < len(losses), allow_unused=True
            )
            flat.append(
                torch.cat(
                    [
                        (g if g is not None else torch.zeros_like(p)).reshape(-1).float()
                        for g, p in zip(grads, params, strict=True)
                    ]
                )
            )
        combined = pcgrad(flat, self.task_generator)
        offset = 0
        for p in params:
            k = p.numel()
            p.grad = combined[offset : offset + k].view(p.shape).to(p.dtype)
            offset += k

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Train on one batch (x normalised, y labels); returns the batch's mean loss."""
        if not self.graphed:
            return self._step(x, y)
        if self._graph is not None:
            self._x.copy_(x)
            self._y.copy_(y)
            self._graph.replay()
            return self._loss
        current = torch.cuda.current_stream()
        if self._steps < self.warmup:
            self._steps += 1
            self._side.wait_stream(current)
            with torch.cuda.stream(self._side):
                loss = self._step(x, y)
            current.wait_stream(self._side)
            return loss
        self._x, self._y = x.clone(), y.clone()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self._loss = self._step(self._x, self._y)
        except RuntimeError as e:
            self.graphed = False
            self.graph_error = f"{type(e).__name__}: {e}"[:300]
            torch.cuda.synchronize()
            return self._step(x, y)
        self._graph = graph
        graph.replay()  # capture records the work without running it
        return self._loss
