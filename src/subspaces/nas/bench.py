"""A tabular NAS benchmark on the bundled digits: every architecture trained standalone once.

Like NAS-Bench-201 (Dong & Yang, arXiv:2001.00326), but small enough to ship: each architecture
of a :class:`~subspaces.nas.space.CellSpace` or :class:`~subspaces.nas.space.MacroSpace` is trained
from scratch with one fixed budget (:class:`BenchConfig`: Adam, a few epochs, several seeds) on
the 1438 training digits and scored by its mean test accuracy on the 359 held-out digits. The
table is built once by :func:`build_benchmark` (``subspaces nas build-bench``; resumable, spread
over local processes or Ray) and shipped in ``subspaces/nas/data/``; :meth:`TabularBenchmark.query`
then answers ``accuracy, params, train_time`` without training anything.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from .._io import settings_hash, write_json
from .._parallel import map_tasks
from .networks import CellNetwork, MacroNetwork, digits_images
from .space import CellSpace, MacroSpace

__all__ = [
    "BenchConfig",
    "BenchResult",
    "TabularBenchmark",
    "build_benchmark",
    "default_config",
    "space_from_dict",
    "space_to_dict",
    "train_standalone",
]

FORMAT = 1
Space = CellSpace | MacroSpace


@dataclass(frozen=True)
class BenchConfig:
    """The fixed training budget of every architecture of a benchmark.

    Args:
        epochs: passes over the 1438 training digits.
        batch_size: minibatch size.
        lr: Adam learning rate.
        seeds: one standalone training per seed (initialisation and data order); the benchmark's
            accuracy is their mean.
        channels: cell width (cell space only).
        split_seed: seed of the train/test split of the digits.

    Raises:
        ValueError: for a non-positive value or no seeds.

    Example:
        >>> from subspaces.nas.bench import BenchConfig
        >>> BenchConfig(epochs=1, seeds=[0, 1]).seeds  # any iterable of ints, kept as a tuple
        (0, 1)
        >>> try:
        ...     BenchConfig(epochs=0)
        ... except ValueError as e:
        ...     print(e)
        epochs must be a positive int, got 0
    """

    epochs: int = 4
    batch_size: int = 64
    lr: float = 3e-3
    seeds: tuple[int, ...] = (0, 1, 2)
    channels: int = 8
    split_seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not (isinstance(self.lr, (int, float)) and np.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive finite number, got {self.lr!r}")
        seeds = tuple(int(s) for s in self.seeds)
        if not seeds:
            raise ValueError("seeds must hold at least one seed, got an empty tuple")
        object.__setattr__(self, "seeds", seeds)


def default_config(space: CellSpace | MacroSpace) -> BenchConfig:
    """The budget of the shipped tables for ``space``.

    One seed for the 625-cell space (its build is the expensive one), three seeds for the
    81-architecture macro space, whose accuracies are closer together.

    Returns:
        The :class:`BenchConfig`.

    Example:
        >>> from subspaces.nas.space import CellSpace, MacroSpace
        >>> default_config(CellSpace()).seeds, default_config(MacroSpace()).seeds
        ((0,), (0, 1, 2))
    """
    return BenchConfig(seeds=(0,)) if isinstance(space, CellSpace) else BenchConfig()


class BenchResult(NamedTuple):
    """One row of a benchmark: what :meth:`TabularBenchmark.query` returns.

    Example:
        >>> from subspaces.nas.bench import TabularBenchmark
        >>> row = TabularBenchmark.builtin("macro").query("k3w16-k5w8")
        >>> row.params, 0.9 < row.accuracy <= 1.0, row.train_time > 0
        (8498, True, True)
    """

    accuracy: float
    """Mean test accuracy over the seeds (in ``[0, 1]``)."""
    params: int
    """Parameter count of the standalone network."""
    train_time: float
    """Median CPU seconds of one standalone training (one thread; machine-dependent)."""


def space_to_dict(space: Space) -> dict[str, Any]:
    """A JSON description of a space (inverse of :func:`space_from_dict`).

    Returns:
        ``{"kind": "cell", "ops": [...]}`` or ``{"kind": "macro", "kernels", "widths", "layers"}``.

    Raises:
        TypeError: for another kind of space.

    Example:
        >>> from subspaces.nas.space import MacroSpace
        >>> space_to_dict(MacroSpace())
        {'kind': 'macro', 'kernels': [1, 3, 5], 'widths': [8, 16, 32], 'layers': 2}
    """
    if isinstance(space, CellSpace):
        return {"kind": "cell", "ops": list(space.ops)}
    if isinstance(space, MacroSpace):
        return {
            "kind": "macro",
            "kernels": list(space.kernels),
            "widths": list(space.widths),
            "layers": space.layers,
        }
    raise TypeError(f"space must be a CellSpace or MacroSpace, got {type(space).__name__}")


def space_from_dict(data: dict[str, Any]) -> Space:
    """The space described by :func:`space_to_dict`'s output.

    Returns:
        The space.

    Raises:
        ValueError: for an unknown kind.

    Example:
        >>> from subspaces.nas.space import CellSpace
        >>> space_from_dict(space_to_dict(CellSpace())) == CellSpace()
        True
    """
    kind = data.get("kind")
    if kind == "cell":
        return CellSpace(tuple(data["ops"]))
    if kind == "macro":
        return MacroSpace(tuple(data["kernels"]), tuple(data["widths"]), int(data["layers"]))
    raise ValueError(f"space kind must be 'cell' or 'macro', got {kind!r}")


def _key(space: Space, arch: Any) -> str:
    """The architecture string of ``arch`` (validated)."""
    return space.to_string(arch)


def build_network(space: Space, arch: Any, channels: int = 8) -> torch.nn.Module:
    """The standalone network of ``arch`` in ``space`` (initialised from torch's global RNG)."""
    if isinstance(space, CellSpace):
        return CellNetwork(arch, channels=channels, space=space)
    return MacroNetwork(arch, space=space)


def train_standalone(
    space: Space, arch: Any, config: BenchConfig, seed: int
) -> tuple[float, int, float]:
    """Train ``arch`` from scratch with ``config``'s budget and return its test accuracy.

    Deterministic given the arguments (one intra-op thread is used; the global RNG is restored).

    Args:
        space: the search space.
        arch: an architecture of it (string or tuple).
        config: the budget.
        seed: seed of the initialisation and of the data order.

    Returns:
        ``(test_accuracy, params, cpu_seconds)``.

    Raises:
        FloatingPointError: if the training loss becomes non-finite.

    Example:
        >>> space, budget = MacroSpace(layers=1), BenchConfig(epochs=1)
        >>> acc, params, _ = train_standalone(space, "k1w8", budget, 0)
        >>> acc > 0.8, params
        (True, 5146)
    """
    Xtr, ytr, Xte, yte = digits_images(config.split_seed)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = build_network(space, arch, config.channels)
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(net.parameters(), lr=config.lr)
        start = time.process_time()
        for _ in range(config.epochs):
            perm = torch.randperm(len(ytr), generator=gen)
            for i in range(0, len(ytr), config.batch_size):
                idx = perm[i : i + config.batch_size]
                loss = F.cross_entropy(net(Xtr[idx]), ytr[idx])
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"non-finite training loss {float(loss.detach())} for {arch}"
                    )
                opt.zero_grad()
                loss.backward()
                opt.step()
        seconds = time.process_time() - start
        with torch.no_grad():
            acc = float((net(Xte).argmax(1) == yte).double().mean())
    finally:
        torch.set_num_threads(previous)
    return acc, sum(p.numel() for p in net.parameters()), seconds


