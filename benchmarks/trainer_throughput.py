"""``SupernetTrainer`` end to end, for ``supernet_throughput.py --trainer``: its variants
(execution, graphs, precision, and ablations that patch ranknas), the timed measurement and
the subnet-alone side of the issue's step ratio (``--subnets``).
"""

from __future__ import annotations

import statistics
import time

import torch
from bench_common import random_data, sync, widest

from ranknas.evaluator.data.schema import DataSchema
from ranknas.spaces import Architecture, SearchSpace, build_model
from ranknas.supernet import Supernet

__all__ = ["TRAINER_VARIANTS", "ablate", "measure_subnets", "measure_trainer", "print_trainer_rows"]

TRAINER_VARIANTS = {
    "sliced": {},
    "sliced+index": {"embedding_update": "index"},
    "sliced+index+check50": {"embedding_update": "index", "check_every": 50},
    "masked+compile+graph+tf32+check50": {"execution": "masked", "compile": True,
                                          "cuda_graph": True, "precision": "tf32",
                                          "check_every": 50},
    "segmented+check50": {"execution": "segmented", "check_every": 50},
    "segmented+graph+check50": {"execution": "segmented", "cuda_graph": True,
                                "check_every": 50},
    "segmented+graph+tf32+check50": {"execution": "segmented", "cuda_graph": True,
                                     "precision": "tf32", "check_every": 50},
    "segmented+graph+bf16+check50": {"execution": "segmented", "cuda_graph": True,
                                     "precision": "bf16", "check_every": 50},
}
# paths drawn and encoded on the spot in the trainer's process, not ahead in a worker (the
# default on CUDA: SupernetTrainConfig.path_prefetch)
TRAINER_VARIANTS["segmented+graph+tf32+check50+spot"] = {
    **TRAINER_VARIANTS["segmented+graph+tf32+check50"], "path_prefetch": 0}
# the same with PyTorch's LayerNorm ops instead of the fused masked-LayerNorm kernel (the A/B
# of ranknas.supernet.fused_norm; run it in its own process, it patches the module)
TRAINER_VARIANTS["segmented+graph+tf32+check50+torchnorm"] = \
    TRAINER_VARIANTS["segmented+graph+tf32+check50"]
# the segmented step with every fixed width at its widest (halve0), or halved to fit a path
# at most once or three times (the default is twice: SupernetTrainConfig.width_halvings)
for _n in (0, 1, 3):
    TRAINER_VARIANTS[f"segmented+graph+tf32+check50+halve{_n}"] = {
        **TRAINER_VARIANTS["segmented+graph+tf32+check50"], "width_halvings": _n}
# ablations of the segmented step (each patches modules: one per process): no pass-through
# aliases, dense ops at their widest outputs, widths not rounded up to 8 columns, the
# tensor-core attention kernels of attention_tensor_core.py (an experiment, for the unfused
# transformer), the transformer layer as PyTorch ops instead of ranknas.supernet.fused_encoder's
# one op (the default under TF32), or as that op with float32 matmuls (3xTF32 dots), or
# PyTorch's index_select / index_add_ instead of ranknas.supernet.column_index's kernels, or
# the dot-product's pairs as PyTorch ops instead of ranknas.supernet.fused_pairs' kernels, or
# the dense Adagrad update as four foreach passes instead of ranknas.evaluator.fused_adagrad's
# one, or the ops' branches both computed and blended (as the masked execution does) instead
# of only the side a variant's fixed flag takes, or the fields of linear-3d / transformer /
# dot-product inputs gathered [B, n, E] (then copied field-major by the op) instead of [B, E, n],
# or the partial rows of the LayerNorm and encoder backwards summed by PyTorch, not in one pass,
# or FM's interaction as PyTorch ops instead of ranknas.supernet.fused_fm's kernels, or the
# encoder kernels' inputs copied contiguous first (as before they read views in place), or
# the embedding rows gathered and updated by PyTorch's index ops instead of
# ranknas.evaluator.sparse_rows' kernels, or the segments' graphs replayed one by one instead
# of joined into one launch a step (ranknas.supernet.graph_chain)
for _ablation in ("noalias", "densewide", "unaligned", "tcattention", "unfusedencoder",
                  "fusedencoder", "torchindex", "torchpairs", "foreachadagrad",
                  "blendbranches", "rowmajor", "torchsums", "torchfm", "contiguousencoder",
                  "torchrows", "nochain"):
    TRAINER_VARIANTS[f"segmented+graph+tf32+check50+{_ablation}"] = \
        TRAINER_VARIANTS["segmented+graph+tf32+check50"]


