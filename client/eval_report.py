"""The outputs of ``escnet-evaluate``: a JSON report, a per-class CSV and a PNG bar chart of IoU.

Per backend ``<name>`` (``served`` or ``reference``), in the output folder:

* ``<name>.json``: mIoU, pixel accuracy, per-class IoU and pixel counts, the confusion matrix
  [K, K] (rows = ground truth), the images scored and failed (with reasons), the dataset and
  settings. A class absent from ground truth and prediction has ``"iou": null``.
* ``<name>_per_class.csv``: index, name, iou (empty when absent), gt_pixels, pred_pixels.
* ``<name>_iou.png``: one horizontal bar per class (IoU in percent; absent classes greyed "n/a").

The chart is drawn with PIL (matplotlib is not a dependency).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from escnet_client.eval_runner import EvaluationRun
from escnet_client.evaluation import Scores

ROW_PX = 16  # height of one bar row in the chart
NAME_PX = 220  # width of the class-name column
BAR_PX = 400  # width of a bar at IoU = 100 %


def output_paths(out: Path, backend: str) -> list[Path]:
    """The files one backend's report writes."""
    return [out / f"{backend}.json", out / f"{backend}_per_class.csv", out / f"{backend}_iou.png"]


def _number(value: float) -> float | None:
    return None if math.isnan(value) else value


def report(run: EvaluationRun, backend: str, classes: list[str], settings: dict[str, Any]) -> dict[str, Any]:
    """The JSON-ready report of ``backend`` in ``run``."""
    result = run.scores(backend)
    return {
        "backend": backend,
        **settings,
        "images": {"total": run.total, "scored": len(run.scored), "failed": len(run.failures)},
        "failures": [{"image": f.name, "reason": f.reason} for f in run.failures],
        "miou": _number(result.miou),
        "pixel_accuracy": _number(result.pixel_accuracy),
        "classes_scored": result.scored_classes,
        "num_classes": len(classes),
        "pixels": {"counted": int(run.confusions[backend].sum()), "ignored": run.ignored_pixels},
        "seconds": run.seconds,
        "per_class": [
            {
                "index": index,
                "name": name,
                "iou": _number(float(result.iou[index])),
                "gt_pixels": int(result.gt_pixels[index]),
                "pred_pixels": int(result.pred_pixels[index]),
            }
            for index, name in enumerate(classes)
        ],
        "confusion": run.confusions[backend].tolist(),
        "scored_images": list(run.scored),
    }


def write_report(out: Path, document: dict[str, Any], classes: list[str], scores: Scores) -> list[Path]:
    """Write the JSON, CSV and PNG of one backend into ``out``; returns their paths."""
    json_path, csv_path, png_path = output_paths(out, document["backend"])
    json_path.write_text(json.dumps(document, indent=1) + "\n")
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", "name", "iou", "gt_pixels", "pred_pixels"])
        for row in document["per_class"]:
            iou = "" if row["iou"] is None else f"{row['iou']:.6f}"
            writer.writerow([row["index"], row["name"], iou, row["gt_pixels"], row["pred_pixels"]])
    title = f"{document['backend']}: mIoU {100 * scores.miou:.2f} over {scores.scored_classes} classes"
    iou_chart(classes, scores, title).save(png_path)
    return [json_path, csv_path, png_path]


def iou_chart(classes: list[str], scores: Scores, title: str) -> Image.Image:
    """An RGB bar chart: one row per class, bar length = IoU, the value written after the bar."""
    font = ImageFont.load_default()
    width = NAME_PX + BAR_PX + 70
    height = ROW_PX * (len(classes) + 2)
    chart = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(chart)
    draw.text((4, 2), title, fill="black", font=font)
    for index, name in enumerate(classes):
        top = ROW_PX * (index + 1) + 2
        label = name if len(name) <= 34 else name[:31] + "..."
        draw.text((4, top), label, fill="black", font=font)
        iou = float(scores.iou[index])
        if math.isnan(iou):
            draw.text((NAME_PX, top), "n/a", fill="grey", font=font)
            continue
        right = NAME_PX + round(BAR_PX * iou)
        draw.rectangle((NAME_PX, top + 2, max(right, NAME_PX + 1), top + ROW_PX - 3), fill=(70, 120, 190))
        draw.text((right + 4, top), f"{100 * iou:.1f}", fill="black", font=font)
    axis = ROW_PX * (len(classes) + 1) + 2
    draw.line((NAME_PX, ROW_PX, NAME_PX, axis), fill="black")
    draw.line((NAME_PX + BAR_PX, ROW_PX, NAME_PX + BAR_PX, axis), fill=(200, 200, 200))  # IoU = 100 %
    draw.text((NAME_PX + BAR_PX - 30, axis), "100 %", fill="grey", font=font)
    return chart
