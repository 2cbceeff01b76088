"""CTR metrics: mergeable running totals plus pure compute functions.

Shaped after torchrec's ``torchrec/metrics/ne.py``: a :class:`MetricState` only accumulates sums
(log loss, count, labels, predicted probabilities) and the raw scores needed for exact AUC; the
``compute_*`` functions turn totals into metrics. Because the state is just sums and
concatenations, states from several workers (Ray trials, data-parallel ranks) merge exactly with
:meth:`MetricState.merge`, giving the same numbers as one state over all the examples.

NE (normalized entropy, He et al. 2014) is the mean log loss divided by the entropy of the
*background* CTR ``p``: ``NE = logloss / -(p log p + (1 - p) log(1 - p))``. ``p`` must come from the
TRAINING labels (``CTRData.background_ctr``), never from the split being scored, so that NE on
validation/test compares a model against the trivial predictor it could have learned from training
data alone. Lower is better; predicting ``p`` for every example scores NE = 1 on data whose CTR
is ``p``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ranknas.errors import ConfigError

__all__ = [
    "MetricState",
    "compute_auc",
    "compute_calibration",
    "compute_logloss",
    "compute_ne",
]

Number = float | int | torch.Tensor


def _as_float(x: Number) -> float:
    return float(x.item()) if isinstance(x, torch.Tensor) else float(x)


def compute_logloss(sum_loss: Number, count: Number) -> float:
    """Mean binary log loss (natural log) from running totals.

    Args:
        sum_loss: Sum over examples of the per-example log loss.
        count: Number of examples summed.

    Returns:
        ``sum_loss / count``.

    Raises:
        ConfigError: ``count`` is not positive (there is nothing to average).
    """
    n = _as_float(count)
    if not n > 0:
        raise ConfigError("count", f"log loss needs at least one example, got count={n:g}")
    return _as_float(sum_loss) / n


def _entropy(p: float) -> float:
    """Binary entropy in nats of a Bernoulli(p)."""
    return -(p * math.log(p) + (1.0 - p) * math.log1p(-p))


def compute_ne(sum_loss: Number, count: Number, background_ctr: float) -> float:
    """Normalized entropy: mean log loss over the entropy of the background CTR.

    Args:
        sum_loss: Sum over examples of the per-example log loss (natural log).
        count: Number of examples summed.
        background_ctr: ``p``, the click rate of the TRAINING labels (not of the split being
            scored), e.g. ``CTRData.background_ctr``. Must lie strictly inside ``(0, 1)``.

    Returns:
        ``logloss / -(p log p + (1 - p) log(1 - p))``; 1.0 means no better than always predicting
        ``p``, lower is better.

    Raises:
        ConfigError: ``background_ctr`` is not in ``(0, 1)`` (entropy 0 makes NE undefined), or
            ``count`` is not positive.
    """
    p = _as_float(background_ctr)
    if not 0.0 < p < 1.0:
        raise ConfigError(
            "background_ctr",
            f"must be strictly between 0 and 1 (NE divides by its entropy), got {p!r}; the "
            "training labels need both clicks and non-clicks",
        )
    return compute_logloss(sum_loss, count) / _entropy(p)


def compute_calibration(sum_pred: Number, sum_label: Number) -> float:
    """Calibration: mean predicted probability over observed CTR (1.0 is perfect).

    Both means share the same example count, so this is ``sum_pred / sum_label``.

    Args:
        sum_pred: Sum over examples of the predicted click probability.
        sum_label: Sum over examples of the labels (number of clicks).

    Returns:
        ``sum_pred / sum_label``, or ``nan`` when there are no clicks (the observed CTR is 0 and
        the ratio is undefined).
    """
    s_label = _as_float(sum_label)
    if s_label <= 0.0:
        return math.nan
    return _as_float(sum_pred) / s_label


def compute_auc(preds: torch.Tensor, labels: torch.Tensor) -> float:
    """Exact ROC AUC by the rank-sum (Mann-Whitney U) formula, ties counted as one half.

    Tied scores get the average of the ranks they span, which equals sklearn's
    ``roc_auc_score`` (trapezoidal ROC). Runs on the tensors' device in float64.

    Args:
        preds: ``[N]`` scores; any strictly monotone transform (logits or probabilities) gives
            the same AUC.
        labels: ``[N]`` labels in {0, 1}.

    Returns:
        The AUC in ``[0, 1]``, or ``nan`` when it is undefined: all labels are one class (no
        positive/negative pair to rank), ``N == 0``, or a score is ``nan``.

    Raises:
        ConfigError: shapes differ or a label is not 0 or 1.
    """
    preds = torch.as_tensor(preds).reshape(-1)
    labels = torch.as_tensor(labels).reshape(-1).to(preds.device)
    if preds.numel() != labels.numel():
        raise ConfigError("preds", f"has {preds.numel()} scores but labels has {labels.numel()}")
    if preds.numel() == 0 or bool(torch.isnan(preds.float()).any()):
        return math.nan
    if bool(((labels != 0) & (labels != 1)).any()):
        raise ConfigError("labels", "AUC needs binary labels in {0, 1}")
    is_pos = labels == 1
    n_pos = int(is_pos.sum())
    n_neg = labels.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan  # AUC ranks positives against negatives; with one class it is undefined.
    sorted_preds, order = torch.sort(preds.double())
    _, inverse, counts = torch.unique_consecutive(
        sorted_preds, return_inverse=True, return_counts=True)
    # 1-based rank of each tie group's last member, minus half its width: the average rank.
    ends = torch.cumsum(counts, 0).double()
    avg_rank = ends - (counts.double() - 1.0) / 2.0
    pos_rank_sum = avg_rank[inverse][is_pos[order]].sum()
    u = float(pos_rank_sum) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


@dataclass
class MetricState:
    """Running totals of a stream of (logit, label) pairs, mergeable across workers.

    Totals live on the device of the logits as float64 0-dim tensors, so :meth:`update` never
    synchronises with a GPU; only :meth:`compute` does. :meth:`update` rebinds fields instead of
    modifying tensors in place, so states returned by :meth:`merge` never alias mutable data.

    Attributes:
        sum_loss: Sum of per-example BCE-with-logits losses (natural log), float64.
        count: Number of examples seen.
        sum_label: Sum of labels (clicks).
        sum_pred: Sum of predicted probabilities ``sigmoid(logit)``.
        scores: Chunks of ``[B]`` float32 logits kept for exact AUC (AUC is rank-based and
            sigmoid is monotone, so logits rank like probabilities without saturating to ties).
        labels: Chunks of ``[B]`` float32 labels matching ``scores``.
    """

    sum_loss: Number = 0.0
    count: int = 0
    sum_label: Number = 0.0
    sum_pred: Number = 0.0
    scores: list[torch.Tensor] = field(default_factory=list)
    labels: list[torch.Tensor] = field(default_factory=list)

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch.

        Args:
            logits: ``[B]`` raw model outputs (pre-sigmoid).
            labels: ``[B]`` click labels in {0, 1}.

        Raises:
            ConfigError: ``logits`` and ``labels`` do not have the same number of elements.
        """
        logits = logits.detach().reshape(-1)
        labels = labels.detach().reshape(-1).to(logits.device)
        if logits.numel() != labels.numel():
            raise ConfigError(
                "logits", f"has {logits.numel()} elements but labels has {labels.numel()}")
        x, y = logits.double(), labels.double()
        # BCE-with-logits is the stable log loss: no log(0) when a probability saturates.
        self.sum_loss = self.sum_loss + F.binary_cross_entropy_with_logits(x, y, reduction="sum")
        self.sum_label = self.sum_label + y.sum()
        self.sum_pred = self.sum_pred + torch.sigmoid(x).sum()
        self.count += int(logits.numel())
        self.scores.append(logits.float())
        self.labels.append(labels.float())

    def merge(self, other: MetricState) -> MetricState:
        """Return the state of both streams together; neither input is modified.

        Sums add and kept scores concatenate, so merging per-worker states gives exactly the
        metrics of one state over all examples (AUC included).
        """
        return MetricState(
            sum_loss=_add(self.sum_loss, other.sum_loss),
            count=self.count + other.count,
            sum_label=_add(self.sum_label, other.sum_label),
            sum_pred=_add(self.sum_pred, other.sum_pred),
            scores=[*self.scores, *other.scores],
            labels=[*self.labels, *other.labels],
        )

    def compute(self, background_ctr: float) -> dict[str, float | int]:
        """Turn totals into metrics.

        Args:
            background_ctr: Click rate of the TRAINING labels, the NE normaliser (see
                :func:`compute_ne`).

        Returns:
            ``{"ne", "logloss", "auc", "calibration", "ctr", "count"}``; ``ctr`` is the observed
            click rate of the examples seen, ``auc``/``calibration`` may be ``nan`` (see
            :func:`compute_auc`, :func:`compute_calibration`).

        Raises:
            ConfigError: no examples were seen, or ``background_ctr`` is not in ``(0, 1)``.
        """
        ne = compute_ne(self.sum_loss, self.count, background_ctr)
        if self.scores:
            device = self.scores[0].device
            scores = torch.cat([s.to(device) for s in self.scores])
            labels = torch.cat([y.to(device) for y in self.labels])
            auc = compute_auc(scores, labels)
        else:
            auc = math.nan
        return {
            "ne": ne,
            "logloss": compute_logloss(self.sum_loss, self.count),
            "auc": auc,
            "calibration": compute_calibration(self.sum_pred, self.sum_label),
            "ctr": _as_float(self.sum_label) / self.count,
            "count": self.count,
        }


def _add(a: Number, b: Number) -> Number:
    # States from different devices: bring both sums to the CPU rather than guess a device.
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.device != b.device:
        return a.cpu() + b.cpu()
    return a + b
