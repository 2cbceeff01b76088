"""Choose and encode a supernet trainer's next paths in a worker process, ahead of the step.

Choosing a path (``sampler.sample``) and encoding it for the fixed-shape executions
(:meth:`~ranknas.supernet.masked.MaskedProgram.write`) is Python on the host: ~3 ms per
``nasrec_full`` path on an H200's host, a third of a B=4096 segmented step and most of a B=512
one (``benchmarks/RESULTS.md``). A :class:`PathPrefetcher` does both in one spawned process,
up to ``depth`` steps ahead of the trainer:

- the worker gets a pickled copy of the trainer's sampler, state included, and builds a
  structural twin of the supernet on the meta device (no weights: encoding reads only the
  layout);
- it writes each path's buffers into one of ``depth`` shared-memory slots and sends the
  architecture, the path's nodes and the sampler's state after the draw through a pipe;
- the trainer takes them in step order: the same paths in the same order as sampling on the
  spot. Its own sampler is brought to the state after the last path taken (:meth:`sync`)
  before a checkpoint and when ``train`` returns, so checkpoints and resumes do not change.

The worker is restarted when the trainer's step or sampler no longer matches what it queued
(a loaded checkpoint, the sampler drawn from in between, another sampler). An error in the
worker (an invalid architecture) is raised by :meth:`take` at the step it belongs to.
"""

from __future__ import annotations

import contextlib
import pickle
import sys
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.multiprocessing as mp

from ranknas.errors import ConfigError
from ranknas.spaces.architecture import Architecture
from ranknas.supernet.masked import program
from ranknas.supernet.masked_base import Writer, host_copy
from ranknas.supernet.masked_path import PathTensors
from ranknas.supernet.samplers import PathSampler
from ranknas.supernet.supernet import Supernet

__all__ = ["PathPrefetcher"]

_POLL_S = 2.0  # how often a waiting trainer checks that the worker is alive


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else a RuntimeError with its text."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _work(sampler: PathSampler, step: int, twin: tuple | None, floats: torch.Tensor,
          ints: torch.Tensor, free: Any, out: Any) -> None:
    """The worker: draw step after step into the slots the trainer hands back through
    ``free``; send each path's description through ``out`` (pipe ends)."""
    torch.set_num_threads(1)
    try:
        if twin is not None:
            space, schema, max_slot = twin
            with torch.device("meta"):
                supernet = Supernet(space, schema, max_slot=max_slot, max_params=sys.maxsize)
            prog = program(supernet)
            writer = Writer(prog.slots)
        while (slot := free.recv()) is not None:
            arch = sampler.sample(step)
            nodes, head = (), 0
            if twin is not None:
                nodes, head = prog.write(supernet, arch, writer.reset())
                np.copyto(floats[slot].numpy(), writer.floats)
                np.copyto(ints[slot].numpy(), writer.ints)
            out.send((step, slot, arch, nodes, head, sampler.state_dict()))
            step += 1
    except BaseException as exc:  # the trainer raises it at this step
        out.send(("error", step, _portable(exc)))


def _stop(proc: Any, free: Any) -> None:
    if proc.is_alive():
        with contextlib.suppress(OSError):  # the worker may be gone meanwhile
            free.send(None)
        proc.join(timeout=5)
    if proc.is_alive():
        proc.terminate()
        proc.join(timeout=5)


