"""Shared set-up of the curvature benchmarks: problems, anchors, product counters, references.

Used by ``curvature_eigs.py``, ``curvature_hvp.py`` and ``curvature_trace_density.py``. Not a
benchmark itself.

Problems (float32, at initialization, cross-entropy with mean reduction):

* ``mlp``: ``nn.Sequential`` 64-256-256-10 with ReLU (85,002 parameters) on one fixed batch of
  512 N(0, 1) inputs with uniformly random labels, everything drawn after
  ``torch.manual_seed(0)`` (model first, then inputs, then labels) -- the set-up of
  ``shared/research/curvature.md`` section 3, whose float64 spectrum (lambda_1 = 0.7733, nine
  outliers) this reproduces exactly;
* ``cnn``: a small CNN (conv 1->8, conv 8->16, 2x2 max-pool, 256-48-10 head; 14,074
  parameters) on the first 256 images of scikit-learn's 8x8 ``load_digits`` (pixels / 16,
  standardized, the real labels); if scikit-learn is missing, 8x8 N(0, 1) images with random
  labels (``params`` of every result says which);
* ``transformer``: a tiny pre-LayerNorm transformer (linear token embedding 8->16, learned
  positions, one block of single-head self-attention and a 16-32-16 GELU MLP, each behind an
  ``nn.LayerNorm`` and a residual connection, a final LayerNorm, mean pooling, a 16->4 head;
  2,596 parameters) on 64 generated sequences of 8 tokens x 8 N(0, 1) features whose label is
  the argmax of a fixed random linear map of the token mean. Its reference is NOT our operator
  nor ``torch.func.hessian`` (torch 2.13's forward-over-reverse rule for LayerNorm is 2.3%
  off on its products here) but central finite differences of plain-autograd gradients in float64
  (``reference_fd_eigenvalues``).

Anchors (installed by ``benchmarks/setup_anchors.sh``): PyHessian 0.1, curvlinops-for-pytorch
3.0.1, hessian-eigenthings 1.0.0a5. A missing anchor never stops a benchmark: its rows say
``"not installed"``.

Product counting: every tool is counted at the lowest product call it makes, by the same kind of
wrapper (an instance- or module-level replacement of that function, which counts the columns it
was given and adds up the wall time spent inside it):

* ours: ``HessianOperator._matmat`` (columns of the block; cross-checked against the solver's own
  ``num_matvecs``);
* curvlinops: ``HessianLinearOperator._matmat`` (columns of the tensor-list block);
* PyHessian: ``pyhessian.utils.hessian_vector_product`` as bound inside ``pyhessian/hessian.py``
  (one vector per call);
* hessian-eigenthings: ``HessianOperator.matvec`` (one vector per call).
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import importlib
import importlib.metadata as md
import math
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from subspaces.curvature import HessianOperator
from subspaces.linalg import lanczos

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

#: distribution name -> import name of each anchor
ANCHORS = {
    "pyhessian": ("pyhessian", "pyhessian"),
    "curvlinops": ("curvlinops-for-pytorch", "curvlinops"),
    "eigenthings": ("hessian-eigenthings", "hessian_eigenthings"),
    "backpack": ("backpack-for-pytorch", "backpack"),
}

NOT_INSTALLED = "not installed"


# ----- environment -----------------------------------------------------------------------------
def set_threads(n: int) -> None:
    """One setting for every tool: the machine is shared, and multi-threaded small ops on it are
    dominated by contention with other jobs (earlier 2-thread runs were 3-20x slower and far
    noisier than 1-thread ones), which would blur the comparison rather than inform it."""
    torch.set_num_threads(n)
    with contextlib.suppress(RuntimeError):  # already set once in this process
        torch.set_num_interop_threads(1)


def anchor_status(key: str) -> str | None:
    """``None`` when the anchor imports, else a short reason (``"not installed"``, error).

    Returns:
        ``None`` or a human-readable reason.
    """
    dist, mod = ANCHORS[key]
    try:
        md.version(dist)
    except md.PackageNotFoundError:
        return NOT_INSTALLED
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importlib.import_module(mod)
            if key == "pyhessian":
                importlib.import_module("pyhessian.hessian")
    except Exception as err:  # an anchor that does not import on this torch
        return f"import failed: {type(err).__name__}: {err}"[:200]
    return None


def versions() -> dict[str, str]:
    """Versions of torch, numpy, scipy and every anchor (``"not installed"`` when missing).

    Returns:
        dist name -> version.
    """
    out = {}
    for dist in ("torch", "numpy", "scipy", *(d for d, _ in ANCHORS.values())):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = NOT_INSTALLED
    out["python"] = platform.python_version()
    return out


def machine() -> str:
    """One line naming the machine and the software.

    Returns:
        The description.
    """
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"{cpu}, {os.cpu_count()} CPUs (shared), torch {torch.__version__} "
        f"({torch.get_num_threads()} thread), Python {platform.python_version()}"
    )


def today() -> str:
    """ISO date.

    Returns:
        ``YYYY-MM-DD``.
    """
    return dt.date.today().isoformat()


def load_average() -> float | None:
    """1-minute load average, or ``None`` where unavailable.

    Returns:
        The load.
    """
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


# ----- problems --------------------------------------------------------------------------------
@dataclass
class Problem:
    """A model (float32, at init), one fixed batch and the loss, shared by every tool."""

    name: str
    model: nn.Module
    X: Tensor
    y: Tensor
    description: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_params(self) -> int:
        """Number of parameters."""
        return sum(p.numel() for p in self.model.parameters())

    @property
    def params(self) -> list[Tensor]:
        """The model's parameters, in order."""
        return list(self.model.parameters())

    def criterion(self) -> nn.Module:
        """Mean cross-entropy as a module (PyHessian, curvlinops).

        Returns:
            ``nn.CrossEntropyLoss()``.
        """
        return nn.CrossEntropyLoss()

    def clear_grads(self) -> None:
        """Drop ``.grad`` (PyHessian builds its graph there, and a second constructor would
        accumulate into a stale one and double the Hessian)."""
        for p in self.model.parameters():
            p.grad = None

    def ours(self, method: str = "auto", dtype: torch.dtype | None = None) -> HessianOperator:
        """Our Hessian operator on this problem.

        Returns:
            ``HessianOperator(model, "cross_entropy", [(X, y)], method=method, dtype=dtype)``.
        """
        return HessianOperator(
            self.model, "cross_entropy", [(self.X, self.y)], method=method, dtype=dtype
        )

    def gradient_fn(self) -> Callable[[], Any]:
        """One plain gradient (forward + backward), the unit of cost.

        Returns:
            A function computing it.
        """
        params, crit = self.params, self.criterion()

        def grad() -> Any:
            return torch.autograd.grad(crit(self.model(self.X), self.y), params)

        return grad