def _evaluate(space_dict: dict[str, Any], arch: str, config_dict: dict[str, Any]) -> dict[str, Any]:
    """Train one architecture with every seed (a top-level function, so processes can run it)."""
    space = space_from_dict(space_dict)
    config = BenchConfig(**{**config_dict, "seeds": tuple(config_dict["seeds"])})
    accs, times, params = [], [], 0
    for seed in config.seeds:
        acc, params, seconds = train_standalone(space, arch, config, seed)
        accs.append(acc)
        times.append(seconds)
    return {
        "accuracy": float(np.mean(accs)),
        "accuracy_per_seed": accs,
        "params": params,
        "train_time": float(np.median(times)),
    }


def _content(space: Space, config: BenchConfig, records: dict[str, dict[str, Any]]) -> dict:
    """What the content hash covers: everything deterministic (not the timings)."""
    return {
        "format": FORMAT,
        "space": space_to_dict(space),
        "config": asdict(config),
        "records": {
            a: {"accuracy_per_seed": r["accuracy_per_seed"], "params": r["params"]}
            for a, r in sorted(records.items())
        },
    }


def content_hash(space: Space, config: BenchConfig, records: dict[str, dict[str, Any]]) -> str:
    """SHA-256 of a benchmark's deterministic content (space, budget, accuracies, params)."""
    return settings_hash(_content(space, config, records))


