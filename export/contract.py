"""The one contract of the deployment: every graph and Python step, its tensors' names, dtypes and
shapes with named dynamic axes, and the optimisation profiles of those axes.

Export, the Triton configs, the Python steps, the client and the tests all read this module; none
retypes a tensor name. It imports neither torch nor onnx, so the client can use it.

The chain is described here once too (``chain_steps``): the steps unrolled in the order they run,
the source of every input and the name of every output. The Triton ensemble is written from it and
the in-process chain (escnet_export.runtime.chain) loops over it.

Named axes: B images (views) in a batch, T classes, N prompt texts, P templates, K points per
class, H / W image height and width. Fixed sizes come from the variant's config (C embedding width,
S input side, G = S / patch grid).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields

from escnet.config import MAX_CLASS_NAME_BYTES, MODEL_CONFIGS, ModelConfig

Dim = int | str  # an int is fixed; a str names a dynamic axis


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # Triton's name: FP32, INT32, UINT8, BYTES, FP16
    shape: tuple[Dim, ...]

    @property
    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}


@dataclass(frozen=True)
class StepSpec:
    """One step of the chain: an exported graph ("graph") or a Python step between graphs ("python").

    ``separable``: the named axes along which the step computes each index on its own, so that it
    may run in slices of them and give the same answer (escnet_export.runtime.runners). B (views) for every
    graph; T (classes) where nothing mixes classes (SAM blocks, decoder; not prep, whose top-256
    class choice, nor the aggregators, whose class attention, looks at all classes); N (texts) for
    the text encoder.
    """

    name: str
    kind: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    separable: tuple[str, ...] = ()

    def input(self, name: str) -> TensorSpec:
        return next(t for t in self.inputs if t.name == name)

    def output(self, name: str) -> TensorSpec:
        return next(t for t in self.outputs if t.name == name)

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]


@dataclass(frozen=True)
class AxisProfile:
    minimum: int
    optimum: int
    maximum: int


# (min, opt, max) of each dynamic axis: TensorRT optimisation profiles and request limits.
AXIS_PROFILES: dict[str, AxisProfile] = {
    "B": AxisProfile(1, 1, 8),
    "T": AxisProfile(1, 150, 1024),
    "N": AxisProfile(1, 150, 1024),
    "P": AxisProfile(1, 1, 1),
    "K": AxisProfile(5, 5, 5),
}
# A TensorRT engine's optimisation profiles follow how the ensemble calls a graph: with all of a
# request's views at once (1 under single_view, 5 under catseg_eval: escnet/config.py) and its T
# classes, in buckets tuned at the papers' vocabularies (19, 58, 150) and one beyond, up to the
# request limit. One profile per (view count, class bucket); Triton picks the tightest that fits a
# request, and the engine allocates context memory per profile (configs.py), so a small request
# does not hold a T = 1024 context.
PROFILE_VIEW_COUNTS = (1, 5)
CLASS_BUCKETS = (
    AxisProfile(1, 19, 32),
    AxisProfile(33, 58, 96),
    AxisProfile(97, 150, 256),
    AxisProfile(257, 512, 1024),
)


def engine_axis_profiles(axes: Mapping[str, AxisProfile] = AXIS_PROFILES) -> list[dict[str, AxisProfile]]:
    """The axis ranges of each optimisation profile: a view count x a class bucket. An axis given
    other than the contract's (engines.build --axis) is one range of its own instead."""
    views = (
        [AxisProfile(v, v, v) for v in PROFILE_VIEW_COUNTS]
        if axes["B"] == AXIS_PROFILES["B"]
        else [axes["B"]]
    )
    classes = list(CLASS_BUCKETS) if axes["T"] == AXIS_PROFILES["T"] else [axes["T"]]
    return [{**axes, "B": b, "T": t} for b in views for t in classes]


