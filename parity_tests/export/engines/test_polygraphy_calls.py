"""builder.py's Polygraphy calls against the signatures of the Polygraphy installed here.

Polygraphy has no type information (no py.typed), so mypy sees it as ``Any`` and the stub check of
test_tensorrt_typecheck.py cannot catch a misspelt keyword of CreateConfig. This test can, without
TensorRT (Polygraphy imports it only when a loader runs): it reads builder.py's syntax tree, takes
every name imported from ``polygraphy``, and for each call of one of them (``CreateConfig(...)``),
of a method of one (``G_LOGGER.verbosity(...)``, ``profile.add(...)`` where ``profile =
Profile()``) or of a loader it made (``SaveBytes(...)()``), binds the call's positional count and
keyword names to ``inspect.signature`` of the installed object. Where an ``__init__`` takes
``**kwargs`` it follows them up the class hierarchy the way CreateConfig hands them on to its base.
Every attribute read from a Polygraphy name (``G_LOGGER.WARNING``) must exist. A negative control
proves wrong keywords are caught. Then the profiles builder.py gives CreateConfig are compared with
the contract's, here, on real Polygraphy Profile objects.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import inspect
from dataclasses import dataclass
from typing import Any

from parity_support import ROOT

from escnet.config import MODEL_CONFIGS
from escnet_export.contract import AXIS_PROFILES, engine_profiles, step_specs
from escnet_export.engines.builder import polygraphy_profiles

BUILDER = ROOT / "export" / "engines" / "builder.py"
# the calls builder.py must make through Polygraphy (a rewrite that drops one must say so here)
EXPECTED = {
    "NetworkFromOnnxPath",
    "CreateConfig",
    "EngineBytesFromNetwork",
    "SaveBytes",
    "SaveBytes()",
    "NetworkFromOnnxPath()",
    "Profile",
    "Profile.add",
    "G_LOGGER.verbosity",
}
NEGATIVE = """
from polygraphy.backend.trt import CreateConfig, NetworkFromOnnxPath, Profile
from polygraphy.logger import G_LOGGER

profile = Profile()
profile.add("IMAGES", min=[1], opt=[1], max=[1], low=[1])
CreateConfig(workspace=1 << 30, profiles=[profile])
NetworkFromOnnxPath("model.onnx", "extra", "positional", "arguments", "too", "many", "here", "now")
G_LOGGER.NOISY
"""


@dataclass
class Checked:
    call: str  # what was called, e.g. "CreateConfig" or "Profile.add"
    line: int
    problem: str | None  # None: the installed Polygraphy accepts it


def _init_parameters(cls: type) -> list[inspect.Parameter]:
    """The parameters a class's constructor accepts, following ``**kwargs`` to the base classes."""
    parameters: list[inspect.Parameter] = []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        own = list(inspect.signature(klass.__init__).parameters.values())[1:]  # without self
        forwards = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in own)
        known = {p.name for p in parameters}
        for parameter in own:
            if parameter.kind is inspect.Parameter.VAR_KEYWORD or parameter.name in known:
                continue
            if parameters and parameter.kind is not inspect.Parameter.VAR_POSITIONAL:
                parameter = parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY)  # a base's, by keyword
            parameters.append(parameter)
        if not forwards:
            return parameters
    parameters.append(inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD))  # object: as is
    return parameters


def _signature(target: Any) -> inspect.Signature:
    if inspect.isclass(target):
        return inspect.Signature(_init_parameters(target))
    return inspect.signature(target)


def _bind(signature: inspect.Signature, call: ast.Call, skip_self: bool) -> str | None:
    if any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords):
        return "*args or **kwargs cannot be checked: spell the arguments out"
    positional = [None] * (len(call.args) + skip_self)
    try:
        signature.bind(*positional, **{k.arg: None for k in call.keywords if k.arg is not None})
    except TypeError as error:
        return f"{error} (signature {signature})"
    return None


