"""The ``lmrec`` command line. Each subcommand is a thin shell over a library function."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def _cmd_data_stats(args: argparse.Namespace) -> int:
    from lmrec.data.registry import load_dataset

    ds = load_dataset(args.dataset, lenient=args.lenient)
    stats = ds.stats()
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    print(f"dataset       {stats['dataset']}")
    print(f"users         {stats['users']:,}")
    print(f"items         {stats['items']:,}")
    print(f"interactions  {stats['interactions']:,}")
    print(f"density       {stats['density']:.4%}")
    total = max(stats["interactions"], 1)
    print("rating histogram:")
    for rating, count in stats["rating_histogram"].items():
        bar = "#" * max(1, round(50 * count / total))
        print(f"  {rating:>4g}  {count:>8,}  {bar}")
    return 0


def _cmd_data_validate(args: argparse.Namespace) -> int:
    from lmrec.config.base import load_spec
    from lmrec.config.train import TrainSpec
    from lmrec.data.check import check_training_data
    from lmrec.training.data import load_spec_dataset
    from lmrec.training.ray_train import parse_overrides

    # a bad spec is a SpecError, bad data a DataError naming file, line and column: main() reports both (exit 2)
    spec = load_spec(TrainSpec, args.spec, parse_overrides(args.set or []))
    report = check_training_data(load_spec_dataset(spec), spec.data, rating_task=spec.tasks.rating.weight > 0)
    print("\n".join(report.lines()))
    print(f"OK {args.spec}: the data loads and splits as `lmrec train` would read it")
    return 0


def _cmd_baselines(args: argparse.Namespace) -> int:
    from lmrec.data.registry import load_dataset
    from lmrec.evaluation import format_metrics_table
    from lmrec.experiments import baseline_entries, evaluate_entries, load_split

    ds = load_dataset(args.dataset)
    split = load_split(ds, args.split, seed=args.seed)
    entries = baseline_entries(args.models.split(",") if args.models else None)
    records = evaluate_entries(ds, split, entries, ks=tuple(args.k), split_name=args.split)
    print(format_metrics_table([{"model": r["model"], **r["metrics"], "fit_s": r["fit_seconds"]} for r in records]))
    out = Path(args.out or f"runs/baselines-{args.dataset}-{args.split}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(records, indent=2))
    print(f"wrote {out}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from lmrec.demo import run_demo

    return run_demo(Path(args.out), quick=args.quick)


def _cmd_data_canonical(args: argparse.Namespace) -> int:
    from lmrec.data.canonical import write_ml100k_splits
    from lmrec.data.registry import load_dataset

    paths = write_ml100k_splits(load_dataset("ml-100k").interactions, Path(args.out))
    for p in paths:
        print(p)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from lmrec.config.base import SpecError
    from lmrec.training.ray_train import main_train, parse_overrides

    try:
        overrides = parse_overrides(args.set or [])
    except SpecError as e:
        print(f"lmrec train: error: {e}", file=sys.stderr)
        return 2
    if args.from_artifact:
        from lmrec.pipelines.incremental import main_incremental

        return main_incremental(args.spec, overrides, args.from_artifact)
    return main_train(args.spec, overrides, resume=not args.no_resume)


def _cmd_tune(args: argparse.Namespace) -> int:
    from lmrec.training.ray_train import parse_overrides
    from lmrec.tuning.study import main_tune

    return main_tune(args.spec, parse_overrides(args.set or []), resume=args.resume)  # SpecError: main() reports


def _cmd_ensemble(args: argparse.Namespace) -> int:
    from lmrec.training.ensemble_job import main_ensemble
    from lmrec.training.ray_train import parse_overrides

    return main_ensemble(args.spec, parse_overrides(args.set or []))  # SpecError: main() reports


def _cmd_recommend_batch(args: argparse.Namespace) -> int:
    from lmrec.pipelines.recommend_batch import main_recommend_batch
    from lmrec.training.ray_train import parse_overrides

    return main_recommend_batch(args.spec, parse_overrides(args.set or []))  # SpecError: main() reports


def _cmd_serve(args: argparse.Namespace) -> int:
    from lmrec.serving.cli import main_serve

    return main_serve(args.config, address=args.address, detach=args.detach, artifacts=args.artifact,
                      weights=args.weight, write_config=args.write_config, port=args.port,
                      python_proxy=args.python_proxy)


def _cmd_specs_list(args: argparse.Namespace) -> int:
    import shutil

    from lmrec.config.shipped import shipped_specs

    specs = shipped_specs()
    name_w, kind_w = max(len(s.name) for s in specs), max(len(s.kind) for s in specs)
    room = max(20, shutil.get_terminal_size((120, 24)).columns - name_w - kind_w - 3)
    print(f"{'NAME':<{name_w}}  {'KIND':<{kind_w}}  DESCRIPTION")
    for s in specs:
        text = s.description if len(s.description) <= room else s.description[: room - 1] + "…"
        print(f"{s.name:<{name_w}}  {s.kind:<{kind_w}}  {text}")
    return 0


def _cmd_specs_copy(args: argparse.Namespace) -> int:
    from lmrec.config.shipped import copy_spec

    path, missing = copy_spec(args.name, args.dest, force=args.force)  # SpecError: main() reports
    print(f"wrote {path}")
    for ref in missing:
        print(f"note: {ref.note()}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from lmrec.config.base import SpecError
    from lmrec.config.shipped import locate, missing_references, validate_spec
    from lmrec.training.ray_train import parse_overrides

    overrides = parse_overrides(args.set or [])
    if args.all:
        return _validate_all(overrides)
    if args.spec is None:
        print("lmrec validate: error: give a SPEC or --all", file=sys.stderr)
        return 2
    path, shipped = locate(args.spec)  # no such file or shipped name: main() reports it (exit 2)
    try:
        kind = validate_spec(path, kind=args.kind, overrides=overrides)
    except SpecError as e:
        print(f"lmrec validate: error: {e}", file=sys.stderr)
        return 1
    print(f"OK {args.spec} ({kind})")
    if shipped is None:  # the shipped tree names only shipped files; a user's copy may miss them
        for ref in missing_references(path, kind):
            print(f"note: {ref.note()}")
    return 0


def _validate_all(overrides: dict) -> int:
    """Every shipped spec through its own loader: one line each, exit 1 when any fails."""
    from lmrec.config.base import SpecError
    from lmrec.config.shipped import shipped_specs, validate_spec

    failed = 0
    for s in shipped_specs():
        try:
            kind = validate_spec(s.path, overrides=overrides)
            print(f"OK {s.name} ({kind})")
        except SpecError as e:
            failed += 1
            print(f"FAILED {s.name}: " + str(e).replace("\n", "\n    "))
    if failed:
        print(f"lmrec validate: {failed} shipped spec(s) failed", file=sys.stderr)
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    from lmrec import __version__
    from lmrec.config.shipped import KINDS
    from lmrec.experiments import SPLIT_NAMES

    p = argparse.ArgumentParser(prog="lmrec", description=__doc__)
    p.add_argument("--version", action="version", version=f"lmrec {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="dataset utilities").add_subparsers(dest="data_command", required=True)
    st = data.add_parser("stats", help="users, items, ratings, density, rating histogram")
    st.add_argument("--dataset", required=True)
    st.add_argument("--json", action="store_true", help="print JSON")
    st.add_argument("--lenient", action="store_true", help="drop malformed rows (counted and reported)")
    st.set_defaults(func=_cmd_data_stats)
    dv = data.add_parser("validate", help="read a job spec's data as `lmrec train` would: counts, split, problems "
                         "(exit 2 naming file, line and column on bad input)")
    dv.add_argument("spec", help="a job spec (data.source: your files, or data.dataset)")
    dv.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a dotted spec key (repeatable)")
    dv.set_defaults(func=_cmd_data_validate)
    cs = data.add_parser("canonical-splits", help="write ML-100K u1..u5/ua/ub split files generated from u.data")
    cs.add_argument("--out", required=True)
    cs.set_defaults(func=_cmd_data_canonical)

    bl = sub.add_parser("baselines", help="train and evaluate the classic baselines on one split")
    bl.add_argument("--dataset", default="ml-100k")
    bl.add_argument("--split", default="u1", choices=SPLIT_NAMES)
    bl.add_argument("--models", help="comma-separated baseline names (default: all)")
    bl.add_argument("--k", type=int, nargs="+", default=[10], help="cut-offs for ranking metrics")
    bl.add_argument("--seed", type=int, default=42)
    bl.add_argument("--out", help="metrics JSON path (default runs/baselines-<dataset>-<split>.json)")
    bl.set_defaults(func=_cmd_baselines)

    tr = sub.add_parser("train", help="train a job spec on Ray Train (local Ray unless RAY_ADDRESS / a cluster)")
    tr.add_argument("spec", help="jobs/<name>.yaml")
    tr.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a dotted spec key (repeatable)")
    tr.add_argument("--no-resume", action="store_true", help="start a fresh, timestamped run even if the run has "
                    "checkpoints (needed when the spec's model or data changed: a resume refuses another identity)")
    tr.add_argument("--from-artifact", metavar="URI", help="fine-tune this deployed artifact (or artifact store) on "
                    "the interactions newer than it; promote the result only if it is not worse (spec.incremental)")
    tr.set_defaults(func=_cmd_train)

    tu = sub.add_parser("tune", help="hyperparameter search over a job spec on Ray Tune (ASHA + Optuna)")
    tu.add_argument("spec", help="tune/<name>.yaml")
    tu.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a dotted tune-spec key (repeatable)")
    tu.add_argument("--resume", action="store_true", help="restore the interrupted study (Tuner.restore)")
    tu.set_defaults(func=_cmd_tune)

    en = sub.add_parser("ensemble", help="fit a fused ensemble's weights on validation and write the artifact Serve "
                        "loads (ensemble_artifact)")
    en.add_argument("spec", help="jobs/ensemble.yaml")
    en.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a dotted spec key (repeatable)")
    en.set_defaults(func=_cmd_ensemble)

    rb = sub.add_parser("recommend-batch", help="offline batch inference: the top k items of every user of an "
                        "artifact (any kind Serve loads) to Parquet, on Ray Data")
    rb.add_argument("spec", help="jobs/recommend-batch.yaml")
    rb.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a dotted spec key (repeatable)")
    rb.set_defaults(func=_cmd_recommend_batch)

    sv = sub.add_parser("serve", help="run a Serve config locally (on a cluster: serve deploy <file>)")
    sv.add_argument("config", nargs="?", help="serve/<app>.yaml (or give --artifact instead)")
    sv.add_argument("--artifact", action="append", metavar="DIR", help="serve this artifact (repeatable; its member "
                    "is read from its manifest: two-tower, MF, EASE, item-kNN or an ensemble)")
    sv.add_argument("--weight", action="append", metavar="NAME=W", help="fusion weight of a member "
                    "(two_tower, mf, ease, item_knn; default equal weights)")
    sv.add_argument("--write-config", metavar="FILE", help="write the Serve config of the --artifact set and exit")
    sv.add_argument("--port", type=int, default=None, help="HTTP port (default: the config's, 8000)")
    sv.add_argument("--address", default=None, help="join a running Ray cluster (e.g. auto)")
    sv.add_argument("--detach", action="store_true", help="return once running (needs an outside Ray cluster)")
    sv.add_argument("--python-proxy", action="store_true", help="when lmrec starts Ray itself: Serve's Python proxy "
                    "instead of its high-throughput mode (HAProxy in front of the ingress replicas)")
    sv.set_defaults(func=_cmd_serve)

    sp = sub.add_parser("specs", help="the job specs, tune specs, Serve configs and DeepSpeed JSONs shipped with "
                        "lmrec").add_subparsers(dest="specs_command", required=True)
    ls = sp.add_parser("list", help="name, the command that runs it, what it is")
    ls.set_defaults(func=_cmd_specs_list)
    cp = sp.add_parser("copy", help="write a shipped spec to a file to edit and run")
    cp.add_argument("name", help="a name from `lmrec specs list` (e.g. strategies/lora)")
    cp.add_argument("dest", help="file to write, or a folder to write it in")
    cp.add_argument("--force", action="store_true", help="overwrite DEST if it exists")
    cp.set_defaults(func=_cmd_specs_copy)

    va = sub.add_parser("validate", help="load a spec as its command would and print OK or what is wrong "
                        "(exit 1); nothing is trained")
    va.add_argument("spec", nargs="?", help="a spec file or a shipped name (lmrec specs list)")
    va.add_argument("--all", action="store_true", help="validate every shipped spec instead")
    va.add_argument("--kind", choices=KINDS,
                    help="check it as this (default: the command on its first line, else its keys)")
    va.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a dotted spec key (repeatable)")
    va.set_defaults(func=_cmd_validate)

    dm = sub.add_parser("demo", help="the main job on the embedded default (local Ray, default encoder, MovieLens)")
    dm.add_argument("--out", default="demo-report", help="report folder")
    dm.add_argument("--quick", action="store_true", help="smaller settings (used by the tests)")
    dm.set_defaults(func=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    from lmrec.config.base import SpecError
    from lmrec.data.schema import DataError

    try:
        return int(args.func(args) or 0)
    except (DataError, SpecError) as e:
        print(f"lmrec: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
