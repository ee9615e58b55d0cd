"""``escnet-evaluate``: mIoU of a deployment (or of the PyTorch reference) on a local dataset.

    escnet-evaluate ADEChallengeData2016 --classes-file ade150.txt --url 127.0.0.1:8000 --out eval/
    escnet-evaluate VOC2012 --classes-file voc21.json --backend reference --variant escnet_vitb16_384
    escnet-evaluate data/ --classes-file classes.txt --backend both --out eval/   # served vs reference

Layouts, label conventions and the class list: escnet_client.datasets; metric: escnet_client.evaluation;
outputs: escnet_client.eval_report. Every run starts from nothing (no resume); an output folder that
already holds a report is refused without --overwrite. Exit codes: 0 done, 1 an image failed (without
--skip-errors) or outputs could not be written, 2 bad arguments, dataset or class list, 4 server down,
unreachable or not ready.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from escnet_client.cli_common import CliError, OneLineParser, add_server_arguments, run_command
from escnet_client.datasets import LAYOUTS, Dataset, DatasetError, open_dataset, read_class_list
from escnet_client.errors import ServerUnavailable
from escnet_client.eval_backends import Backend, ReferenceBackend, ServedBackend
from escnet_client.eval_report import output_paths, report, write_report
from escnet_client.eval_runner import EvaluationAborted, EvaluationRun, evaluate
from escnet_export.contract import DEFAULT_VARIANTS

PROG = "escnet-evaluate"
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 4
BACKENDS = ("served", "reference", "both")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description="mIoU of the served ensemble or the PyTorch reference.")
    parser.add_argument("dataset", type=Path, help="dataset folder (layouts: see --layout)")
    parser.add_argument("--classes-file", type=Path, required=True, help="JSON list or one name a line")
    parser.add_argument("--out", type=Path, required=True, help="folder for <backend>.json / .csv / .png")
    parser.add_argument("--layout", choices=("auto", *LAYOUTS), default="auto")
    parser.add_argument("--split", help="default: validation (ade20k), val (others)")
    parser.add_argument(
        "--reduce-zero-label",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="label 0 -> 255 (ignored), k -> k-1; default: the layout's convention",
    )
    parser.add_argument("--backend", choices=BACKENDS, default="served")
    served = parser.add_argument_group("served backend")
    add_server_arguments(served)
    reference = parser.add_argument_group("reference backend (PyTorch, in this process)")
    reference.add_argument("--variant", help="default: the variant the ensemble serves")
    reference.add_argument("--checkpoint", help="whole-model checkpoint (official CAT-Seg or ours)")
    reference.add_argument("--clip-checkpoint", help="CLIP towers (when no --checkpoint)")
    reference.add_argument("--sam-checkpoint", help="SAM blocks (when no --checkpoint)")
    reference.add_argument("--device", default="cpu", help="torch device of the reference, e.g. cuda")
    parser.add_argument("--workers", type=int, default=2, help="images in flight at once")
    parser.add_argument(
        "--short-side",
        type=int,
        metavar="PX",
        help="resize images to this short side before sending (not needed for CAT-Seg's protocol: "
        "the ensemble and the reference resize the shorter side to 640 themselves)",
    )
    parser.add_argument("--limit", type=int, help="score only the first N images (in name order)")
    parser.add_argument("--skip-errors", action="store_true", help="leave failed images out, report them")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(PROG, run, build_parser().parse_args(argv), explain=_exit_code)


def _exit_code(error: Exception) -> CliError | None:
    """The exit code and reason of a failure of the evaluation (None: not one of its own)."""
    if isinstance(error, DatasetError):
        return CliError(EXIT_USAGE, str(error))
    if isinstance(error, ServerUnavailable):
        return CliError(EXIT_UNAVAILABLE, error.message)
    if isinstance(error, EvaluationAborted):
        unavailable = isinstance(error.__cause__, ServerUnavailable)
        return CliError(EXIT_UNAVAILABLE if unavailable else EXIT_FAILED, f"stopped: {error}")
    if isinstance(error, OSError):
        return CliError(EXIT_FAILED, f"cannot write the report: {error}")
    return None


def run(args: argparse.Namespace) -> int:
    """Check arguments, dataset and outputs first; then segment, score and write the reports."""
    if args.workers < 1 or args.timeout <= 0 or (args.short_side is not None and args.short_side < 1):
        raise CliError(EXIT_USAGE, "--workers and --short-side must be >= 1, --timeout > 0")
    classes = read_class_list(args.classes_file)
    dataset = open_dataset(
        args.dataset, args.layout, split=args.split, reduce_zero_label=args.reduce_zero_label
    )
    names = ["served", "reference"] if args.backend == "both" else [args.backend]
    existing = [p for n in names for p in output_paths(args.out, n) if p.exists()]
    if existing and not args.overwrite:
        raise CliError(EXIT_USAGE, f"{existing[0]} exists: this run does not resume; use --overwrite")
    args.out.mkdir(parents=True, exist_ok=True)
    print(describe(dataset, classes, args.limit), flush=True)
    backends = make_backends(args, names)
    try:
        result = evaluate(
            dataset,
            classes,
            backends,
            workers=args.workers,
            skip_errors=args.skip_errors,
            short_side=args.short_side,
            limit=args.limit,
            progress=not args.no_progress,
        )
    finally:
        for backend in backends:
            backend.close()
    settings = {
        "dataset": {
            "root": str(dataset.root),
            "layout": dataset.layout,
            "split": dataset.split,
            "reduce_zero_label": dataset.reduce_zero_label,
        },
        "classes_file": str(args.classes_file),
        "short_side": args.short_side,
        "model": args.model,
        "variant": args.variant or DEFAULT_VARIANTS[args.model],
        "checkpoint": args.checkpoint,
    }
    for name in names:
        document = report(result, name, classes, settings)
        write_report(args.out, document, classes, result.scores(name))
    print(summary(result, names), flush=True)
    if len(names) == 2:
        comparison = {
            "agreement": result.agreement,
            "agreeing_pixels": result.agreeing_pixels,
            "compared_pixels": result.compared_pixels,
            "miou": {name: _miou(result, name) for name in names},
            "miou_difference": _miou(result, names[0]) - _miou(result, names[1]),
        }
        (args.out / "comparison.json").write_text(json.dumps(comparison, indent=1) + "\n")
    print(f"reports written to {args.out}", flush=True)
    return EXIT_OK


def make_backends(args: argparse.Namespace, names: list[str]) -> list[Backend]:
    """The backends named, served first (its readiness is checked before any model is built)."""
    backends: list[Backend] = []
    if "served" in names:
        served = ServedBackend(args.url, model=args.model, protocol=args.protocol, timeout_s=args.timeout)
        served.wait_until_ready(args.wait)
        backends.append(served)
    if "reference" in names:
        backends.append(
            ReferenceBackend.from_variant(
                args.variant or DEFAULT_VARIANTS[args.model],
                checkpoint=args.checkpoint,
                clip_checkpoint=args.clip_checkpoint,
                sam_checkpoint=args.sam_checkpoint,
                device=args.device,
            )
        )
    return backends


def describe(dataset: Dataset, classes: list[str], limit: int | None) -> str:
    count = len(dataset) if limit is None else min(limit, len(dataset))
    shift = "label 0 ignored, k -> k-1" if dataset.reduce_zero_label else "labels as stored"
    return (
        f"{dataset.root}: {dataset.layout}, split {dataset.split!r}, {count} of {len(dataset)} images, "
        f"{len(classes)} classes, {shift}, 255 ignored"
    )


def _miou(run: EvaluationRun, name: str) -> float:
    return run.scores(name).miou


def summary(run: EvaluationRun, names: list[str]) -> str:
    """Images scored and failed, then one line per backend; with two, the difference and agreement."""
    lines = [
        f"scored {len(run.scored)} of {run.total} images, {len(run.failures)} failed, "
        f"{run.seconds:.1f} s; {run.ignored_pixels} ground-truth pixels ignored"
    ]
    lines += [f"  failed {f.name}: {f.reason}" for f in run.failures]
    for name in names:
        result = run.scores(name)
        lines.append(
            f"  {name:9s}  mIoU {100 * result.miou:6.2f}  pixel accuracy {100 * result.pixel_accuracy:6.2f}"
            f"  ({result.scored_classes} classes scored)"
        )
    if len(names) == 2 and run.agreement is not None:
        difference = _miou(run, names[0]) - _miou(run, names[1])
        lines.append(
            f"  {names[0]} - {names[1]}: mIoU {100 * difference:+.3f} points; "
            f"labels agree on {100 * run.agreement:.3f}% of pixels"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