def check_polygraphy_calls(source: str) -> list[Checked]:
    """Every Polygraphy call and attribute of ``source`` checked against the installed Polygraphy."""
    tree = ast.parse(source)
    names: dict[str, Any] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "polygraphy":
            module = importlib.import_module(str(node.module))
            for alias in node.names:
                names[alias.asname or alias.name] = getattr(module, alias.name)
    instances: dict[str, str] = {}  # variable -> the Polygraphy class it was made from (x = Profile())
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and isinstance(node.value, ast.Call)
            and isinstance(node.value.func, ast.Name)
            and inspect.isclass(names.get(node.value.func.id))
        ):
            instances[node.targets[0].id] = node.value.func.id

    checked: list[Checked] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in names:
            owner = names[node.value.id]
            if not hasattr(owner, node.attr):
                checked.append(Checked(f"{node.value.id}.{node.attr}", node.lineno, "no such attribute"))
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in names:  # CreateConfig(...)
            label, target, skip_self = func.id, names[func.id], False
        elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            if func.value.id in names and not inspect.isclass(names[func.value.id]):  # G_LOGGER.verbosity
                label = f"{func.value.id}.{func.attr}"
                target, skip_self = getattr(names[func.value.id], func.attr, None), False
            elif func.value.id in instances:  # profile.add(...) with profile = Profile()
                cls_name = instances[func.value.id]
                label = f"{cls_name}.{func.attr}"
                target, skip_self = getattr(names[cls_name], func.attr, None), True
            else:
                continue
            if target is None:
                checked.append(Checked(label, node.lineno, "no such method"))
                continue
        elif (
            isinstance(func, ast.Call) and isinstance(func.func, ast.Name) and func.func.id in names
        ):  # SaveBytes(...)(): the loader called
            label, target, skip_self = f"{func.func.id}()", names[func.func.id].__call__, True
        else:
            continue
        checked.append(Checked(label, node.lineno, _bind(_signature(target), node, skip_self)))
    return checked


def test_builder_calls_fit_the_installed_polygraphy() -> None:
    version = importlib.metadata.version("polygraphy")
    checked = check_polygraphy_calls(BUILDER.read_text())
    print(f"\nbuilder.py against Polygraphy {version}:")
    for item in sorted(checked, key=lambda c: c.line):
        print(f"  line {item.line}: {item.call}: {item.problem or 'accepted'}")
    problems = [f"line {c.line}: {c.call}: {c.problem}" for c in checked if c.problem]
    assert not problems, "\n".join(problems)
    missing = EXPECTED - {c.call for c in checked}
    assert not missing, f"builder.py no longer calls {sorted(missing)}"


def test_wrong_polygraphy_calls_are_caught() -> None:
    found = {c.call: c.problem for c in check_polygraphy_calls(NEGATIVE)}
    print(f"\n{found}")
    assert "unexpected keyword argument 'low'" in str(found["Profile.add"])
    assert "unexpected keyword argument 'workspace'" in str(found["CreateConfig"])
    assert "too many positional arguments" in str(found["NetworkFromOnnxPath"])
    assert found["G_LOGGER.NOISY"] == "no such attribute"


def test_polygraphy_profiles_are_the_contract_profiles() -> None:
    """Every profile of every engine, in order, reaches CreateConfig with the contract's shapes."""
    for variant in ("escnet_vitb16_384", "catseg_vitb16_384"):
        for step in step_specs(MODEL_CONFIGS[variant]).values():
            if step.kind != "graph":
                continue
            profiles = engine_profiles(step, AXIS_PROFILES)
            converted = polygraphy_profiles(profiles)
            assert len(converted) == len(profiles)
            for profile, expected in zip(converted, profiles, strict=True):
                assert list(profile) == list(expected)  # the inputs, in the contract's order
                for name, shapes in expected.items():
                    low, opt, high = profile[name]
                    assert [list(low), list(opt), list(high)] == [shapes[k] for k in ("min", "opt", "max")]