def ablate(variant: str) -> None:
    """Patch ranknas for an ablation variant (``+torchnorm``, ``+noalias``, ...)."""
    import ranknas.supernet.masked as masked
    import ranknas.supernet.masked_base as masked_base
    import ranknas.supernet.masked_interaction as interaction
    import ranknas.supernet.masked_ops as ops
    import ranknas.supernet.segmented_forms as forms
    import ranknas.supernet.segmented_step as step

    if variant.endswith("+torchnorm"):
        masked_base._fused = lambda x: False
    if variant.endswith("+noalias"):
        forms.pass_through = lambda layers, ports: {}
    if variant.endswith("+densewide"):
        for cls in (ops.MaskedLinear2d, ops._MaskedBinary, interaction.MaskedDotProduct,
                    interaction.MaskedFM):
            cls.sizable = False
    if variant.endswith("+unaligned"):
        for module in (masked, interaction, forms, step):
            module.aligned = lambda n: n
    if variant.endswith("+tcattention"):
        _tensor_core_attention()
    if variant.endswith("+torchindex"):
        import ranknas.supernet.column_index as column_index

        column_index._fits = lambda *tensors: False
    if variant.endswith("+torchpairs"):
        import ranknas.supernet.fused_pairs as fused_pairs

        fused_pairs.ENABLED = False
    if variant.endswith("+foreachadagrad"):
        import ranknas.evaluator.fused_adagrad as fused_adagrad

        fused_adagrad.ENABLED = False
    if variant.endswith("+blendbranches"):
        def blended(path, flag, on, off):
            return masked_base.blend(flag.view(path), on(), off())

        ops.branch = interaction.branch = blended
    if variant.endswith("+rowmajor"):
        for cls in (ops._MaskedFields, interaction.MaskedDotProduct):
            cls.field_major = lambda self, fixed: frozenset()
    if variant.endswith("+torchsums"):
        import ranknas.supernet.partial_sums as partial_sums

        partial_sums.triton = None
    if variant.endswith("+torchfm"):
        import ranknas.supernet.fused_fm as fused_fm

        fused_fm.triton = None
    if variant.endswith("+contiguousencoder"):
        _contiguous_encoder()
    if variant.endswith("+torchrows"):
        import ranknas.evaluator.sparse_rows as sparse_rows

        sparse_rows.ENABLED = False
    if variant.endswith("+nochain"):
        import ranknas.supernet.graph_chain as graph_chain

        graph_chain.ENABLED = False
    if variant.endswith("fusedencoder"):
        import ranknas.supernet.fused_encoder as fused_encoder

        fused_encoder.ENABLED = not variant.endswith("+unfusedencoder")


def _contiguous_encoder() -> None:
    """Copy the encoder kernels' tensor inputs contiguous first (their outputs follow)."""
    import ranknas.supernet.encoder_kernels as kernels

    def contiguous(fn):
        return lambda *args, **kw: fn(*(a.contiguous() if isinstance(a, torch.Tensor) else a
                                        for a in args), **kw)

    kernels.encoder_forward = contiguous(kernels.encoder_forward)
    kernels.encoder_backward = contiguous(kernels.encoder_backward)


def _tensor_core_attention() -> None:
    """Run ``tiny_head_attention`` on CUDA with the tensor-core kernels (TF32 under the
    step's ``tf32`` precision, 3xTF32 otherwise)."""
    from attention_tensor_core import tc_backward, tc_forward

    from ranknas.evaluator import tiny_attention

    def precision() -> str:
        return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "tf32x3"

    @tiny_attention.tiny_head_attention.register_kernel("cuda")
    def _(qkv, heads, key_bias=None):
        return tc_forward(qkv, heads, key_bias, precision())

    @tiny_attention.tiny_head_attention_backward.register_kernel("cuda")
    def _(qkv, out, grad, lse, heads, key_bias=None):
        return tc_backward(qkv, out, grad, lse, heads, key_bias, precision())


#: Warm-up steps before timing: a segmented trainer captures each segment when a path first
#: runs it, so it warms up until (nearly) every segment has been seen.
WARMUP_STEPS = {"segmented": 1000}