def input_profiles(step: StepSpec, axes: Mapping[str, AxisProfile]) -> dict[str, dict[str, list[int]]]:
    """(min, opt, max) shape of every input of a graph: fixed sizes from the contract, named axes
    from ``axes``."""
    profiles: dict[str, dict[str, list[int]]] = {}
    for spec in step.inputs:
        missing = [d for d in spec.shape if isinstance(d, str) and d not in axes]
        if missing:
            raise ValueError(f"{step.name}.{spec.name}: no profile for axes {missing}")
        shapes: dict[str, list[int]] = {}
        for key, attribute in (("min", "minimum"), ("opt", "optimum"), ("max", "maximum")):
            shapes[key] = [d if isinstance(d, int) else getattr(axes[d], attribute) for d in spec.shape]
        profiles[spec.name] = shapes
    return profiles


def engine_profiles(
    step: StepSpec, axes: Mapping[str, AxisProfile] = AXIS_PROFILES
) -> list[dict[str, dict[str, list[int]]]]:
    """The optimisation profiles of a graph's engine, input -> (min, opt, max) shapes each; a graph
    without the B or T axis (the text encoder) has fewer distinct ones."""
    profiles: list[dict[str, dict[str, list[int]]]] = []
    for ranges in engine_axis_profiles(axes):
        profile = input_profiles(step, ranges)
        if profile not in profiles:
            profiles.append(profile)
    return profiles


@dataclass(frozen=True)
class RequestLimits:
    """What one request to an ensemble may ask; the edge steps refuse anything beyond.

    Written into the preprocess and text_embedder configs as parameters (``min_side``, ...), so a
    deployment changes a limit in config.pbtxt without touching code; these are the defaults.
    """

    min_side: int = 8  # pixels; a smaller side is refused (the model sees >= 336 px a side)
    max_pixels: int = 4096 * 4096  # H * W; a larger image is refused, not resized into memory trouble
    max_score_elements: int = 2**28  # T * H * W: the full-size scores (1 GiB of float32) postprocess makes
    max_classes: int = AXIS_PROFILES["T"].maximum  # T; also the engines' profile maximum
    max_name_bytes: int = MAX_CLASS_NAME_BYTES  # one class name, UTF-8 bytes; refused, never truncated

    def parameters(self) -> dict[str, str]:
        """The limits as Triton model config parameters (string values)."""
        return {name: str(value) for name, value in asdict(self).items()}

    @classmethod
    def from_parameters(cls, parameters: dict[str, str]) -> RequestLimits:
        """Read the limits back from a model's parameters; a missing one keeps its default."""
        names = {f.name for f in fields(cls)}
        return cls(**{name: int(value) for name, value in parameters.items() if name in names})


REQUEST_LIMITS = RequestLimits()
# escnet.view_plan.ViewPlan's fields, encoded as VIEW_PLAN (a test holds the two equal; the
# contract imports no model module beyond the config, so the client can use it).
VIEW_PLAN_LENGTH = 9
# The ensembles and the variant each serves by default (build_repository --escnet-variant ...).
DEFAULT_VARIANTS = {"escnet": "escnet_vitb16_384", "catseg": "catseg_vitb16_384"}
MAX_CLASSES = REQUEST_LIMITS.max_classes

# Public tensors of the ensembles.
IMAGE = TensorSpec("IMAGE", "UINT8", ("H", "W", 3))
CLASS_NAMES = TensorSpec("CLASS_NAMES", "BYTES", ("T",))
LABELS = TensorSpec("LABELS", "INT32", ("H", "W"))
SCORES = TensorSpec("SCORES", "FP32", ("T", "H", "W"))


def _t(name: str, dtype: str, *shape: Dim) -> TensorSpec:
    return TensorSpec(name, dtype, tuple(shape))


def graph_names(config: ModelConfig) -> list[str]:
    """The exported graphs of a variant, in chain order."""
    names = ["clip_image_encoder", "clip_text_encoder", "prep"]
    for k in range(1, config.aggregator.num_layers + 1):
        if config.use_sam_blocks:
            names.append(f"sam_prompt_decoder_{k}")
        names.append(f"aggregator_{k}")
    return [*names, "decoder"]