class TabularBenchmark:
    """A trained-once table of every architecture of a space: ``query(arch) -> BenchResult``.

    Args:
        space: the search space.
        config: the budget every architecture was trained with.
        records: per architecture string, ``accuracy``, ``accuracy_per_seed``, ``params`` and
            ``train_time``.

    Raises:
        ValueError: if a record names an architecture outside ``space`` or lacks a field.

    Example:
        >>> bench = TabularBenchmark.builtin("macro")
        >>> len(bench)
        81
        >>> acc, params, seconds = bench.query("k3w16-k5w8")
        >>> 0.9 < acc <= 1.0, params
        (True, 8498)
    """

    def __init__(
        self, space: Space, config: BenchConfig, records: dict[str, dict[str, Any]]
    ) -> None:
        self.space = space
        self.config = config
        self.records: dict[str, dict[str, Any]] = {}
        for arch, record in records.items():
            key = space.to_string(arch)
            missing = {"accuracy", "accuracy_per_seed", "params", "train_time"} - set(record)
            if missing:
                raise ValueError(f"record of {arch!r} lacks {sorted(missing)}")
            self.records[key] = dict(record)

    # ----- construction -----
    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TabularBenchmark:
        """Load a benchmark file written by :func:`build_benchmark`, checking its content hash.

        Returns:
            The benchmark.

        Raises:
            ValueError: for a wrong format, a hash mismatch or an incomplete table.
        """
        data = json.loads(Path(path).read_text())
        return cls._from_json(data, str(path))

    @classmethod
    def builtin(cls, kind: Literal["cell", "macro"] = "cell") -> TabularBenchmark:
        """The benchmark shipped with the package (``cell`` or ``macro`` space)."""
        if kind not in ("cell", "macro"):
            raise ValueError(f"kind must be 'cell' or 'macro', got {kind!r}")
        text = resources.files("subspaces.nas").joinpath(f"data/{kind}_bench.json").read_text()
        return cls._from_json(json.loads(text), f"builtin {kind} benchmark")

    @classmethod
    def _from_json(cls, data: dict[str, Any], where: str) -> TabularBenchmark:
        if data.get("format") != FORMAT:
            raise ValueError(f"{where}: format {data.get('format')!r}, expected {FORMAT}")
        space = space_from_dict(data["space"])
        config = BenchConfig(**{**data["config"], "seeds": tuple(data["config"]["seeds"])})
        records = data["records"]
        expected = content_hash(space, config, records)
        if data.get("content_hash") != expected:
            raise ValueError(
                f"{where}: content hash {data.get('content_hash')!r} does not match its content "
                f"({expected})"
            )
        bench = cls(space, config, records)
        if len(bench.records) != len(space):
            raise ValueError(f"{where}: {len(bench.records)} of {len(space)} architectures")
        return bench

    def to_json(self) -> dict[str, Any]:
        """The file content: format, space, config, records and the content hash."""
        return {
            "format": FORMAT,
            "space": space_to_dict(self.space),
            "config": asdict(self.config),
            "records": dict(sorted(self.records.items())),
            "content_hash": self.content_hash,
        }

    @property
    def content_hash(self) -> str:
        """SHA-256 of the deterministic content (see :func:`content_hash`)."""
        return content_hash(self.space, self.config, self.records)

    # ----- queries -----
    def __len__(self) -> int:
        return len(self.records)

    def query(self, arch: Any) -> BenchResult:
        """``(accuracy, params, train_time)`` of ``arch`` (string or tuple).

        Returns:
            The row.

        Raises:
            ValueError: for an invalid architecture.
            KeyError: if the table lacks it.
        """
        key = self.space.to_string(arch)
        if key not in self.records:
            raise KeyError(f"architecture {key!r} is not in this benchmark")
        r = self.records[key]
        return BenchResult(float(r["accuracy"]), int(r["params"]), float(r["train_time"]))

    def archs(self) -> list[str]:
        """Every architecture string, in the space's iteration order."""
        return [_key(self.space, a) for a in self.space]

    def accuracies(self, archs: Iterable[Any] | None = None) -> np.ndarray:
        """Accuracies of ``archs`` (default: every architecture in space order)."""
        return np.array([self.query(a).accuracy for a in (archs or self.archs())])

    def percentile(self, arch: Any) -> float:
        """Share of the table with accuracy strictly below ``arch``'s (1.0 = better than all)."""
        acc = self.query(arch).accuracy
        return float(np.mean(self.accuracies() < acc))

    def noise(self) -> float:
        """Mean over architectures of the seed-to-seed standard deviation of accuracy."""
        stds = [np.std(r["accuracy_per_seed"], ddof=1) for r in self.records.values()]
        return float(np.mean(stds)) if len(self.config.seeds) > 1 else float("nan")


