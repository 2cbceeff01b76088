"""A linear layer's weight-gradient GEMM at B=4096 (TF32): cuBLAS's ``mm`` against split-K by
hand (``bmm`` over 2 or 4 slices of the batch, then a sum) and cuBLASLt, with the forward and
input-gradient GEMMs of the same layer for scale.

    python benchmarks/weight_grad_gemm.py    # on a GPU

``dW = g^T x`` (``[O, B] x [B, I]``) reduces over the batch into a small output, whose
128x128 tiles (64 at O = I = 1024) leave most of an H200's 132 SMs idle; this asks whether
splitting K helps. GPU us per call, 20 calls captured in one CUDA graph and replayed.
"""

from __future__ import annotations

import torch
from bench_common import graph_replay_us

SHAPES = ((1024, 1024), (1024, 2048), (1024, 1040), (512, 1024), (512, 512), (256, 1024),
          (1024, 4096))


def main(batch: int = 4096) -> None:
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = True
    print(f"B={batch}, TF32\n| dW [O, I] | mm | split 2 | split 4 | cuBLASLt | forward | dX |\n"
          "|---|---:|---:|---:|---:|---:|---:|")
    for o, i in SHAPES:
        g = torch.randn(batch, o, device="cuda")
        x = torch.randn(batch, i, device="cuda")
        w = torch.randn(o, i, device="cuda")
        us = {"mm": graph_replay_us(lambda g=g, x=x: g.t() @ x)}
        for k in (2, 4):
            us[f"split{k}"] = graph_replay_us(
                lambda g=g, x=x, k=k, o=o, i=i: torch.bmm(
                    g.view(k, batch // k, o).transpose(1, 2), x.view(k, batch // k, i)).sum(0))
        torch.backends.cuda.preferred_blas_library("cublaslt")
        us["lt"] = graph_replay_us(lambda g=g, x=x: g.t() @ x)
        torch.backends.cuda.preferred_blas_library("cublas")
        us["fwd"] = graph_replay_us(lambda x=x, w=w: x @ w.t())
        us["dx"] = graph_replay_us(lambda g=g, w=w: g @ w)
        print(f"| [{o}, {i}] | " + " | ".join(f"{v:.1f}" for v in us.values()) + " |")


if __name__ == "__main__":
    main()
