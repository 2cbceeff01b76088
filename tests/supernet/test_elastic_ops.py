"""Every catalogue operator has an elastic counterpart, and each one computes exactly what the
standalone op built for the same shapes computes with the exported weights."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from ranknas.errors import ConfigError, InvalidArchitecture
from ranknas.spaces.ops import Kind, OpContext, TensorSpec, get_operator, operator_names
from ranknas.supernet import (
    ELASTIC_OPS,
    ElasticOp,
    ElasticSpec,
    PortCols,
    elastic_class,
    register_elastic,
)

BATCH = 3
STORAGE = 48  # storage positions of every port
WIDTHS = {"required": (2, 6, 16), "optional": (None, 2, 6, 16), "none": (None,)}


@dataclass(frozen=True)
class Case:
    dense: tuple[int, int]  # widths of the 1st / 2nd dense port
    fields: int
    dim: int
    layernorm: bool
    activation: str
    optional: bool  # feed optional ports
    wrap: bool  # storage smaller than the input: positions wrap (tied weights)

    def __str__(self) -> str:
        return (f"d{self.dense[0]}x{self.dense[1]}_n{self.fields}_e{self.dim}"
                f"{'_ln' if self.layernorm else ''}_{self.activation}"
                f"{'+opt' if self.optional else ''}{'_wrap' if self.wrap else ''}")


CASES = (
    Case((13, 7), 5, 8, True, "relu", True, False),
    Case((16, 16), 3, 16, False, "identity", False, False),  # D == E, P == W, W == E skips
    Case((5, 9), 2, 12, True, "identity", True, False),
    Case((16, 3), 4, 8, True, "relu", True, False),  # dense-to-sparse D == W*E for W=2
    Case((13, 7), 5, 8, False, "relu", True, True),
)


def test_every_catalogue_op_has_an_elastic_counterpart():
    missing = [name for name in operator_names() if name not in ELASTIC_OPS]
    assert not missing, f"operators without an elastic class: {missing}"
    assert all(ELASTIC_OPS[name].op_name == name for name in operator_names())


def test_missing_or_duplicate_elastic_is_a_config_error():
    with pytest.raises(ConfigError, match="register_elastic"):
        elastic_class("no-such-op")

    class Again(ElasticOp):
        op_name = "linear-2d"

    with pytest.raises(ConfigError, match="already registered"):
        register_elastic(Again)


def _inputs(name: str, case: Case) -> dict[str, TensorSpec]:
    op = get_operator(name)
    specs, dense_seen = {}, 0
    for port in op.ports:
        if port.optional and not case.optional:
            continue
        if port.kind is Kind.DENSE:
            specs[port.name] = TensorSpec.dense(case.dense[dense_seen % 2])
            dense_seen += 1
        else:
            specs[port.name] = TensorSpec.sparse(case.fields, case.dim)
    return specs


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("name", operator_names())
def test_elastic_forward_equals_exported_standalone(name, case):
    op = get_operator(name)
    ctx = OpContext(case.dim, case.layernorm, case.activation)
    specs = _inputs(name, case)
    widths = WIDTHS[op.width_mode]
    slot = 5 if case.wrap else 2048
    gen = torch.Generator().manual_seed(0)
    layout = {}
    for port, spec in specs.items():
        n = spec.width  # features (dense ports) or fields (sparse ports)
        cols = (torch.arange(n) % slot if case.wrap
                else torch.randperm(STORAGE, generator=gen)[:n])
        layout[port] = PortCols(spec, cols)
    size = slot if case.wrap else STORAGE
    spec = ElasticSpec(op, ctx, {p: size for p in specs}, {p: 32 for p in specs}, widths, slot)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        elastic = elastic_class(name)(spec).eval()
    tensors = {p: torch.randn(BATCH, *s.shape, generator=gen) for p, s in specs.items()}
    ran = 0
    for width in widths:
        try:
            module = op.build(specs, width, ctx).eval()
        except InvalidArchitecture:
            continue
        module.load_state_dict(elastic.export(width, layout), strict=True)
        with torch.no_grad():
            got = elastic(tensors, width, layout)
            want = module(*(tensors[p.name] for p in op.ports if p.name in specs))
        assert got.shape == want.shape
        assert (got - want).abs().max().item() <= 1e-6, f"{name} width {width}"
        ran += 1
    assert ran, f"{name}: no width was buildable in case {case}"
