"""One CUDA graph launch per segmented step: the segments' graphs joined into one, off-thread.

A segmented step (:class:`~ranknas.supernet.segmented_step.SegmentedStep`) replays ~60
captured graphs: each segment's forward in path order, then the backwards in reverse. Between
two graph launches in one stream the GPU idles ~8 us (median), even with the host far ahead:
0.65 ms of a 6.9 ms step at B=4096 (H200, ``benchmarks/RESULTS.md``), where kernels inside one
graph follow each other within ~0.5 us. Joining the step's graphs into one graph of
child-graph nodes removes those gaps, but instantiating a ~600-node graph costs the host ~3 ms,
half a step, and holds a driver lock that stalls the launching thread's CUDA calls meanwhile.
So :class:`GraphChain` joins each step's graphs in a worker thread (the driver calls release
the GIL), one step ahead: the trainer plans step ``k + 1``'s path before step ``k``
(:meth:`~ranknas.supernet.segmented_step.SegmentedStep.prepare`), and the joining starts once
step ``k`` is launched, while the GPU has a whole step of work queued.

The CUDA driver API is called through ``ctypes`` (PyTorch exposes a graph's ``cudaGraph_t``
but has no way to join graphs). The child nodes are copies: the segments' graphs stay as they
are, and an executable graph is destroyed once launched (the driver frees it when it is done).
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import torch

__all__ = ["ENABLED", "GraphChain", "GraphChainError"]

#: Whether segmented CUDA-graph steps prepared ahead launch their graphs joined (the default
#: of :class:`~ranknas.supernet.segmented_step.SegmentedStep`'s ``chain_graphs``).
ENABLED = True
_Handle = ctypes.c_void_p


class GraphChainError(RuntimeError):
    """A CUDA driver call of :class:`GraphChain` failed (the step falls back to replaying
    the segments' graphs one by one)."""


def _driver() -> ctypes.CDLL:
    lib = ctypes.CDLL("libcuda.so.1")
    p = ctypes.POINTER
    for name, args in {
        "cuGetErrorName": [ctypes.c_int, p(ctypes.c_char_p)],
        "cuCtxGetCurrent": [p(_Handle)],
        "cuCtxSetCurrent": [_Handle],
        "cuGraphCreate": [p(_Handle), ctypes.c_uint],
        "cuGraphAddChildGraphNode": [p(_Handle), _Handle, p(_Handle), ctypes.c_size_t,
                                     _Handle],
        "cuGraphInstantiateWithFlags": [p(_Handle), _Handle, ctypes.c_ulonglong],
        "cuGraphDestroy": [_Handle],
        "cuGraphExecDestroy": [_Handle],
        "cuGraphLaunch": [_Handle, _Handle],
    }.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, ctypes.c_int
    return lib


class GraphChain:
    """Joins captured CUDA graphs into one executable graph, in a worker thread.

    Call order: :meth:`submit` a step's graphs (in execution order), then :meth:`launch` the
    future's result once, or :meth:`discard` it. Needs the CUDA driver (``libcuda``) and
    graphs captured with ``torch.cuda.CUDAGraph(keep_graph=True)``.

    Raises:
        GraphChainError: no CUDA driver, or no current CUDA context on this thread.
    """

    def __init__(self) -> None:
        try:
            self._cu = _driver()
        except (OSError, AttributeError) as exc:
            raise GraphChainError(f"the CUDA driver API is not available ({exc})") from exc
        ctx = _Handle()
        self._check(self._cu.cuCtxGetCurrent(ctypes.byref(ctx)), "cuCtxGetCurrent")
        if not ctx.value:
            raise GraphChainError("no current CUDA context (initialise CUDA first)")
        try:
            torch.cuda.CUDAGraph(keep_graph=True)
        except TypeError as exc:
            raise GraphChainError("this torch cannot keep a captured graph "
                                  "(torch.cuda.CUDAGraph(keep_graph=True))") from exc
        # the worker makes the caller's context current once: driver calls need one
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="ranknas-graph-chain",
                                        initializer=self._cu.cuCtxSetCurrent,
                                        initargs=(ctx,))

    def _check(self, result: int, call: str) -> None:
        if result:
            name = ctypes.c_char_p()
            self._cu.cuGetErrorName(result, ctypes.byref(name))
            raise GraphChainError(f"{call} failed: {(name.value or b'?').decode()} "
                                  f"({result})")

    def submit(self, graphs: Sequence[torch.cuda.CUDAGraph]) -> Future:
        """Start joining ``graphs`` (captured with ``keep_graph=True``; kept alive by the
        caller until the future is done); the future's result is an executable graph for
        :meth:`launch`."""
        return self._pool.submit(self._join, [g.raw_cuda_graph() for g in graphs])

    def _join(self, raw: list[int]) -> int:
        cu, graph = self._cu, _Handle()
        self._check(cu.cuGraphCreate(ctypes.byref(graph), 0), "cuGraphCreate")
        try:
            node, prev = _Handle(), _Handle()
            for i, child in enumerate(raw):  # a chain: each child after the one before
                self._check(cu.cuGraphAddChildGraphNode(
                    ctypes.byref(node), graph, ctypes.byref(prev) if i else None,
                    1 if i else 0, child), "cuGraphAddChildGraphNode")
                prev = _Handle(node.value)
            exe = _Handle()
            self._check(cu.cuGraphInstantiateWithFlags(ctypes.byref(exe), graph, 0),
                        "cuGraphInstantiateWithFlags")
            return exe.value
        finally:
            cu.cuGraphDestroy(graph)

    def launch(self, exe: int, stream: torch.cuda.Stream) -> None:
        """Launch ``exe`` (from :meth:`submit`) on ``stream``, once: it is destroyed after
        (freed when the launch completes)."""
        try:
            self._check(self._cu.cuGraphLaunch(exe, stream.cuda_stream), "cuGraphLaunch")
        finally:
            self._cu.cuGraphExecDestroy(exe)

    def discard(self, joined: Future) -> None:
        """Drop a submitted chain that will not be launched."""
        joined.add_done_callback(
            lambda f: f.exception() is None and self._cu.cuGraphExecDestroy(f.result()))

    def close(self) -> None:
        """Stop the worker thread (after the chains submitted so far)."""
        self._pool.shutdown(wait=True)
