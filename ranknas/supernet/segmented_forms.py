"""Where a segmented step's segments meet: one buffer per kind holding the forms of every
source side by side (:class:`FormLayout`, :class:`Buffers`); see
:mod:`ranknas.supernet.segmented_step`."""

from __future__ import annotations

import torch

from ranknas.errors import ConfigError
from ranknas.spaces.ops import Kind
from ranknas.supernet.masked import _PREV, _Layer, _Port
from ranknas.supernet.masked_base import aligned, as_kind
from ranknas.supernet.masked_ops import MaskedConcat
from ranknas.supernet.segmented import SegmentedProgram, Source

__all__ = ["Buffers", "FormLayout", "pass_through"]


def _free_bytes(device: torch.device) -> int | None:
    """Free memory of a CUDA device; ``None`` elsewhere (a CPU overcommits)."""
    return torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None


class Buffers:
    """The forms of every source, their gradients and the labels, at one batch size.

    Raises:
        ConfigError: the buffers would not fit in the device's free memory (a space whose
            merged inputs are bounded by every earlier block, like ``rankitect``).
    """

    def __init__(self, layout: dict[Kind, int], dim: int, like: torch.Tensor) -> None:
        size = like.shape[0]
        floats = sum((w + 1) * (1 if kind is Kind.DENSE else dim) for kind, w in layout.items())
        need, free = 2 * size * floats * like.element_size(), _free_bytes(like.device)
        if free is not None and need > free:
            wide = ", ".join(f"{w:,} {kind.name.lower()}" for kind, w in layout.items())
            raise ConfigError(
                "supernet.train.execution",
                f"segmented needs {need / 2**30:.1f} GiB for its buffers at batch size {size} "
                f"(the forms of every source side by side: {wide} columns), but "
                f"{like.device} has {free / 2**30:.1f} GiB free; use execution: sliced, or a "
                "smaller batch_size")

        def zeros(width: int, kind: Kind) -> torch.Tensor:
            return like.new_zeros((size, width) if kind is Kind.DENSE else (size, width, dim))

        # the last column of each kind is the zero column that padding gathers
        self.forms = {kind: zeros(width + 1, kind) for kind, width in layout.items()}
        self.grads = {kind: zeros(width + 1, kind) for kind, width in layout.items()}
        self.labels = like.new_zeros(size)
        self.one = like.new_ones(())


def pass_through(layers: dict[tuple, _Layer], ports: list[_Port]) -> dict[str, _Port]:
    """Blocks whose one op is a concat that gathers its merged input, read whole and as the
    same kind by every reader: block -> that concat's port. Such a block runs no segment:
    its readers gather the concat's input themselves (NASRec's ``dense_in`` /
    ``sparse_in``: a write and a read of up to ``[B, 288, E]`` less each, both ways)."""
    blocks: dict[str, list[_Layer]] = {}
    for key, layer in layers.items():
        blocks.setdefault(key[0], []).append(layer)
    aliases = {}
    for block, (layer, *others) in blocks.items():
        if others or not isinstance(layer.op, MaskedConcat):
            continue
        (port,) = layer.ports.values()
        readers = [p for p in ports if block in p.cands]
        if port.gather is not None and readers and all(
                p.cands == (block,) and p.port.kind is port.port.kind
                and p.port.bound == port.port.bound for p in readers):
            aliases[block] = port
    return aliases


class FormLayout:
    """Where each source's forms lie in their kind's buffer, and which blocks are aliases
    (:func:`pass_through`) that have none.

    Attributes:
        aliases: Pass-through block -> its concat's port.
        ranges: ``(source, kind)`` -> ``(kind, start, width)`` in the kind's buffer (width:
            the bound, aligned).
        widths: Per kind, the width of its buffer before the zero column.
        kinds: Per source, the kinds it is read as.
        port_index: Per gather port (``id``), merged-order positions -> buffer columns (the
            zero column last), on the CPU.
    """

    def __init__(self, prog: SegmentedProgram) -> None:
        program = prog.program
        self.dim = program.dim
        ports = [program.head] + [port for layer in prog.layers.values()
                                  for port in layer.ports.values()]
        self.aliases = pass_through(prog.layers, ports)
        # every (source, kind) some port reads, side by side in its kind's buffer
        self.ranges: dict[Source, tuple[Kind, int, int]] = {}
        self.widths: dict[Kind, int] = {}
        self.kinds: dict[str, tuple[Kind, ...]] = {}
        for port in ports:
            kind = port.port.kind
            for cand in port.cands:
                if cand == _PREV or cand in self.aliases or (cand, kind) in self.ranges:
                    continue
                size = aligned(program.layout.bound(cand, kind))
                self.ranges[(cand, kind)] = (kind, self.widths.get(kind, 0), size)
                self.widths[kind] = self.widths.get(kind, 0) + size
                self.kinds[cand] = (*self.kinds.get(cand, ()), kind)
        # a gather port's merged-order positions -> columns of its kind's buffer
        self.port_index: dict[int, torch.Tensor] = {}
        for port in ports:
            if port.gather is not None:
                kind = port.port.kind
                cols = [torch.arange(program.layout.bound(c, kind)) + self.ranges[(c, kind)][1]
                        for c in port.cands]
                self.port_index[id(port)] = torch.cat([*cols, torch.tensor([self.widths[kind]])])

    def form_range(self, buf: Buffers, key: str, kind: Kind) -> torch.Tensor:
        """The form of source ``key`` read as ``kind``, in ``buf``."""
        _, start, size = self.ranges[(key, kind)]
        return buf.forms[kind].narrow(1, start, size)

    def grad_range(self, buf: Buffers, key: str, kind: Kind) -> torch.Tensor:
        """The gradient of :meth:`form_range`."""
        _, start, size = self.ranges[(key, kind)]
        return buf.grads[kind].narrow(1, start, size)

    def published(self, out: torch.Tensor, key: str, kind: Kind) -> torch.Tensor:
        """Block ``key``'s output read as ``kind``, at most its form's size (not padded to
        it: readers never read past what was written)."""
        out, size = as_kind(out, kind, self.dim), self.ranges[(key, kind)][2]
        # no narrow node when it fits: its backward would zero and copy the whole output
        return out if out.shape[1] <= size else out.narrow(1, 0, size)

    @torch.no_grad()
    def write_form(self, buf: Buffers, key: str, kind: Kind, pub: torch.Tensor) -> None:
        """Write :meth:`published` ``pub`` into its form and zero its gradient, over its own
        width (readers read no further in the same step)."""
        width = pub.shape[1]
        self.form_range(buf, key, kind).narrow(1, 0, width).copy_(pub)
        self.grad_range(buf, key, kind).narrow(1, 0, width).zero_()
