"""One supernet replicate of :mod:`ranknas.reports.rankcorr`: train it, score the sample on it.

A replicate is seeded apart from the standalone trainings (``base`` derives the supernet's, its
sampler's and fine-tuning's seeds), so replicates ``base``, ``base + 1``, ... measure the same
architectures against the same standalone NEs with independent supernet noise.

A replicate journals its trained supernet and every score in ``OUT`` as they finish
(:class:`~ranknas.reports.rankcorr_reuse.SupernetJournal`): started again after a kill, it
loads the saved weights instead of training, and scores only the architectures left.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ranknas.errors import ConfigError
from ranknas.reports.rankcorr_reuse import SupernetJournal, replicate_key

__all__ = ["derived_seed", "score_replicate"]


def derived_seed(base: int, tag: str) -> int:
    """A seed for one component, independent of the standalone seeds (seed, seed + 1, ...):
    fine-tuning with a standalone run's seed would share its batch order, and the noise that
    order puts into standalone NE would then inflate the rank correlation."""
    return random.Random(f"rankcorr-{tag}-{base}").getrandbits(31)


def score_replicate(job: Any, ev: Any, sample: Sequence[Any], base: int, *,
                    sampler: tuple[str, Mapping[str, Any]], supernet_examples: int,
                    supernet_lr: float | None, modes: Sequence[str],
                    score_options: Mapping[str, Any], finetune_continue: bool, workers: int,
                    out: Path, say: Callable[[str], None],
                    supernet_train: Mapping[str, Any] | None = None, fingerprint: str = ""
                    ) -> tuple[list[dict[str, float]], dict[str, Any]]:
    """Train one supernet and score every architecture of ``sample`` on it.

    Args:
        job: The run's EvalJob (workers rebuild its evaluator; the data is shared).
        ev: Its evaluator in this process (space, data, train config, threads).
        sample: The architectures.
        base: Seeds this replicate (:func:`derived_seed`).
        sampler: ``(name, options)`` of the path sampler.
        supernet_examples: Supernet training examples.
        supernet_lr: Its learning rate; None: the train config's.
        modes: Fine-tuning modes besides ``none``.
        score_options: ``finetune_examples`` and ``finetune_lr`` of the scoring.
        finetune_continue: Fine-tune from the supernet's Adagrad state.
        workers: Scoring processes (:mod:`ranknas.execution.pool`).
        out: The run's folder: the journal, and the trained weights until every
            architecture is scored.
        say: Progress printer.
        supernet_train: ``SupernetTrainConfig`` execution fields (checked by the caller).
        fingerprint: The standalone fingerprint (space, data, training, seed, sample) that,
            with this replicate's options, keys its journal.

    Returns:
        ``(scores, trained)``: per architecture ``{variant: NE}`` (``no_finetune``,
        ``finetune_<mode>``; NaN for a failed score), and the supernet's training summary.
    """
    import torch

    from ranknas.execution import pool
    from ranknas.execution.standalone import torch_threads
    from ranknas.supernet import Supernet, SupernetTrainConfig, SupernetTrainer, make_sampler

    space, data, cfg = ev.space, ev.data, ev.train_config
    options = {**score_options, "seed": derived_seed(base, "finetune"),
               "continue": finetune_continue}
    journal = SupernetJournal(out, replicate_key(
        fingerprint, base=base, sampler=sampler, supernet_examples=supernet_examples,
        supernet_lr=supernet_lr, supernet_train=dict(supernet_train or {}),
        modes=list(modes), options=options))
    done_before = journal.scores()
    scores = [dict(done_before.get(arch.arch_id, {})) for arch in sample]
    todo = [i for i, arch in enumerate(sample) if arch.arch_id not in done_before]
    trained = journal.trained()
    if trained is not None and not todo:
        say(f"supernet {base}: all {len(sample)} scores journaled")
        return scores, trained
    with torch_threads(ev.threads):
        start = time.perf_counter()
        supernet = Supernet(space, data.schema, derived_seed(base, "supernet"))
        if trained is not None and journal.weights.exists():
            state = torch.load(journal.weights, map_location="cpu", weights_only=True)
            supernet.load_state_dict(state["supernet"])
            supernet.to(cfg.device)
            sums = state.get("adagrad_sums")
            say(f"supernet {base}: reused from {journal.weights.name}, "
                f"{len(sample) - len(todo)} scores journaled, {len(todo)} to go")
        else:
            with SupernetTrainer(  # closing stops its path prefetch worker, if any
                    supernet, data,
                    make_sampler(sampler[0], space, derived_seed(base, "sampler"),
                                 schema=data.schema, **sampler[1]),
                    SupernetTrainConfig.following(
                        cfg, supernet_examples, derived_seed(base, "supernet-train"),
                        lr=None if supernet_lr is None else float(supernet_lr),
                        **(supernet_train or {}))) as trainer:
                trained = trainer.train(supernet_examples)
            say(f"supernet {base}: {trained['examples']:,} examples, loss "
                f"{trained['loss']:.4f}, {time.perf_counter() - start:.1f} s")
            sums = trainer.adagrad_sums() if finetune_continue else None
            if finetune_continue and sums is None:
                raise ConfigError("finetune_continue", "needs train.optimizer adagrad")
            pool.save_supernet(journal.weights, supernet, sums)  # kept until scored
            journal.add_trained(trained)
    weights = (pool.keep_supernet(f"rankcorr-supernet-{id(supernet)}", supernet, sums)
               if workers == 1 else str(journal.weights))

    def done(k: int, results: dict[str, Any]) -> None:
        i = todo[k]
        for mode, res in results.items():
            key = "no_finetune" if mode == "none" else f"finetune_{mode}"
            scores[i][key] = float(res.metrics["ne"]) if res.ok else math.nan
        journal.add_scores(sample[i].arch_id, scores[i])
        say(f"[{sum(map(bool, scores))}/{len(sample)}] supernet {base} {sample[i].arch_id}: "
            "NE " + " / ".join(f"{v:.4f}" for v in scores[i].values()))

    with torch_threads(ev.threads):
        pool.run_tasks(pool.score_task,
                       [(job, weights, derived_seed(base, "supernet"), sample[i],
                         ("none", *modes), options) for i in todo], workers, done)
    pool.release(weights)
    journal.weights.unlink()  # large, and every score is journaled
    return scores, trained
