"""Local segmentation datasets on disk: which image goes with which label file, and how labels read.

Layouts (``root`` is the folder given on the command line):

=================  ==========================================================================  =====
layout             files                                                                       zero
=================  ==========================================================================  =====
``ade20k``         ``images/<split>/*.jpg`` + ``annotations/<split>/<stem>.png``                 shift
                   (ADEChallengeData2016; split ``validation``), or, when ``annotations/`` is
                   absent, ``annotations_detectron2/<split>/<stem>.png`` (detectron2's already
                   shifted copy)                                                               keep
``pascal-context`` ``JPEGImages/<stem>.jpg`` + ``annotations_detectron2/pc59_<split>/<stem>.png``   keep
                   (CAT-Seg's PASCAL-Context-59 preparation: 0..58, 255 ignore), or
                   ``SegmentationClassContext/<stem>.png`` listed by
                   ``ImageSets/SegmentationContext/<split>.txt`` (mmsegmentation's 0 = background) shift
``voc``            ``JPEGImages/<stem>.jpg`` + ``SegmentationClass/<stem>.png`` listed by           keep
                   ``ImageSets/Segmentation/<split>.txt`` (VOC2012; 0 = background, 255 = border)
``generic``        ``images/<stem>.<ext>`` + ``labels/<stem>.png``, every image                      keep
=================  ==========================================================================  =====

Split: ``validation`` for ade20k, ``val`` otherwise. Labels are single-channel PNGs (8-bit grey,
8-bit palette: the palette index is the label, or 16-bit grey); 255 is "ignore".

"shift" is the reduce-zero-label convention: label 0 ("other" / background, unscored) becomes 255
and every other label k becomes k - 1; 255 stays 255. ADE20K-150's annotations (0 = other,
1..150 = classes) become 0..149. VOC keeps 0 = background as class 0 (21 classes, VOC-21); with
the shift forced on it becomes CAT-Seg's VOC-20 (background ignored). Any layout's default can be
overridden (``reduce_zero_label=True / False``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from escnet_client.evaluation import IGNORE_INDEX

LAYOUTS = ("ade20k", "pascal-context", "voc", "generic")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
LABEL_MODES = ("L", "P", "I;16", "I;16L", "I;16B", "I")  # single-channel PIL modes


class DatasetError(ValueError):
    """A dataset folder that does not match the layout, or a label file that cannot be used."""


@dataclass(frozen=True)
class Sample:
    """One image and its label file; ``name`` is the file stem (unique in a dataset)."""

    name: str
    image: Path
    label: Path


@dataclass(frozen=True)
class Dataset:
    """The samples of one split, in name order, and how their labels are read."""

    root: Path
    layout: str
    split: str
    samples: list[Sample]
    reduce_zero_label: bool

    def __len__(self) -> int:
        return len(self.samples)

    def read_label(self, sample: Sample) -> np.ndarray:
        """The ground truth [H, W] int64 of ``sample`` (shifted when ``reduce_zero_label``)."""
        return read_label(sample.label, reduce_zero_label=self.reduce_zero_label)


def read_label(path: str | os.PathLike[str], *, reduce_zero_label: bool = False) -> np.ndarray:
    """A single-channel label image -> [H, W] int64; DatasetError for a colour image or a bad file."""
    try:
        with Image.open(path) as label:
            if label.mode not in LABEL_MODES:
                raise DatasetError(
                    f"label {os.fspath(path)} has PIL mode {label.mode}; labels are single-channel "
                    "(grey, palette or 16-bit grey) with one class index per pixel"
                )
            array = np.asarray(label).astype(np.int64)
    except OSError as error:
        raise DatasetError(f"label {os.fspath(path)} cannot be read: {error}") from None
    if reduce_zero_label:
        array = np.where(array == 0, IGNORE_INDEX + 1, array) - 1  # 0 -> 255, k -> k - 1
        array[array == IGNORE_INDEX - 1] = IGNORE_INDEX  # 255 stays 255
    return array


def default_split(layout: str) -> str:
    return "validation" if layout == "ade20k" else "val"


def detect_layout(root: Path) -> str:
    """The layout of ``root`` from its folders; DatasetError naming what was looked for."""
    if (root / "images").is_dir() and (root / "labels").is_dir():
        return "generic"
    annotations = ("annotations", "annotations_detectron2")
    if (root / "images").is_dir() and any((root / name).is_dir() for name in annotations):
        return "ade20k"
    if (root / "JPEGImages").is_dir():
        if (root / "SegmentationClassContext").is_dir() or any(root.glob("annotations_detectron2/pc59_*")):
            return "pascal-context"
        if (root / "SegmentationClass").is_dir():
            return "voc"
    raise DatasetError(
        f"{root} matches no known layout: expected images/ + labels/ (generic), images/ + annotations/ "
        "(ade20k), JPEGImages/ + annotations_detectron2/pc59_<split>/ or SegmentationClassContext/ "
        "(pascal-context), JPEGImages/ + SegmentationClass/ (voc)"
    )


def open_dataset(
    root: str | os.PathLike[str],
    layout: str = "auto",
    *,
    split: str | None = None,
    reduce_zero_label: bool | None = None,
) -> Dataset:
    """Find every (image, label) pair of ``root`` in ``layout`` ("auto" detects it).

    Raises DatasetError for a missing folder or split list, an empty split, a sample whose image or
    label file is missing (the first five named), or two images with one stem.
    """
    folder = Path(root)
    if not folder.is_dir():
        raise DatasetError(f"dataset folder {folder} does not exist")
    chosen = detect_layout(folder) if layout == "auto" else layout
    if chosen not in LAYOUTS:
        raise DatasetError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)} or auto")
    part = split or default_split(chosen)
    pairs, shift = _PAIRS[chosen](folder, part)
    if not pairs:
        raise DatasetError(f"{folder} ({chosen}, split {part!r}) holds no image")
    for what, index in (("image", 0), ("label", 1)):
        missing = [str(pair[index].relative_to(folder)) for pair in pairs if not pair[index].is_file()]
        if missing:
            raise DatasetError(
                f"{len(missing)} of {len(pairs)} samples of {folder} ({chosen}) have no {what} file: "
                f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
            )
    samples = sorted((Sample(image.stem, image, label) for image, label in pairs), key=lambda s: s.name)
    if len({sample.name for sample in samples}) != len(samples):
        raise DatasetError(f"{folder}: two images share a file stem, so they would share one label file")
    return Dataset(
        root=folder,
        layout=chosen,
        split=part,
        samples=samples,
        reduce_zero_label=shift if reduce_zero_label is None else reduce_zero_label,
    )


# -- one function per layout: (root, split) -> ([(image, label)], layout's reduce_zero_label) ---------------

Pairs = list[tuple[Path, Path]]


def _images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DatasetError(f"image folder {folder} does not exist")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _listed(root: Path, list_file: Path, label_dir: Path) -> Pairs:
    """Stems from a split list -> (JPEGImages/<stem>.jpg, label_dir/<stem>.png)."""
    if not list_file.is_file():
        raise DatasetError(f"split list {list_file} does not exist")
    stems = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
    return [(root / "JPEGImages" / f"{stem}.jpg", label_dir / f"{stem}.png") for stem in stems]


def _ade20k(root: Path, split: str) -> tuple[Pairs, bool]:
    raw = (root / "annotations").is_dir()  # 0 = other; detectron2's annotations_detectron2/ is shifted
    labels = root / ("annotations" if raw else "annotations_detectron2") / split
    images = _images_in(root / "images" / split)
    return [(image, labels / f"{image.stem}.png") for image in images], raw


def _pascal_context(root: Path, split: str) -> tuple[Pairs, bool]:
    prepared = root / "annotations_detectron2" / f"pc59_{split}"
    if prepared.is_dir():
        labels = sorted(p for p in prepared.iterdir() if p.suffix == ".png")
        return [(root / "JPEGImages" / f"{label.stem}.jpg", label) for label in labels], False
    list_file = root / "ImageSets" / "SegmentationContext" / f"{split}.txt"
    return _listed(root, list_file, root / "SegmentationClassContext"), True


def _voc(root: Path, split: str) -> tuple[Pairs, bool]:
    list_file = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    return _listed(root, list_file, root / "SegmentationClass"), False


def _generic(root: Path, split: str) -> tuple[Pairs, bool]:
    del split  # one folder of images
    return [(image, root / "labels" / f"{image.stem}.png") for image in _images_in(root / "images")], False


_PAIRS = {"ade20k": _ade20k, "pascal-context": _pascal_context, "voc": _voc, "generic": _generic}


def read_class_list(path: str | os.PathLike[str]) -> list[str]:
    """The K class names of a dataset, index k = label k: a JSON list, or a text file one name a line.

    JSON: ``["wall", "building, edifice", ...]`` or a list of synonym lists (``[["sofa", "couch"]]``
    -> ``"sofa, couch"``). Text (any other suffix): one class per line, a comma lists synonyms; blank
    lines and lines starting with ``#`` are skipped. ``;`` is refused in a name (it separates classes
    elsewhere, and would shift every later index). Raises DatasetError.
    """
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as error:
        raise DatasetError(f"cannot read class list {source}: {error.strerror}") from None
    if source.suffix.lower() == ".json":
        try:
            items = json.loads(text)
        except json.JSONDecodeError as error:
            raise DatasetError(f"class list {source} is not valid JSON: {error}") from None
        if not isinstance(items, list):
            raise DatasetError(f"class list {source} must hold a JSON list of names")
        names = [_synonyms(item) if isinstance(item, list) else item for item in items]
    else:
        lines = [line.strip() for line in text.splitlines()]
        names = [line for line in lines if line and not line.startswith("#")]
    for index, name in enumerate(names):
        if not isinstance(name, str) or not name.strip() or ";" in name:
            raise DatasetError(f"class list {source}: entry {index} ({name!r}) is not a usable class name")
    if not names:
        raise DatasetError(f"class list {source} names no class")
    return [name.strip() for name in names]


def _synonyms(item: list[object]) -> object:
    """A JSON list of synonyms -> one name ``"sofa, couch"``; anything else is returned to be refused."""
    words = [word for word in item if isinstance(word, str)]
    return ", ".join(words) if item and len(words) == len(item) else item
