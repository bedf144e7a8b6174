"""The ``subspaces`` command line.

Usage::

    subspaces --help | --version
    subspaces reproduce --list
    subspaces reproduce ID... [--fast] [--seed N] [--out DIR] [--quiet]
                      [--grid-backend serial|process|ray] [--grid-workers N]
    subspaces reproduce --all [--fast] [--seed N] [--out DIR] [--quiet]
                      [--workers N] [--backend process|ray] [--resume]
    subspaces demo [--n N] [--seed S]
    subspaces analyze [--model M:F] [--data M:F] [--lr LR] [--epochs E] ... [--out DIR]
                      [--resume | --force]
    subspaces compare RUN1 RUN2 [RUN...] --out DIR
    subspaces merge RECIPE --out FILE.safetensors [--quiet]
    subspaces nas build-bench [--space cell|macro] [--out FILE] [--workers N] [--backend local|ray]

Exit status: 0 on success (every reproduction passed), 1 if a reproduction failed its criterion,
2 on an error (bad arguments, unknown id, an exception inside an experiment), 130 when
interrupted. Results go to ``stdout``; progress and diagnostics to ``stderr``.

Each subcommand is one entry of :data:`COMMANDS`: a name, a one-line help, a function that adds
its arguments and a function that runs it and returns the exit status. A new subcommand (the
curvature work's ``analyze``) is one more entry.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from ._progress import Heartbeat, format_seconds

if TYPE_CHECKING:
    from .experiments.registry import Experiment

__all__ = ["COMMANDS", "Command", "CommandError", "build_parser", "main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


class CommandError(Exception):
    """A user error found after argument parsing; printed as one line, exit status 2.

    Example:
        >>> args = build_parser().parse_args(["reproduce"])  # no ids, no --all
        >>> try:
        ...     args.handler(args)
        ... except CommandError as error:
        ...     print(type(error).__name__, error)
        CommandError nothing to run: give experiment ids (e.g. C01), --all or --list
        >>> main(["reproduce"])  # main prints the message to stderr and exits with status 2
        2
    """


@dataclass(frozen=True)
class Command:
    """One subcommand of ``subspaces``.

    Attributes:
        name: the word after ``subspaces``.
        help: one line for ``subspaces --help``.
        configure: adds the subcommand's arguments to its parser.
        handler: runs it and returns the exit status.

    Example:
        A subcommand is a name, a help line and two functions; :func:`build_parser` wires every
        entry of :data:`COMMANDS` the same way:

        >>> def configure(parser):
        ...     parser.add_argument("--name", default="world")
        >>> def greet(args):
        ...     print(f"hello {args.name}")
        ...     return 0
        >>> hello = Command("hello", "print a greeting", configure, greet)
        >>> parser = argparse.ArgumentParser(prog="demo")
        >>> sub = parser.add_subparsers(dest="command")
        >>> p = sub.add_parser(hello.name, help=hello.help)
        >>> hello.configure(p)
        >>> p.set_defaults(handler=hello.handler)
        >>> args = parser.parse_args(["hello", "--name", "subspaces"])
        >>> args.handler(args)
        hello subspaces
        0
        >>> "analyze" in [command.name for command in COMMANDS]
        True
    """

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    handler: Callable[[argparse.Namespace], int]


# ----- argument types -----------------------------------------------------------------------------
def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def _threads_arg(text: str) -> int | str:
    """``--threads``: ``auto`` or a positive integer."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 'auto' or an integer >= 1, got {value}")
    return value


_THREADS_HELP = (
    "torch intra-op threads: 'auto' (default: the cores idle when the run starts; threads on "
    "busy cores oversubscribe a shared machine) or a count; your setting is restored afterwards"
)


