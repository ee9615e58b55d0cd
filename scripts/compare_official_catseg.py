#!/usr/bin/env python
"""Does our CAT-Seg compute what CAT-Seg's OFFICIAL evaluation computes? Build both and compare.

The official side is cvlab-kaist/CAT-Seg's own code, run from a local mirror (a bare git mirror
or a work tree) extracted into a temporary folder outside this repository; it is never copied
into the repository. What it runs is its evaluation, ``train_net.py --eval-only`` with eval.sh's
overrides (``TEST.SLIDING_WINDOW True``, ``MODEL.SEM_SEG_HEAD.POOLING_SIZES [1,1]``):

- the config: detectron2's real ``get_cfg`` defaults, DeepLab's and CAT-Seg's config additions, the
  variant's yaml (vitb_384.yaml / vitl_336.yaml with their ``_BASE_``) and eval.sh's overrides;
- the model: ``cat_seg_model.CATSeg`` with ``CATSegHead`` and ``CATSegPredictor`` built from that
  config through their own ``from_config``; CLIP is built by the mirror's ``model_vpt.build_model``
  from a seeded synthetic OpenAI-layout state dict (``clip.load`` would download OpenAI's file);
- the test mapper: detectron2's ``DatasetMapper(is_train=False)`` steps, i.e. the mirror's real
  ``ResizeShortestEdge(MIN_SIZE_TEST, MAX_SIZE_TEST, "choice")`` / ``ResizeTransform`` on the uint8
  HWC image, then a CHW uint8 tensor, with "height"/"width" the original size;
- ``model([{"image", "height", "width"}])[0]["sem_seg"]`` and SemSegEvaluator's argmax over it.

Only detectron2's config / registry plumbing is stubbed (``configurable``, the registries,
``build_sem_seg_head``, ``MetadataCatalog``, ``Backbone`` and unused structure names); every piece
of arithmetic (ResizeShortestEdge, ResizeTransform, sem_seg_postprocess, ImageList, the CfgNode
and its defaults) is the mirror's own file, loaded through a minimal fake ``detectron2`` package
whose submodules point at those files. ``.cuda()`` calls become no-ops for a CPU run.

The official model is initialised with a fixed seed (random weights: CLIP from the synthetic state
dict, the rest PyTorch's init with every constant-initialised parameter given seeded noise), its
state dict saved in the official layout (``{"model": state_dict}``, as detectron2 checkpoints are),
and that file loaded strictly into ours with ``build_model(variant, checkpoint=path)``. The same
seed and mirror commit give the same weights (``weights_sha256`` in the report). Per image size
and class list it reports max |p_official - p_ours|, the fraction of pixels whose labels agree,
and how many of the disagreeing pixels are (near) ties of the official probabilities, plus the
max difference of every stage (resize, views, text embeddings, view logits) and, when a target
is missed, our network on the official inputs and our merge of the official logits.

``--protocol single_view`` compares CAT-Seg's TEST.SLIDING_WINDOW False path (one view padded by
ImageList) with our single_view protocol instead.

Run (needs fvcore, einops, ftfy, regex: ``pip install fvcore einops ftfy regex``)::

    python scripts/compare_official_catseg.py                      # ViT-B, 4 sizes x 2 class lists
    python scripts/compare_official_catseg.py --variant catseg_vitl14_336
    python scripts/compare_official_catseg.py --protocol single_view
    # the served catseg ensemble: export its graphs with the very weights of the comparison
    python scripts/compare_official_catseg.py --save-only --save-checkpoint ckpt.pth
    python -m escnet_export.onnx_graphs.export --variant catseg_vitb16_384 --checkpoint ckpt.pth --out DIR
    # ... build the model repository from DIR and serve it, then (SCORES are requested too):
    python scripts/compare_official_catseg.py --official-checkpoint ckpt.pth --served 127.0.0.1:8000

Exit status: 0 all targets met, 1 a target missed, 2 the comparison could not run (no mirror,
a missing package).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import functools
import hashlib
import importlib
import importlib.util
import inspect
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import types
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

if TYPE_CHECKING:
    from escnet.segmenter import OpenVocabSegmenter

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO_ROOT))

CATSEG_MIRROR_ENV = "ESCNET_CATSEG_MIRROR"
DETECTRON2_MIRROR_ENV = "ESCNET_DETECTRON2_MIRROR"
DEFAULT_CATSEG_MIRROR = Path("/work/.mirror/cvlab-kaist+CAT-Seg/repo")
DEFAULT_DETECTRON2_MIRROR = Path("/work/.mirror/facebookresearch+detectron2/repo")
DEFAULT_JSON = REPO_ROOT / "artifacts" / "official" / "compare.json"

# What the official code imports beyond this project's own dependencies (timm, open_clip, yaml come
# with them; fvcore brings yacs and iopath).
REQUIRED_PACKAGES = ("fvcore", "einops", "ftfy", "regex", "timm", "open_clip", "yaml", "iopath")

PROB_TOLERANCE = 1e-5  # max |p_official - p_ours|
LABEL_AGREEMENT = 0.999  # of the pixels that are not (near) ties of the official probabilities
TIE_TOLERANCE = 1e-6  # a disagreeing pixel is a tie when p_official[our label] >= max - this

# eval.sh's overrides of every evaluation run (the class json is set per run, see below), per our
# protocol: catseg_eval is eval.sh itself; single_view is CAT-Seg's TEST.SLIDING_WINDOW False path
# (one padded view: ImageList and the size divisibility) with the same pooling.
EVAL_OVERRIDES: dict[str, tuple[str, ...]] = {
    "catseg_eval": ("TEST.SLIDING_WINDOW", "True", "MODEL.SEM_SEG_HEAD.POOLING_SIZES", "[1,1]"),
    "single_view": ("TEST.SLIDING_WINDOW", "False", "MODEL.SEM_SEG_HEAD.POOLING_SIZES", "[1,1]"),
}

IMAGE_SIZES: tuple[tuple[int, int], ...] = ((384, 384), (480, 640), (640, 853), (768, 1024))  # H x W
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")  # skimage.data, one per size

# No ", " anywhere: every name is encoded whole.
PLAIN_CLASSES: tuple[str, ...] = ("person", "cat", "sky", "tree", "grass", "building", "rocket", "coffee cup")
# From the mirror's datasets/ade847.json (checked at run time): names with ", " synonyms, and three
# classes whose first synonym is "bag" (the same text for all three under the "first" rule).
SYNONYM_CLASSES: tuple[str, ...] = (
    "wall",
    "building, edifice",
    "sky",
    "floor, flooring",
    "person, individual, someone, somebody, mortal, soul",
    "car, auto, automobile, machine, motorcar",
    "sofa, couch, lounge",
    "bag",
    "bag, traveling bag, travelling bag, grip, suitcase",
    "bag, handbag, pocketbook, purse",
    "cat",
)
CLASS_LISTS: dict[str, tuple[str, ...]] = {"plain": PLAIN_CLASSES, "synonyms": SYNONYM_CLASSES}


@dataclass(frozen=True)
class OpenAIClipSpec:
    """The shapes of an OpenAI CLIP release (what model_vpt.build_model reads off its state dict)."""

    embed_dim: int
    vision_width: int
    vision_layers: int
    patch_size: int
    image_resolution: int  # the release's training resolution (ViT-B/16: 224 -> 197 position rows)
    text_width: int
    text_layers: int = 12
    context_length: int = 77
    vocab_size: int = 49408


@dataclass(frozen=True)
class VariantSpec:
    """One of our variants and the official config that evaluates it."""

    name: str  # our registry name
    config_file: str  # the mirror's yaml
    clip_name: str  # CLIP_PRETRAINED of the yaml
    clip: OpenAIClipSpec


VARIANTS: dict[str, VariantSpec] = {
    "catseg_vitb16_384": VariantSpec(
        name="catseg_vitb16_384",
        config_file="configs/vitb_384.yaml",
        clip_name="ViT-B/16",
        clip=OpenAIClipSpec(
            embed_dim=512,
            vision_width=768,
            vision_layers=12,
            patch_size=16,
            image_resolution=224,
            text_width=512,
        ),
    ),
    "catseg_vitl14_336": VariantSpec(
        name="catseg_vitl14_336",
        config_file="configs/vitl_336.yaml",
        clip_name="ViT-L/14@336px",
        clip=OpenAIClipSpec(
            embed_dim=768,
            vision_width=1024,
            vision_layers=24,
            patch_size=14,
            image_resolution=336,
            text_width=768,
        ),
    ),
}


class SetupError(RuntimeError):
    """The comparison cannot run here (no mirror, a missing package): a reason, not a failure."""


# -- mirrors -------------------------------------------------------------------------------------


def missing_packages() -> list[str]:
    """The packages the official code imports that are not installed."""
    return [name for name in REQUIRED_PACKAGES if importlib.util.find_spec(name) is None]


def resolve_mirror(flag: str | Path | None, env: str, default: Path) -> Path | None:
    """The flag, else the environment variable, else the default location when it exists."""
    if flag:
        return Path(flag)
    if os.environ.get(env):
        return Path(os.environ[env])
    return default if default.exists() else None


def _is_work_tree(path: Path, marker: str) -> bool:
    return (path / marker).is_file()


def mirror_commit(mirror: Path) -> str | None:
    """The mirror's HEAD commit (None for a plain folder that is no git repository)."""
    for args in (["--git-dir", str(mirror)], ["-C", str(mirror)]):
        result = subprocess.run(["git", *args, "rev-parse", "HEAD"], capture_output=True, text=True)
        if result.returncode == 0:
            return result.stdout.strip()
    return None


