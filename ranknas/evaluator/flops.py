"""FLOPs as PyTorch itself counts them, to cross-check the analytic costs.

The analytic counts (``MaterializedGraph.flops``) are what ranknas reports; this module runs a
forward pass under ``torch.utils.flop_counter`` so tests (and users adding operators) can hold
the analytic counts against PyTorch's own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count


def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args: Any, out_shape=None,
                   **kwargs: Any) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# The counter knows the CUDA attention kernels but not the fused CPU one (torch 2.13).
_EXTRA = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flop}


def counted_flops(fn: Callable[..., Any], *args: Any) -> int:
    """Total matmul-type FLOPs that ``fn(*args)`` performs, per ``FlopCounterMode``.

    Run modules in training mode: ``nn.MultiheadAttention``'s inference fast path is a fused
    kernel the counter records as zero.
    """
    with FlopCounterMode(display=False, custom_mapping=_EXTRA) as counter:
        fn(*args)
    return int(counter.get_total_flops())