def step_specs(config: ModelConfig) -> dict[str, StepSpec]:
    """Every step of a variant's chain, graphs and Python steps, keyed by step name."""
    c = config.clip.embed_dim
    s = config.clip.image_size
    g = config.clip.grid
    hidden = config.aggregator.hidden_dim
    mid, fine = config.aggregator.decoder_guidance_dims
    mid_p, fine_p = config.aggregator.decoder_guidance_proj_dims
    k_points = config.pseudo_prompts.num_clusters

    images = _t("IMAGES", "FP32", "B", 3, s, s)
    features = _t("IMAGE_FEATURES", "FP32", "B", c, g, g)
    guidance_mid = _t("GUIDANCE_MID", "FP32", "B", mid, 2 * g, 2 * g)
    guidance_fine = _t("GUIDANCE_FINE", "FP32", "B", fine, 4 * g, 4 * g)
    tokens = _t("TOKENS", "INT32", "N", config.clip.context_length)
    text_features = _t("TEXT_FEATURES", "FP32", "N", c)
    text_embeddings = _t("TEXT_EMBEDDINGS", "FP32", "T", "P", c)
    embedding = _t("EMBEDDING", "FP32", "B", hidden, "T", g, g)
    score = _t("SCORE", "FP32", "B", "T", g, g)
    class_mask = _t("CLASS_MASK", "FP32", "B", "T")
    text_guidance = _t("TEXT_GUIDANCE", "FP32", "B", "T", config.aggregator.text_guidance_proj_dim)
    appearance = _t("APPEARANCE_GUIDANCE", "FP32", "B", config.aggregator.appearance_guidance_proj_dim, g, g)
    decoder_mid = _t("DECODER_GUIDANCE_MID", "FP32", "B", mid_p, 2 * g, 2 * g)
    decoder_fine = _t("DECODER_GUIDANCE_FINE", "FP32", "B", fine_p, 4 * g, 4 * g)
    points = _t("POINTS", "FP32", "B", "T", k_points, 2)
    point_labels = _t("POINT_LABELS", "FP32", "B", "T", k_points)
    pseudo_mask = _t("PSEUDO_MASK", "FP32", "B", "T", g, g)
    sam_features = _t("SAM_FEATURES", "FP32", "B", config.aggregator.appearance_guidance_proj_dim, "T", g, g)
    next_embedding = _t("NEXT_EMBEDDING", "FP32", "B", hidden, "T", g, g)
    next_score = _t("NEXT_SCORE", "FP32", "B", "T", g, g)
    logits = _t("LOGITS", "FP32", "B", "T", 4 * g, 4 * g)
    view_plan = _t("VIEW_PLAN", "INT32", VIEW_PLAN_LENGTH)

    prep_outputs = [embedding, score, class_mask, text_guidance, decoder_mid, decoder_fine]
    if not config.use_sam_blocks:
        prep_outputs.append(appearance)
    steps = [
        # preprocess is the request's admission: it checks the image, the class names and the
        # request's memory estimate before any work. The text embedder reads VIEW_PLAN only to run
        # after it, so a refused request costs no text encoding.
        StepSpec("preprocess", "python", (IMAGE, CLASS_NAMES), (images, view_plan)),
        StepSpec("text_embedder", "python", (CLASS_NAMES, view_plan), (text_embeddings,)),
        StepSpec(
            "clip_image_encoder",
            "graph",
            (images,),
            (features, guidance_mid, guidance_fine),
            separable=("B",),
        ),
        StepSpec("clip_text_encoder", "graph", (tokens,), (text_features,), separable=("N",)),
        StepSpec(
            "prep",
            "graph",
            (features, guidance_mid, guidance_fine, text_embeddings),
            tuple(prep_outputs),
            separable=("B",),
        ),
    ]
    if config.use_sam_blocks:
        steps.append(StepSpec("pseudo_points", "python", (score,), (points, point_labels, pseudo_mask)))
    num_layers = config.aggregator.num_layers
    for k in range(1, num_layers + 1):
        if config.use_sam_blocks:
            steps.append(
                StepSpec(
                    f"sam_prompt_decoder_{k}",
                    "graph",
                    (features, points, point_labels, pseudo_mask),
                    (sam_features,),
                    separable=("B", "T"),
                )
            )
            outputs = (next_embedding, next_score) if k < num_layers else (next_embedding,)
            steps.append(
                StepSpec(
                    f"aggregator_{k}",
                    "graph",
                    (embedding, sam_features, text_guidance, class_mask),
                    outputs,
                    separable=("B",),
                )
            )
        else:
            steps.append(
                StepSpec(
                    f"aggregator_{k}",
                    "graph",
                    (embedding, appearance, text_guidance, class_mask),
                    (next_embedding,),
                    separable=("B",),
                )
            )
    steps.append(
        StepSpec(
            "decoder",
            "graph",
            (embedding, decoder_mid, decoder_fine, class_mask),
            (logits,),
            separable=("B", "T"),
        )
    )
    steps.append(StepSpec("postprocess", "python", (logits, view_plan), (LABELS, SCORES)))
    return {step.name: step for step in steps}