def mlp_problem() -> Problem:
    """The 85k-parameter MLP of the research note (section 3).

    Returns:
        The problem.
    """
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
    )
    X = torch.randn(512, 64)
    y = torch.randint(0, 10, (512,))
    return Problem(
        "mlp",
        model,
        X,
        y,
        "MLP 64-256-256-10 ReLU, 85,002 params, batch 512 N(0,1) inputs, random labels, seed 0",
        {"batch": 512, "data": "N(0,1) inputs, random labels"},
    )


def cnn_problem() -> Problem:
    """A small CNN on 8x8 digits.

    Returns:
        The problem.
    """
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 48),
        nn.ReLU(),
        nn.Linear(48, 10),
    )
    n = 256
    try:
        from sklearn.datasets import load_digits

        digits = load_digits()
        X = torch.tensor(digits.images[:n], dtype=torch.float32).unsqueeze(1) / 16.0
        X = (X - X.mean()) / X.std()
        y = torch.tensor(digits.target[:n], dtype=torch.long)
        data = "scikit-learn load_digits, first 256 images, standardized, real labels"
    except ImportError:
        X = torch.randn(n, 1, 8, 8)
        y = torch.randint(0, 10, (n,))
        data = "8x8 N(0,1) images, random labels (scikit-learn not installed)"
    p = Problem("cnn", model, X, y, "", {"batch": n, "data": data})
    p.description = (
        f"CNN conv(1-8)-conv(8-16)-maxpool-256-48-10 ReLU, {p.num_params:,} params, "
        f"batch {n}: {data}"
    )
    return p


