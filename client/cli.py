"""``segment``: segment images with a running server from the command line.

    segment photo.jpg other.png --classes "cat; sofa, couch; floor" --out results/
    segment photo.jpg --classes-file classes.txt --protocol grpc --url 127.0.0.1:8001 --json

Classes are separated by ';' (a comma inside one class lists its synonyms). With ``--out DIR`` each
image gets <stem>_overlay.png (colours and legend), <stem>_labels.png (pixel value = class index)
and <stem>.json (class -> pixel share, timings). ``--json`` prints every result as one JSON
document on stdout. Exit codes: 0 done, 1 other failure (e.g. writing outputs), 2 bad arguments or
classes, 3 unreadable image, 4 server down, unreachable or not ready, 5 server refused the request.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from escnet_client.classes import CLASS_SEPARATOR, parse_classes, read_classes_file
from escnet_client.cli_common import CliError, OneLineParser, add_server_arguments, run_command
from escnet_client.errors import SegmentationError, ServerUnavailable
from escnet_client.images import ImageReadError, check_image_file, load_image
from escnet_client.render import labels_image, render_overlay
from escnet_client.result import SegmentationResult
from escnet_client.sdk import SegmentationClient

PROG = "segment"
EXIT_OK = 0
EXIT_FAILED = 1  # anything else, e.g. an output file that cannot be written
EXIT_USAGE = 2  # bad arguments or class list
EXIT_IMAGE = 3  # an image that cannot be read
EXIT_UNAVAILABLE = 4  # server down, unreachable, not ready, or no answer in time
EXIT_REFUSED = 5  # the server refused the request (or failed on it)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=PROG,
        description="Open-vocabulary segmentation of images by a Triton server running ESC-Net or CAT-Seg.",
        epilog=f"Classes are separated by '{CLASS_SEPARATOR}'; a comma inside a class lists synonyms "
        '("sofa, couch" is one class). Exit codes: 1 other failure, 2 bad arguments or classes, '
        "3 unreadable image, 4 server down or unreachable, 5 server refused the request.",
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, ...)")
    parser.add_argument(
        "--classes",
        action="append",
        default=[],
        help=f"class names separated by '{CLASS_SEPARATOR}', e.g. \"cat; sofa, couch; floor\" (repeatable)",
    )
    parser.add_argument(
        "--classes-file", type=Path, help="text file with one class per line ('#' starts a comment line)"
    )
    add_server_arguments(parser)
    parser.add_argument(
        "--out", type=Path, help="write <stem>_overlay.png, <stem>_labels.png, <stem>.json here"
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    parser.add_argument(
        "--shared-memory",
        action="store_true",
        help="exchange tensors through system shared memory (same host)",
    )
    parser.add_argument("--alpha", type=float, default=0.5, help="weight of the class colours in the overlay")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(PROG, run, build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Check every argument and image first, then segment the images one after the other."""
    classes = collect_classes(args.classes, args.classes_file)
    if args.timeout <= 0 or args.wait < 0 or not 0.0 <= args.alpha <= 1.0:
        raise CliError(EXIT_USAGE, "--timeout must be > 0, --wait >= 0 and --alpha in [0, 1]")
    for path in args.images:
        try:
            check_image_file(path)
        except ImageReadError as error:
            raise CliError(EXIT_IMAGE, str(error)) from None
    if args.out is not None:
        try:
            args.out.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise CliError(EXIT_USAGE, f"cannot create output folder {args.out}: {error.strerror}") from None

    documents: list[dict[str, Any]] = []
    stems: set[str] = set()
    with SegmentationClient(
        args.url, protocol=args.protocol, timeout_s=args.timeout, use_shared_memory=args.shared_memory
    ) as client:
        try:
            if args.wait > 0:
                client.wait_until_ready(timeout_s=args.wait, model=args.model)
            else:
                client.check_ready(args.model)
        except ServerUnavailable as error:
            raise CliError(EXIT_UNAVAILABLE, error.message) from None
        for path in args.images:
            try:
                image = load_image(path)
            except ImageReadError as error:
                raise CliError(EXIT_IMAGE, str(error)) from None
            try:
                result = client.segment(image, classes, model=args.model)
            except ServerUnavailable as error:
                raise CliError(EXIT_UNAVAILABLE, error.message) from None
            except SegmentationError as error:
                raise CliError(EXIT_REFUSED, f"the server refused {path}: {error.message}") from None
            document = {"image": str(path), **result.to_dict()}
            if args.out is not None:
                stem = unique_stem(Path(path).stem, stems)
                document["outputs"] = write_outputs(args.out, stem, image, result, document, args.alpha)
            documents.append(document)
            if not args.json:
                print(summary_line(path, result), flush=True)
    if args.json:
        info = {"model": args.model, "url": client.url, "protocol": args.protocol, "classes": classes}
        json.dump({**info, "results": documents}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    return EXIT_OK


def collect_classes(strings: Sequence[str], classes_file: Path | None) -> list[str]:
    """The class list of ``--classes`` (each split at ';') then ``--classes-file``; CliError(2) if empty."""
    if not strings and classes_file is None:
        raise CliError(
            EXIT_USAGE, 'give the classes with --classes "cat; sofa, couch" or --classes-file FILE'
        )
    names: list[str] = []
    for text in strings:
        names.extend(name.strip() for name in text.split(CLASS_SEPARATOR) if name.strip())
    if classes_file is not None:
        try:
            names.extend(read_classes_file(classes_file))
        except OSError as error:
            raise CliError(EXIT_USAGE, f"cannot read classes file {classes_file}: {error.strerror}") from None
        except ValueError as error:
            raise CliError(EXIT_USAGE, str(error)) from None
    try:
        return parse_classes(names)
    except ValueError as error:
        raise CliError(EXIT_USAGE, str(error)) from None


def unique_stem(stem: str, used: set[str]) -> str:
    """``stem``, or ``stem_2``, ``stem_3``, ... when an earlier image had the same file stem."""
    candidate, n = stem, 1
    while candidate in used:
        n += 1
        candidate = f"{stem}_{n}"
    used.add(candidate)
    return candidate


def write_outputs(
    out: Path, stem: str, image: Any, result: SegmentationResult, document: dict[str, Any], alpha: float
) -> dict[str, str]:
    """<stem>_overlay.png, <stem>_labels.png and <stem>.json in ``out``; returns their paths."""
    paths = {
        "overlay": out / f"{stem}_overlay.png",
        "labels": out / f"{stem}_labels.png",
        "json": out / f"{stem}.json",
    }
    written = {name: str(path) for name, path in paths.items()}
    try:
        render_overlay(image, result, alpha=alpha).save(paths["overlay"])
        labels_image(result.labels, len(result.class_names)).save(paths["labels"])
        paths["json"].write_text(json.dumps({**document, "outputs": written}, indent=2) + "\n")
    except OSError as error:
        raise CliError(EXIT_FAILED, f"cannot write results to {out}: {error}") from None
    return written


def summary_line(path: str, result: SegmentationResult) -> str:
    """``photo.jpg: cat 52.1%; sofa, couch 30.4% (4.2 s)``: classes present, largest first."""
    present = "; ".join(f"{name} {share * 100:.1f}%" for _, name, share in result.present_classes())
    return f"{path}: {present} ({result.timings.total_s:.1f} s)"


if __name__ == "__main__":
    sys.exit(main())
