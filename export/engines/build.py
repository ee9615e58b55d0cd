"""Build the TensorRT engines and the tensorrt_plan repository: ``python -m escnet_export.engines.build``.

Run it on the machine (or inside the container) that will serve: a plan only loads on the TensorRT
version and GPU compute capability it was built with. ``--check`` only verifies existing plans.
The work is in builder.py (building) and plans.py (checking); this is their command line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from escnet.config import MODEL_CONFIGS
from escnet_export.artifacts import DEFAULT_ONNX_DIR, DEFAULT_REPOSITORY, DEFAULT_TIMING_CACHE
from escnet_export.contract import AXIS_PROFILES, DEFAULT_VARIANTS
from escnet_export.engines.builder import (
    PRECISIONS,
    BuildOptions,
    EngineBuildError,
    build_engines,
    parse_axis,
)
from escnet_export.engines.plans import TensorRTUnavailable, check_repository


def parser() -> argparse.ArgumentParser:
    axes = " ".join(f"{k}={v.minimum},{v.optimum},{v.maximum}" for k, v in AXIS_PROFILES.items())
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    cli.add_argument("--onnx-dir", type=Path, default=DEFAULT_ONNX_DIR, help="run_export's --out")
    cli.add_argument("--ensembles", nargs="*", choices=list(DEFAULT_VARIANTS), default=list(DEFAULT_VARIANTS))
    cli.add_argument("--escnet-variant", choices=[v for v in MODEL_CONFIGS if v.startswith("escnet")])
    cli.add_argument("--catseg-variant", choices=[v for v in MODEL_CONFIGS if v.startswith("catseg")])
    cli.add_argument("--graphs", nargs="*", help="only these graphs (default: all)")
    cli.add_argument("--precision", choices=PRECISIONS, default="fp16")
    cli.add_argument(
        "--axis",
        action="append",
        default=[],
        metavar="NAME=MIN,OPT,MAX",
        help=f"optimisation profile of a dynamic axis (repeatable; contract defaults: {axes})",
    )
    cli.add_argument("--timing-cache", type=Path, default=DEFAULT_TIMING_CACHE)
    cli.add_argument("--workspace-gib", type=int, default=8)
    cli.add_argument("--optimization-level", type=int, default=3, choices=range(6))
    cli.add_argument("--force", action="store_true", help="rebuild plans that pass check_plan")
    cli.add_argument("--check", action="store_true", help="only check existing plans; exit 1 on a refusal")
    cli.add_argument("--no-configs", action="store_true", help="do not (re)write the tensorrt_plan configs")
    cli.add_argument("--verbose", action="store_true", help="TensorRT's verbose log")
    return cli


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    chosen = {"escnet": args.escnet_variant, "catseg": args.catseg_variant}
    variants = {e: chosen[e] or DEFAULT_VARIANTS[e] for e in args.ensembles}
    if args.check:
        problems = check_repository(args.repository, onnx_dir=args.onnx_dir, variants=variants)
        for problem in problems:
            print(problem, file=sys.stderr)
        print(f"{len(problems)} plan(s) refused" if problems else "every plan matches this machine")
        sys.exit(1 if problems else 0)
    axes = dict(AXIS_PROFILES)
    for text in args.axis:
        name, profile = parse_axis(text)
        axes[name] = profile
    options = BuildOptions(
        precision=args.precision,
        axes=axes,
        workspace_gib=args.workspace_gib,
        optimization_level=args.optimization_level,
        timing_cache=args.timing_cache,
        verbose=args.verbose,
    )
    try:
        built = build_engines(
            args.repository,
            onnx_dir=args.onnx_dir,
            variants=variants,
            options=options,
            graphs=args.graphs,
            force=args.force,
            write_configs=not args.no_configs,
        )
    except (EngineBuildError, TensorRTUnavailable) as error:
        sys.exit(f"build_engines: {error}")
    for name, metadata in built.items():
        print(
            f"{name}: TensorRT {metadata.tensorrt_version} on {metadata.gpu_name} "
            f"(sm {metadata.compute_capability}), {metadata.precision}, {metadata.build_seconds} s"
        )


if __name__ == "__main__":
    main()
