"""The embedded default dataset: synthetic CTR data labelled by a hidden *teacher* model.

The teacher is built so that architectures really differ in NE and good ones are findable:

* category frequencies follow a per-field Zipf-like law (a bounded continuous power law with
  exponent s in ``zipf_exponents``, floored to ranks): a few ids dominate, a long tail is rare;
* the logit sums first-order effects, FM-style 2nd-order inner products on a random subset of
  field pairs, 3rd-order elementwise triple products on a few field triples, dense x sparse
  effects and a small tanh network of the dense features;
* per-id effects shrink along each field's tail (``head_rank``, ``tail_decay``), so the signal
  sits on ids seen often enough to be learnt;
* every term is scaled to a fixed standard deviation on a calibration sample and the bias is
  bisected so the click rate is ``base_ctr``; labels are ``Bernoulli(sigmoid(logit))``.

A logistic regression only captures the first-order part, so it sits well above the teacher's NE,
while models with (higher-order) interactions close much of the gap, more so with more rows.
Measured on the default (seed 0, test split, H200, Adagrad 0.05, 2 epochs, embedding dim 16):
200k rows: teacher 0.729, LR 0.892, FM 0.926, DNN 0.851, FwFM 0.848, DLRM 0.823;
1M rows: teacher 0.724, LR 0.873, FM 0.851, FwFM 0.798, DNN 0.790, DLRM 0.772.

The teacher (parameters, scales, bias) is built on the CPU from ``seed`` alone, so it is identical
for every ``rows`` and device; the rows are drawn on ``device`` with a seeded generator there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ranknas.errors import DataError
from ranknas.evaluator.data.base import CTRData
from ranknas.evaluator.data.categorical import split_sizes, validate_splits
from ranknas.evaluator.data.schema import Batch, DataSchema

# 26 fields like Criteo, 3 to 20000 rows each (about 100k in all), in no particular order so that
# field index says nothing about size.
DEFAULT_CARDINALITIES: tuple[int, ...] = (
    1460, 583, 10131, 2202, 305, 24, 12517, 633, 3, 9327, 5683, 8351, 3194, 27, 14992, 5461,
    10, 5652, 2173, 4, 7046, 18, 15, 20000, 105, 142,
)

_CHUNK = 65_536  # rows per teacher evaluation chunk: bounds the [chunk, F, k] gathers
_CALIBRATION_ROWS = 20_000
# Independent random streams derived from the seed (never the global torch/numpy state).
_STREAM_TEACHER, _STREAM_CALIBRATION, _STREAM_ROWS = 1, 2, 3


@dataclass(frozen=True)
class SyntheticConfig:
    """Everything that defines a synthetic dataset; equal configs give equal data.

    Args:
        rows: Examples in all splits together.
        seed: Seed of the teacher and of the rows.
        num_dense: D, dense features per example.
        cardinalities: Rows of each sparse field (F fields); ``None`` = 26 Criteo-like fields.
        base_ctr: Target click rate; the teacher's bias is bisected to hit it.
        splits: Train/valid/test fractions (contiguous blocks of the iid rows).
        zipf_exponents: Range of the per-field Zipf exponent s, ``P(rank r) ~ r^-s``.
        factor_dim: k, size of the hidden per-category vectors of the interaction terms.
        num_pairs: Field pairs carrying a 2nd-order interaction.
        num_triples: Field triples carrying a 3rd-order interaction.
        num_dense_sparse: (dense feature, sparse field) pairs with a ``x_d * g_f[id]`` effect.
        scales: Standard deviation of each logit term, in order: first-order, 2nd-order,
            3rd-order, dense x sparse, dense nonlinear.
        head_rank: Rank r0 after which per-id effects (interaction vectors, and first-order and
            dense x sparse weights when ``shrink_first``) shrink by ``(1 + rank / r0) **
            -tail_decay``: the signal lives mostly on ids seen often enough to be learnt.
        tail_decay: Exponent of that shrinkage (0 = none).
        shrink_first: Shrink first-order and dense x sparse weights too.
        dense_missing: Upper bound of the per-feature missing rate (missing dense -> 0).
    """

    rows: int = 200_000
    seed: int = 0
    num_dense: int = 13
    cardinalities: tuple[int, ...] | None = None
    base_ctr: float = 0.25
    splits: tuple[float, float, float] = (0.8, 0.1, 0.1)
    zipf_exponents: tuple[float, float] = (1.1, 1.5)
    factor_dim: int = 4
    num_pairs: int = 24
    num_triples: int = 8
    num_dense_sparse: int = 8
    scales: tuple[float, float, float, float, float] = (1.0, 1.0, 0.8, 0.35, 0.45)
    head_rank: float = 5.0
    tail_decay: float = 1.0
    shrink_first: bool = True
    dense_missing: float = 0.2
    name: str = field(default="synthetic", compare=False)

    def __post_init__(self) -> None:
        if self.rows < 1:
            raise DataError("rows", f"need at least 1 row, got {self.rows}")
        if self.seed < 0:
            raise DataError("seed", f"must be >= 0, got {self.seed}")
        if self.num_dense < 0:
            raise DataError("num_dense", f"must be >= 0, got {self.num_dense}")
        cards = DEFAULT_CARDINALITIES if self.cardinalities is None else self.cardinalities
        cards = tuple(int(c) for c in cards)
        if not cards or min(cards) < 1:
            raise DataError("cardinalities", "give at least one field, each with >= 1 row")
        object.__setattr__(self, "cardinalities", cards)
        if not 0.0 < self.base_ctr < 1.0:
            raise DataError("base_ctr", f"must lie in (0, 1), got {self.base_ctr}")
        object.__setattr__(self, "splits", validate_splits(self.splits))
        lo, hi = self.zipf_exponents
        if not 0.0 <= lo <= hi:
            raise DataError("zipf_exponents", f"need 0 <= low <= high, got {self.zipf_exponents}")
        if self.factor_dim < 1:
            raise DataError("factor_dim", f"must be >= 1, got {self.factor_dim}")
        for name in ("num_pairs", "num_triples", "num_dense_sparse"):
            if getattr(self, name) < 0:
                raise DataError(name, f"must be >= 0, got {getattr(self, name)}")
        if len(self.scales) != 5 or min(self.scales) < 0:
            raise DataError("scales", "give 5 non-negative term scales")
        if self.head_rank <= 0 or self.tail_decay < 0:
            raise DataError("head_rank", "need head_rank > 0 and decay >= 0")
        if not 0.0 <= self.dense_missing < 1.0:
            raise DataError("dense_missing", f"must lie in [0, 1), got {self.dense_missing}")

    @property
    def schema(self) -> DataSchema:
        return DataSchema(self.num_dense, self.cardinalities, self.name)


def _generator(seed: int, stream: int, device: torch.device | str = "cpu") -> torch.Generator:
    # SeedSequence mixes (seed, stream) so neighbouring seeds give unrelated streams.
    state = int(np.random.SeedSequence([seed, stream]).generate_state(1, np.uint64)[0])
    return torch.Generator(device=device).manual_seed(state)


def _groups(num_fields: int, size: int, count: int, gen: torch.Generator) -> torch.Tensor:
    """Pick ``count`` distinct sorted field groups of ``size`` fields: ``[count, size]`` int64."""
    if count == 0 or num_fields < size:
        return torch.empty(0, size, dtype=torch.int64)
    if math.comb(num_fields, size) <= 100_000:
        combos = torch.combinations(torch.arange(num_fields), size)
        return combos[torch.randperm(len(combos), generator=gen)[:count]]
    # Too many combinations to list: draw groups; the odd duplicate is harmless.
    keys = torch.rand(count, num_fields, generator=gen)
    return keys.argsort(dim=1)[:, :size].sort(dim=1).values


@dataclass
class SyntheticTeacher:
    """The hidden model that labels synthetic data. Tensors live on one device (CPU by default).

    Attributes:
        offsets: ``[F]`` start of each field in the fused per-category tables.
        zipf_exponent: ``[F]`` power-law exponent s of each field (kept away from 1).
        rank_to_id: ``[R]`` id of each frequency rank, per field (a random permutation).
        first: ``[R]`` first-order weight of every category (R = total rows).
        factors2: ``[R, k]`` hidden vectors of the 2nd-order terms.
        factors3: ``[R, k]`` hidden vectors of the 3rd-order terms.
        pair_weights: ``[F, F]`` strictly upper-triangular weight of each field pair (P non-zero).
        triples: ``[T, 3]`` field triples.
        ds_dense, ds_field: ``[M]`` dense index and sparse field of each dense x sparse term;
            ``ds_weight``: ``[R]`` its per-category slope (used only for the ``ds_field`` rows).
        mlp_w1 ``[D, H]``, mlp_b1 ``[H]``, mlp_w2 ``[H]``: the dense tanh network.
        dense_mu, dense_sigma, dense_missing: ``[D]`` log-normal parameters and missing rates.
        dense_mean, dense_std: ``[D]`` standardisation of ``log1p(count)`` (from calibration).
        term_scale: ``[5]`` multipliers that give each term its configured std.
        bias: Logit offset bisected to the target CTR.
    """

    offsets: torch.Tensor
    cardinalities: torch.Tensor
    zipf_exponent: torch.Tensor
    rank_to_id: torch.Tensor
    first: torch.Tensor
    factors2: torch.Tensor
    factors3: torch.Tensor
    pair_weights: torch.Tensor
    triples: torch.Tensor
    ds_dense: torch.Tensor
    ds_field: torch.Tensor
    ds_weight: torch.Tensor
    mlp_w1: torch.Tensor
    mlp_b1: torch.Tensor
    mlp_w2: torch.Tensor
    dense_mu: torch.Tensor
    dense_sigma: torch.Tensor
    dense_missing: torch.Tensor
    dense_mean: torch.Tensor
    dense_std: torch.Tensor
    term_scale: torch.Tensor
    bias: float = 0.0

    def to(self, device: torch.device | str) -> SyntheticTeacher:
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v)
                 for k, v in self.__dict__.items()}
        return SyntheticTeacher(**moved)

    def sample_raw(self, n: int, gen: torch.Generator
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Draw ``n`` examples on the generator's device, before dense standardisation.

        Returns:
            ``log1p(count) [n, D]`` float32, ``missing [n, D]`` bool and ``sparse [n, F]`` int64.
        """
        device = gen.device
        num_fields, num_dense = len(self.offsets), len(self.dense_mu)
        # Inverse CDF of a bounded continuous power law x^-s on [1, N + 1): rank = floor(x) - 1.
        # Elementwise math on [n, F]: much faster than a searchsorted over all categories.
        u = torch.rand(n, num_fields, generator=gen, device=device)
        one_minus_s = 1.0 - self.zipf_exponent
        top = (self.cardinalities + 1.0).pow(one_minus_s)
        x = (1.0 + u * (top - 1.0)).pow(1.0 / one_minus_s)
        rank = torch.minimum(x.long() - 1, self.cardinalities - 1).clamp_(min=0)
        sparse = self.rank_to_id[rank + self.offsets]  # shuffled ids: an id says nothing of rank
        z = torch.randn(n, num_dense, generator=gen, device=device)
        # Count-like dense features as in Criteo: floor(log-normal), then log1p.
        counts = torch.floor(torch.exp(self.dense_mu + self.dense_sigma * z))
        missing = torch.rand(n, num_dense, generator=gen, device=device) < self.dense_missing
        return torch.log1p(counts), missing, sparse

    def sample_features(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``n`` examples: ``dense [n, D]`` float32 (standardised, missing = 0) and
        ``sparse [n, F]`` int64, on the generator's device."""
        logc, missing, sparse = self.sample_raw(n, gen)
        dense = (logc - self.dense_mean) / self.dense_std
        return dense.masked_fill(missing, 0.0).float(), sparse

    def terms(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        """Unscaled logit terms, ``[B, 5]``: first, 2nd, 3rd order, dense x sparse, dense MLP."""
        out = []
        for lo in range(0, len(sparse), _CHUNK):
            s, x = sparse[lo:lo + _CHUNK], dense[lo:lo + _CHUNK]
            gid = s + self.offsets  # [b, F] rows of the fused tables
            first = self.first[gid].sum(dim=1)
            v2 = self.factors2[gid]  # [b, F, k]
            # sum_{i<j} W_ij <v_i, v_j> = sum_i <v_i, (W v)_i>: one small matmul, no pair gathers.
            second = (v2 * torch.matmul(self.pair_weights, v2)).sum(dim=(1, 2))
            t = self.triples
            v3 = [self.factors3[gid[:, t[:, c]]] for c in range(3)]  # 3 x [b, T, k]
            third = (v3[0] * v3[1] * v3[2]).sum(dim=(1, 2))
            slopes = self.ds_weight[gid[:, self.ds_field]]  # [b, M]
            dense_sparse = (x[:, self.ds_dense] * slopes).sum(dim=1)
            mlp = torch.tanh(x @ self.mlp_w1 + self.mlp_b1) @ self.mlp_w2
            out.append(torch.stack([first, second, third, dense_sparse, mlp], dim=1))
        if not out:
            return torch.zeros(0, 5, device=sparse.device)
        return torch.cat(out)

    def logits(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        """Teacher logit of each example, ``[B]``, from ``dense [B, D]`` and ``sparse [B, F]``."""
        return self.terms(dense, sparse) @ self.term_scale + self.bias

    def batch_logits(self, batch: Batch) -> torch.Tensor:
        """Teacher logits ``[B]`` of a :class:`Batch` (the best achievable predictions)."""
        return self.logits(batch.dense, batch.sparse)


def build_teacher(config: SyntheticConfig) -> SyntheticTeacher:
    """Build and calibrate the hidden teacher of ``config`` on the CPU (deterministic by seed)."""
    gen = _generator(config.seed, _STREAM_TEACHER)
    cards = torch.tensor(config.cardinalities, dtype=torch.int64)
    num_fields, num_dense, k = len(cards), config.num_dense, config.factor_dim
    offsets = torch.cumsum(cards, 0) - cards
    total = int(cards.sum())

    # Zipf-like exponents; s == 1 would divide by zero in the inverse CDF, so nudge it away.
    lo, hi = config.zipf_exponents
    expo = lo + (hi - lo) * torch.rand(num_fields, generator=gen)
    expo = torch.where((expo - 1.0).abs() < 1e-3, expo + 2e-3, expo)
    # Per field, a random id for each frequency rank (field loop, not an example loop).
    perms = [torch.randperm(c, generator=gen) for c in config.cardinalities]
    rank_to_id = torch.cat(perms)
    rank_of_id = torch.cat([p.argsort() for p in perms]).float()
    # Per-id effects shrink along the tail: the signal lives mostly on ids seen often enough to
    # be learnt, as in real logs where rare ids behave much like an average id.
    shrink = (1.0 + rank_of_id / config.head_rank).pow(-config.tail_decay)[:, None]
    pairs = _groups(num_fields, 2, config.num_pairs, gen)
    pair_weights = torch.zeros(num_fields, num_fields)
    pair_weights[pairs[:, 0], pairs[:, 1]] = 0.5 + torch.rand(len(pairs), generator=gen)
    triples = _groups(num_fields, 3, config.num_triples, gen)
    m = config.num_dense_sparse if num_dense > 0 else 0
    hidden = 16
    tail = shrink[:, 0] if config.shrink_first else torch.ones(total)
    teacher = SyntheticTeacher(
        offsets=offsets, cardinalities=cards, zipf_exponent=expo, rank_to_id=rank_to_id,
        first=torch.randn(total, generator=gen) * tail,
        # Zero-mean factors: interactions carry no first-order signal a linear model could grab.
        factors2=torch.randn(total, k, generator=gen) * shrink,
        factors3=torch.randn(total, k, generator=gen) * shrink,
        pair_weights=pair_weights, triples=triples,
        ds_dense=torch.randint(0, max(num_dense, 1), (m,), generator=gen),
        ds_field=torch.randint(0, num_fields, (m,), generator=gen),
        ds_weight=torch.randn(total, generator=gen) * tail,
        mlp_w1=torch.randn(num_dense, hidden, generator=gen) * (2.0 / math.sqrt(max(num_dense, 1))),
        mlp_b1=torch.randn(hidden, generator=gen) * 0.5,
        mlp_w2=torch.randn(hidden, generator=gen),
        dense_mu=torch.rand(num_dense, generator=gen) * 4.0,
        dense_sigma=0.5 + torch.rand(num_dense, generator=gen),
        dense_missing=torch.rand(num_dense, generator=gen) * config.dense_missing,
        dense_mean=torch.zeros(num_dense), dense_std=torch.ones(num_dense),
        term_scale=torch.zeros(5),
    )
    _calibrate(teacher, config)
    return teacher


def _calibrate(teacher: SyntheticTeacher, config: SyntheticConfig) -> None:
    """Fix dense standardisation, term scales and bias on a CPU calibration sample."""
    gen = _generator(config.seed, _STREAM_CALIBRATION)
    # Dense standardisation first: the terms are computed on standardised features.
    logc, _, _ = teacher.sample_raw(_CALIBRATION_ROWS, gen)
    if logc.shape[1] > 0:
        teacher.dense_mean = logc.mean(0)
        teacher.dense_std = logc.std(0).clamp(min=1e-3)
    dense, sparse = teacher.sample_features(_CALIBRATION_ROWS, gen)
    terms = teacher.terms(dense, sparse)
    std = terms.std(0)
    # A term that is constant (no pairs, no dense features, ...) gets weight 0, not inf.
    safe = torch.where(std > 1e-8, std, torch.ones_like(std))
    target = torch.tensor(config.scales, dtype=torch.float32)
    teacher.term_scale = torch.where(std > 1e-8, target / safe, torch.zeros_like(std))
    logit = (terms - terms.mean(0)) @ teacher.term_scale
    teacher.bias = _bisect_bias(logit.double(), config.base_ctr) - float(
        terms.mean(0) @ teacher.term_scale)


def _bisect_bias(logit: torch.Tensor, ctr: float) -> float:
    """Bias ``b`` with ``mean(sigmoid(logit + b)) == ctr`` (monotone in ``b``, so bisection)."""
    lo, hi = -30.0, 30.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if float(torch.sigmoid(logit + mid).mean()) < ctr:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def generate_synthetic(config: SyntheticConfig,
                       device: torch.device | str = "cpu") -> tuple[CTRData, SyntheticTeacher]:
    """Draw ``config.rows`` examples on ``device`` and return them with their teacher.

    Returns:
        The data (``dense [N, D]``, ``sparse [N, F]``, ``labels [N]`` split train/valid/test)
        and the teacher on ``device``, whose :meth:`SyntheticTeacher.batch_logits` gives the
        Bayes-optimal logits (its NE is the floor any model can reach).
    """
    teacher = build_teacher(config).to(device)
    gen = _generator(config.seed, _STREAM_ROWS, device)
    dense, sparse = teacher.sample_features(config.rows, gen)
    p = torch.sigmoid(teacher.logits(dense, sparse))
    labels = torch.bernoulli(p, generator=gen).float()
    n_train, n_valid, _ = split_sizes(config.rows, config.splits)
    cut = (n_train, n_train + n_valid)

    def part(lo: int, hi: int | None) -> Batch:
        return Batch(dense[lo:hi], sparse[lo:hi], labels[lo:hi])

    data = CTRData(config.schema, part(0, cut[0]), part(cut[0], cut[1]), part(cut[1], None))
    return data, teacher


def make_synthetic(rows: int, seed: int = 0, *, num_dense: int = 13,
                   cardinalities: Sequence[int] | None = None, base_ctr: float = 0.25,
                   splits: Sequence[float] = (0.8, 0.1, 0.1),
                   device: torch.device | str = "cpu", **teacher_options: object) -> CTRData:
    """The embedded default dataset: ``rows`` examples labelled by a seeded hidden teacher.

    Args:
        rows: N, examples over all splits.
        seed: Seed of the teacher and of the rows (same seed, same tensors on CPU).
        num_dense: D, dense features (standardised ``log1p`` of log-normal counts).
        cardinalities: Rows of each of the F sparse fields; ``None`` = 26 fields, 3 to 20000.
        base_ctr: Target train click rate (realised within about +-0.01 for 100k+ rows).
        splits: Train/valid/test fractions, contiguous blocks of the iid rows.
        device: Where the rows are generated and kept.
        **teacher_options: Further :class:`SyntheticConfig` fields (``num_pairs``, ``scales``...).

    Returns:
        :class:`CTRData` with ``dense [N_split, D]``, ``sparse [N_split, F]``, ``labels [N_split]``.
    """
    known = set(SyntheticConfig.__dataclass_fields__) - {"rows", "seed", "num_dense",
                                                         "cardinalities", "base_ctr", "splits"}
    unknown = sorted(set(teacher_options) - known)
    if unknown:
        raise DataError(f"synthetic.{unknown[0]}",
                        f"unknown option; known ones: {', '.join(sorted(known))}")
    config = SyntheticConfig(rows=rows, seed=seed, num_dense=num_dense,
                             cardinalities=None if cardinalities is None else tuple(cardinalities),
                             base_ctr=base_ctr, splits=tuple(splits),  # type: ignore[arg-type]
                             **teacher_options)  # type: ignore[arg-type]
    return generate_synthetic(config, device)[0]