def extract_mirror(mirror: Path, dest: Path, marker: str) -> Path:
    """A work tree of the mirror under ``dest`` (never inside this repository).

    mirror: a bare git mirror (its HEAD is exported with ``git archive``) or a work tree (copied,
    without .git). marker: a file the tree must hold, e.g. ``cat_seg/cat_seg_model.py``.
    """
    dest = dest.resolve()
    if dest == REPO_ROOT or REPO_ROOT in dest.parents:
        raise SetupError(f"refusing to extract the official code into this repository ({dest})")
    if not mirror.exists():
        raise SetupError(f"mirror not found: {mirror}")
    dest.mkdir(parents=True, exist_ok=True)
    if _is_work_tree(mirror, marker):
        shutil.copytree(mirror, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".git"))
    else:
        archive = subprocess.run(
            ["git", "--git-dir", str(mirror), "archive", "--format=tar", "HEAD"], capture_output=True
        )
        if archive.returncode != 0:
            raise SetupError(f"cannot export {mirror}: {archive.stderr.decode(errors='replace').strip()}")
        with tarfile.open(fileobj=io.BytesIO(archive.stdout), mode="r:") as tar:
            tar.extractall(dest, filter="data")
    if not (dest / marker).is_file():
        raise SetupError(f"{mirror} holds no {marker}: not the expected repository")
    return dest


# -- the fake detectron2 package over the mirror's real files -------------------------------------


def _package(name: str, directory: Path | None) -> types.ModuleType:
    """Register an empty package ``name`` whose submodules are found in ``directory``: the real
    files load, but the package's own ``__init__`` (with its heavy imports) never runs."""
    module = types.ModuleType(name)
    module.__path__ = [str(directory)] if directory is not None else []  # type: ignore[attr-defined]
    module.__package__ = name
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)
    return module


def configurable(init_func: Callable[..., None]) -> Callable[..., None]:
    """Stub of detectron2.config.configurable, decorator form on ``__init__`` (all CAT-Seg uses):
    called with a CfgNode first, the class's ``from_config(cfg, *args)`` gives the keyword
    arguments (explicit keywords override them); otherwise the arguments pass through."""
    from fvcore.common.config import CfgNode

    @functools.wraps(init_func)
    def wrapped(self: Any, *args: Any, **kwargs: Any) -> None:
        if args and isinstance(args[0], CfgNode):
            from_config = type(self).from_config
            accepted = set(inspect.signature(from_config).parameters)
            passed = {k: kwargs.pop(k) for k in list(kwargs) if k in accepted}
            explicit = from_config(*args, **passed)
            explicit.update(kwargs)
            init_func(self, **explicit)
        else:
            init_func(self, *args, **kwargs)

    return wrapped


class _MetadataCatalog:
    """Stub of detectron2.data.MetadataCatalog (CATSeg imports it; inference never reads it)."""

    def get(self, name: str) -> types.SimpleNamespace:
        return types.SimpleNamespace(name=name)


def _unused(name: str) -> type:
    """A placeholder for a detectron2 name that is imported but not used by this evaluation."""

    def fail(*_: Any, **__: Any) -> None:
        raise NotImplementedError(f"detectron2 {name} is stubbed: the CAT-Seg evaluation does not use it")

    return type(name, (), {"__init__": fail})


@dataclass
class OfficialCode:
    """The official modules, loaded from the extracted mirrors."""

    catseg_root: Path
    detectron2_root: Path
    get_cfg: Callable[[], Any]
    add_deeplab_config: Callable[[Any], None]
    add_cat_seg_config: Callable[[Any], None]
    meta_arch_registry: Any
    transforms: types.ModuleType  # detectron2.data.transforms: AugInput, AugmentationList, ...
    clip: types.ModuleType  # cat_seg.third_party.clip
    model_vpt: types.ModuleType  # cat_seg.third_party.model_vpt
    catseg_model: types.ModuleType  # cat_seg.cat_seg_model
    predictor: types.ModuleType  # cat_seg.modeling.transformer.cat_seg_predictor
    postprocessing: types.ModuleType  # detectron2.modeling.postprocessing
    image_list: types.ModuleType  # detectron2.structures.image_list


_LOADED: dict[tuple[str, str], OfficialCode] = {}  # by the mirrors' locations