# --------------------------------------------------------------------------------------------------
# The chain, unrolled
# --------------------------------------------------------------------------------------------------

# A step's output NEXT_X is the X the steps after it read (an aggregator's NEXT_EMBEDDING is the
# next aggregator's EMBEDDING, its NEXT_SCORE the next pseudo points' SCORE).
NEXT_PREFIX = "NEXT_"
# Steps that are not entries of the chain: another step calls them (BLS), not the scheduler.
CALLED_BY = {"clip_text_encoder": "text_embedder"}
REQUEST_INPUTS = (IMAGE, CLASS_NAMES)
REQUEST_OUTPUTS = (LABELS, SCORES)


@dataclass(frozen=True)
class ChainStep:
    """One entry of the unrolled chain: the step ``step`` of ``step_specs`` run as ``label``.

    ``sources`` maps each input to what feeds it: a request input (``IMAGE``) or an earlier entry's
    output, named ``<label>.<OUTPUT>``. pseudo_points runs once before every SAM block, as
    ``pseudo_points_<k>``; every other label is its step's name.
    """

    label: str
    step: str
    sources: dict[str, str] = field(hash=False)
    outputs: tuple[str, ...]

    def output(self, name: str) -> str:
        """The name this entry's output ``name`` has in the chain: ``<label>.<name>``."""
        return f"{self.label}.{name}"


def chain_steps(config: ModelConfig) -> tuple[ChainStep, ...]:
    """The chain of a variant in run order, each input wired to the latest output of its name."""
    specs = step_specs(config)
    latest = {t.name: t.name for t in REQUEST_INPUTS}  # tensor name -> where its latest value is
    order: list[tuple[str, StepSpec]] = []
    for step in specs.values():
        if step.name in CALLED_BY or step.name == "pseudo_points":
            continue
        if step.name.startswith("sam_prompt_decoder_"):
            order.append((f"pseudo_points_{step.name.rsplit('_', 1)[1]}", specs["pseudo_points"]))
        order.append((step.name, step))
    chain = []
    for label, step in order:
        entry = ChainStep(
            label=label,
            step=step.name,
            sources={name: latest[name] for name in step.input_names},
            outputs=tuple(step.output_names),
        )
        for name in entry.outputs:
            latest[name.removeprefix(NEXT_PREFIX)] = entry.output(name)
        chain.append(entry)
    return tuple(chain)


def request_output_sources(config: ModelConfig) -> dict[str, str]:
    """The ensemble's outputs -> the chain outputs that answer them (the last step's)."""
    last = chain_steps(config)[-1]
    return {t.name: last.output(t.name) for t in REQUEST_OUTPUTS}


def describe_chain(config: ModelConfig) -> str:
    """The chain as text, one entry a line: ``label (step): INPUT <- source, ... -> OUTPUTS``."""
    lines = []
    for entry in chain_steps(config):
        inputs = ", ".join(f"{name} <- {source}" for name, source in entry.sources.items())
        called = [name for name, caller in CALLED_BY.items() if caller == entry.step]
        calls = f" (calls {', '.join(called)})" if called else ""
        lines.append(f"{entry.label:<22} {inputs} -> {', '.join(entry.outputs)}{calls}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m escnet_export.contract --variant escnet_vitb16_384``: print the chain."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--variant", default=DEFAULT_VARIANTS["escnet"], choices=sorted(MODEL_CONFIGS))
    args = parser.parse_args(argv)
    print(describe_chain(MODEL_CONFIGS[args.variant]))


if __name__ == "__main__":
    main()
