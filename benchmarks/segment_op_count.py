"""ATen ops per segmented supernet step, forward and backward, counted on the CPU.

    python benchmarks/segment_op_count.py --paths 40

A proxy for the kernels a captured step launches (what bounds it at small batches): the
segmented step runs eagerly on ``nasrec_full`` with 13 dense features and 26 fields of 5 ids,
B=4, over ``--paths`` uniformly sampled paths (the first 5 warm up, not counted). A
``TorchDispatchMode`` counts every ATen op; views launch no kernel and are reported apart.
The elements that ops other than views write into batch-shaped outputs, per example, are a
proxy for the bytes a step moves at large batches.
On the CPU the masked LayerNorm runs as its eager ops, not the fused CUDA kernel, unless
``--as-cuda`` runs it as the custom op (one call, as on a GPU). For an A/B
against an older commit, run this file with that commit's ``ranknas`` first on the path.
"""

from __future__ import annotations

import argparse
import collections

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ranknas.evaluator.data.schema import DataSchema
from ranknas.spaces import load_space
from ranknas.supernet import Supernet, make_sampler, masked_base
from ranknas.supernet.masked import encode
from ranknas.supernet.segmented_step import SegmentedStep

VIEWS = {"aten.slice", "aten.view", "aten.t", "aten.transpose", "aten.expand", "aten.detach",
         "aten._unsafe_view", "aten.as_strided", "aten.unsqueeze", "aten.squeeze",
         "aten.permute", "aten.alias", "aten.narrow", "aten.select", "aten.unbind",
         "aten.split", "aten.lift_fresh"}


class _Count(TorchDispatchMode):
    def __init__(self, batch: int) -> None:
        super().__init__()
        self.batch = batch
        self.ops: collections.Counter[str] = collections.Counter()
        self.written: collections.Counter[str] = collections.Counter()  # batch-shaped

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        self.ops[name] += 1
        out = func(*args, **(kwargs or {}))
        if name == "aten.index_add_":  # returns the whole buffer; writes only the source's
            out = args[3]
        if name not in VIEWS:
            for t in out if isinstance(out, tuple | list) else (out,):
                if isinstance(t, torch.Tensor) and t.dim() and t.shape[0] == self.batch:
                    self.written[name] += t.numel()
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--paths", type=int, default=40)
    parser.add_argument("--halvings", type=int, default=2)
    parser.add_argument("--as-cuda", action="store_true",
                        help="run the ops that are one custom op on CUDA (the masked "
                             "LayerNorm) as that op, counted once, as a GPU step launches it")
    args = parser.parse_args()
    if args.as_cuda:
        masked_base._fused = lambda x: True  # the op's CPU reference, seen as one call
    space = load_space("nasrec_full")
    supernet = Supernet(space, DataSchema(13, (5,) * 26, "tiny"), seed=0).train()
    step = SegmentedStep(supernet, lambda params, grads: None, halvings=args.halvings)
    sampler = make_sampler("uniform", space, 0, schema=supernet.schema)
    gen = torch.Generator().manual_seed(0)
    dense = torch.randn(4, 13, generator=gen)
    sparse = torch.randint(0, 5, (4, 26), generator=gen)
    labels = torch.zeros(4)
    archs = [sampler.sample(i) for i in range(args.paths + 5)]
    for arch in archs[:5]:
        step(dense, supernet.embedding(sparse).detach(), labels, encode(supernet, arch))
    with _Count(len(labels)) as count:
        for arch in archs[5:]:
            step(dense, supernet.embedding(sparse).detach(), labels, encode(supernet, arch))
    ops, n = count.ops, args.paths
    print(f"per step over {n} paths: {sum(ops.values()) / n:.1f} ATen ops, "
          f"{sum(v for k, v in ops.items() if k not in VIEWS) / n:.1f} not views, "
          f"{ops['aten.slice_backward'] / n:.1f} slice backwards, "
          f"{sum(count.written.values()) / n / len(labels) / 1e3:.1f}k activation "
          f"elements written per example")
    for name, calls in ops.most_common(15):
        print(f"  {calls / n:8.1f}  {name}")
    print("activation elements written per example, by op:")
    for name, elements in count.written.most_common(15):
        print(f"  {elements / n / len(labels) / 1e3:8.1f}k  {name}")


if __name__ == "__main__":
    main()