class _Block(nn.Module):
    """Pre-LayerNorm transformer block: single-head self-attention and a GELU MLP, each behind a
    LayerNorm and a residual connection (attention written out, no fused kernels)."""

    def __init__(self, d: int, hidden: int) -> None:
        super().__init__()
        self.ln1, self.qkv, self.proj = nn.LayerNorm(d), nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.ln2, self.fc1, self.fc2 = nn.LayerNorm(d), nn.Linear(d, hidden), nn.Linear(hidden, d)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.qkv(self.ln1(x)).chunk(3, dim=-1)
        att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
        x = x + self.proj(att @ v)
        return x + self.fc2(self.act(self.fc1(self.ln2(x))))


class TinyTransformer(nn.Module):
    """Linear embedding + learned positions, one ``_Block``, final LayerNorm, mean pool, head."""

    def __init__(
        self, d_in: int = 8, d: int = 16, hidden: int = 32, seq: int = 8, classes: int = 4
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(d_in, d)
        self.pos = nn.Parameter(0.1 * torch.randn(seq, d))
        self.block = _Block(d, hidden)
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)

    def forward(self, x: Tensor) -> Tensor:
        z = self.ln_f(self.block(self.embed(x) + self.pos))
        return self.head(z.mean(dim=1))


def transformer_problem() -> Problem:
    """A 2,596-parameter transformer with LayerNorm, GELU and residuals on generated sequences.

    Returns:
        The problem (``info["reference"] == "fd"``: scored against finite differences).
    """
    torch.manual_seed(0)
    model = TinyTransformer()
    n, seq, d_in, classes = 64, 8, 8, 4
    X = torch.randn(n, seq, d_in)
    y = (X.mean(dim=1) @ torch.randn(d_in, classes)).argmax(dim=1)
    data = (
        f"{n} sequences of {seq} tokens x {d_in} N(0,1) features, label = argmax of a fixed "
        "random linear map of the token mean, seed 0"
    )
    p = Problem("transformer", model, X, y, "", {"batch": n, "data": data, "reference": "fd"})
    p.description = (
        "tiny transformer: embed 8-16 + positions, pre-LN block (1-head attention, "
        f"16-32-16 GELU MLP, residuals), final LayerNorm, mean pool, head 16-4; "
        f"{p.num_params:,} params, batch {n}: {data}"
    )
    return p


PROBLEMS: dict[str, Callable[[], Problem]] = {
    "mlp": mlp_problem,
    "cnn": cnn_problem,
    "transformer": transformer_problem,
}


# ----- counting wrappers -----------------------------------------------------------------------
@dataclass
class Counter:
    """Products counted (columns) and wall time spent inside the product call."""

    count: int = 0
    seconds: float = 0.0

    def wrap(self, fn: Callable[..., Any], columns: Callable[..., int]) -> Callable[..., Any]:
        """Wrap ``fn`` so that every call adds ``columns(*args)`` and its time.

        Returns:
            The wrapped function.
        """

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            self.count += columns(*args, **kwargs)
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t

        return wrapped


