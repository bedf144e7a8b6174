"""Merge recipes: a small JSON or YAML file in, a ``.safetensors`` file out (``subspaces merge``).

A recipe names the method, the base model, the models and their weights, and the method's
parameters; every number may be a per-tensor schedule (:mod:`subspaces.merging.schedule`)::

    {
      "method": "ties",
      "base": "base.safetensors",
      "models": ["math.safetensors", {"path": "code.pt", "weight": 0.5}],
      "parameters": {"density": {"gradient": [0.2, 0.5]}, "lambda": 1.0, "consensus": "sum"}
    }

Keys: ``method`` (one of :data:`~subspaces.merging.methods.METHODS`), ``models`` (paths, or
``{"path": ..., "weight": ...}``), ``base`` (a path; needed by the task-vector methods),
``weights`` (one per model, instead of per-model ``weight``), ``parameters`` (``lambda``,
``density``, ``consensus``, ``rescale``, ``gamma``, ``t``, ``normalize``, ``seed``,
``non_float``). Relative paths are relative to the recipe's folder. Unknown keys are errors. YAML
needs PyYAML; JSON always works.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ._state_dict import SafetensorsWriter, StateDictSource
from .methods import METHODS, iter_merge

__all__ = ["Recipe", "load_recipe", "parse_recipe", "run_recipe"]

_TOP_KEYS = {"method", "models", "base", "weights", "parameters"}
_PARAMETERS = {
    "lambda": "lambda_",
    "density": "density",
    "consensus": "consensus",
    "rescale": "rescale",
    "gamma": "gamma",
    "t": "t",
    "normalize": "normalize",
    "seed": "seed",
    "non_float": "non_float",
}


@dataclass(frozen=True)
class Recipe:
    """A parsed merge recipe.

    Attributes:
        method: the merge method.
        models: the model files.
        base: the base model file (``None`` for ``linear`` and ``slerp``).
        weights: one weight or schedule per model (``None``: 1 each).
        parameters: keyword arguments for :func:`~subspaces.merging.iter_merge`.

    Example:
        A recipe built in code (rather than read by :func:`load_recipe`) runs the same way;
        ``linear`` averages the models with normalised weights:

        >>> import tempfile
        >>> from pathlib import Path
        >>> import torch
        >>> from subspaces.merging import Recipe, load_state_dict, run_recipe, save_safetensors
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = save_safetensors({"w": torch.tensor([1.0, 0.0])}, folder / "a.safetensors")
        >>> _ = save_safetensors({"w": torch.tensor([0.0, 4.0])}, folder / "b.safetensors")
        >>> recipe = Recipe("linear", (folder / "a.safetensors", folder / "b.safetensors"),
        ...                 weights=(3.0, 1.0))
        >>> load_state_dict(run_recipe(recipe, folder / "merged.safetensors"))["w"]
        tensor([0.7500, 1.0000])
    """

    method: str
    models: tuple[Path, ...]
    base: Path | None = None
    weights: tuple[Any, ...] | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


def _path(value: Any, what: str, root: Path) -> Path:
    if not isinstance(value, str) or not value:
        raise TypeError(f"recipe {what} must be a file path (a string), got {value!r}")
    p = Path(os.path.expanduser(value))
    return p if p.is_absolute() else root / p


def parse_recipe(data: Any, root: str | os.PathLike[str] = ".") -> Recipe:
    """Check a recipe's content and resolve its paths against ``root``.

    Args:
        data: the recipe as loaded from JSON/YAML (a mapping).
        root: the folder relative paths start from.

    Returns:
        The :class:`Recipe`.

    Raises:
        ValueError: for a missing or unknown key, an unknown method, no models, or weights given
            twice or in the wrong number.
        TypeError: for a value of the wrong type.

    Example:
        >>> r = parse_recipe({"method": "task_arithmetic", "base": "b.pt",
        ...                   "models": ["x.pt", {"path": "y.pt", "weight": 0.5}],
        ...                   "parameters": {"lambda": 0.3}}, root="/m")
        >>> [p.as_posix() for p in r.models], r.weights, r.parameters
        (['/m/x.pt', '/m/y.pt'], (1.0, 0.5), {'lambda_': 0.3})
    """
    if not isinstance(data, Mapping):
        raise TypeError(f"a recipe must be a mapping (JSON object), got {type(data).__name__}")
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise ValueError(f"unknown recipe key {unknown[0]!r}; expected some of {sorted(_TOP_KEYS)}")
    root_path = Path(root)
    method = data.get("method")
    if method not in METHODS:
        raise ValueError(f"recipe method must be one of {METHODS}, got {method!r}")
    models_raw = data.get("models")
    if not isinstance(models_raw, list) or not models_raw:
        raise ValueError(f"recipe models must be a non-empty list of paths, got {models_raw!r}")
    models: list[Path] = []
    per_model: list[Any] = []
    for i, entry in enumerate(models_raw):
        if isinstance(entry, Mapping):
            extra = sorted(set(entry) - {"path", "weight"})
            if extra:
                raise ValueError(f"recipe models[{i}] has unknown key {extra[0]!r}")
            models.append(_path(entry.get("path"), f"models[{i}].path", root_path))
            per_model.append(entry.get("weight"))
        else:
            models.append(_path(entry, f"models[{i}]", root_path))
            per_model.append(None)
    weights: tuple[Any, ...] | None = None
    if "weights" in data:
        if any(w is not None for w in per_model):
            raise ValueError("give the weights either in 'weights' or per model, not both")
        raw = data["weights"]
        if not isinstance(raw, list) or len(raw) != len(models):
            raise ValueError(
                f"recipe weights must be a list with one entry per model ({len(models)}), "
                f"got {raw!r}"
            )
        weights = tuple(raw)
    elif any(w is not None for w in per_model):
        weights = tuple(1.0 if w is None else w for w in per_model)
    base = _path(data["base"], "base", root_path) if data.get("base") is not None else None
    params_raw = data.get("parameters", {})
    if not isinstance(params_raw, Mapping):
        raise TypeError(f"recipe parameters must be a mapping, got {params_raw!r}")
    params: dict[str, Any] = {}
    for key, value in params_raw.items():
        if key not in _PARAMETERS:
            raise ValueError(
                f"unknown recipe parameter {key!r}; expected some of {sorted(_PARAMETERS)}"
            )
        params[_PARAMETERS[key]] = value
    return Recipe(str(method), tuple(models), base, weights, params)


def load_recipe(path: str | os.PathLike[str]) -> Recipe:
    """Read a ``.json``, ``.yaml`` or ``.yml`` recipe (paths relative to its folder).

    Args:
        path: the recipe file.

    Returns:
        The :class:`Recipe`.

    Raises:
        ValueError: for a missing file, invalid JSON/YAML, or an invalid recipe.
        ImportError: for a YAML recipe when PyYAML is not installed.

    Example:
        >>> import json, tempfile
        >>> from pathlib import Path
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / "ta.json").write_text(json.dumps({
        ...     "method": "task_arithmetic", "base": "base.safetensors",
        ...     "models": ["a.safetensors", {"path": "b.safetensors", "weight": 0.5}],
        ...     "parameters": {"lambda": 1.0}}))
        >>> recipe = load_recipe(folder / "ta.json")
        >>> recipe.method, [p.name for p in recipe.models], recipe.weights
        ('task_arithmetic', ['a.safetensors', 'b.safetensors'], (1.0, 0.5))
        >>> recipe.base == folder / "base.safetensors"  # relative to the recipe's folder
        True
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as err:
        raise ValueError(f"cannot read recipe {str(p)!r}: {err.strerror or err}") from None
    if p.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ImportError(
                f"recipe {str(p)!r} is YAML, which needs PyYAML: pip install pyyaml, or write "
                "the recipe as JSON"
            ) from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ValueError(f"recipe {str(p)!r} is not valid YAML: {err}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"recipe {str(p)!r} is not valid JSON: {err}") from None
    return parse_recipe(data, p.parent)


def run_recipe(recipe: Recipe, out: str | os.PathLike[str], *, progress: bool = False) -> Path:
    """Merge as the recipe says and write the result to ``out`` atomically (``.safetensors``).

    Each tensor is written to a temporary file next to ``out`` as soon as it is merged (so the
    output never sits in memory as a whole), and the finished file is renamed over ``out``: an
    interrupted merge leaves no partial file at ``out``. The recipe is stored in the file's
    metadata (key ``subspaces_recipe``).

    Args:
        recipe: the parsed recipe.
        out: the destination (must end in ``.safetensors``).
        progress: print a progress line to ``stderr``.

    Returns:
        The destination.

    Raises:
        ValueError: for an output that is not ``.safetensors`` and everything
            :func:`~subspaces.merging.iter_merge` raises.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from subspaces.merging import load_state_dict, parse_recipe, save_safetensors
        >>> folder = Path(tempfile.mkdtemp())
        >>> base, a, b = torch.zeros(3), torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 4, 2])
        >>> for name, w in [("base", base), ("a", a), ("b", b)]:
        ...     _ = save_safetensors({"w": w}, folder / f"{name}.safetensors")
        >>> recipe = parse_recipe({"method": "task_arithmetic", "base": "base.safetensors",
        ...                        "models": ["a.safetensors", "b.safetensors"],
        ...                        "parameters": {"lambda": 0.5}}, folder)
        >>> out = run_recipe(recipe, folder / "merged.safetensors")
        >>> load_state_dict(out)["w"]  # base + 0.5 * ((a - base) + (b - base))
        tensor([0.5000, 2.0000, 2.0000])
    """
    out_path = Path(out)
    if out_path.suffix != ".safetensors":
        raise ValueError(f"--out must be a .safetensors file, got {str(out_path)!r}")
    models = [str(m) for m in recipe.models]
    base = str(recipe.base) if recipe.base is not None else None
    ref = StateDictSource(
        models[0] if base is None else base, label="models[0]" if base is None else "base"
    )
    layout = [(n, _out_dtype(ref, n), ref.shape(n)) for n in ref.names()]
    meta = {
        "subspaces_recipe": json.dumps(
            {
                "method": recipe.method,
                "models": models,
                "base": base,
                "weights": recipe.weights,
                "parameters": recipe.parameters,
            },
            default=repr,
        )
    }
    merged = iter_merge(
        models,
        method=recipe.method,  # type: ignore[arg-type]
        base=base,
        weights=list(recipe.weights) if recipe.weights is not None else None,
        progress=progress,
        **recipe.parameters,
    )
    with SafetensorsWriter(out_path, layout, meta) as writer:
        for name, tensor in merged:
            writer.write(name, tensor)
        return writer.commit()


def _out_dtype(ref: StateDictSource, name: str) -> torch.dtype:
    dtype = ref.dtype(name)
    if dtype is None:
        raise TypeError(f"tensor {name!r} of {ref.label} has a dtype torch cannot read")
    return dtype
