"""One conformance suite for every registered operator, plus targeted semantic checks.

The suite iterates the catalogue, so a newly registered op is covered automatically: its
inputs are generated from its ports, its widths from its ``width_mode``.

FLOP reference: ``torch.utils.flop_counter.FlopCounterMode`` on the module's forward (in
training mode, grad enabled). On CPU it has no formula for the fused attention kernel
``aten._scaled_dot_product_flash_attention_for_cpu`` that ``nn.MultiheadAttention`` calls, so
the suite registers torch's own ``sdpa_flop_count`` for it (``custom_mapping``).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import pytest
import torch

from ranknas.errors import InvalidArchitecture
from ranknas.evaluator.flops import counted_flops
from ranknas.spaces.ops import Kind, OpContext, TensorSpec, get_operator, operator_names
from ranknas.spaces.ops.base import BYTES_PER_VALUE, Operator

BATCH = 4


@dataclass(frozen=True)
class Shape:
    """Input shapes: dense widths for the 1st/2nd dense port, sparse fields, embedding dim."""

    dense: tuple[int, int]
    fields: int
    dim: int
    optional: bool  # feed optional ports
    activation: str = "relu"

    def __str__(self) -> str:
        opt = "+opt" if self.optional else "-opt"
        return f"d{self.dense[0]}x{self.dense[1]}_n{self.fields}_e{self.dim}{opt}_{self.activation}"


SHAPES = (
    Shape((13, 7), fields=5, dim=8, optional=True),
    Shape((16, 16), fields=3, dim=16, optional=False),
    Shape((5, 9), fields=2, dim=12, optional=True, activation="identity"),
)
WIDTHS = {"required": (6, 16), "optional": (None, 6, 16), "none": (None,)}


def make_inputs(op: Operator, shape: Shape) -> dict[str, TensorSpec]:
    inputs: dict[str, TensorSpec] = {}
    dense_seen = 0
    for port in op.ports:
        if port.optional and not shape.optional:
            continue
        if port.kind is Kind.DENSE:
            inputs[port.name] = TensorSpec.dense(shape.dense[dense_seen % 2])
            dense_seen += 1
        else:
            inputs[port.name] = TensorSpec.sparse(shape.fields, shape.dim)
    return inputs


def make_tensors(op: Operator, inputs: dict[str, TensorSpec],
                 requires_grad: bool = False) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(BATCH, *inputs[p.name].shape, generator=gen,
                        requires_grad=requires_grad)
            for p in op.ports if p.name in inputs]


def _cases():
    for name in operator_names():
        op = get_operator(name)
        for shape, ln in itertools.product(SHAPES, (True, False)):
            for width in WIDTHS[op.width_mode]:
                yield pytest.param(name, shape, width, ln, id=f"{name}-{shape}-w{width}-ln{ln:d}")


CASES = list(_cases())


def _setup(name: str, shape: Shape, width: int | None, ln: bool):
    op = get_operator(name)
    ctx = OpContext(embedding_dim=shape.dim, layernorm=ln, activation=shape.activation)
    inputs = make_inputs(op, shape)
    return op, ctx, inputs


@pytest.mark.parametrize(("name", "shape", "width", "ln"), CASES)
def test_shape_params_and_bytes(name, shape, width, ln):
    op, ctx, inputs = _setup(name, shape, width, ln)
    spec = op.output_spec(inputs, width, ctx)
    assert spec.kind is op.out_kind
    cost = op.cost(inputs, width, ctx)
    module = op.build(inputs, width, ctx)
    out = module(*make_tensors(op, inputs))
    assert tuple(out.shape) == (BATCH, *spec.shape)
    assert cost.params == sum(p.numel() for p in module.parameters())
    assert cost.flops >= cost.matmul_flops >= 0
    assert cost.bytes_read == BYTES_PER_VALUE * sum(s.numel for s in inputs.values())
    assert cost.bytes_written == BYTES_PER_VALUE * spec.numel


@pytest.mark.parametrize(("name", "shape", "width", "ln"), CASES)
def test_matmul_flops_match_flop_counter(name, shape, width, ln):
    op, ctx, inputs = _setup(name, shape, width, ln)
    module = op.build(inputs, width, ctx)
    tensors = make_tensors(op, inputs)
    counted = counted_flops(module, *tensors) / BATCH
    expected = op.cost(inputs, width, ctx).matmul_flops
    if expected == 0:
        assert counted == 0
    else:
        assert counted == pytest.approx(expected, rel=0.01)


@pytest.mark.parametrize(("name", "shape", "width", "ln"), CASES)
def test_forward_backward_finite(name, shape, width, ln):
    op, ctx, inputs = _setup(name, shape, width, ln)
    module = op.build(inputs, width, ctx)
    tensors = make_tensors(op, inputs, requires_grad=True)
    out = module(*tensors)
    assert torch.isfinite(out).all()
    out.square().sum().backward()
    for t in [*tensors, *module.parameters()]:
        assert t.grad is not None and torch.isfinite(t.grad).all()


@pytest.mark.parametrize(("name", "shape", "width", "ln"), CASES)
def test_build_is_deterministic_under_seed(name, shape, width, ln):
    op, ctx, inputs = _setup(name, shape, width, ln)
    states, outs = [], []
    tensors = make_tensors(op, inputs)
    for _ in range(2):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(123)
            module = op.build(inputs, width, ctx)
        states.append(module.state_dict())
        outs.append(module(*tensors))
    assert states[0].keys() == states[1].keys()
    for key, value in states[0].items():
        assert torch.equal(value, states[1][key]), key
    assert torch.equal(outs[0], outs[1])


# -- bad inputs, for every op ----------------------------------------------------------------
def _raises_everywhere(op: Operator, inputs, width, ctx) -> None:
    for method in (op.output_spec, op.cost, op.build):
        with pytest.raises(InvalidArchitecture) as info:
            method(inputs, width, ctx)
        assert op.name in str(info.value)


@pytest.mark.parametrize("name", operator_names())
def test_bad_inputs_raise(name):
    op = get_operator(name)
    ctx = OpContext(embedding_dim=8)
    shape = SHAPES[0]
    inputs = make_inputs(op, shape)
    width = WIDTHS[op.width_mode][-1]
    op.output_spec(inputs, width, ctx)  # the good case works
    if op.width_mode == "required":
        _raises_everywhere(op, inputs, None, ctx)
    if op.width_mode != "none":
        _raises_everywhere(op, inputs, 0, ctx)
    for port in op.ports:
        if not port.optional:
            _raises_everywhere(op, {k: v for k, v in inputs.items() if k != port.name}, width,
                               ctx)
        wrong = (TensorSpec.sparse(3, 8) if port.kind is Kind.DENSE else TensorSpec.dense(24))
        _raises_everywhere(op, {**inputs, port.name: wrong}, width, ctx)
        if port.kind is Kind.SPARSE:  # embedding dim other than ctx.embedding_dim
            _raises_everywhere(op, {**inputs, port.name: TensorSpec.sparse(3, 4)}, width, ctx)
    _raises_everywhere(op, {**inputs, "bogus": TensorSpec.dense(4)}, width, ctx)


@pytest.mark.parametrize("name", [n for n in operator_names() if get_operator(n).stackable])
def test_stackable_ops_chain(name):
    op = get_operator(name)
    assert len(op.ports) == 1 and op.ports[0].kind is op.out_kind
    ctx = OpContext(embedding_dim=8)
    spec = make_inputs(op, SHAPES[0])[op.ports[0].name]
    x = torch.randn(BATCH, *spec.shape)
    for width in (6, 4):
        inputs = {op.ports[0].name: spec}
        spec = op.output_spec(inputs, width, ctx)
        x = op.build(inputs, width, ctx)(x)
        assert tuple(x.shape) == (BATCH, *spec.shape)


def test_catalogue_has_the_nasrec_ops():
    assert {"linear-2d", "dcn-cross", "sigmoid-gating", "sum", "dot-product", "fm", "linear-3d",
            "transformer", "concat", "concat-3d", "add", "dense-to-sparse"} <= set(operator_names())


# -- targeted semantics ------------------------------------------------------------------------
@pytest.mark.parametrize("with_dense", [True, False])
def test_dlrm_dot_product_is_lower_triangle_of_gram(with_dense):
    op, ctx = get_operator("dot-product"), OpContext(embedding_dim=4, layernorm=True)
    inputs = {"sparse": TensorSpec.sparse(5, 4)}
    if with_dense:
        inputs["dense"] = TensorSpec.dense(4)  # == E: used as a field without projection
    n = 5 + with_dense
    assert op.output_spec(inputs, None, ctx) == TensorSpec.dense(n * (n - 1) // 2)
    module = op.build(inputs, None, ctx)
    assert sum(p.numel() for p in module.parameters()) == 0
    tensors = make_tensors(op, inputs)
    fields = torch.cat([tensors[0].unsqueeze(1), tensors[1]], 1) if with_dense else tensors[0]
    expected = torch.stack([(fields[:, i] * fields[:, j]).sum(-1)
                            for i in range(n) for j in range(i)], dim=1)
    torch.testing.assert_close(module(*tensors), expected)


def test_nasrec_dot_product_compresses_fields():
    op, ctx = get_operator("dot-product"), OpContext(embedding_dim=8, layernorm=False)
    inputs = {"dense": TensorSpec.dense(13), "sparse": TensorSpec.sparse(26, 8)}
    module = op.build(inputs, 64, ctx)
    k = round(math.sqrt(2 * 64))  # 11 fields kept, plus the dense one
    assert module.field_proj.weight.shape == (k, 26)
    assert module.out_proj.weight.shape == (64, (k + 1) * k // 2)
    assert op.output_spec(inputs, 64, ctx) == TensorSpec.dense(64)


def test_dot_product_needs_two_fields():
    op, ctx = get_operator("dot-product"), OpContext(embedding_dim=8)
    one_field = {"sparse": TensorSpec.sparse(1, 8)}
    _raises_everywhere(op, one_field, None, ctx)
    _raises_everywhere(op, one_field, 16, ctx)
    # width 1 compresses to round(sqrt(2)) = 1 field: nothing to interact without a dense input
    _raises_everywhere(op, {"sparse": TensorSpec.sparse(4, 8)}, 1, ctx)
    op.output_spec({**one_field, "dense": TensorSpec.dense(3)}, None, ctx)  # 2 fields: fine


def test_fm_matches_brute_force_pairwise_sum():
    op, ctx = get_operator("fm"), OpContext(embedding_dim=5)
    inputs = {"x": TensorSpec.sparse(4, 5)}
    (y,) = make_tensors(op, inputs)
    expected = sum(2 * y[:, i] * y[:, j] for i in range(4) for j in range(i + 1, 4))
    module = op.build(inputs, None, ctx)
    torch.testing.assert_close(module(y), expected)
    assert op.output_spec(inputs, 5, ctx) == TensorSpec.dense(5)  # width E: no projection
    assert sum(p.numel() for p in op.build(inputs, 5, ctx).parameters()) == 0


def test_dcn_cross_formula():
    op, ctx = get_operator("dcn-cross"), OpContext()
    inputs = {"x": TensorSpec.dense(2)}
    x = torch.tensor([[1.0, 2.0]])
    full = op.build(inputs, None, ctx)
    with torch.no_grad():
        full.proj.weight.copy_(torch.tensor([[1.0, 0.0], [2.0, 3.0]]))
        full.proj.bias.copy_(torch.tensor([0.5, -1.0]))
    # W x + b = [1.5, 7.0]; x * that + x = [1 * 1.5 + 1, 2 * 7 + 2]
    torch.testing.assert_close(full(x), torch.tensor([[2.5, 16.0]]))
    low = op.build(inputs, 1, ctx)
    with torch.no_grad():
        low.proj[0].weight.copy_(torch.tensor([[1.0, 1.0]]))  # V^T x = 3
        low.proj[1].weight.copy_(torch.tensor([[2.0], [-1.0]]))  # U (V^T x) = [6, -3]
        low.proj[1].bias.zero_()
    torch.testing.assert_close(low(x), torch.tensor([[7.0, -4.0]]))
    assert op.output_spec(inputs, 1, ctx) == TensorSpec.dense(2)


def test_binary_ops_zero_pad_the_narrower_input():
    ctx = OpContext(layernorm=False)
    inputs = {"left": TensorSpec.dense(3), "right": TensorSpec.dense(2)}
    left, right = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[4.0, 5.0]])
    summed = get_operator("sum").build(inputs, 3, ctx)  # P == width: no projection
    torch.testing.assert_close(summed(left, right), torch.tensor([[5.0, 7.0, 3.0]]))
    gating = get_operator("sigmoid-gating").build(inputs, 3, ctx)
    with torch.no_grad():
        gating.gate.weight.zero_()
        gating.gate.bias.zero_()  # gate = sigmoid(0) = 0.5
    torch.testing.assert_close(gating(left, right), torch.tensor([[2.0, 2.5, 0.0]]))
    add = get_operator("add")
    torch.testing.assert_close(add.build({"a": TensorSpec.dense(2), "b": TensorSpec.dense(3)},
                                         None, ctx)(right, left),
                               torch.tensor([[5.0, 7.0, 3.0]]))
    alone = add.build({"a": TensorSpec.dense(2)}, None, ctx)
    torch.testing.assert_close(alone(right), right)


def test_dense_to_sparse_is_a_view_when_sizes_match():
    op, ctx = get_operator("dense-to-sparse"), OpContext(embedding_dim=4)
    inputs = {"x": TensorSpec.dense(8)}
    module = op.build(inputs, 2, ctx)
    x = torch.arange(16.0).reshape(2, 8)
    torch.testing.assert_close(module(x), x.reshape(2, 2, 4))
    assert op.cost(inputs, 2, ctx).params == 0
    assert op.output_spec({"x": TensorSpec.dense(13)}, 8, ctx) == TensorSpec.sparse(8, 4)


@pytest.mark.parametrize(("dim", "heads"), [(16, 8), (12, 4), (6, 2), (5, 1)])
def test_transformer_heads_and_layernorm_init(dim, heads):
    op, ctx = get_operator("transformer"), OpContext(embedding_dim=dim)
    module = op.build({"x": TensorSpec.sparse(3, dim)}, 4, ctx)
    assert module.attn.num_heads == heads
    for norm in (module.attn_norm, module.ffn_norm):
        assert torch.all(norm.weight == 0.17)