def count_ours(H: HessianOperator) -> Counter:
    """Count the columns our operator multiplies (instance-level ``_matmat`` replacement).

    Returns:
        The live counter.
    """
    c = Counter()
    H._matmat = c.wrap(H._matmat, lambda X: X.shape[1])  # type: ignore[method-assign]
    return c


def count_curvlinops(op: Any) -> Counter:
    """Count the columns a curvlinops operator multiplies (its tensor-list ``_matmat``).

    Returns:
        The live counter.
    """
    c = Counter()
    op._matmat = c.wrap(op._matmat, lambda M: M[0].shape[-1])
    return c


def count_eigenthings(op: Any) -> Counter:
    """Count hessian-eigenthings matvecs (one vector per ``matvec`` call).

    Returns:
        The live counter.
    """
    c = Counter()
    op.matvec = c.wrap(op.matvec, lambda v: 1)
    return c


@contextlib.contextmanager
def count_pyhessian() -> Iterator[Counter]:
    """Count PyHessian's single-batch HVPs.

    ``import pyhessian.hessian`` returns the class ``hessian`` (``pyhessian/__init__.py`` shadows
    the module), so the module is taken from ``sys.modules`` and its name
    ``hessian_vector_product`` is replaced while the context is open.

    Yields:
        The live counter.
    """
    importlib.import_module("pyhessian")
    mod = sys.modules["pyhessian.hessian"]
    orig = mod.hessian_vector_product
    c = Counter()
    mod.hessian_vector_product = c.wrap(orig, lambda *a, **k: 1)
    try:
        yield c
    finally:
        mod.hessian_vector_product = orig


# ----- anchor constructors ---------------------------------------------------------------------
def pyhessian_hessian(p: Problem) -> Any:
    """PyHessian on the problem's batch (builds the gradient graph in ``.grad``).

    Returns:
        A ``pyhessian.hessian`` object.
    """
    from pyhessian import hessian

    p.clear_grads()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return hessian(p.model, p.criterion(), data=(p.X, p.y), cuda=False)


def curvlinops_hessian(p: Problem) -> Any:
    """curvlinops' Hessian operator (``check_deterministic=False``: one fixed batch, no
    stochastic layers, so its two extra verification passes would only add time).

    Returns:
        A ``curvlinops.HessianLinearOperator``.
    """
    from curvlinops import HessianLinearOperator

    return HessianLinearOperator(
        p.model, p.criterion(), p.params, [(p.X, p.y)], check_deterministic=False
    )


def eigenthings_hessian(p: Problem) -> Any:
    """hessian-eigenthings' Hessian operator (``method="autograd"``, its default).

    Returns:
        A ``hessian_eigenthings.HessianOperator``.
    """
    import hessian_eigenthings as he

    return he.HessianOperator(
        p.model, [(p.X, p.y)], he.supervised_loss(nn.functional.cross_entropy)
    )


# ----- references ------------------------------------------------------------------------------
def reference_eigenvalues(
    p: Problem, k: int = 10, smallest: int = 0
) -> tuple[Tensor, dict[str, Any]]:
    """Top-``k`` eigenvalues of the float64 Hessian (our operator, vmap engine, Lanczos at a
    relative residual of 1e-10, so every eigenvalue is exact to ~1e-10 relative or better), and
    the ``smallest`` most negative ones in ``info["smallest_eigenvalues"]`` (for tools that find
    the eigenvalues of largest magnitude).

    Returns:
        ``(eigenvalues descending, info)``.
    """
    H = p.ours(method="vmap", dtype=torch.float64)
    t = time.perf_counter()
    r = lanczos(H, k, tol=1e-10, generator=torch.Generator().manual_seed(12345))
    info = {
        "method": "float64 HessianOperator (vmap), lanczos tol=1e-10",
        "k": k,
        "num_matvecs": r.num_matvecs,
        "max_relative_residual": float(r.relative_residuals.max()),
        "all_converged": r.all_converged,
        "seconds": time.perf_counter() - t,
        "eigenvalues": r.eigenvalues.tolist(),
    }
    if smallest:
        rs = lanczos(H, smallest, "smallest", tol=1e-10, generator=torch.Generator().manual_seed(1))
        info["smallest_eigenvalues"] = rs.eigenvalues.tolist()
        info["num_matvecs"] += rs.num_matvecs
        info["all_converged"] = info["all_converged"] and rs.all_converged
        info["seconds"] = time.perf_counter() - t
    return r.eigenvalues.double(), info