def _versions() -> dict[str, str]:
    import torch

    return {
        "subspaces_version": __version__,
        "torch_version": str(torch.__version__),
        "python_version": platform.python_version(),
    }


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ----- reproduce ----------------------------------------------------------------------------------
def _configure_reproduce(p: argparse.ArgumentParser) -> None:
    p.add_argument("ids", nargs="*", metavar="ID", help="experiment ids to run, e.g. C01 P08")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--list", action="store_true", help="list the experiments and exit")
    which.add_argument("--all", action="store_true", help="run every registered experiment")
    p.add_argument("--fast", action="store_true", help="the small setting (what the tests run)")
    p.add_argument(
        "--seed",
        type=_int_at_least(0),
        default=0,
        help="random seed passed to each run (default 0)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("runs/reproduce"),
        metavar="DIR",
        help="where ID.json, figures and summary.json are written (default runs/reproduce)",
    )
    p.add_argument(
        "--threads",
        type=_threads_arg,
        default="auto",
        help="torch intra-op threads per reproduction: 'auto' (default: one; they are small CPU "
        "experiments, and timings stay stable under load) or a count",
    )
    p.add_argument(
        "--workers",
        type=_int_at_least(1),
        default=1,
        metavar="N",
        help="run N reproductions at once: local processes, or Ray tasks in flight with "
        "--backend ray (default 1: one after the other)",
    )
    p.add_argument(
        "--backend",
        choices=("process", "ray"),
        default="process",
        help="where parallel reproductions run: local processes (default) or Ray (pip install "
        "ray; RAY_ADDRESS picks the cluster, else a local Ray with --workers CPUs; one Ray task "
        "per reproduction)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep the finished records (same --fast and --seed) already in --out; run only "
        "the missing ones and those that ended in an error",
    )
    p.add_argument(
        "--grid-backend",
        choices=("serial", "process", "ray"),
        default=None,
        help="where the grid points inside a reproduction run (P22, P24): serial (default), "
        "local processes or Ray (RAY_ADDRESS picks the cluster); sets SUBSPACES_GRID_BACKEND",
    )
    p.add_argument(
        "--grid-workers",
        type=_int_at_least(1),
        default=None,
        metavar="N",
        help="grid points at once (--grid-backend defaults to process when N > 1); sets "
        "SUBSPACES_GRID_WORKERS",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output on stderr")


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 3, 0)] + "..."


def _list_experiments() -> int:
    from .experiments import all_experiments, import_errors

    experiments = all_experiments()
    width = shutil.get_terminal_size((120, 24)).columns
    title_w = max([len("title"), *(len(e.title) for e in experiments)])
    title_w = min(title_w, 60)
    print(f"{'id':<4}  {'slow':<4}  {'title':<{title_w}}  paper")
    for e in experiments:
        paper_w = max(width - (4 + 2 + 4 + 2 + title_w + 2), 20)
        title = _shorten(e.title, title_w)
        slow = "yes" if e.slow else ""
        print(f"{e.id:<4}  {slow:<4}  {title:<{title_w}}  {_shorten(e.paper, paper_w)}")
    print(f"{len(experiments)} experiment(s)")
    for module, error in sorted(import_errors().items()):
        _err(f"warning: reproduction module {module} failed to import: {error}")
    return EXIT_OK


def _select(args: argparse.Namespace) -> list[Experiment]:
    from .experiments import all_experiments, get

    if args.all:
        if args.ids:
            raise CommandError("give experiment ids or --all, not both")
        return all_experiments()
    if not args.ids:
        raise CommandError("nothing to run: give experiment ids (e.g. C01), --all or --list")
    selected: list[Experiment] = []
    unknown: list[str] = []
    for raw in args.ids:
        try:
            experiment = get(raw.upper())
        except KeyError:
            unknown.append(raw)
            continue
        if experiment not in selected:
            selected.append(experiment)
    if unknown:
        try:
            get(unknown[0])
        except KeyError as error:
            raise CommandError(str(error)) from None
    return selected


def _key_numbers(measured: dict[str, Any], limit: int = 5) -> str:
    parts = []
    for key, value in measured.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
        if len(parts) == limit:
            break
    return ", ".join(parts)