def official_code(catseg_mirror: Path, detectron2_mirror: Path, code_dir: Path | None = None) -> OfficialCode:
    """The official modules of these mirrors, extracted and imported once per process.

    The trees are extracted into ``code_dir`` (kept), or a temporary folder removed when the process
    exits: the loaded modules read files next to them (the yaml configs, the class jsons) later.
    """
    key = (str(catseg_mirror.resolve()), str(detectron2_mirror.resolve()))
    if key in _LOADED:
        return _LOADED[key]
    if _LOADED:
        raise SetupError("the official code of other mirrors is already loaded in this process")
    if code_dir is None:
        code_dir = Path(tempfile.mkdtemp(prefix="official_catseg_code_"))
        atexit.register(shutil.rmtree, code_dir, ignore_errors=True)
    catseg_root = extract_mirror(catseg_mirror, code_dir / "CAT-Seg", "cat_seg/cat_seg_model.py")
    detectron2_root = extract_mirror(
        detectron2_mirror, code_dir / "detectron2", "detectron2/modeling/postprocessing.py"
    )
    code = load_official_code(catseg_root, detectron2_root)
    _LOADED[key] = code
    return code


def load_official_code(catseg_root: Path, detectron2_root: Path) -> OfficialCode:
    """Install the fake ``detectron2`` and ``cat_seg`` packages over the extracted trees and import
    the official modules (replacing any ``detectron2`` / ``cat_seg`` modules of this process)."""
    missing = missing_packages()
    if missing:
        raise SetupError(f"missing packages for the official code: {', '.join(missing)} (pip install them)")
    from fvcore.common.registry import Registry

    d2 = detectron2_root / "detectron2"
    for name in [m for m in sys.modules if m == "detectron2" or m.startswith(("detectron2.", "cat_seg"))]:
        del sys.modules[name]

    _package("detectron2", d2)
    utils = _package("detectron2.utils", d2 / "utils")
    for sub in ("env", "file_io", "memory", "torch_version_utils"):
        setattr(utils, sub, importlib.import_module(f"detectron2.utils.{sub}"))  # real files

    config = _package("detectron2.config", d2 / "config")
    config_module = importlib.import_module("detectron2.config.config")  # real CfgNode, get_cfg
    config.CfgNode = config_module.CfgNode  # type: ignore[attr-defined]
    config.get_cfg = config_module.get_cfg  # type: ignore[attr-defined]
    config.configurable = configurable  # type: ignore[attr-defined]
    importlib.import_module("detectron2.config.defaults")  # real defaults

    layers = _package("detectron2.layers", d2 / "layers")
    wrappers = importlib.import_module("detectron2.layers.wrappers")  # real
    layers.Conv2d = wrappers.Conv2d  # type: ignore[attr-defined]
    layers.ShapeSpec = importlib.import_module("detectron2.layers.shape_spec").ShapeSpec  # type: ignore[attr-defined]
    layers.get_norm = _unused("get_norm")  # type: ignore[attr-defined]

    structures = _package("detectron2.structures", d2 / "structures")
    for name in ("Boxes", "pairwise_iou", "Instances", "ROIMasks"):
        setattr(structures, name, _unused(name))
    image_list = importlib.import_module("detectron2.structures.image_list")  # real
    structures.ImageList = image_list.ImageList  # type: ignore[attr-defined]

    data = _package("detectron2.data", d2 / "data")
    data.MetadataCatalog = _MetadataCatalog()  # type: ignore[attr-defined]
    transforms = _package("detectron2.data.transforms", d2 / "data" / "transforms")
    for sub in ("transform", "augmentation", "augmentation_impl"):  # real files
        module = importlib.import_module(f"detectron2.data.transforms.{sub}")
        for attr in getattr(module, "__all__", []):
            setattr(transforms, attr, getattr(module, attr))

    modeling = _package("detectron2.modeling", d2 / "modeling")
    modeling.META_ARCH_REGISTRY = Registry("META_ARCH")  # type: ignore[attr-defined]
    modeling.SEM_SEG_HEADS_REGISTRY = Registry("SEM_SEG_HEADS")  # type: ignore[attr-defined]
    modeling.BACKBONE_REGISTRY = Registry("BACKBONE")  # type: ignore[attr-defined]

    def build_sem_seg_head(cfg: Any, input_shape: Any) -> torch.nn.Module:
        return modeling.SEM_SEG_HEADS_REGISTRY.get(cfg.MODEL.SEM_SEG_HEAD.NAME)(cfg, input_shape)

    modeling.build_sem_seg_head = build_sem_seg_head  # type: ignore[attr-defined]
    modeling.build_backbone = _unused("build_backbone")  # type: ignore[attr-defined]
    backbone = _package("detectron2.modeling.backbone", None)
    backbone.Backbone = type("Backbone", (torch.nn.Module,), {})  # type: ignore[attr-defined]
    postprocessing = importlib.import_module("detectron2.modeling.postprocessing")  # real

    spec = importlib.util.spec_from_file_location(
        "_official_deeplab_config", detectron2_root / "projects" / "DeepLab" / "deeplab" / "config.py"
    )
    assert spec is not None and spec.loader is not None
    deeplab = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(deeplab)

    cs = catseg_root / "cat_seg"
    _package("cat_seg", cs)
    _package("cat_seg.third_party", cs / "third_party")
    _package("cat_seg.modeling", cs / "modeling")
    _package("cat_seg.modeling.heads", cs / "modeling" / "heads")
    _package("cat_seg.modeling.transformer", cs / "modeling" / "transformer")
    clip = importlib.import_module("cat_seg.third_party.clip")
    predictor = importlib.import_module("cat_seg.modeling.transformer.cat_seg_predictor")
    importlib.import_module("cat_seg.modeling.heads.cat_seg_head")  # registers CATSegHead
    catseg_model = importlib.import_module("cat_seg.cat_seg_model")  # registers CATSeg
    cat_seg_config = importlib.import_module("cat_seg.config")

    code = OfficialCode(
        catseg_root=catseg_root,
        detectron2_root=detectron2_root,
        get_cfg=config_module.get_cfg,
        add_deeplab_config=deeplab.add_deeplab_config,
        add_cat_seg_config=cat_seg_config.add_cat_seg_config,
        meta_arch_registry=modeling.META_ARCH_REGISTRY,
        transforms=transforms,
        clip=clip,
        model_vpt=importlib.import_module("cat_seg.third_party.model_vpt"),
        catseg_model=catseg_model,
        predictor=predictor,
        postprocessing=postprocessing,
        image_list=image_list,
    )
    return code


# -- the official model -------------------------------------------------------------------------


@contextlib.contextmanager
def cuda_calls_are_noops(device: torch.device) -> Iterator[None]:
    """On a CPU run, make the official code's ``tensor.cuda()`` calls return the tensor itself."""
    if device.type == "cuda":
        yield
        return
    original = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.cuda = original  # type: ignore[method-assign]


