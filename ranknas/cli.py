"""The ``ranknas`` command."""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ranknas.errors import ConfigError, RanknasError


def _arch_from_arg(space: Any, spec: str) -> Any:
    """``random:SEED``, a ranknas architecture JSON file or a NASRec JSON file."""
    from ranknas.spaces.nasrec_json import from_nasrec_json, is_nasrec_json

    if spec.startswith("random:"):
        try:
            seed = int(spec.split(":", 1)[1])
        except ValueError:
            raise ConfigError("--arch", f"expected random:SEED with an integer seed, "
                              f"got {spec!r}") from None
        return space.sample(random.Random(seed))
    path = Path(spec)
    try:
        doc = json.loads(path.read_text())
    except OSError as err:
        raise ConfigError("--arch", f"cannot read {spec!r}: {err.strerror}; give a JSON file "
                          "or random:SEED") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path.name}:{err.lineno}", f"malformed JSON: {err.msg}") from None
    if is_nasrec_json(doc):
        return from_nasrec_json(space, doc, where=path.name)
    return space.from_json(doc, where=path.name)


def cmd_spaces_list(args: argparse.Namespace) -> int:
    from ranknas.spaces import BUILTIN_SPACES, load_space

    for name in BUILTIN_SPACES:
        space = load_space(name)
        print(f"{name:<14} {len(space.choices()):>3} decisions  10^{space.size():<5.1f} "
              f"{space.description}")
    return 0


def cmd_spaces_show(args: argparse.Namespace) -> int:
    from ranknas.spaces import load_space

    space = load_space(args.space)
    arch = space.sample(random.Random(args.seed))
    graph = space.materialize(arch)
    if args.json:
        print(json.dumps({"space": space.name, "version": space.version,
                          "log10_size": space.size(),
                          "choices": [c.to_json() for c in space.choices()],
                          "sample": arch.to_json(), "sample_arch_id": arch.arch_id,
                          "sample_flops": graph.flops, "sample_params": graph.params}))
        return 0
    print(f"space {space.name} v{space.version}: {space.description}")
    print(f"{len(space.choices())} decisions, about 10^{space.size():.1f} architectures")
    for c in space.choices():
        print(f"  {c.name:<22} {c.describe()}")
    print(f"\nsample (random:{args.seed}), arch_id {arch.arch_id}:")
    for name, value in arch.to_json()["choices"].items():
        print(f"  {name} = {value}")
    print(f"\n{graph.summary()}")
    print(f"\n{graph.flops / 1e6:.3f} MFLOPs/example, {graph.dense_params:,} dense params, "
          f"{graph.params:,} with embeddings ({graph.schema.name} shape)")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ranknas.evaluator.data import load_data
    from ranknas.evaluator.training import TrainConfig, evaluate, train
    from ranknas.execution.standalone import torch_threads
    from ranknas.spaces import build_model, load_space

    space = load_space(args.space)
    arch = _arch_from_arg(space, args.arch)
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, optimizer=args.optimizer,
                         lr=args.lr, seed=args.seed, device=args.device)
    data = load_data(args.data, rows=args.rows, seed=args.seed)
    graph = space.materialize(arch, data.schema)
    model = build_model(space, arch, data.schema, seed=args.seed)
    bar = tqdm(total=args.steps, desc=f"train {arch.arch_id}", unit="step", file=sys.stderr,
               disable=args.quiet)

    def progress(info: dict) -> None:
        bar.n = info["step"]
        bar.set_postfix(loss=f"{info['loss']:.4f}")
        bar.refresh()

    with torch_threads(args.threads):
        result = train(model, data, config, progress=progress)
        metrics = evaluate(model, data.valid, data.background_ctr)
    bar.close()
    out = {"space": space.name, "arch_id": arch.arch_id, "data": args.data,
           "ne": metrics["ne"], "logloss": metrics["logloss"], "auc": metrics["auc"],
           "calibration": metrics["calibration"], "flops": graph.flops,
           "params": graph.params, "dense_params": graph.dense_params,
           "examples": result.examples, "seconds": result.seconds,
           "examples_per_second": result.examples_per_second, "steps": result.steps,
           "device": args.device}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{space.name} {arch.arch_id} on {args.data}: NE {out['ne']:.4f}  "
              f"logloss {out['logloss']:.4f}  AUC {out['auc']:.4f}  "
              f"calibration {out['calibration']:.3f}")
        print(f"{graph.flops / 1e6:.3f} MFLOPs/example, {graph.params:,} params; "
              f"{result.examples:,} examples in {result.seconds:.1f} s "
              f"({result.examples_per_second:,.0f}/s on {args.device})")
    return 0


