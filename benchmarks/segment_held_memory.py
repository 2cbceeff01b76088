"""Memory the segmented step's runs keep alive between steps (CPU, eager).

    python benchmarks/segment_held_memory.py --paths 30 --batch-size 256
    python benchmarks/segment_held_memory.py --cuda-growth     # on a GPU: the trainer's memory

A segment variant (:class:`ranknas.supernet.segment_run.SegmentRun`) lives as long as the
trainer. Whatever it still references after its backward is held once per variant, and a
GPU trainer captures ~590 variants of ``nasrec_full``: its output, and through the output's
autograd graph the saved tensors of every node the backward skipped. This counts both,
after ``--paths`` steps of new uniformly sampled paths, by tracking every tensor autograd
saves (weak references) and every run's output; storages are counted once.

``--cuda-growth`` shows the same on a GPU: the memory allocated by a ``SupernetTrainer``
(segmented, CUDA graphs, TF32, B=4096, Criteo caps) as it captures variants.
"""

from __future__ import annotations

import argparse
import gc
import random
import weakref

import torch

from ranknas.evaluator.data import DataSchema
from ranknas.spaces import load_space
from ranknas.supernet import Supernet
from ranknas.supernet.masked import encode
from ranknas.supernet.segmented_step import SegmentedStep


def _bytes(tensors: list[torch.Tensor]) -> tuple[int, float]:
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return len(storages), sum(storages.values()) / 2**20


def cuda_growth(steps: tuple[int, ...] = (20, 200, 800, 1500)) -> None:
    """GiB allocated after each run of ``steps`` trainer steps, and the variants captured."""
    from bench_common import criteo_schema, random_data

    from ranknas.supernet import SupernetTrainConfig, SupernetTrainer, make_sampler

    space, schema = load_space("nasrec_full"), criteo_schema()
    trainer = SupernetTrainer(
        Supernet(space, schema, seed=0), random_data(schema, 1 << 20, torch.device("cuda")),
        make_sampler("uniform", space, 0, schema=schema),
        SupernetTrainConfig(examples=1 << 40, batch_size=4096, lr=0.01, device="cuda",
                            log_every=10_000, execution="segmented", cuda_graph=True,
                            precision="tf32", check_every=50))
    for n in steps:
        trainer.train(n * 4096)
        torch.cuda.synchronize()
        print(f"+{n} steps: {torch.cuda.memory_allocated() / 2**30:.1f} GiB allocated, "
              f"peak {torch.cuda.max_memory_allocated() / 2**30:.1f}, "
              f"{trainer.masked.segments.captured} variants captured", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="nasrec_full")
    parser.add_argument("--paths", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--cuda-growth", action="store_true")
    args = parser.parse_args()
    if args.cuda_growth:
        cuda_growth()
        return
    schema = DataSchema(13, (1000,) * 26, "criteo-like")
    supernet = Supernet(load_space(args.space), schema, seed=0).train()
    step = SegmentedStep(supernet, update=lambda params, grads: None)
    gen = torch.Generator().manual_seed(0)
    b = args.batch_size
    dense = torch.randn(b, schema.num_dense, generator=gen)
    sparse = torch.randint(0, 1000, (b, len(schema.cardinalities)), generator=gen)
    labels = torch.randint(0, 2, (b,), generator=gen).float()
    saved: list[weakref.ref] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(weakref.ref(t))
        return t

    rng = random.Random(0)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        for _ in range(args.paths):
            emb = supernet.embedding(sparse).detach()
            step(dense, emb, labels, encode(supernet, supernet.space.sample(rng)))
    gc.collect()
    alive = [t for t in (r() for r in saved) if t is not None and not t.is_inference()]
    # parameters are saved too (matmul weights): they are not the runs' to hold
    params = {p.untyped_storage().data_ptr() for p in supernet.parameters()}
    alive = [t for t in alive if t.untyped_storage().data_ptr() not in params]
    outs = [run.out for run in step._runs.values() if run.out is not None]
    n_saved, mib_saved = _bytes(alive)
    n_outs, mib_outs = _bytes(outs)
    print(f"{args.space}, B={b}, {args.paths} paths: {len(step._runs)} segment variants; "
          f"held after the steps: {n_saved} saved tensors ({mib_saved:.1f} MiB), "
          f"{n_outs} outputs ({mib_outs:.1f} MiB)")


if __name__ == "__main__":
    main()