def synthetic_openai_clip_state(spec: OpenAIClipSpec, seed: int) -> dict[str, torch.Tensor]:
    """A random state dict in the layout of OpenAI's CLIP TorchScript releases (fused
    ``attn.in_proj_weight`` [3W, W], the image position table at the release's resolution, and the
    ``input_resolution`` / ``context_length`` / ``vocab_size`` entries build_model deletes).

    Scales follow CLIP's own initialisation; layer norms and biases are random too (not 1 / 0), so
    that every tensor a mapping could confuse differs."""
    g = torch.Generator().manual_seed(seed)

    def normal(*shape: int, std: float) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * std

    def block(prefix: str, width: int, layers: int) -> dict[str, torch.Tensor]:
        proj_std = width**-0.5 * (2 * layers) ** -0.5
        return {
            prefix + "attn.in_proj_weight": normal(3 * width, width, std=width**-0.5),
            prefix + "attn.in_proj_bias": normal(3 * width, std=0.02),
            prefix + "attn.out_proj.weight": normal(width, width, std=proj_std),
            prefix + "attn.out_proj.bias": normal(width, std=0.02),
            prefix + "ln_1.weight": 1 + normal(width, std=0.1),
            prefix + "ln_1.bias": normal(width, std=0.05),
            prefix + "mlp.c_fc.weight": normal(4 * width, width, std=(2 * width) ** -0.5),
            prefix + "mlp.c_fc.bias": normal(4 * width, std=0.02),
            prefix + "mlp.c_proj.weight": normal(width, 4 * width, std=proj_std),
            prefix + "mlp.c_proj.bias": normal(width, std=0.02),
            prefix + "ln_2.weight": 1 + normal(width, std=0.1),
            prefix + "ln_2.bias": normal(width, std=0.05),
        }

    vw, tw, patch = spec.vision_width, spec.text_width, spec.patch_size
    grid = spec.image_resolution // patch
    state: dict[str, torch.Tensor] = {
        "visual.class_embedding": normal(vw, std=vw**-0.5),
        "visual.positional_embedding": normal(grid * grid + 1, vw, std=vw**-0.5),
        "visual.proj": normal(vw, spec.embed_dim, std=vw**-0.5),
        "visual.conv1.weight": normal(vw, 3, patch, patch, std=(3 * patch * patch) ** -0.5),
        "visual.ln_pre.weight": 1 + normal(vw, std=0.1),
        "visual.ln_pre.bias": normal(vw, std=0.05),
        "visual.ln_post.weight": 1 + normal(vw, std=0.1),
        "visual.ln_post.bias": normal(vw, std=0.05),
    }
    for i in range(spec.vision_layers):
        state |= block(f"visual.transformer.resblocks.{i}.", vw, spec.vision_layers)
    state |= {
        "positional_embedding": normal(spec.context_length, tw, std=0.01),
        "text_projection": normal(tw, spec.embed_dim, std=tw**-0.5),
        "logit_scale": torch.tensor(math.log(1 / 0.07)),
        "token_embedding.weight": normal(spec.vocab_size, tw, std=0.02),
        "ln_final.weight": 1 + normal(tw, std=0.1),
        "ln_final.bias": normal(tw, std=0.05),
    }
    for i in range(spec.text_layers):
        state |= block(f"transformer.resblocks.{i}.", tw, spec.text_layers)
    state |= {
        "input_resolution": torch.tensor(spec.image_resolution),
        "context_length": torch.tensor(spec.context_length),
        "vocab_size": torch.tensor(spec.vocab_size),
    }
    return state


@contextlib.contextmanager
def synthetic_clip_load(code: OfficialCode, spec: OpenAIClipSpec, seed: int) -> Iterator[None]:
    """Replace ``clip.load`` (which downloads OpenAI's archive) by the same jit=False build from a
    synthetic state dict: ``model_vpt.build_model(state_dict, prompt_depth, prompt_length)``."""
    original = getattr(code.clip, "load")  # noqa: B009 (a module attribute patched in place)

    def load(
        name: str,
        device: str | torch.device = "cpu",
        jit: bool = True,
        prompt_depth: int = 0,
        prompt_length: int = 0,
    ) -> tuple[torch.nn.Module, None]:
        assert not jit, "CATSegPredictor loads CLIP with jit=False"
        state = synthetic_openai_clip_state(spec, seed)
        return code.model_vpt.build_model(state, prompt_depth, prompt_length).to(device), None

    setattr(code.clip, "load", load)  # noqa: B010
    try:
        yield
    finally:
        setattr(code.clip, "load", original)  # noqa: B010


def official_config(
    code: OfficialCode,
    variant: VariantSpec,
    class_json: Path,
    device: torch.device,
    protocol: str = "catseg_eval",
) -> Any:
    """train_net.setup for ``--eval-only`` with eval.sh's overrides; both class jsons point at
    ``class_json`` (TRAIN_CLASS_JSON only feeds training and an unused text table, and this keeps
    the predictor's half-precision table build at construction short)."""
    cfg = code.get_cfg()
    code.add_deeplab_config(cfg)
    code.add_cat_seg_config(cfg)
    cfg.merge_from_file(str(code.catseg_root / variant.config_file))
    cfg.merge_from_list(
        [
            "MODEL.SEM_SEG_HEAD.TEST_CLASS_JSON",
            str(class_json),
            "MODEL.SEM_SEG_HEAD.TRAIN_CLASS_JSON",
            str(class_json),
            *EVAL_OVERRIDES[protocol],
            "MODEL.DEVICE",
            device.type,
        ]
    )
    cfg.freeze()
    return cfg


def perturb_constant_parameters(model: torch.nn.Module, seed: int, skip_prefix: str) -> int:
    """Give every parameter that PyTorch initialised to a constant (norm weights 1, zero biases,
    CAT-Seg's zero padding tokens) seeded noise, so none of them is left at a value a wrong mapping
    could also produce. CLIP (``skip_prefix``) is already random. Returns the count perturbed."""
    g = torch.Generator().manual_seed(seed + 1)
    count = 0
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith(skip_prefix) or not param.is_floating_point():
                continue
            if param.numel() == 1 or bool((param == param.flatten()[0]).all()):
                param.add_(0.1 * torch.randn(param.shape, generator=g).to(param.device))
                count += 1
    return count


@dataclass
class OfficialModel:
    """The official CATSeg in eval mode, and its config."""

    model: Any  # cat_seg_model.CATSeg
    cfg: Any
    code: OfficialCode
    device: torch.device

    @property
    def predictor(self) -> Any:
        """The CATSegPredictor: CLIP, the text cache and the Aggregator."""
        return self.model.sem_seg_head.predictor