def _flat_loss64(p: Problem) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """The problem's mean loss as a function of the flat float64 parameter vector (a float64
    copy of the float32 weights and inputs, ``torch.func.functional_call``).

    Returns:
        ``(theta, loss)``.
    """
    model = copy.deepcopy(p.model).double()
    names = [n for n, _ in model.named_parameters()]
    shapes = [q.shape for q in model.parameters()]
    theta = torch.cat([q.detach().reshape(-1) for q in model.parameters()])
    X = p.X.double() if p.X.is_floating_point() else p.X

    def loss(t: Tensor) -> Tensor:
        params, i = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            params[name] = t[i : i + shape.numel()].view(shape)
            i += shape.numel()
        out = torch.func.functional_call(model, params, (X,))
        return nn.functional.cross_entropy(out, p.y)

    return theta, loss


def fd_hessian(p: Problem, rel_step: float = 1e-5) -> tuple[Tensor, dict[str, Any]]:
    """Dense float64 Hessian by central differences of plain-autograd gradients (reverse mode
    only, no second-order rule involved): column ``i`` is ``(g(theta + h e_i) - g(theta - h e_i))
    / (2 h)`` with ``h = rel_step * max(1, |theta_i|)``. Step accuracy is measured on 64 random
    columns against the step ``2 h`` (truncation error ~h^2, rounding ~eps/h).

    Returns:
        ``(H, info)``: ``H`` not symmetrised; ``info["asymmetry"]`` is
        ``||H - H^T||_F / ||H||_F``.
    """
    theta, loss = _flat_loss64(p)
    n = theta.numel()

    def grad(t: Tensor) -> Tensor:
        t = t.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(loss(t), t)
        return g

    def column(i: int, scale: float) -> Tensor:
        h = scale * rel_step * max(1.0, abs(float(theta[i])))
        e = torch.zeros_like(theta)
        e[i] = h
        return (grad(theta + e) - grad(theta - e)) / (2 * h)

    t0 = time.perf_counter()
    H = torch.stack([column(i, 1.0) for i in range(n)], dim=1)
    seconds = time.perf_counter() - t0
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(3))[:64].tolist()
    H2 = torch.stack([column(i, 2.0) for i in idx], dim=1)
    info = {
        "method": f"central differences of float64 autograd gradients, step {rel_step:g} "
        "* max(1, |theta_i|), symmetrised",
        "gradients": 2 * n,
        "seconds": seconds,
        "asymmetry": float(torch.linalg.norm(H - H.T) / torch.linalg.norm(H)),
        "step_check_rel_diff_h_vs_2h": float(
            torch.linalg.norm(H[:, idx] - H2) / torch.linalg.norm(H[:, idx])
        ),
    }
    return H, info


def func_hessian(p: Problem) -> Tensor:
    """``torch.func.hessian`` (forward-over-reverse) of the float64 loss, dense, unsymmetrised.

    Returns:
        ``(n, n)``.
    """
    theta, loss = _flat_loss64(p)
    return torch.func.hessian(loss)(theta).detach()