def measure_trainer(space: SearchSpace, schema: DataSchema, batch: int, steps: int,
                    device: torch.device, variant: str, warmup: int | None = None,
                    chunks: int = 5) -> dict:
    """``SupernetTrainer`` end to end: a *new* uniformly sampled path every step (plans and
    encodings are not reused), on-device random data, Adagrad."""
    from ranknas.supernet import SupernetTrainConfig, SupernetTrainer, make_sampler

    ablate(variant)
    data = random_data(schema, 1 << 20, device)
    trainer = SupernetTrainer(
        Supernet(space, schema, seed=0), data, make_sampler("uniform", space, 0, schema=schema),
        SupernetTrainConfig(examples=1 << 40, batch_size=batch, lr=0.01, device=str(device),
                            log_every=10_000, **TRAINER_VARIANTS[variant]))
    if warmup is None:
        warmup = WARMUP_STEPS.get(variant.split("+")[0], 8)
    start = time.perf_counter()
    trainer.train(warmup * batch)  # compile, capture, allocator warm-up
    sync(device)
    setup = time.perf_counter() - start
    segments = trainer.masked.segments if trainer.masked is not None else None
    count = (lambda: segments.captured) if segments is not None else (lambda: 0)
    captured = count()
    joined = segments.joined if segments is not None else 0
    # timed in chunks: a capture (~0.1 s) or a host hiccup inflates one chunk, not the figure
    chunk_ms, clean = [], []
    for k in range(chunks):
        n = steps // chunks + (k < steps % chunks)
        before, start = count(), time.perf_counter()
        trainer.train(n * batch)
        sync(device)
        chunk_ms.append((time.perf_counter() - start) / n * 1e3)
        if count() == before:
            clean.append(chunk_ms[-1])
    ms = statistics.median(clean or chunk_ms)
    row = {"batch": batch, "variant": variant, "ms": ms, "ex_s": batch / ms * 1e3,
           "ms_chunks": chunk_ms, "setup_s": setup, "warmup_steps": warmup}
    if segments is not None:  # captures inside the timed steps would inflate its time
        # steps launched as one joined graph (graph_chain) of the timed ones
        row.update(captured=captured, captured_while_timed=count() - captured,
                   joined_while_timed=segments.joined - joined)
    if device.type == "cuda":
        row["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return row


def measure_subnets(space: SearchSpace, schema: DataSchema, archs: list[Architecture],
                    batch: int, steps: int, device: torch.device) -> dict:
    """Step time of ``archs`` as standalone models, at their own and at their widest widths,
    trained by ``ranknas.evaluator.training.train`` with what the segmented trainer uses on a
    GPU (CUDA graph, TF32, fused attention, index embedding update; none of them on a CPU):
    the subnet-alone side of the issue's step ratio for the trainer rows."""
    from dataclasses import replace

    from ranknas.evaluator.training import TrainConfig, train

    gpu = device.type == "cuda"
    data = random_data(schema, 1 << 20 if gpu else 1 << 14, device)
    cfg = TrainConfig(steps=2, batch_size=batch, lr=0.01, device=str(device), check_every=50,
                      embedding_update="index", cuda_graph=gpu, fused_attention=gpu,
                      precision="tf32" if gpu else "fp32")
    times: dict[str, list[float]] = {"own": [], "widest": []}
    for arch in archs:
        for kind, target in (("own", arch), ("widest", widest(space, arch))):
            # `steps` steps of warm-up (capture), then `steps` timed: progress reports (after
            # a device sync) at both ends
            marks: list[float] = []
            train(build_model(space, target, schema), data,
                  replace(cfg, steps=2 * steps, log_every=steps),
                  progress=lambda p, marks=marks: marks.append(p["seconds"]))
            times[kind].append((marks[-1] - marks[0]) / steps)
    # the mean, as the trainer's time per step is a mean over its paths
    own, wide = statistics.fmean(times["own"]), statistics.fmean(times["widest"])
    return {"subnet_own_ms": own * 1e3, "subnet_widest_ms": wide * 1e3, "subnets": len(archs)}


def print_trainer_rows(rows: list[dict]) -> None:
    """The trainer rows as a markdown table."""
    print("| B | trainer variant | ex/s | ms/step (median chunk) | chunks ms | set-up s "
          "| subnet own / widest ms | step / own | step / widest |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        spread = " ".join(f"{ms:.2f}" for ms in r["ms_chunks"])
        ratios = (f"{r['subnet_own_ms']:.2f} / {r['subnet_widest_ms']:.2f} | "
                  f"{r['ratio_vs_own']:.2f} | {r['ratio_vs_widest']:.2f}"
                  if "subnet_own_ms" in r else " | | ")
        print(f"| {r['batch']} | {r['variant']} | {r['ex_s']:,.0f} | {r['ms']:.2f} | "
              f"{spread} | {r['setup_s']:.0f} | {ratios} |")