def build_benchmark(
    space: Space,
    out: str | os.PathLike[str] | None = None,
    *,
    config: BenchConfig | None = None,
    workers: int = 1,
    backend: Literal["local", "ray"] = "local",
    resume: bool = True,
    archs: Sequence[Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> TabularBenchmark:
    """Train every architecture of ``space`` standalone and write the table to ``out``.

    Finished architectures are saved every few seconds (and at the end) to ``<out>.partial``
    (atomically); with ``resume=True`` a rerun keeps them and trains only the rest. The result
    depends only on ``space``, ``config`` and the architectures (not on ``workers`` or
    ``backend``), which the content hash certifies.

    Args:
        space: the search space.
        out: the benchmark file (JSON); ``None`` keeps it in memory only.
        config: the budget (default :func:`default_config`: the shipped tables' budget).
        workers: processes (``local``) or Ray tasks in flight (``ray``).
        backend: ``"local"`` (``concurrent.futures`` processes; in-process when ``workers == 1``)
            or ``"ray"`` (imported only then; joins the cluster at ``RAY_ADDRESS`` when set, else
            starts a local Ray if none is running). Both run
            :func:`subspaces._parallel.map_tasks`.
        resume: reuse ``<out>.partial`` written by an interrupted run with the same space and
            config.
        archs: only these architectures (default: the whole space); the table is then partial
            and is not written to ``out``'s final name unless it covers the space.
        progress: called with ``(done, total)`` after each architecture.

    Returns:
        The benchmark.

    Raises:
        ValueError: for ``workers < 1``, an unknown backend, an empty space or a partial file
            written for another space or config.
        ImportError: for ``backend="ray"`` without Ray installed.
        subspaces._parallel.TaskFailedError: if training an architecture raised, or its worker
            died twice (the architectures finished before it are kept in ``<out>.partial``).

    Example:
        >>> space = CellSpace(ops=("none", "skip_connect"))
        >>> bench = build_benchmark(space, config=BenchConfig(epochs=1, seeds=(0,)))
        >>> len(bench), bench.query("|skip_connect~0|+|none~0|skip_connect~1|+|skip_connect~2|")[1]
        (16, 5210)
    """
    config = config or default_config(space)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an int >= 1, got {workers!r}")
    if backend not in ("local", "ray"):
        raise ValueError(f"backend must be 'local' or 'ray', got {backend!r}")
    todo_all = [_key(space, a) for a in (archs if archs is not None else space)]
    if not todo_all:
        raise ValueError("the search space (or archs) is empty: nothing to build")
    space_dict, config_dict = space_to_dict(space), asdict(config)
    identity = settings_hash({"space": space_dict, "config": config_dict})
    partial = Path(f"{out}.partial") if out is not None else None
    records: dict[str, dict[str, Any]] = {}
    if partial is not None and resume and partial.exists():
        saved = json.loads(partial.read_text())
        if saved.get("identity") != identity:
            raise ValueError(
                f"{partial} was written for another space or config; remove it or pass resume=False"
            )
        records = {a: r for a, r in saved["records"].items() if a in set(todo_all)}
    todo = [a for a in todo_all if a not in records]
    last_save = time.monotonic()

    def save(force: bool = False) -> None:
        nonlocal last_save
        if partial is not None and (force or time.monotonic() - last_save > 5.0):
            write_json(partial, {"identity": identity, "records": records}, indent=None)
            last_save = time.monotonic()

    def done(arch: str, record: dict[str, Any]) -> None:
        records[arch] = record
        save()
        if progress is not None:
            progress(len(records), len(todo_all))

    map_tasks(
        _evaluate,
        [(space_dict, a, config_dict) for a in todo],
        backend="ray" if backend == "ray" else "process",
        workers=workers,
        labels=todo,
        on_result=lambda i, record: done(todo[i], record),
    )
    save(force=True)
    bench = TabularBenchmark(space, config, {a: records[a] for a in todo_all})
    if out is not None and len(bench) == len(space):
        write_json(out, bench.to_json(), indent=1)
        if partial is not None:
            partial.unlink(missing_ok=True)
    return bench
