"""Measurement operators of linear inverse problems: subsampled Fourier (MRI) and sparse-view CT.

Both act on real images flattened row-major (``x = image.reshape(-1)``) and are real
:class:`~subspaces.linops.LinearOperator` s with exact adjoints, so Krylov solvers
(:func:`subspaces.linalg.cg`) and samplers (:func:`subspaces.solvers.dds`) use them unchanged.

* :class:`SubsampledFourier`: ``y = P F x`` with ``F`` the unitary 2-D DFT and ``P`` a sampling
  mask (:func:`fourier_mask`: random points, radial spokes or Cartesian phase-encode lines, each
  with a fully sampled low-frequency centre). The ``m`` complex samples are returned in the real
  representation ``[Re(P F x); Im(P F x)]`` (``2 m`` rows), for which the real adjoint is
  ``A^T [a; b] = Re(F^H P^T (a + i b))``, the complex adjoint ``A^H`` restricted to real images.
* :class:`ParallelBeamProjection`: line integrals of the image along parallel rays at a few angles
  (a sparse-view sinogram), built once as a sparse matrix by sampling each ray every ``step``
  pixels with bilinear interpolation (Joseph's method).

References:
    Chung, Lee, Ye. "Decomposed Diffusion Sampler for Accelerating Large-Scale Inverse Problems."
    ICLR 2024 (arXiv:2303.05754): the MRI and sparse-view CT problems these operators model.

    Joseph. "An improved algorithm for reprojecting rays through pixel images." IEEE Trans. Med.
    Imaging 1(3), 1982.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from .._checks import check_choice, check_finite, check_positive_float, check_positive_int
from ..linops.base import LinearOperator

__all__ = ["ParallelBeamProjection", "SubsampledFourier", "fourier_mask"]

MaskKind = Literal["random", "radial", "cartesian"]


def _check_shape(shape: tuple[int, int]) -> tuple[int, int]:
    if (
        not isinstance(shape, (tuple, list))
        or len(shape) != 2
        or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape)
    ):
        raise ValueError(f"shape must be a pair of positive ints (height, width), got {shape!r}")
    return int(shape[0]), int(shape[1])


def fourier_mask(
    shape: tuple[int, int],
    kind: MaskKind = "random",
    *,
    fraction: float = 0.25,
    center_fraction: float = 0.08,
    generator: torch.Generator | None = None,
) -> Tensor:
    """A k-space sampling mask in the unshifted order of :func:`torch.fft.fft2`.

    Args:
        shape: image shape ``(H, W)``.
        kind: ``"random"`` (uniformly random frequencies), ``"radial"`` (spokes through the
            origin at golden-angle increments) or ``"cartesian"`` (whole random rows, i.e.
            phase-encode lines).
        fraction: target fraction of sampled frequencies, in ``(0, 1]``; points / spokes / lines
            are added until it is reached.
        center_fraction: side of the fully sampled low-frequency square (``"random"``) or band
            of rows (``"cartesian"``) as a fraction of the image side, in ``[0, 1]``; radial
            masks sample the centre densely by construction.
        generator: random generator (``"random"`` and ``"cartesian"``).

    Returns:
        ``(H, W)`` boolean mask, ``mask.float().mean() >= fraction`` up to one spoke or line.

    Raises:
        ValueError: for a bad shape, kind or fraction.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> m = fourier_mask((32, 32), "cartesian", fraction=0.25, generator=g)
        >>> bool(m[0].all()), bool(m.any(dim=1).float().mean() >= 0.25)  # DC row kept
        (True, True)
    """
    h, w = _check_shape(shape)
    kind = check_choice(kind, "kind", ("random", "radial", "cartesian"))  # type: ignore[assignment]
    fraction = check_positive_float(fraction, "fraction")
    center_fraction = check_positive_float(center_fraction, "center_fraction", allow_zero=True)
    if fraction > 1 or center_fraction > 1:
        raise ValueError(
            f"fraction must be in (0, 1] and center_fraction in [0, 1], got {fraction} and "
            f"{center_fraction}"
        )
    fy = torch.fft.fftfreq(h, d=1.0 / h, dtype=torch.float64)  # integer frequencies
    fx = torch.fft.fftfreq(w, d=1.0 / w, dtype=torch.float64)
    ky, kx = torch.meshgrid(fy, fx, indexing="ij")
    target = math.ceil(fraction * h * w)
    if kind == "random":
        half_y, half_x = center_fraction * h / 2, center_fraction * w / 2
        mask = (ky.abs() <= half_y) & (kx.abs() <= half_x)
        rest = (~mask).reshape(-1).nonzero().squeeze(1)
        need = max(0, target - int(mask.sum()))
        pick = rest[torch.randperm(rest.numel(), generator=generator)[:need]]
        flat = mask.reshape(-1).clone()
        flat[pick] = True
        return flat.reshape(h, w)
    if kind == "cartesian":
        rows = fy.abs() <= center_fraction * h / 2
        free = (~rows).nonzero().squeeze(1)
        need = max(0, math.ceil(fraction * h) - int(rows.sum()))
        rows = rows.clone()
        rows[free[torch.randperm(free.numel(), generator=generator)[:need]]] = True
        return rows.unsqueeze(1).expand(h, w).clone()
    # radial: spokes through the origin at golden-angle increments, rasterised to the nearest
    # frequency every half sample along the spoke.
    mask = torch.zeros(h, w, dtype=torch.bool)
    radius = math.hypot(h, w) / 2
    half = torch.arange(0.0, radius + 0.5, 0.5, dtype=torch.float64)
    r = torch.cat([-half.flip(0), half[1:]])  # symmetric about 0: the mask is k <-> -k symmetric
    golden = math.pi * (3 - math.sqrt(5)) / 2 + math.pi / 2  # 111.25 degrees
    angle = 0.0
    for _ in range(4 * (h + w)):
        if int(mask.sum()) >= target:
            break
        y = torch.round(r * math.sin(angle)).long()
        x = torch.round(r * math.cos(angle)).long()
        keep = (y >= -(h // 2)) & (y <= (h - 1) // 2) & (x >= -(w // 2)) & (x <= (w - 1) // 2)
        mask[y[keep] % h, x[keep] % w] = True
        angle = (angle + golden) % math.pi
    return mask


class SubsampledFourier(LinearOperator):
    """``A x = [Re(P F x); Im(P F x)]``: a masked unitary 2-D DFT of a real image.

    ``F`` is :func:`torch.fft.fft2` with ``norm="ortho"`` (unitary), ``P`` keeps the ``m``
    frequencies where ``mask`` is true (row-major order). The operator maps ``R^{H W}`` to
    ``R^{2 m}``; its adjoint is ``A^T [a; b] = Re(F^H P^T (a + i b))``, and ``A^T A = Re(F^H P^T
    P F)`` restricted to real images, with eigenvalues in ``[0, 1]``. Use :meth:`to_complex`
    to read measurements as the ``m`` complex k-space samples.

    Args:
        mask: ``(H, W)`` boolean tensor (from :func:`fourier_mask`) with at least one sample.
        dtype: ``torch.float32`` or ``torch.float64``.

    Raises:
        TypeError: if ``mask`` is not a boolean tensor or ``dtype`` is not float32/float64.
        ValueError: if ``mask`` is not 2-D or samples nothing.

    Example:
        >>> mask = torch.zeros(4, 4, dtype=torch.bool)
        >>> mask[0, 0] = True  # only the DC coefficient
        >>> A = SubsampledFourier(mask, dtype=torch.float64)
        >>> (A @ torch.ones(16, dtype=torch.float64)).tolist()  # sum / sqrt(16), imaginary 0
        [4.0, 0.0]
    """

    def __init__(self, mask: Tensor, dtype: torch.dtype = torch.float64) -> None:
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            raise TypeError(f"mask must be a boolean tensor, got {getattr(mask, 'dtype', mask)!r}")
        if mask.ndim != 2:
            raise ValueError(f"mask must be 2-D (H, W), got shape {tuple(mask.shape)}")
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        m = int(mask.sum())
        if m == 0:
            raise ValueError("mask samples no frequency (all False)")
        self.mask = mask
        self.image_shape = (int(mask.shape[0]), int(mask.shape[1]))
        self.num_samples = m
        self._index = mask.reshape(-1).nonzero().squeeze(1).to(mask.device)
        super().__init__((2 * m, mask.numel()), dtype, mask.device)

    def _matmat(self, X: Tensor) -> Tensor:
        h, w = self.image_shape
        images = X.T.reshape(-1, h, w)
        k = torch.fft.fft2(images, norm="ortho").reshape(X.shape[1], -1)[:, self._index]
        return torch.cat([k.real, k.imag], dim=1).T.contiguous()

    def rmatmat(self, Y: Tensor) -> Tensor:
        """``A^T Y`` for ``Y`` of shape ``(2 m, b)``.

        Returns:
            ``(H W, b)`` real tensor.
        """
        h, w = self.image_shape
        m, b = self.num_samples, Y.shape[1]
        c = torch.complex(Y[:m].T, Y[m:].T)
        k = torch.zeros(b, h * w, dtype=c.dtype, device=Y.device)
        k[:, self._index] = c
        img = torch.fft.ifft2(k.reshape(b, h, w), norm="ortho").real
        return img.reshape(b, h * w).T.contiguous()

    def _adjoint(self) -> LinearOperator:
        return _Adjoint(self)

    def to_complex(self, y: Tensor) -> Tensor:
        """Measurements ``(2 m,)`` or ``(2 m, b)`` as complex k-space samples ``(m,)``/``(m, b)``.

        Returns:
            ``y[:m] + 1j * y[m:]``.
        """
        m = self.num_samples
        return torch.complex(y[:m], y[m:])


class _Adjoint(LinearOperator):
    """The adjoint of an operator that provides ``rmatmat``."""

    def __init__(self, op: SubsampledFourier | ParallelBeamProjection) -> None:
        super().__init__((op.shape[1], op.shape[0]), op.dtype, op.device)
        self.op = op

    def _matmat(self, X: Tensor) -> Tensor:
        return self.op.rmatmat(X)

    def _adjoint(self) -> LinearOperator:
        return self.op


class ParallelBeamProjection(LinearOperator):
    """Parallel-beam line integrals of an ``(H, W)`` image at a few angles (sparse-view CT).

    Pixels are unit squares centred at ``(x, y) = (j - (W - 1) / 2, i - (H - 1) / 2)`` and the
    image is the bilinear interpolant of the pixel values (zero outside). For angle ``theta``
    and detector offset ``s`` the ray is ``{s (cos theta, sin theta) + u (-sin theta, cos
    theta)}``; its integral is approximated by the sum over samples every ``step`` pixels along
    ``u`` (exact up to ``O(step^2)`` for a smooth integrand). Detector bins are spaced one pixel
    apart and cover the image diagonal. The matrix (``len(angles) * num_detectors`` rows, ``H W``
    columns, sinogram row-major: angle, then detector) is built once as a sparse COO tensor
    (``matrix``).

    Args:
        image_shape: ``(H, W)``.
        angles: projection angles in radians, a 1-D tensor or a sequence of floats.
        num_detectors: detector bins per angle; default ``ceil(sqrt(H^2 + W^2))``.
        step: sampling step along each ray in pixels, in ``(0, 1]``.
        dtype: ``torch.float32`` or ``torch.float64``.

    Raises:
        ValueError: for a bad shape, no or non-finite angles, or ``step`` outside ``(0, 1]``.
        TypeError: for an unsupported dtype.

    Example:
        >>> A = ParallelBeamProjection((8, 8), [0.0, math.pi / 2], step=0.5)
        >>> img = torch.ones(64, dtype=torch.float64)
        >>> sino = (A @ img).reshape(2, -1)
        >>> float(sino[0].sum()) == float(sino[1].sum())  # each view sees the same total mass
        True
    """

    def __init__(
        self,
        image_shape: tuple[int, int],
        angles: Tensor | list[float] | tuple[float, ...],
        *,
        num_detectors: int | None = None,
        step: float = 0.25,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        h, w = _check_shape(image_shape)
        theta = torch.as_tensor(angles, dtype=torch.float64).reshape(-1)
        if theta.numel() == 0:
            raise ValueError("angles must hold at least one angle")
        check_finite(theta, "angles")
        step = check_positive_float(step, "step")
        if step > 1:
            raise ValueError(f"step must be in (0, 1] pixels, got {step}")
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        diag = math.hypot(h, w)
        nd = (
            math.ceil(diag)
            if num_detectors is None
            else check_positive_int(num_detectors, "num_detectors")
        )
        self.image_shape, self.angles, self.num_detectors = (h, w), theta, nd
        s = torch.arange(nd, dtype=torch.float64) - (nd - 1) / 2
        u = torch.arange(-diag / 2, diag / 2 + step / 2, step, dtype=torch.float64)
        cos, sin = theta.cos()[:, None, None], theta.sin()[:, None, None]
        px = s[None, :, None] * cos - u[None, None, :] * sin  # (angles, detectors, samples)
        py = s[None, :, None] * sin + u[None, None, :] * cos
        col, row = px + (w - 1) / 2, py + (h - 1) / 2  # continuous pixel indices
        j0, i0 = col.floor(), row.floor()
        fx, fy = col - j0, row - i0
        ray = torch.arange(theta.numel() * nd).reshape(theta.numel(), nd, 1).expand_as(px)
        rows, cols, vals = [], [], []
        for di, dj, wt in (
            (0, 0, (1 - fy) * (1 - fx)),
            (0, 1, (1 - fy) * fx),
            (1, 0, fy * (1 - fx)),
            (1, 1, fy * fx),
        ):
            ii, jj = (i0 + di).long(), (j0 + dj).long()
            keep = (ii >= 0) & (ii < h) & (jj >= 0) & (jj < w) & (wt > 0)
            rows.append(ray[keep])
            cols.append((ii * w + jj)[keep])
            vals.append(step * wt[keep])
        index = torch.stack([torch.cat(rows), torch.cat(cols)])
        coo = torch.sparse_coo_tensor(
            index, torch.cat(vals), (theta.numel() * nd, h * w), check_invariants=True
        ).coalesce()
        self.matrix = coo.to(dtype)
        self._matrix_t = coo.t().coalesce().to(dtype)
        super().__init__((theta.numel() * nd, h * w), dtype)

    def _matmat(self, X: Tensor) -> Tensor:
        return torch.sparse.mm(self.matrix, X)

    def rmatmat(self, Y: Tensor) -> Tensor:
        """``A^T Y`` (back-projection) for ``Y`` of shape ``(rows, b)``.

        Returns:
            ``(H W, b)`` tensor.
        """
        return torch.sparse.mm(self._matrix_t, Y)

    def _adjoint(self) -> LinearOperator:
        return _Adjoint(self)

    def to_scipy_sparse(self) -> object:
        """The matrix as a ``scipy.sparse.csr_matrix`` (float64).

        Returns:
            The sparse matrix.
        """
        import scipy.sparse

        coo = self.matrix
        i, j = coo.indices().numpy()
        return scipy.sparse.csr_matrix((coo.values().double().numpy(), (i, j)), shape=self.shape)