def spectrum_summary(H: Tensor, k: int) -> dict[str, Any]:
    """Eigenvalues of ``(H + H^T) / 2``: the top ``k`` (largest algebraic), the ``k`` largest in
    magnitude and the ``k`` smallest, plus the asymmetry ``||H - H^T||_F / ||H||_F``.

    Returns:
        A dict of lists and the asymmetry.
    """
    w = torch.linalg.eigvalsh((H + H.T) / 2)
    return {
        "eigenvalues": w.flip(0)[:k].tolist(),
        "largest_magnitude": w[w.abs().argsort(descending=True)][:k].tolist(),
        "smallest_eigenvalues": w[:k].tolist(),
        "asymmetry": float(torch.linalg.norm(H - H.T) / torch.linalg.norm(H)),
    }


def reference_fd_eigenvalues(p: Problem, k: int = 10) -> tuple[Tensor, dict[str, Any], Tensor]:
    """Top-``k`` eigenvalues of the symmetrised dense finite-difference Hessian (``fd_hessian``),
    and, for comparison only, the same from our float64 operator (vmap engine, Lanczos at tol
    1e-10) -- the reference for models where second-order autodiff rules are suspect.

    Returns:
        ``(eigenvalues descending, info, H)``: ``info`` has ``largest_magnitude`` and
        ``smallest_eigenvalues``; ``H`` is the dense FD Hessian (not symmetrised).
    """
    H, info = fd_hessian(p)
    spec = spectrum_summary(H, k)
    info.update({key: v for key, v in spec.items() if key != "asymmetry"})
    info["num_params"] = p.num_params
    ours = p.ours(method="vmap", dtype=torch.float64)
    r = lanczos(ours, k, tol=1e-10, generator=torch.Generator().manual_seed(12345))
    ref = torch.tensor(spec["eigenvalues"], dtype=torch.float64)
    info["ours_fp64_lanczos_max_rel_diff"] = float(
        ((r.eigenvalues.double() - ref).abs() / ref.abs()).max()
    )
    return ref, info, H


def hvp_errors(p: Problem, H_ref: Tensor, num_vectors: int = 3) -> dict[str, float]:
    """Max over ``num_vectors`` N(0, 1) vectors (seeds 0, 1, ...) of ``||H_tool v - H_ref v|| /
    ||H_ref v||`` for one product of each tool that is installed (float32, as in the eigenvalue
    runs): ours (``method="auto"`` and ``"vmap"``), PyHessian's ``hessian_vector_product``,
    curvlinops' ``HessianLinearOperator @ v`` and eigenthings' ``matvec``.

    Returns:
        method key of ``curvature_eigs.METHODS`` -> relative error (``"ours"``: the auto engine
        on single vectors, ``"ours_b4"``: auto on a block of the vectors, ``"ours_b4_vmap"``:
        the vmap engine; eigenthings' two rows share one product).
    """
    n = p.num_params
    V = torch.randn(num_vectors, n, generator=torch.Generator().manual_seed(0))
    products: dict[str, Callable[[Tensor], Tensor]] = {
        "ours": lambda v: p.ours() @ v,
        "ours_b4_vmap": lambda v: p.ours(method="vmap") @ v,
    }
    if anchor_status("pyhessian") is None:

        def pyh(v: Tensor) -> Tensor:
            from pyhessian.utils import hessian_vector_product

            ph = pyhessian_hessian(p)
            vs = list(v.split([q.numel() for q in ph.params]))
            vs = [x.view_as(q) for x, q in zip(vs, ph.params, strict=True)]
            out = torch.cat(
                [h.reshape(-1) for h in hessian_vector_product(ph.gradsH, ph.params, vs)]
            )
            p.clear_grads()
            return out.detach()

        products["pyhessian"] = pyh
    if anchor_status("curvlinops") is None:
        products["curvlinops"] = lambda v: curvlinops_hessian(p) @ v
    if anchor_status("eigenthings") is None:
        products["eigenthings"] = lambda v: eigenthings_hessian(p).matvec(v)
        products["eigenthings40"] = products["eigenthings"]
    out = {}
    # block of all vectors at once: "auto" multiplies a block on the vmap engine
    got_block = (p.ours() @ V.T.contiguous()).detach().double()
    ref_block = H_ref @ V.T.double()
    out["ours_b4"] = float(
        (
            torch.linalg.norm(got_block - ref_block, dim=0) / torch.linalg.norm(ref_block, dim=0)
        ).max()
    )
    for key, prod in products.items():
        errs = []
        for v in V:
            ref = H_ref @ v.double()
            got = prod(v.clone()).detach().reshape(-1).double()
            errs.append(float(torch.linalg.norm(got - ref) / torch.linalg.norm(ref)))
        out[key] = max(errs)
    return out