def build_official_model(
    code: OfficialCode,
    variant: VariantSpec,
    *,
    seed: int,
    workdir: Path,
    device: torch.device,
    initial_classes: Sequence[str],
    checkpoint: Path | None = None,
    protocol: str = "catseg_eval",
) -> OfficialModel:
    """CATSeg as DefaultTrainer.build_model builds it (META_ARCH_REGISTRY by name, then ``.to``),
    with seeded random weights, or the weights of an official-layout ``checkpoint``."""
    class_json = workdir / "classes.json"
    class_json.write_text(json.dumps(list(initial_classes)))
    cfg = official_config(code, variant, class_json, device, protocol)
    torch.manual_seed(seed)
    with (
        synthetic_clip_load(code, variant.clip, seed),
        cuda_calls_are_noops(device),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        model = code.meta_arch_registry.get(cfg.MODEL.META_ARCHITECTURE)(cfg)
    model.to(device)
    if checkpoint is None:
        perturb_constant_parameters(model, seed, "sem_seg_head.predictor.clip_model.")
    else:
        from escnet.weights import read_state_dict

        model.load_state_dict(read_state_dict(checkpoint), strict=True)
    model.eval()
    return OfficialModel(model=model, cfg=cfg, code=code, device=device)


def weights_digest(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the names, dtypes, shapes and bytes of a state dict: the weights' identity (the
    file's own hash also depends on its name, which torch.save writes into the archive)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_official_checkpoint(official: OfficialModel, path: Path) -> str:
    """The official model's state dict as a detectron2-style checkpoint ``{"model": ...}``.
    Returns its weights_digest."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in official.model.state_dict().items()}
    torch.save({"model": state}, path)
    return weights_digest(state)


@dataclass
class OfficialRun:
    """One official evaluation of one image.

    probabilities: [T, H, W] output["sem_seg"]; resized: [h, w, 3] uint8 after the test mapper
    views: [V, 3, S, S] the CLIP input; text: [T, 1, C] the predictor's text embeddings
    logits: [V, T, 4G, 4G] the predictor's output
    """

    probabilities: torch.Tensor
    resized: np.ndarray
    views: torch.Tensor
    text: torch.Tensor
    logits: torch.Tensor


def official_mapper(official: OfficialModel, image: np.ndarray) -> dict[str, Any]:
    """DatasetMapper(cfg, is_train=False).__call__ on an RGB uint8 [H, W, 3] image (read_image's
    output): build_augmentation's ResizeShortestEdge(MIN_SIZE_TEST, MAX_SIZE_TEST, "choice") through
    AugInput / AugmentationList, then the CHW uint8 tensor; height / width the original size."""
    T = official.code.transforms
    cfg = official.cfg
    augmentations = T.AugmentationList(
        [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")]
    )
    aug_input = T.AugInput(image)
    augmentations(aug_input)
    resized = aug_input.image
    return {
        "image": torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1))),
        "height": image.shape[0],
        "width": image.shape[1],
    }


def set_official_classes(official: OfficialModel, class_names: Sequence[str]) -> None:
    """The class list of an evaluation run is the predictor's test_class_texts; its text cache and
    tokens (kept across forwards in eval mode) are reset so the new list is encoded."""
    predictor = official.predictor
    predictor.test_class_texts = list(class_names)
    predictor.cache = None
    predictor.tokens = None


@torch.no_grad()
def run_official(official: OfficialModel, image: np.ndarray, class_names: Sequence[str]) -> OfficialRun:
    """The official evaluation of one image (the forward SemSegEvaluator reads), with its stages."""
    set_official_classes(official, class_names)
    inputs = official_mapper(official, image)
    captured: dict[str, torch.Tensor] = {}
    predictor = official.predictor
    visual = predictor.clip_model.visual
    hooks = [
        visual.register_forward_pre_hook(lambda _m, args: captured.__setitem__("views", args[0].detach())),
        predictor.register_forward_hook(lambda _m, _a, out: captured.__setitem__("logits", out.detach())),
    ]
    try:
        with cuda_calls_are_noops(official.device):
            output = official.model([inputs])[0]["sem_seg"]
    finally:
        for hook in hooks:
            hook.remove()
    return OfficialRun(
        probabilities=output.float().cpu(),
        resized=inputs["image"].permute(1, 2, 0).numpy(),
        views=captured["views"].float().cpu(),
        text=predictor.cache.float().cpu(),
        logits=captured["logits"].float().cpu(),
    )


# -- our model ------------------------------------------------------------------------------------


@dataclass
class OursRun:
    """Our ``segment`` of one image, with the stages its forward saw (shapes as OfficialRun)."""

    probabilities: torch.Tensor
    labels: torch.Tensor
    views: torch.Tensor
    text: torch.Tensor
    logits: torch.Tensor


def build_ours(
    variant: str, checkpoint: Path, device: torch.device, protocol: str = "catseg_eval"
) -> OpenVocabSegmenter:
    """``build_model(variant, checkpoint=path)``: the strict load of the official file is our loader's.
    Another protocol than the default replaces the config's (same network: both pool 1x1)."""
    from escnet.config import PROTOCOLS
    from escnet.registry import build_model

    model = build_model(variant, checkpoint=checkpoint).to(device)
    if model.config.protocol.name != protocol:
        if PROTOCOLS[protocol].pooling_size != model.config.protocol.pooling_size:
            raise SetupError(f"protocol {protocol} pools differently: it needs another network")
        model.config = model.config.with_protocol(PROTOCOLS[protocol])
    return model


@torch.no_grad()
def run_ours(model: OpenVocabSegmenter, image: np.ndarray, class_names: Sequence[str]) -> OursRun:
    captured: dict[str, torch.Tensor] = {}

    def keep(_module: torch.nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        captured["views"], captured["text"], captured["logits"] = args[0], args[1], out

    hook = model.register_forward_hook(keep)
    try:
        result = model.segment(image, class_names)
    finally:
        hook.remove()
    return OursRun(
        probabilities=result.probabilities.float().cpu(),
        labels=result.labels.cpu(),
        views=captured["views"].float().cpu(),
        text=captured["text"].float().cpu(),
        logits=captured["logits"].float().cpu(),
    )


# -- comparison -----------------------------------------------------------------------------------


@dataclass
class LabelStats:
    """How the labels of one output agree with the official argmax."""

    pixels: int
    agree: int
    disagree: int
    ties: int  # disagreeing pixels where p_official[other label] >= p_official.max() - TIE_TOLERANCE
    official_near_ties: int  # pixels whose two best official probabilities are within TIE_TOLERANCE

    @property
    def agreement(self) -> float:
        return self.agree / self.pixels

    @property
    def agreement_excluding_ties(self) -> float:
        counted = self.pixels - self.ties
        return 1.0 if counted == 0 else self.agree / counted

    @property
    def tie_fraction_of_disagreements(self) -> float:
        return 1.0 if self.disagree == 0 else self.ties / self.disagree


def label_stats(official_probs: torch.Tensor, labels: torch.Tensor) -> LabelStats:
    """official_probs: [T, H, W]; labels: [H, W] (ours or the server's) -> LabelStats."""
    official_labels = official_probs.argmax(dim=0)  # SemSegEvaluator: output["sem_seg"].argmax(dim=0)
    labels = labels.to(torch.int64)
    differ = official_labels != labels
    best = official_probs.max(dim=0).values
    theirs = official_probs.gather(0, labels.clamp(0, official_probs.shape[0] - 1)[None])[0]
    ties = differ & (theirs >= best - TIE_TOLERANCE) & (labels >= 0) & (labels < official_probs.shape[0])
    top2 = official_probs.topk(2, dim=0).values if official_probs.shape[0] > 1 else None
    near_ties = 0 if top2 is None else int((top2[0] - top2[1] < TIE_TOLERANCE).sum())
    return LabelStats(
        pixels=int(labels.numel()),
        agree=int((~differ).sum()),
        disagree=int(differ.sum()),
        ties=int(ties.sum()),
        official_near_ties=near_ties,
    )


def _max_abs(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float | None:
    a_t = torch.as_tensor(np.asarray(a) if isinstance(a, np.ndarray) else a).double()
    b_t = torch.as_tensor(np.asarray(b) if isinstance(b, np.ndarray) else b).double()
    if a_t.shape != b_t.shape:
        return None
    return float((a_t - b_t).abs().max()) if a_t.numel() else 0.0


@dataclass
class CaseResult:
    """One image size x class list."""

    image: str
    height: int
    width: int
    class_list: str
    num_classes: int
    max_prob_diff: float
    label_agreement: float
    agreement_excluding_ties: float
    disagreeing_pixels: int
    tied_disagreements: int
    tie_fraction_of_disagreements: float
    official_near_tie_fraction: float  # of all pixels: how often the official top-2 are within 1e-6
    stages: dict[str, float | None]  # max |official - ours| per stage (None: shapes differ)
    passed: bool
    diagnosis: dict[str, float | None] = field(default_factory=dict)
    seconds_official: float = 0.0
    seconds_ours: float = 0.0


def compare_case(
    name: str,
    class_list: str,
    official: OfficialRun,
    ours: OursRun,
    image: np.ndarray,
    model: OpenVocabSegmenter,
) -> CaseResult:
    from escnet.view_plan import resize_shortest_edge

    ours_resized = resize_shortest_edge(image, model.config.protocol)
    stats = label_stats(official.probabilities, ours.labels)
    prob_diff = _max_abs(official.probabilities, ours.probabilities)
    stages = {
        "resize": _max_abs(official.resized.astype(np.int32), ours_resized.astype(np.int32)),
        "views": _max_abs(official.views, ours.views),
        "text": _max_abs(official.text, ours.text),
        "logits": _max_abs(official.logits, ours.logits),
        "probabilities": prob_diff,
    }
    passed = (
        prob_diff is not None
        and prob_diff <= PROB_TOLERANCE
        and stats.agreement_excluding_ties >= LABEL_AGREEMENT
    )
    return CaseResult(
        image=name,
        height=image.shape[0],
        width=image.shape[1],
        class_list=class_list,
        num_classes=official.probabilities.shape[0],
        max_prob_diff=math.inf if prob_diff is None else prob_diff,
        label_agreement=stats.agreement,
        agreement_excluding_ties=stats.agreement_excluding_ties,
        disagreeing_pixels=stats.disagree,
        tied_disagreements=stats.ties,
        tie_fraction_of_disagreements=stats.tie_fraction_of_disagreements,
        official_near_tie_fraction=stats.official_near_ties / stats.pixels,
        stages=stages,
        passed=passed,
    )


@torch.no_grad()
def diagnose_case(
    model: OpenVocabSegmenter, official: OfficialRun, image: np.ndarray
) -> dict[str, float | None]:
    """Isolate the stage that differs: our network on the official views and text (network alone),
    and our merge on the official logits (merge alone), each against the official tensor."""
    from escnet.image_views import merge_views, plan_views

    device = next(model.parameters()).device
    plan = plan_views(image.shape[0], image.shape[1], model.config.protocol)
    logits = model(official.views.to(device), official.text.to(device)).float().cpu()
    merged = merge_views(official.logits.to(device), plan).float().cpu()
    return {
        "network_on_official_inputs": _max_abs(logits, official.logits),
        "merge_of_official_logits": _max_abs(merged, official.probabilities),
    }


# -- images --------------------------------------------------------------------------------------


def photo_images(sizes: Sequence[tuple[int, int]] = IMAGE_SIZES) -> list[tuple[str, np.ndarray]]:
    """Real photos from skimage.data, resized with PIL (bicubic) to each H x W: [(name, [H, W, 3] uint8)]."""
    from skimage import data

    images = []
    for index, (height, width) in enumerate(sizes):
        photo_name = PHOTOS[index % len(PHOTOS)]
        photo = np.asarray(getattr(data, photo_name)())[..., :3]
        resized = Image.fromarray(photo).resize((width, height), Image.Resampling.BICUBIC)
        images.append((f"{photo_name}_{height}x{width}", np.array(resized)))
    return images


def check_class_lists(catseg_root: Path, class_lists: Mapping[str, Sequence[str]]) -> None:
    """The synonym list's names must be ADE-847 names of the mirror, and hold ", "; the plain none."""
    ade = set(json.loads((catseg_root / "datasets" / "ade847.json").read_text()))
    for name in class_lists.get("synonyms", ()):
        if name not in ade:
            raise SetupError(f"{name!r} is not in the mirror's datasets/ade847.json")
    if not any(", " in name for name in class_lists.get("synonyms", ("x, y",))):
        raise SetupError("the synonym class list holds no ', ' synonyms")
    if any(", " in name for name in class_lists.get("plain", ())):
        raise SetupError("the plain class list must hold no ', '")


# -- the served ensemble ------------------------------------------------------------------------


@dataclass
class ServedResult:
    """The served ensemble on one case, against the official outputs."""

    image: str
    class_list: str
    max_prob_diff: float
    label_agreement: float
    agreement_excluding_ties: float
    disagreeing_pixels: int
    tied_disagreements: int
    passed: bool
    seconds: float


def query_served(
    url: str, model_name: str, image: np.ndarray, class_names: Sequence[str], timeout_s: float
) -> tuple[np.ndarray, np.ndarray]:
    """LABELS [H, W] int32 and SCORES [T, H, W] float32 of the served ensemble (tritonclient.http)."""
    import tritonclient.http as httpclient

    from escnet_export.contract import CLASS_NAMES, IMAGE, LABELS, SCORES

    address = url.split("://", 1)[-1].rstrip("/")
    client = httpclient.InferenceServerClient(
        address, connection_timeout=timeout_s, network_timeout=timeout_s
    )
    try:
        image_input = httpclient.InferInput(IMAGE.name, list(image.shape), IMAGE.dtype)
        image_input.set_data_from_numpy(np.ascontiguousarray(image))
        names = np.array([name.encode("utf-8") for name in class_names], dtype=np.object_)
        names_input = httpclient.InferInput(CLASS_NAMES.name, [len(class_names)], CLASS_NAMES.dtype)
        names_input.set_data_from_numpy(names)
        outputs = [httpclient.InferRequestedOutput(LABELS.name), httpclient.InferRequestedOutput(SCORES.name)]
        response = client.infer(model_name, [image_input, names_input], outputs=outputs)
        return response.as_numpy(LABELS.name), response.as_numpy(SCORES.name)
    finally:
        client.close()


def compare_served(
    name: str,
    class_list: str,
    official: OfficialRun,
    labels: np.ndarray,
    scores: np.ndarray,
    seconds: float,
    prob_tolerance: float,
) -> ServedResult:
    stats = label_stats(official.probabilities, torch.from_numpy(labels.astype(np.int64)))
    diff = _max_abs(official.probabilities, torch.from_numpy(scores.astype(np.float32)))
    passed = diff is not None and diff <= prob_tolerance and stats.agreement_excluding_ties >= LABEL_AGREEMENT
    return ServedResult(
        image=name,
        class_list=class_list,
        max_prob_diff=math.inf if diff is None else diff,
        label_agreement=stats.agreement,
        agreement_excluding_ties=stats.agreement_excluding_ties,
        disagreeing_pixels=stats.disagree,
        tied_disagreements=stats.ties,
        passed=passed,
        seconds=seconds,
    )


# -- the whole comparison -------------------------------------------------------------------------


@dataclass
class ComparisonSettings:
    variant: str = "catseg_vitb16_384"
    protocol: str = "catseg_eval"  # ours; the official config gets the matching overrides
    catseg_mirror: Path | None = None
    detectron2_mirror: Path | None = None
    seed: int = 0
    device: str = "cpu"
    sizes: tuple[tuple[int, int], ...] = IMAGE_SIZES
    class_lists: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(CLASS_LISTS))
    save_checkpoint: Path | None = None
    official_checkpoint: Path | None = None
    save_only: bool = False
    served: str | None = None
    served_model: str = "catseg"
    served_prob_tolerance: float = PROB_TOLERANCE
    served_timeout_s: float = 600.0
    diagnose: str = "on-failure"  # "always", "on-failure", "never"
    workdir: Path | None = None  # where the official code is extracted (kept); None: a temp dir
    log: Callable[[str], None] = print


@dataclass
class ComparisonReport:
    """What one comparison found (written as the JSON report)."""

    variant: str
    protocol: str
    seed: int
    device: str
    mirrors: dict[str, Any]
    weights_sha256: str  # weights_digest of the official state dict both models hold
    targets: dict[str, float]
    cases: list[CaseResult]
    served: list[ServedResult]
    passed: bool
    seconds: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def resolve_mirrors(settings: ComparisonSettings) -> tuple[Path, Path]:
    catseg = resolve_mirror(settings.catseg_mirror, CATSEG_MIRROR_ENV, DEFAULT_CATSEG_MIRROR)
    detectron2 = resolve_mirror(settings.detectron2_mirror, DETECTRON2_MIRROR_ENV, DEFAULT_DETECTRON2_MIRROR)
    if catseg is None:
        raise SetupError(f"no CAT-Seg mirror: pass --catseg-mirror or set {CATSEG_MIRROR_ENV}")
    if detectron2 is None:
        raise SetupError(f"no detectron2 mirror: pass --detectron2-mirror or set {DETECTRON2_MIRROR_ENV}")
    return catseg, detectron2


def setup_problem(settings: ComparisonSettings) -> str | None:
    """Why the comparison cannot run here (a missing package or mirror), or None when it can."""
    missing = missing_packages()
    if missing:
        return (
            f"missing packages for the official code: {', '.join(missing)} (pip install {' '.join(missing)})"
        )
    try:
        catseg, detectron2 = resolve_mirrors(settings)
    except SetupError as error:
        return str(error)
    for path in (catseg, detectron2):
        if not path.exists():
            return f"mirror not found: {path}"
    return None


def run_comparison(settings: ComparisonSettings) -> ComparisonReport:
    """Build both models on the same weights and compare them on every image x class list."""
    log = settings.log
    if settings.variant not in VARIANTS:
        raise SetupError(f"unknown variant {settings.variant!r}; choose one of {sorted(VARIANTS)}")
    missing = missing_packages()
    if missing:
        raise SetupError(f"missing packages for the official code: {', '.join(missing)} (pip install them)")
    variant = VARIANTS[settings.variant]
    catseg_mirror, detectron2_mirror = resolve_mirrors(settings)
    device = torch.device(settings.device)
    started = time.perf_counter()
    seconds: dict[str, float] = {}

    code = official_code(
        catseg_mirror,
        detectron2_mirror,
        None if settings.workdir is None else Path(settings.workdir) / "code",
    )
    check_class_lists(code.catseg_root, settings.class_lists)
    log(f"official code of {catseg_mirror} and {detectron2_mirror}, extracted in {code.catseg_root.parent}")
    workdir = Path(tempfile.mkdtemp(prefix="official_catseg_run_"))  # class json, checkpoint
    try:
        t0 = time.perf_counter()
        first_list = next(iter(settings.class_lists.values()))
        official = build_official_model(
            code,
            variant,
            seed=settings.seed,
            workdir=workdir,
            device=device,
            initial_classes=first_list,
            checkpoint=settings.official_checkpoint,
            protocol=settings.protocol,
        )
        checkpoint = settings.save_checkpoint or workdir / "official_catseg.pth"
        sha = save_official_checkpoint(official, Path(checkpoint))
        seconds["build_official"] = time.perf_counter() - t0
        log(f"official CATSeg built ({seconds['build_official']:.1f} s)")
        log(f"official-layout checkpoint {checkpoint}, weights sha256 {sha}")
        mirrors = {
            "catseg": {"path": str(catseg_mirror), "commit": mirror_commit(catseg_mirror)},
            "detectron2": {"path": str(detectron2_mirror), "commit": mirror_commit(detectron2_mirror)},
        }
        targets = {
            "max_prob_diff": PROB_TOLERANCE,
            "label_agreement_excluding_ties": LABEL_AGREEMENT,
            "tie_tolerance": TIE_TOLERANCE,
        }
        report = functools.partial(
            ComparisonReport,
            variant=settings.variant,
            protocol=settings.protocol,
            seed=settings.seed,
            device=str(device),
            mirrors=mirrors,
            weights_sha256=sha,
            targets=targets,
            seconds=seconds,
        )
        if settings.save_only:
            return report(cases=[], served=[], passed=True)

        t0 = time.perf_counter()
        ours = build_ours(settings.variant, Path(checkpoint), device, settings.protocol)
        seconds["build_ours"] = time.perf_counter() - t0

        cases: list[CaseResult] = []
        served: list[ServedResult] = []
        for name, image in photo_images(settings.sizes):
            for list_name, class_names in settings.class_lists.items():
                t0 = time.perf_counter()
                official_run = run_official(official, image, class_names)
                t1 = time.perf_counter()
                ours_run = run_ours(ours, image, class_names)
                t2 = time.perf_counter()
                case = compare_case(name, list_name, official_run, ours_run, image, ours)
                case.seconds_official, case.seconds_ours = t1 - t0, t2 - t1
                if settings.diagnose == "always" or (settings.diagnose == "on-failure" and not case.passed):
                    case.diagnosis = diagnose_case(ours, official_run, image)
                cases.append(case)
                log(_case_line(case))
                if settings.served:
                    t0 = time.perf_counter()
                    labels, scores = query_served(
                        settings.served, settings.served_model, image, class_names, settings.served_timeout_s
                    )
                    result = compare_served(
                        name,
                        list_name,
                        official_run,
                        labels,
                        scores,
                        time.perf_counter() - t0,
                        settings.served_prob_tolerance,
                    )
                    served.append(result)
                    log(
                        f"  served {settings.served_model}: max|dp| {result.max_prob_diff:.2e}, labels "
                        f"{result.label_agreement:.6f} ({result.tied_disagreements}/"
                        f"{result.disagreeing_pixels} ties) {'ok' if result.passed else 'MISSED'}"
                    )
        seconds["total"] = time.perf_counter() - started
        passed = all(c.passed for c in cases) and all(s.passed for s in served)
        return report(cases=cases, served=served, passed=passed)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _case_line(case: CaseResult) -> str:
    return (
        f"{case.image:<22} {case.class_list:<9} T={case.num_classes:<3} max|dp| {case.max_prob_diff:.2e}  "
        f"labels {case.label_agreement:.6f} (excl. ties {case.agreement_excluding_ties:.6f}, "
        f"{case.tied_disagreements}/{case.disagreeing_pixels} disagreements tied)  "
        f"{'ok' if case.passed else 'MISSED'}  [{case.seconds_official:.1f} s / {case.seconds_ours:.1f} s]"
    )


def format_table(report: ComparisonReport) -> str:
    """The per-case table (and the served one) as text."""
    header = (
        f"{'image (HxW)':<22} {'classes':<9} {'T':>3} {'max|dp|':>9} {'labels eq':>10} {'excl.ties':>10} "
        f"{'ties/dis':>9} {'resize':>6} {'views':>8} {'text':>8} {'logits':>8}  result"
    )
    title = f"{report.variant} ({report.protocol}): official CAT-Seg evaluation vs ours, seed {report.seed}"
    lines = [title, header]

    def fmt(value: float | None, spec: str) -> str:
        return "shape" if value is None else format(value, spec)

    for c in report.cases:
        lines.append(
            f"{c.image:<22} {c.class_list:<9} {c.num_classes:>3} {c.max_prob_diff:>9.2e} "
            f"{c.label_agreement:>10.6f} {c.agreement_excluding_ties:>10.6f} "
            f"{f'{c.tied_disagreements}/{c.disagreeing_pixels}':>9} {fmt(c.stages['resize'], '>6.0f')} "
            f"{fmt(c.stages['views'], '>8.1e')} {fmt(c.stages['text'], '>8.1e')} "
            f"{fmt(c.stages['logits'], '>8.1e')}  {'ok' if c.passed else 'MISSED'}"
        )
        if c.diagnosis:
            lines.append(f"{'':<22} diagnosis: {c.diagnosis}")
    if report.served:
        lines.append("served ensemble vs official:")
        for s in report.served:
            lines.append(
                f"{s.image:<22} {s.class_list:<9} {'':>3} {s.max_prob_diff:>9.2e} {s.label_agreement:>10.6f} "
                f"{s.agreement_excluding_ties:>10.6f} {f'{s.tied_disagreements}/{s.disagreeing_pixels}':>9}"
                f"  {'ok' if s.passed else 'MISSED'}"
            )
    lines.append(
        f"targets: max|dp| <= {PROB_TOLERANCE:g}, labels equal on >= {LABEL_AGREEMENT:.1%} of the pixels "
        f"that are not ties (< {TIE_TOLERANCE:g}) -> {'PASSED' if report.passed else 'MISSED'}"
    )
    return "\n".join(lines)


def parse_size(text: str) -> tuple[int, int]:
    height, _, width = text.lower().partition("x")
    return int(height), int(width)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="catseg_vitb16_384")
    parser.add_argument(
        "--catseg-mirror", type=Path, help=f"bare git mirror or work tree (${CATSEG_MIRROR_ENV})"
    )
    parser.add_argument(
        "--detectron2-mirror", type=Path, help=f"bare git mirror or work tree (${DETECTRON2_MIRROR_ENV})"
    )
    parser.add_argument(
        "--protocol",
        choices=sorted(EVAL_OVERRIDES),
        default="catseg_eval",
        help="catseg_eval: eval.sh (sliding window); single_view: TEST.SLIDING_WINDOW False",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--sizes", default=",".join(f"{h}x{w}" for h, w in IMAGE_SIZES), help="HxW,HxW,...")
    parser.add_argument("--class-lists", default=",".join(CLASS_LISTS), help="plain,synonyms")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where the report goes")
    parser.add_argument("--save-checkpoint", type=Path, help="also keep the official-layout checkpoint here")
    parser.add_argument(
        "--save-only", action="store_true", help="build and save the checkpoint, compare nothing"
    )
    parser.add_argument(
        "--official-checkpoint",
        type=Path,
        help="load these official-layout weights instead of the seeded init",
    )
    parser.add_argument(
        "--served", metavar="URL", help="also compare a served catseg ensemble (HTTP host:port)"
    )
    parser.add_argument("--served-model", default="catseg")
    parser.add_argument("--served-prob-tolerance", type=float, default=PROB_TOLERANCE)
    parser.add_argument("--served-timeout", type=float, default=600.0)
    parser.add_argument("--diagnose", choices=("always", "on-failure", "never"), default="on-failure")
    parser.add_argument(
        "--workdir", type=Path, help="extract the official code here (kept); default: a temp dir"
    )
    args = parser.parse_args(argv)
    if args.save_only and args.save_checkpoint is None:
        parser.error("--save-only needs --save-checkpoint PATH")
    if args.threads:
        torch.set_num_threads(args.threads)
    lists = [name.strip() for name in args.class_lists.split(",") if name.strip()]
    unknown = [name for name in lists if name not in CLASS_LISTS]
    if unknown:
        parser.error(f"unknown class lists {unknown}; choose from {sorted(CLASS_LISTS)}")
    settings = ComparisonSettings(
        variant=args.variant,
        protocol=args.protocol,
        catseg_mirror=args.catseg_mirror,
        detectron2_mirror=args.detectron2_mirror,
        seed=args.seed,
        device=args.device,
        sizes=tuple(parse_size(s) for s in args.sizes.split(",") if s.strip()),
        class_lists={name: CLASS_LISTS[name] for name in lists},
        save_checkpoint=args.save_checkpoint,
        official_checkpoint=args.official_checkpoint,
        save_only=args.save_only,
        served=args.served,
        served_model=args.served_model,
        served_prob_tolerance=args.served_prob_tolerance,
        served_timeout_s=args.served_timeout,
        diagnose=args.diagnose,
        workdir=args.workdir,
    )
    try:
        report = run_comparison(settings)
    except SetupError as error:
        print(f"cannot compare: {error}", file=sys.stderr)
        return 2
    if args.save_only:
        print(f"saved {settings.save_checkpoint}, weights sha256 {report.weights_sha256}")
        return 0
    print(format_table(report))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report.to_json(), indent=2, default=str))
    print(f"report: {args.json}")
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
