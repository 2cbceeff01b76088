"""What a forward pass must compute and move, per example: FLOPs and activation bytes.

FLOPs come from ``torch.utils.flop_counter`` (matmuls, attention). Bytes are every tensor an op
writes, counted once written and once read; ``fused`` leaves out point-wise ops, which a
fusing compiler (or a hand-fused kernel) folds into their neighbours. Tensors whose first dim
is the batch count per example; the rest (gathered weight columns) per step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from ranknas.evaluator.data.schema import DataSchema


class _Written(TorchDispatchMode):
    def __init__(self, batch: int) -> None:
        super().__init__()
        self.batch, self.example, self.fused, self.step = batch, 0, 0, 0
        self.label = ""  # what is running now (set by :func:`fused_bytes_by`'s hooks)
        self.by_label: dict[str, int] = {}
        self.by_op: dict[str, int] = {}  # fused bytes per ATen op

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {a.untyped_storage().data_ptr() for a in args if isinstance(a, torch.Tensor)}
        for t in out if isinstance(out, tuple | list) else (out,):
            if not isinstance(t, torch.Tensor) or t.untyped_storage().data_ptr() in inputs:
                continue  # a view moves no bytes
            size = t.numel() * t.element_size()
            if t.dim() and t.shape[0] == self.batch:
                self.example += size
                if torch.Tag.pointwise not in func.tags:
                    self.fused += size
                    self.by_label[self.label] = self.by_label.get(self.label, 0) + size
                    op = func.overloadpacket.__name__
                    self.by_op[op] = self.by_op.get(op, 0) + size
            else:
                self.step += size
        return out


def _count(run: Callable[[], object], batch: int) -> tuple[int, _Written]:
    """FLOPs and bytes written of ``run()`` (run twice: once per counter)."""
    with FlopCounterMode(display=False) as counter:
        run()
    written = _Written(batch)
    with written:
        run()
    return counter.get_total_flops(), written


def forward_cost(forward: Callable[[], object], batch: int) -> dict:
    """Per-example forward FLOPs and activation bytes of ``forward()`` on a batch of
    ``batch`` (run twice, without autograd)."""
    with torch.no_grad():
        flops, written = _count(forward, batch)
    return {"fwd_flops_per_example": flops / batch,
            "fwd_activation_bytes_per_example": 2 * written.example / batch,
            "fwd_fused_activation_bytes_per_example": 2 * written.fused / batch,
            "fwd_weight_bytes_per_step": 2 * written.step}


def train_step_cost(step: Callable[[], object], batch: int) -> dict:
    """Per-example FLOPs and fused activation bytes of a whole training step ``step()``
    (forward, backward, update; run twice under autograd), counted as :func:`forward_cost`
    counts a forward. Backward ops that are not tagged point-wise count as unfusable, so this
    errs high, alike for every step measured with it."""
    flops, written = _count(step, batch)
    return {"step_flops_per_example": flops / batch,
            "step_fused_bytes_per_example": 2 * written.fused / batch,
            "step_weight_bytes": 2 * written.step}


def fused_bytes_by(forward: Callable[[], object], batch: int,
                   label: Callable[[torch.nn.Module], str | None]
                   ) -> tuple[dict[str, float], dict[str, float]]:
    """Fused activation bytes per example of ``forward()``, split by the module running
    (``label(module)`` names the modules to attribute to; None: not one of them) and by ATen
    op."""
    from torch.nn.modules.module import (
        register_module_forward_hook,
        register_module_forward_pre_hook,
    )

    written = _Written(batch)
    outer: list[str] = []

    def enter(module: torch.nn.Module, args: object) -> None:
        name = label(module)
        if name is not None:
            outer.append(written.label)
            written.label = name

    def leave(module: torch.nn.Module, args: object, out: object) -> None:
        if label(module) is not None:
            written.label = outer.pop()

    hooks = [register_module_forward_pre_hook(enter), register_module_forward_hook(leave)]
    try:
        with torch.no_grad(), written:
            forward()
    finally:
        for hook in hooks:
            hook.remove()
    return ({k: 2 * v / batch for k, v in written.by_label.items()},
            {k: 2 * v / batch for k, v in written.by_op.items()})


def step_floor(cost: dict, schema: DataSchema, batch: int, dense_params: int,
               ceil: dict) -> dict:
    """A training step's floor (fwd + bwd ~ 3x forward) at the ceilings ``ceil`` (copy
    bandwidth, matmul rates), with the activations a fusing compiler must still write, the
    embedding rows and Adagrad's dense state."""
    flops = 3 * cost["fwd_flops_per_example"] * batch
    act = 3 * cost["fwd_fused_activation_bytes_per_example"] * batch
    other = (8 * batch * schema.num_sparse * 16 * 4 + 7 * 4 * dense_params
             + 3 * cost["fwd_weight_bytes_per_step"])  # gathered weight columns, fwd + bwd
    return {"step_flops": flops, "step_bytes": act + other,
            **_floors(flops, act, other, ceil)}


def train_step_floor(cost: dict, schema: DataSchema, batch: int, dense_params: int,
                     ceil: dict) -> dict:
    """:func:`step_floor` of a :func:`train_step_cost` (the whole step counted, not 3x its
    forward)."""
    flops = cost["step_flops_per_example"] * batch
    act = cost["step_fused_bytes_per_example"] * batch
    other = 8 * batch * schema.num_sparse * 16 * 4 + 7 * 4 * dense_params
    return {"step_flops": flops, "step_bytes": act + other + cost["step_weight_bytes"],
            **_floors(flops, act, other + cost["step_weight_bytes"], ceil)}


def _floors(flops: float, act: float, other: float, ceil: dict) -> dict:
    """Floor ms per precision: matmul time or memory time, whichever is longer."""
    out = {}
    if ceil:
        bw = ceil["copy_bytes_per_s"]
        for prec, rate, scale in (("fp32", "matmul_fp32_flop_per_s", 1.0),
                                  ("tf32", "matmul_tf32_flop_per_s", 1.0),
                                  ("bf16", "matmul_bf16_flop_per_s", 0.5)):
            t = max(flops / ceil[rate], (act * scale + other) / bw)
            out[f"floor_{prec}_ms"] = t * 1e3
    return out