def reference_trace(p: Problem, num_checks: int = 8) -> tuple[float | None, dict[str, Any]]:
    """Exact trace from the exact float64 Hessian diagonal (BackPACK ``DiagHessian``), with
    ``num_checks`` random diagonal entries verified against ``e_i^T H e_i`` from our float64
    operator.

    Returns:
        ``(trace or None when BackPACK is missing or unsupported, info)``.
    """
    status = anchor_status("backpack")
    if status is not None:
        return None, {"method": "BackPACK DiagHessian", "status": status}
    from backpack import backpack, extend
    from backpack.extensions import DiagHessian

    model = extend(copy.deepcopy(p.model).double())
    lossf = extend(nn.CrossEntropyLoss())
    t = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loss = lossf(model(p.X.double()), p.y)
            with backpack(DiagHessian()):
                loss.backward()
        diag = torch.cat([q.diag_h.reshape(-1) for q in model.parameters()])
    except Exception as err:  # an architecture BackPACK does not support
        return None, {"method": "BackPACK DiagHessian", "status": f"failed: {err}"[:200]}
    seconds = time.perf_counter() - t
    H = p.ours(method="vmap", dtype=torch.float64)
    idx = torch.randperm(diag.numel(), generator=torch.Generator().manual_seed(7))[:num_checks]
    E = torch.zeros(diag.numel(), num_checks, dtype=torch.float64)
    E[idx, torch.arange(num_checks)] = 1.0
    entries = (H @ E)[idx, torch.arange(num_checks)]
    check = float((entries - diag[idx]).abs().max() / diag.abs().max())
    info = {
        "method": "exact: sum of the float64 Hessian diagonal from BackPACK DiagHessian",
        "seconds": seconds,
        "diag_entries_checked": num_checks,
        "max_rel_diff_vs_ours_fp64_e_i": check,
    }
    if check > 1e-8:
        raise RuntimeError(f"BackPACK diagonal disagrees with our float64 operator: {check:.2e}")
    return float(diag.sum()), info


# ----- formatting ------------------------------------------------------------------------------
def median(xs: list[float]) -> float:
    """Median (nan for none).

    Returns:
        The median.
    """
    return statistics.median(xs) if xs else math.nan


def fmt(x: Any, spec: str) -> str:
    """Format a number, or pass a string through.

    Returns:
        The text.
    """
    if isinstance(x, str) or x is None:
        return "-" if x is None else x
    if isinstance(x, float) and math.isnan(x):
        return "-"
    return format(x, spec)


def table(rows: list[dict[str, Any]], cols: list[tuple[str, str, str, int]]) -> str:
    """A fixed-width table: ``cols`` are ``(key, header, format, width)``.

    Returns:
        The table as text.
    """
    head = "".join(h.rjust(w) if i else h.ljust(w) for i, (_, h, _, w) in enumerate(cols))
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = []
        for i, (k, _, f, w) in enumerate(cols):
            s = fmt(r.get(k), f)
            cells.append(s.rjust(w) if i else s.ljust(w))
        lines.append("".join(cells))
    return "\n".join(lines)


def np_seed_vector(n: int, seed: int) -> np.ndarray:
    """A reproducible float64 start vector for ARPACK.

    Returns:
        ``(n,)`` standard normal.
    """
    return np.random.default_rng(seed).standard_normal(n)