def _print_verdict(record: dict[str, Any], brief: str | None, reused: bool) -> None:
    """Print a reproduction's one-line verdict (and a short traceback for an error)."""
    from .experiments.registry import format_interval

    seconds = format_seconds(float(record.get("seconds") or 0.0))
    cpu = record.get("cpu_seconds")
    if isinstance(cpu, (int, float)):
        seconds += f", CPU {format_seconds(float(cpu))}"
    when = f"{seconds}, resumed" if reused else seconds
    if record.get("status") == "error":
        error = str(record.get("error") or "").strip().splitlines()
        print(f"ERROR {record['id']}  [{when}]  {error[-1] if error else ''}", flush=True)
        if brief:
            _err(brief)
        return
    verdict = "PASS" if record.get("passed") else "FAIL"
    measured = record.get("measured") or {}
    detail = record.get("summary") or _key_numbers(measured)
    intervals = [format_interval(key, measured[key]) for key in record.get("headline") or []]
    if intervals:
        detail = f"{detail}  | " + "; ".join(intervals)
    print(f"{verdict}  {record['id']}  [{when}]  {detail}", flush=True)


def _row(record: dict[str, Any]) -> dict[str, Any]:
    return {k: record.get(k) for k in ("id", "title", "status", "passed", "seconds", "summary")}


