"""The analyze checkpoint (format version, checksum, settings hash) and resuming from it."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from .._io import CheckpointError, read_checkpoint, settings_hash
from ._config import AnalyzeConfig

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_KIND = "subspaces.analyze"
CHECKPOINT_VERSION = 1
"""Version of the analyze checkpoint payload (bump when its keys or their meaning change)."""


_CHECKPOINT_KEYS = ("config", "model", "optimizer", "tracker", "shuffle", "curv_gen", "run")


def _read_analyze_checkpoint(path: Path, config: AnalyzeConfig) -> dict[str, Any]:
    """The verified payload of the analyze checkpoint ``path`` for a run with ``config``.

    Returns:
        The payload (keys of ``_CHECKPOINT_KEYS``).

    Raises:
        CheckpointError: one line naming ``path``: unreadable, not a checkpoint, truncated,
            damaged, of another kind or format version, or from a run with other settings.
    """
    hint = "; start over with --force (force=True)"
    try:
        checkpoint = read_checkpoint(path, kind=CHECKPOINT_KIND, version=CHECKPOINT_VERSION)
    except CheckpointError as err:
        raise CheckpointError(f"{err}{hint}") from None
    state = checkpoint.payload
    missing = [key for key in _CHECKPOINT_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}{hint}")
    settings = dataclasses.asdict(config)
    if checkpoint.identity != settings_hash(settings):
        saved = state["config"] if isinstance(state["config"], dict) else {}
        diff = "; ".join(
            f"{key}: {saved.get(key)!r} in the checkpoint, {value!r} now"
            for key, value in settings.items()
            if saved.get(key) != value
        )
        diff = diff or "its settings hash differs"
        raise CheckpointError(
            f"checkpoint {path} was made with other settings ({diff}); resume with the same "
            f"options{hint}"
        )
    return state


def _restore(path: Path, state: dict[str, Any], parts: dict[str, Any]) -> None:
    """Load each ``state[name]`` into ``parts[name]``; a mismatch is a one-line CheckpointError."""
    for name, part in parts.items():
        try:
            if isinstance(part, torch.Generator):
                part.set_state(state[name])
            else:
                part.load_state_dict(state[name])
        except (RuntimeError, ValueError, KeyError, TypeError) as err:
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise CheckpointError(
                f"checkpoint {path}: its {name} state does not fit this run: {reason[:200]}"
            ) from None