def cmd_data_fetch(args: argparse.Namespace) -> int:
    from ranknas.evaluator.data.fetch import fetch_dataset

    path = fetch_dataset(args.name)
    print(f"{args.name} is in {path}; use --data movielens:{path}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from ranknas.config import load_config
    from ranknas.search import run_search

    config = load_config(args.config, args.set or ())
    out = run_search(config, args.out, resume=args.resume, progress=not args.quiet)
    _print_outputs(out, config.tracking.get("uri"), tracked=config.tracking.get("enabled", True))
    return 0


def _print_outputs(out: Path, uri: str | None, export: Path | None = None,
                   tracked: bool = True) -> None:
    from ranknas.reports.tracking import local_store_uri

    print(f"report:  {out / 'report' / 'report.html'}")
    if export is not None:
        print(f"exports: {export}")
    print(f"trials:  {out / 'trials.jsonl'}")
    if tracked:
        print(f"runs:    mlflow ui --backend-store-uri {uri or local_store_uri(out)}")


def cmd_rank_corr(args: argparse.Namespace) -> int:
    from ranknas.config import load_config
    from ranknas.reports.rankcorr import run_rank_correlation

    config = load_config(args.config, args.set or ())
    options: dict[str, Any] = {}
    if args.finetune_examples is not None:
        options["finetune_examples"] = args.finetune_examples
    if args.finetune_lr is not None:
        options["finetune_lr"] = args.finetune_lr
    import yaml

    supernet_train = {}
    for item in args.supernet_train:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError("--supernet-train", f"{item!r}: expected KEY=VALUE, e.g. "
                              "execution=segmented")
        supernet_train[key.strip()] = yaml.safe_load(raw)
    run_rank_correlation(config, args.out, archs=args.archs,
                         standalone_examples=args.standalone_examples,
                         supernet_examples=args.supernet_examples, finetune=args.finetune,
                         sampler=args.sampler, warmup_steps=args.warmup_steps,
                         supernet_lr=args.supernet_lr, standalone_from=args.standalone_from,
                         standalone_seeds=args.standalone_seeds,
                         finetune_continue=args.finetune_continue,
                         bootstrap=args.bootstrap, workers=args.workers, seed=args.seed,
                         supernet_seed=args.supernet_seed,
                         supernet_replicates=args.supernet_replicates,
                         supernet_train=supernet_train, progress=not args.quiet,
                         **options)
    print(f"results: {Path(args.out) / 'rankcorr.json'}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ranknas.reports.report import write_report

    print(write_report(Path(args.dir)))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ranknas.reports.export import export_front

    paths = export_front(Path(args.dir), Path(args.out), train_examples=args.train_examples,
                         device=args.device)
    for path in paths:
        print(path)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ranknas.demo import run_demo

    out, export = run_demo(Path(args.out), quiet=args.quiet)
    _print_outputs(out, None, export)
    return 0


def cmd_strategies_list(args: argparse.Namespace) -> int:
    from ranknas.strategies.registry import describe_strategies

    for name, origin, doc in describe_strategies():
        print(f"{name:<12} {origin:<24} {doc}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ranknas", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    spaces = sub.add_parser("spaces", help="list and inspect search spaces")
    spaces_sub = spaces.add_subparsers(dest="action", required=True)
    spaces_sub.add_parser("list", help="built-in spaces").set_defaults(func=cmd_spaces_list)
    show = spaces_sub.add_parser("show", help="decisions, size and one sampled architecture")
    show.add_argument("space", help="built-in name or FILE.yaml")
    show.add_argument("--seed", type=int, default=0)
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_spaces_show)

    tr = sub.add_parser("train", help="train one architecture from scratch and score it")
    tr.add_argument("--space", required=True, help="built-in name or FILE.yaml")
    tr.add_argument("--arch", default="random:0",
                    help="ARCH.json, NASRec JSON, or random:SEED (default random:0)")
    tr.add_argument("--data", default="synthetic",
                    help="synthetic | criteo:PATH | avazu:PATH | movielens:PATH")
    tr.add_argument("--rows", type=int, default=200_000, help="synthetic rows / rows to read")
    tr.add_argument("--steps", type=int, default=1000)
    tr.add_argument("--batch-size", type=int, default=1024)
    tr.add_argument("--optimizer", default="adagrad", choices=["adagrad", "adam", "sgd"])
    tr.add_argument("--lr", type=float, default=0.05)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    tr.add_argument("--threads", type=int, default=1,
                    help="CPU threads (default 1: fastest for small models on shared cores)")
    tr.add_argument("--json", action="store_true", help="print one JSON object")
    tr.add_argument("--quiet", action="store_true", help="no progress bar")
    tr.set_defaults(func=cmd_train)

    se = sub.add_parser("search", help="run the strategies of an experiment config")
    se.add_argument("config", help="experiment YAML (see examples/experiment.yaml)")
    se.add_argument("--out", required=True, help="output folder")
    se.add_argument("--resume", action="store_true", help="continue a killed search in --out")
    se.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="override a config field, e.g. --set budget.trials=10")
    se.add_argument("--quiet", action="store_true")
    se.set_defaults(func=cmd_search)

    rc = sub.add_parser("rank-corr", help="rank correlation of supernet scores vs standalone NE")
    rc.add_argument("config", help="experiment YAML (space, data, train, seed, tracking)")
    rc.add_argument("--out", required=True, help="output folder")
    rc.add_argument("--archs", type=int, default=50, help="architectures, stratified by FLOPs")
    rc.add_argument("--standalone-examples", type=int, default=None,
                    help="standalone training examples (default: the config's train budget)")
    rc.add_argument("--supernet-examples", type=int, default=200_000)
    rc.add_argument("--finetune-examples", type=int, default=None,
                    help="fine-tuning examples per architecture (default 20000)")
    rc.add_argument("--finetune", nargs="+", default=["last"], choices=["head", "last", "whole"],
                    help="fine-tuning modes scored besides none (e.g. --finetune last whole)")
    rc.add_argument("--finetune-lr", type=float, default=None,
                    help="fine-tuning learning rate (default: the config's lr)")
    rc.add_argument("--finetune-continue", action="store_true",
                    help="fine-tune from the supernet's Adagrad accumulators, not empty ones")
    rc.add_argument("--sampler", default="any-path", help="supernet path sampler")
    rc.add_argument("--warmup-steps", type=int, default=0,
                    help="full-path warm-up steps before the sampler takes over")
    rc.add_argument("--supernet-lr", type=float, default=None,
                    help="supernet learning rate (default: the config's)")
    rc.add_argument("--standalone-seeds", type=int, default=1,
                    help="seeds per standalone training; the reference NE is their mean and "
                         "two seeds' agreement is reported as the noise ceiling")
    rc.add_argument("--standalone-from", default=None, metavar="RANKCORR_JSON",
                    help="reuse the standalone NEs of an earlier run with the same settings")
    rc.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the CIs")
    rc.add_argument("--workers", type=int, default=1,
                    help="processes for the standalone trainings and the supernet scoring "
                         "(several can share one GPU); results do not depend on it")
    rc.add_argument("--seed", type=int, default=None, help="default: the config's seed")
    rc.add_argument("--supernet-replicates", type=int, default=1,
                    help="supernets trained with independent seeds; a score is the mean over "
                         "them, and the first two's agreement is reported")
    rc.add_argument("--supernet-seed", type=int, default=None,
                    help="seed the supernet and fine-tuning apart from --seed: another supernet "
                         "replicate against the same architectures and standalone NEs")
    rc.add_argument("--supernet-train", action="append", metavar="KEY=VALUE", default=[],
                    help="how the supernet trains (a SupernetTrainConfig field, value as YAML), "
                         "e.g. --supernet-train execution=segmented --supernet-train "
                         "cuda_graph=true on a GPU")
    rc.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="override a config field, e.g. --set train.examples=20000")
    rc.add_argument("--quiet", action="store_true")
    rc.set_defaults(func=cmd_rank_corr)

    rep = sub.add_parser("report", help="write the HTML report of a search folder")
    rep.add_argument("dir")
    rep.set_defaults(func=cmd_report)

    ex = sub.add_parser("export", help="retrain and export the Pareto-optimal models")
    ex.add_argument("dir", help="search output folder")
    ex.add_argument("--out", required=True, help="export folder")
    ex.add_argument("--train-examples", type=int, default=None,
                    help="from-scratch training budget (default: the search's per-trial one)")
    ex.add_argument("--device", default="cpu")
    ex.set_defaults(func=cmd_export)

    demo = sub.add_parser("demo", help="the main job: search, report and export on synthetic data")
    demo.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    demo.add_argument("--quiet", action="store_true")
    demo.set_defaults(func=cmd_demo)

    st = sub.add_parser("strategies", help="NAS strategies")
    st_sub = st.add_subparsers(dest="action", required=True)
    st_sub.add_parser("list", help="every registered strategy, plugins included"
                      ).set_defaults(func=cmd_strategies_list)

    data = sub.add_parser("data", help="datasets")
    data_sub = data.add_subparsers(dest="action", required=True)
    fetch = data_sub.add_parser("fetch", help="download a dataset into the cache")
    fetch.add_argument("name", choices=["movielens-100k"])
    fetch.set_defaults(func=cmd_data_fetch)
    return parser


def _quiet_libraries() -> None:
    """Hide messages a user can do nothing about."""
    import logging
    import warnings

    # torch's sparse Adagrad warns that invariant checks are off, which is their default.
    warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")
    for name in ("optuna", "mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    try:
        return args.func(args)
    except RanknasError as err:
        print(f"ranknas: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