class PathPrefetcher:
    """Paths of a :class:`~ranknas.supernet.SupernetTrainer`, drawn (and encoded) ahead in a
    worker process (module docstring).

    Call order: :meth:`start` at the start of every ``train`` call, :meth:`take` once per
    step, :meth:`sync` before reading the sampler's state and when ``train`` returns,
    :meth:`close` when done (also on garbage collection). With a ``prepare`` hook, ``take``
    also hands it the next step's architecture when the worker has it ready (a CUDA-graph
    step joins its graphs ahead: :meth:`~ranknas.supernet.masked_step.MaskedStep.prepare`);
    the sampler's state moves on only when that step is taken.

    Args:
        supernet: The supernet whose fixed-shape program the paths are encoded for.
        depth: Paths drawn ahead at most (and shared-memory slots).
        encode: Encode the paths (masked / segmented execution), or only draw them.
    """

    def __init__(self, supernet: Supernet, depth: int, encode: bool) -> None:
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ConfigError("supernet.train.path_prefetch", f"must be an integer >= 1 to "
                              f"prefetch (0 to sample on the spot), got {depth!r}")
        self.supernet, self.depth, self.encode = supernet, depth, encode
        self._proc: Any = None
        self._stopper: weakref.finalize | None = None
        self._sampler: PathSampler | None = None
        self._next = 0  # the step of the next queued path
        self._synced: dict[str, Any] | None = None  # the sampler's state as last synced
        self._taken: dict[str, Any] | None = None  # its state after the last path taken
        self._prepare: Callable[[Architecture], None] | None = None
        self._peeked: tuple | None = None  # the next step's item, received and adopted

    def start(self, sampler: PathSampler, step: int,
              prepare: Callable[[Architecture], None] | None = None) -> None:
        """Draw ``sampler``'s paths from ``step`` on; keeps a running worker whose queue
        still continues exactly there. ``prepare`` (optional) is called with the next
        step's architecture, when it is ready, by each :meth:`take`.

        Raises:
            ConfigError: the sampler (or its space) cannot be pickled for the worker, or this
                process is daemonic (it may not start one).
        """
        self._prepare = prepare
        if (self._proc is not None and self._proc.is_alive() and sampler is self._sampler
                and step == self._next and sampler.state_dict() == self._synced):
            return
        self.close()
        if mp.current_process().daemon:
            raise ConfigError("supernet.train.path_prefetch", "a daemonic process (a "
                              "multiprocessing pool's worker) cannot start the prefetch "
                              "worker; set 0 to draw paths on the spot")
        ctx = mp.get_context("spawn")
        twin = None
        floats = ints = torch.zeros(1)
        if self.encode:
            sn = self.supernet
            twin = (sn.space, sn.schema, sn.layout.max_slot)
            defaults = program(sn).slots.defaults()
            floats, ints = (torch.empty(self.depth, t.numel(), dtype=t.dtype).share_memory_()
                            for t in defaults)
        self._floats, self._ints = floats, ints
        free_out, free_in = ctx.Pipe(duplex=False)
        self._out, out_in = ctx.Pipe(duplex=False)
        self._free = free_in
        for slot in range(self.depth):
            self._free.send(slot)
        self._proc = ctx.Process(target=_work, name="ranknas-path-prefetch", daemon=True,
                                 args=(sampler, step, twin, floats, ints, free_out, out_in))
        try:
            self._proc.start()
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            self._proc = None
            raise ConfigError("supernet.train.path_prefetch", f"the sampler or its space does "
                              f"not pickle for the prefetch worker ({exc}); set 0 to draw "
                              "paths on the spot") from exc
        free_out.close()  # the worker's ends: a dead worker then shows as a closed pipe
        out_in.close()
        self._stopper = weakref.finalize(self, _stop, self._proc, self._free)
        self._sampler, self._next = sampler, step
        self._synced, self._taken = sampler.state_dict(), None

    def _get(self) -> tuple:
        try:
            while not self._out.poll(_POLL_S):
                if not self._proc.is_alive():
                    raise EOFError
            return self._out.recv()
        except (EOFError, OSError):
            self._proc.join(timeout=5)
            code = self._proc.exitcode
            self.close()
            raise RuntimeError(f"the path prefetch worker exited (code {code}); set "
                               "supernet.train.path_prefetch: 0 to sample on the spot") from None

    def take(self, step: int) -> Architecture:
        """The architecture of ``step`` (its encoding cached in the supernet's program).

        Raises:
            Whatever drawing or encoding this step raised in the worker.
        """
        if self._proc is None or step != self._next:
            raise RuntimeError(f"take({step}) but the next prefetched step is {self._next}; "
                               "call start() first")
        item, self._peeked = self._peeked or self._adopt(self._get()), None
        if item[0] == "error":
            self.close()
            raise item[2]
        arch, state = item[2], item[5]
        self._taken, self._next = state, step + 1
        if self._prepare is not None and self._out.poll():  # ready: no wait
            self._peeked = self._adopt(self._get())
            if self._peeked[0] != "error":
                self._prepare(self._peeked[2])
        return arch

    def _adopt(self, item: tuple) -> tuple:
        """Cache a received path's encoding in the supernet's program, and hand its slot
        back to the worker."""
        if item[0] == "error":
            return item
        _, slot, arch, nodes, head, _ = item
        if self.encode:
            device = self.supernet.head_bias.device
            floats, ints = self._floats[slot], self._ints[slot]
            if device.type != "cuda":  # the cached path keeps its tensors; CUDA copies them
                floats, ints = host_copy(floats), host_copy(ints)
            program(self.supernet).adopt(PathTensors(arch.arch_id, floats, ints, nodes, head),
                                         device)
        self._free.send(slot)
        return item

    def sync(self) -> None:
        """Bring the trainer's sampler to its state after the last path taken."""
        if self._taken is not None and self._sampler is not None:
            self._sampler.load_state_dict(self._taken)
            self._synced, self._taken = self._taken, None

    def close(self) -> None:
        """Stop the worker after a :meth:`sync` (the paths it drew ahead are dropped)."""
        self.sync()
        self._peeked = None
        if self._stopper is not None:
            self._stopper()
        self._proc = self._stopper = None