def _run_one(experiment: Experiment, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Run one experiment in this process and write ``out/ID.json`` and its figures.

    An exception inside the experiment is reported (a brief traceback on stderr, the full one in
    the JSON) and turned into an ``error`` record, so the other experiments still run.

    Returns:
        The experiment's row of ``summary.json``.
    """
    from .experiments.gallery import run_record, write_record

    threads = 1 if args.threads == "auto" else args.threads
    with Heartbeat(f"{experiment.id} running", quiet=args.quiet):
        record, figures, brief = run_record(experiment.id, args.fast, args.seed, threads)
    write_record(out, record, figures)
    _print_verdict(record, brief, reused=False)
    return _row(record)


def _reproduce(args: argparse.Namespace) -> int:
    if args.list:
        if args.ids:
            raise CommandError("--list takes no experiment ids")
        return _list_experiments()
    from ._io import write_json
    from .experiments import import_errors

    if args.grid_workers is not None or args.grid_backend is not None:
        workers = args.grid_workers or 1
        backend = args.grid_backend or ("process" if workers > 1 else "serial")
        os.environ["SUBSPACES_GRID_BACKEND"] = backend  # read by the grids' grid_settings()
        os.environ["SUBSPACES_GRID_WORKERS"] = str(workers)
    experiments = _select(args)
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise CommandError(f"--out must be a directory, but {str(out)!r} is a file")
    out.mkdir(parents=True, exist_ok=True)
    versions = _versions()
    broken = import_errors() if args.all else {}
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    for module, error in sorted(broken.items()):
        print(f"ERROR {module}  reproduction module failed to import: {error}", flush=True)
        rows.append(
            {
                "id": module,
                "title": "",
                "status": "error",
                "passed": False,
                "seconds": 0.0,
                "summary": f"import failed: {error}",
            }
        )
    setting = "fast" if args.fast else "full"
    if args.workers > 1 or args.backend == "ray":
        from .experiments.gallery import run_gallery

        if not args.quiet:
            where = "Ray" if args.backend == "ray" else f"{args.workers} local processes"
            _err(f"{len(experiments)} reproductions ({setting}, seed {args.seed}) on {where}")
        try:
            records = run_gallery(
                [e.id for e in experiments],
                out,
                fast=args.fast,
                seed=args.seed,
                backend=args.backend,
                workers=args.workers,
                threads=1 if args.threads == "auto" else args.threads,
                resume=args.resume,
                on_done=_print_verdict,
            )
        except ImportError as error:
            raise CommandError(str(error)) from None
        rows.extend(_row(r) for r in records)
        experiments = []  # all done
    for i, experiment in enumerate(experiments, 1):
        from .experiments.gallery import finished_record

        old = finished_record(out, experiment.id, args.fast, args.seed) if args.resume else None
        if old is not None:
            _print_verdict(old, None, reused=True)
            rows.append(_row(old))
            continue
        if not args.quiet:
            position = f"[{i}/{len(experiments)}]"
            _err(f"{position} {experiment.id} {experiment.title} ({setting}, seed {args.seed})")
        # The reproductions are small CPU experiments: "auto" means one thread.
        rows.append(_run_one(experiment, args, out))
    seconds = time.perf_counter() - start
    counts = {s: sum(r["status"] == s for r in rows) for s in ("passed", "failed", "error")}
    status = EXIT_ERROR if counts["error"] else EXIT_FAILED if counts["failed"] else EXIT_OK
    write_json(
        out / "summary.json",
        {
            "date": _now(),
            "fast": args.fast,
            "seed": args.seed,
            "seconds": seconds,
            "counts": counts,
            "exit_status": status,
            "results": rows,
            **versions,
        },
    )
    print(
        f"Summary: {counts['passed']} passed, {counts['failed']} failed, "
        f"{counts['error']} error(s) of {len(rows)} in {format_seconds(seconds)}; "
        f"results in {out}{os.sep}",
        flush=True,
    )
    return status


# ----- demo ---------------------------------------------------------------------------------------
def _configure_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--n", type=_int_at_least(50), default=20000, help="operator dimension (default 20000)"
    )
    p.add_argument("--seed", type=_int_at_least(0), default=0, help="random seed (default 0)")


def _demo(args: argparse.Namespace) -> int:
    import torch

    from .linalg.lanczos import lanczos
    from .linalg.power import power_iteration
    from .testing import KnownSpectrumOperator, gap_spectrum

    k, gap, tol, n = 5, 0.98, 1e-6, args.n
    lam = gap_spectrum(n, k, gap)
    A = KnownSpectrumOperator(lam, generator=torch.Generator().manual_seed(args.seed))
    print(
        f"Top-{k} eigenpairs of a {n} x {n} matrix-free symmetric operator with known spectrum\n"
        f"(lambda_(i+1) / lambda_i = {gap} for the top {k + 1}, then a bulk), both solvers run\n"
        f"to a relative residual ||Ax - theta x|| <= {tol:g} ||A||, checked explicitly.\n"
    )
    start = time.perf_counter()
    with Heartbeat("Lanczos"):
        lz = lanczos(A, k, tol=tol, generator=torch.Generator().manual_seed(args.seed + 1))
    lz_s = time.perf_counter() - start
    start = time.perf_counter()
    with Heartbeat("power iteration"):
        pw = power_iteration(A, k, tol=tol, generator=torch.Generator().manual_seed(args.seed + 2))
    pw_s = time.perf_counter() - start

    lz_vals, pw_vals = lz.eigenvalues.tolist(), pw.eigenvalues.tolist()
    lz_res, pw_res = lz.relative_residuals.tolist(), pw.relative_residuals.tolist()
    head = ("i", "true", "Lanczos", "rel.resid", "power", "rel.resid")
    print(f"{head[0]:>2}  {head[1]:>12}  {head[2]:>12}  {head[3]:>9}  {head[4]:>12}  {head[5]:>9}")
    for i in range(k):
        print(
            f"{i + 1:>2}  {float(lam[i]):>12.9f}  {lz_vals[i]:>12.9f}  {lz_res[i]:>9.1e}"
            f"  {pw_vals[i]:>12.9f}  {pw_res[i]:>9.1e}"
        )
    lz_err = float(((lz.eigenvalues.sort(descending=True).values - lam[:k]).abs() / lam[:k]).max())
    pw_err = float(((pw.eigenvalues.sort(descending=True).values - lam[:k]).abs() / lam[:k]).max())
    ratio = pw.num_matvecs / max(lz.num_matvecs, 1)
    print(f"\n{'':<16}{'matvecs':>8}  {'seconds':>8}  {'certified':>9}  {'max eig. error':>14}")
    for name, res, secs, err in (
        ("Lanczos", lz, lz_s, lz_err),
        ("power iteration", pw, pw_s, pw_err),
    ):
        certified = f"{int(res.converged.sum())}/{k}"
        print(f"{name:<16}{res.num_matvecs:>8}  {secs:>8.3f}  {certified:>9}  {err:>14.1e}")
    speedup = pw_s / max(lz_s, 1e-12)
    pace = f"{speedup:.1f}x faster" if speedup >= 1 else f"{1 / speedup:.1f}x slower"
    print(f"Lanczos used {ratio:.1f}x fewer matvecs and was {pace} in wall time.")

    trace_line = _demo_trace(A, lam, args.seed)
    print(
        f"\nSummary: Lanczos certified {int(lz.converged.sum())}/{k} eigenpairs with {ratio:.1f}x "
        f"fewer matvecs than power iteration ({pw.num_matvecs} vs {lz.num_matvecs}); {trace_line}"
    )
    return EXIT_OK if lz.all_converged else EXIT_FAILED


def _demo_trace(A: Any, lam: Any, seed: int, num_matvecs: int = 120) -> str:
    """Print trace estimates next to the true trace.

    Returns:
        A phrase for the summary line.
    """
    import torch

    try:
        from .linalg.trace import hutchinson_trace, xtrace
    except ImportError:
        print("\nTrace estimation: skipped (subspaces.linalg.trace is not available yet).")
        return "trace estimation skipped."
    true = float(lam.sum())
    print(f"\nTrace estimates with {num_matvecs} matvecs each (true trace {true:.6g}):")
    print(f"{'':<12}{'estimate':>14}  {'std. error':>10}  {'error':>10}  {'|error| / se':>12}")
    phrases = []
    for name, fn in (("Hutchinson", hutchinson_trace), ("XTrace", xtrace)):
        res = fn(A, num_matvecs, generator=torch.Generator().manual_seed(seed + 3))
        est = float(res.estimate)
        se = getattr(res, "stderr", None)
        se_f = float(se) if se is not None else float("nan")
        err = est - true
        z = abs(err) / se_f if se_f > 0 else float("nan")
        print(f"{name:<12}{est:>14.6g}  {se_f:>10.2g}  {err:>10.2g}  {z:>12.2f}")
        phrases.append(f"{name} within {z:.1f} standard errors")
    return "trace: " + ", ".join(phrases) + "."


# ----- the command table --------------------------------------------------------------------------
def _configure_analyze(p: argparse.ArgumentParser) -> None:
    from .analyze import AnalyzeConfig

    d = AnalyzeConfig()
    p.add_argument(
        "--model",
        default=None,
        metavar="MODULE:FACTORY",
        help="factory(in_dim, out_dim) -> nn.Module, as pkg.module:factory (imported with the "
        "current directory on the path) or path/to/file.py:factory (default: an MLP)",
    )
    p.add_argument(
        "--data",
        default=None,
        metavar="MODULE:FACTORY",
        help="factory() -> (X_train, y_train, X_test, y_test), as pkg.module:factory or "
        "path/to/file.py:factory; 1-D float targets are regression (use --loss mse) "
        "(default: bundled digits)",
    )
    p.add_argument("--loss", default=d.loss, choices=["cross_entropy", "mse"])
    p.add_argument("--optimizer", default=d.optimizer, choices=["sgd", "adam", "adamw"])
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--momentum", type=float, default=d.momentum)
    p.add_argument("--epochs", type=_int_at_least(1), default=d.epochs)
    p.add_argument("--batch-size", type=_int_at_least(1), default=d.batch_size)
    p.add_argument(
        "--every", type=_int_at_least(1), default=d.every, help="curvature every N steps"
    )
    p.add_argument("--k", type=_int_at_least(1), default=d.k, help="tracked eigenspace dimension")
    p.add_argument(
        "--width", type=_int_at_least(1), default=d.width, help="hidden width of the default MLP"
    )
    p.add_argument(
        "--curvature-samples",
        type=_int_at_least(1),
        default=None,
        metavar="N",
        help="measure curvature on a random subset of N training samples drawn with --seed "
        "(recorded in the report; default: all)",
    )
    p.add_argument(
        "--curvature-batch-size",
        type=_int_at_least(1),
        default=d.curvature_batch_size,
        metavar="B",
        help="samples per batch of each curvature product, summed over batches exactly "
        f"(default {d.curvature_batch_size})",
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--dtype", default=d.dtype, choices=["float32", "float64"])
    p.add_argument("--device", default=d.device, help="cpu, cuda, cuda:N or mps (default cpu)")
    p.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="output folder (default: a new folder under runs/); a folder that holds another "
        "run is refused unless --resume or --force is given",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run in --out from its checkpoint (which must exist, be "
        "intact and come from the same options)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="start a new run in --out even if it holds another run (its checkpoint, "
        "summary.json and report.html are replaced)",
    )
    p.add_argument("--threads", type=_threads_arg, default="auto", help=_THREADS_HELP)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")


def _new_run_folder() -> Path:
    """A folder name under ``runs/`` that does not exist yet (``analyze-<date>-<time>[-N]``)."""
    base = Path("runs") / _dt.datetime.now().strftime("analyze-%Y%m%d-%H%M%S")
    out, n = base, 1
    while out.exists():
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


def _analyze(args: argparse.Namespace) -> int:
    from .analyze import AnalyzeConfig, run_analyze
    from .report import text_summary

    config = AnalyzeConfig(
        model=args.model,
        data=args.data,
        loss=args.loss,
        optimizer=args.optimizer,
        lr=args.lr,
        momentum=args.momentum,
        epochs=args.epochs,
        batch_size=args.batch_size,
        every=args.every,
        k=args.k,
        seed=args.seed,
        dtype=args.dtype,
        device=args.device,
        width=args.width,
        curvature_samples=args.curvature_samples,
        curvature_batch_size=args.curvature_batch_size,
    )
    if args.resume and args.out is None:
        raise CommandError("--resume needs --out (the folder of the interrupted run)")
    out = Path(args.out) if args.out else _new_run_folder()
    try:
        summary = run_analyze(
            config,
            out,
            resume=args.resume,
            force=args.force,
            quiet=args.quiet,
            log=_err,
            threads=args.threads,
        )
    except ValueError as error:
        raise CommandError(str(error)) from None
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 wrote the report
        print(text_summary(summary, out / "report.html"))
    return EXIT_OK


# ----- compare ------------------------------------------------------------------------------------
def _configure_compare(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "runs",
        nargs="+",
        metavar="RUN",
        help="run folders written by 'subspaces analyze' (each with its summary.json)",
    )
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="folder for compare.html (created if missing; other files there are left alone)",
    )


def _compare(args: argparse.Namespace) -> int:
    from .report.compare import write_compare

    if len(args.runs) < 2:
        raise CommandError(f"give at least two run folders to compare, got {len(args.runs)}")
    try:
        path = write_compare(args.runs, args.out)
    except ValueError as error:
        raise CommandError(str(error)) from None
    except OSError as error:
        raise CommandError(f"cannot write --out {args.out!r}: {error}") from None
    print(f"report: {path}")
    return EXIT_OK


# ----- merge --------------------------------------------------------------------------------------
def _configure_merge(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "recipe",
        metavar="RECIPE",
        help="a JSON or YAML recipe: method, base, models, weights, parameters (docs/merging.md)",
    )
    p.add_argument(
        "--out",
        required=True,
        metavar="FILE",
        help="the merged model, a .safetensors file (written atomically when the merge is done)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress line")


def _merge(args: argparse.Namespace) -> int:
    from .merging.recipe import load_recipe, run_recipe

    try:
        recipe = load_recipe(args.recipe)
        start = time.perf_counter()
        path = run_recipe(recipe, args.out, progress=not args.quiet)
    except (ValueError, TypeError, ImportError) as error:
        raise CommandError(str(error)) from None
    except OSError as error:
        raise CommandError(f"cannot write --out {args.out!r}: {error}") from None
    elapsed = format_seconds(time.perf_counter() - start)
    print(f"merged {len(recipe.models)} models ({recipe.method}) in {elapsed}: {path}")
    return EXIT_OK


# ----- nas ----------------------------------------------------------------------------------------
def _configure_nas(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="nas_command", metavar="ACTION", required=True)
    build = sub.add_parser(
        "build-bench",
        help="train every architecture of a space standalone into a tabular benchmark (resumable)",
    )
    build.add_argument("--space", choices=("cell", "macro"), default="cell")
    build.add_argument(
        "--out", metavar="FILE", help="benchmark file (default: <space>_bench.json here)"
    )
    build.add_argument("--workers", type=_int_at_least(1), default=1, metavar="N")
    build.add_argument("--backend", choices=("local", "ray"), default="local")
    build.add_argument("--no-resume", action="store_true", help="ignore FILE.partial")
    build.add_argument("-q", "--quiet", action="store_true", help="no progress line")


def _nas(args: argparse.Namespace) -> int:
    from .nas.bench import build_benchmark
    from .nas.space import CellSpace, MacroSpace

    space = CellSpace() if args.space == "cell" else MacroSpace()
    out = args.out or f"{args.space}_bench.json"
    start = time.perf_counter()

    def progress(done: int, total: int) -> None:
        if not args.quiet:
            print(f"\r{done}/{total} architectures", end="", file=sys.stderr, flush=True)

    try:
        bench = build_benchmark(
            space,
            out,
            workers=args.workers,
            backend=args.backend,
            resume=not args.no_resume,
            progress=progress,
        )
    except (ValueError, ImportError) as error:
        raise CommandError(str(error)) from None
    except OSError as error:
        raise CommandError(f"cannot write --out {out!r}: {error}") from None
    if not args.quiet:
        print(file=sys.stderr)
    elapsed = format_seconds(time.perf_counter() - start)
    print(f"{len(bench)} architectures in {elapsed}: {out} (sha256 {bench.content_hash[:12]})")
    return EXIT_OK


COMMANDS: list[Command] = [
    Command(
        "reproduce",
        "run the papers' reproductions and write their verdicts (ID.json, summary.json)",
        _configure_reproduce,
        _reproduce,
    ),
    Command(
        "demo",
        "a short demonstration of the core: certified Lanczos vs power iteration, trace estimates",
        _configure_demo,
        _demo,
    ),
    Command(
        "analyze",
        "train a model while tracking its Hessian; write report.html, summary.json and figures",
        _configure_analyze,
        _analyze,
    ),
    Command(
        "compare",
        "overlay the curves of two or more analyze runs in one report (compare.html)",
        _configure_compare,
        _compare,
    ),
    Command(
        "merge",
        "merge models by a JSON/YAML recipe (TA, TIES, DARE, breadcrumbs, SLERP) into .safetensors",
        _configure_merge,
        _merge,
    ),
    Command(
        "nas",
        "neural architecture search tools: 'nas build-bench' builds a tabular benchmark",
        _configure_nas,
        _nas,
    ),
]


def build_parser() -> argparse.ArgumentParser:
    """The ``subspaces`` argument parser, one subparser per entry of :data:`COMMANDS`.

    Returns:
        The parser.

    Example:
        >>> build_parser().parse_args(["reproduce", "C01", "--fast"]).fast
        True
    """
    parser = argparse.ArgumentParser(
        prog="subspaces",
        description="The low-dimensional structure of learning: find, compare and use the "
        "subspaces where learning happens.",
        epilog="Exit status: 0 success, 1 a reproduction failed, 2 an error. "
        "Run 'subspaces COMMAND --help' for a command's options.",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"subspaces {__version__} (python {platform.python_version()})",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        command.configure(p)
        p.set_defaults(handler=command.handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``subspaces`` command line.

    Args:
        argv: the arguments after the program name (default ``sys.argv[1:]``).

    Returns:
        The exit status: 0 success, 1 a reproduction failed, 2 an error, 130 interrupted.

    Example:
        >>> main(["reproduce", "--list"])  # doctest: +ELLIPSIS
        id    slow  title ...
        C01 ...
        0
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version and usage errors
        code = exit_.code
        return code if isinstance(code, int) else (EXIT_OK if code is None else EXIT_ERROR)
    if args.command is None:
        parser.print_usage(sys.stderr)
        _err("subspaces: error: a command is required (see 'subspaces --help')")
        return EXIT_ERROR
    try:
        return int(args.handler(args))
    except CommandError as error:
        _err(f"subspaces {args.command}: error: {error}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        _err("subspaces: interrupted")
        return EXIT_INTERRUPTED
