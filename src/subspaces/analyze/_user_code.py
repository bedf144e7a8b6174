"""The user's own model and data for the command line, and the defaults.

``--model``/``--data`` as ``package.module:factory`` or ``path/to/file.py:factory``; the default
MLP and the bundled digits.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ._config import AnalyzeConfig


def _load_factory(spec: str) -> Callable[..., Any]:
    """The callable named by ``"package.module:factory"`` or ``"path/to/file.py:factory"``.

    A module is imported with the current directory on ``sys.path`` (so a module next to where
    the command runs is found without ``PYTHONPATH``); a ``.py`` path is loaded from that file
    (relative to the current directory).

    Returns:
        The callable.

    Raises:
        ValueError: naming ``spec`` when the module or file cannot be imported or has no such
            callable.
    """
    module_name, _, attr = spec.rpartition(":")
    if module_name.endswith(".py") or "/" in module_name or os.sep in module_name:
        path = Path(module_name).expanduser().resolve()
        if not path.is_file():
            raise ValueError(f"cannot import {spec!r}: no file {path}")
        name = "_subspaces_user_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
        loader_spec = importlib.util.spec_from_file_location(name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise ValueError(f"cannot import {spec!r}: {path} is not a Python file")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[name] = module
        added = str(path.parent) not in sys.path
        if added:  # the file's own imports of its neighbours
            sys.path.insert(0, str(path.parent))
        try:
            loader_spec.loader.exec_module(module)
        except Exception as err:
            del sys.modules[name]
            raise ValueError(f"cannot import {spec!r}: {type(err).__name__}: {err}") from None
        finally:
            if added:
                sys.path.remove(str(path.parent))
    else:
        cwd = os.getcwd()
        added = cwd not in sys.path and "" not in sys.path
        if added:
            sys.path.insert(0, cwd)
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise ValueError(f"cannot import module {module_name!r} of {spec!r}: {err}") from None
        finally:
            if added:
                sys.path.remove(cwd)
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"{spec!r}: {module_name} has no callable {attr!r}")
    return factory


def default_mlp(in_dim: int, out_dim: int, width: int = 64) -> nn.Module:
    """The default model: ``in_dim``-``width``-``width``-``out_dim`` with ReLU."""
    return nn.Sequential(
        nn.Linear(in_dim, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, out_dim),
    )


def _data(config: AnalyzeConfig, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor, str]:
    if config.data is None:
        from ..data import load_digits_split

        return (*load_digits_split(seed=config.seed, dtype=dtype), "digits (scikit-learn, 8x8)")
    out = _load_factory(config.data)()
    if not (
        isinstance(out, (tuple, list)) and len(out) == 4 and all(isinstance(t, Tensor) for t in out)
    ):
        raise ValueError(f"{config.data} must return (X_train, y_train, X_test, y_test) tensors")
    Xtr, ytr, Xte, yte = out
    if len(Xtr) == 0:
        raise ValueError(f"{config.data} returned an empty training set")

    def cast(t: Tensor) -> Tensor:
        return t.to(dtype) if t.is_floating_point() else t

    return cast(Xtr), cast(ytr), cast(Xte), cast(yte), config.data


def _targets(y: Tensor, loss: str, num_classes: int, dtype: torch.dtype) -> Tensor:
    if loss == "mse" and not y.is_floating_point():
        return nn.functional.one_hot(y, num_classes).to(dtype)
    return y
