"""Measurement operators (P06): subsampled Fourier and parallel-beam CT vs dense references."""

from __future__ import annotations

import math

import pytest
import torch

from subspaces.solvers import ParallelBeamProjection, SubsampledFourier, fourier_mask

F64 = torch.float64


def dense_dft(h: int, w: int) -> torch.Tensor:
    """The unitary 2-D DFT of row-major flattened images, as a dense complex matrix."""
    fy = torch.fft.fft(torch.eye(h, dtype=torch.complex128), norm="ortho")
    fx = torch.fft.fft(torch.eye(w, dtype=torch.complex128), norm="ortho")
    return torch.kron(fy, fx)


@pytest.mark.parametrize("kind", ["random", "radial", "cartesian"])
def test_subsampled_fourier_matches_dense_dft(kind: str) -> None:
    g = torch.Generator().manual_seed(0)
    h, w = 12, 10
    mask = fourier_mask((h, w), kind, fraction=0.3, generator=g)
    A = SubsampledFourier(mask)
    rows = dense_dft(h, w)[mask.reshape(-1)]
    expected = torch.cat([rows.real, rows.imag])
    assert A.shape == (2 * int(mask.sum()), h * w)
    torch.testing.assert_close(A.to_dense(), expected, rtol=0, atol=1e-13)
    # The adjoint is the transpose, and <A x, y> = <x, A^T y> on random vectors.
    torch.testing.assert_close(A.T.to_dense(), expected.T, rtol=0, atol=1e-13)
    x = torch.randn(h * w, generator=g, dtype=F64)
    y = torch.randn(A.shape[0], generator=g, dtype=F64)
    assert abs(float((A @ x) @ y - x @ (A.T @ y))) < 1e-12 * float(x.norm() * y.norm())
    # The complex view is the masked spectrum itself.
    spectrum = torch.fft.fft2(x.reshape(h, w), norm="ortho")[mask]
    torch.testing.assert_close(A.to_complex(A @ x), spectrum, rtol=0, atol=1e-13)


def test_fourier_gram_spectrum_is_zero_half_one() -> None:
    # A^T A = Re(F^H P F) on real images: a conjugate pair (k, -k) contributes eigenvalue 1 if
    # both are sampled, 1/2 if one is, 0 if none; so the spectrum lies in {0, 1/2, 1}.
    g = torch.Generator().manual_seed(1)
    A = SubsampledFourier(fourier_mask((8, 8), "random", fraction=0.4, generator=g))
    evals = torch.linalg.eigvalsh(A.T.to_dense() @ A.to_dense())
    distance = torch.stack([evals.abs(), (evals - 0.5).abs(), (evals - 1).abs()]).min(0).values
    assert float(distance.max()) < 1e-12
    assert bool((evals > 0.25).any()) and bool((evals < 0.25).any())


def test_fourier_float32_and_dtype_errors() -> None:
    mask = fourier_mask((8, 8), "cartesian", fraction=0.5, generator=torch.Generator())
    A32, A64 = SubsampledFourier(mask, torch.float32), SubsampledFourier(mask)
    x = torch.randn(64, dtype=F64)
    torch.testing.assert_close((A32 @ x.float()).double(), A64 @ x, rtol=0, atol=1e-5)
    with pytest.raises(TypeError, match="dtype"):
        A64 @ x.float()
    with pytest.raises(TypeError, match="dtype must be"):
        SubsampledFourier(mask, torch.float16)
    with pytest.raises(TypeError, match="boolean"):
        SubsampledFourier(mask.float())
    with pytest.raises(ValueError, match="samples no frequency"):
        SubsampledFourier(torch.zeros(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="2-D"):
        SubsampledFourier(torch.ones(4, dtype=torch.bool))


def test_fourier_masks() -> None:
    g = torch.Generator().manual_seed(2)
    h, w = 32, 32
    rnd = fourier_mask((h, w), "random", fraction=0.25, center_fraction=0.25, generator=g)
    assert float(rnd.float().mean()) == pytest.approx(0.25, abs=1 / (h * w))
    freq = torch.fft.fftfreq(h, d=1 / h).abs()
    centre = (freq[:, None] <= 4) & (freq[None, :] <= 4)
    assert bool(rnd[centre].all())  # the low-frequency 9 x 9 square is fully sampled
    cart = fourier_mask((h, w), "cartesian", fraction=0.25, generator=g)
    assert bool((cart.all(dim=1) | ~cart.any(dim=1)).all())  # whole rows
    assert int(cart.any(dim=1).sum()) == math.ceil(0.25 * h)
    rad = fourier_mask((h, w), "radial", fraction=0.2)
    assert 0.2 <= float(rad.float().mean()) < 0.3 and bool(rad[0, 0])
    # spokes pass through the origin, so the sampled set is symmetric under k -> -k (away from
    # the Nyquist row and column, which have no mirror image on an even grid)
    mirrored = torch.roll(rad.flip(0, 1), shifts=(1, 1), dims=(0, 1))
    inner = torch.ones(h, w, dtype=torch.bool)
    inner[h // 2, :] = False
    inner[:, w // 2] = False
    assert torch.equal(rad[inner], mirrored[inner])
    with pytest.raises(ValueError, match="fraction"):
        fourier_mask((8, 8), fraction=1.5)
    with pytest.raises(ValueError, match="fraction"):
        fourier_mask((8, 8), fraction=0.0)
    with pytest.raises(ValueError, match="kind"):
        fourier_mask((8, 8), "spiral")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shape"):
        fourier_mask((8, 0))


def test_projection_of_gaussian_matches_radon_transform() -> None:
    # f(x, y) = exp(-(x^2 + y^2) / (2 s^2)) has Radon transform sqrt(2 pi) s exp(-t^2 / (2 s^2))
    # at every angle. The operator integrates the bilinear interpolant of the pixel values,
    # whose pointwise error on a unit cell is at most (max |f_xx| + max |f_yy|) / 8. Along a ray,
    # |f_xx| + |f_yy| <= (r^2 / s^4 + 2 / s^2) f integrates to sqrt(2 pi) s ((t^2 + s^2) / s^4 +
    # 2 / s^2) exp(-t^2 / (2 s^2)) <= sqrt(2 pi) s (3 + 2 / e) / s^2; a factor 2 covers taking
    # the maximum over a unit cell instead of the value on the ray (exp(sqrt(2) r / s^2) <= 2
    # where the integrand matters, s = 4). The O(step^2) sampling error is negligible.
    s, n = 4.0, 48
    angles = torch.linspace(0, math.pi, 7, dtype=F64)[:-1]
    A = ParallelBeamProjection((n, n), angles)
    c = torch.arange(n, dtype=F64) - (n - 1) / 2
    Y, X = torch.meshgrid(c, c, indexing="ij")
    f = torch.exp(-(X**2 + Y**2) / (2 * s * s)).reshape(-1)
    t = torch.arange(A.num_detectors, dtype=F64) - (A.num_detectors - 1) / 2
    radon = math.sqrt(2 * math.pi) * s * torch.exp(-(t**2) / (2 * s * s))
    err = ((A @ f).reshape(len(angles), -1) - radon).abs().max()
    bound = 2 * math.sqrt(2 * math.pi) * s * (3 + 2 / math.e) / (s * s) / 8
    assert float(err) < bound
    assert float(err) < 0.01 * float(radon.max())  # measured 0.5%


def test_projection_adjoint_and_scipy_export() -> None:
    A = ParallelBeamProjection((9, 7), [0.1, 1.0, 2.5], step=0.5)
    D = A.to_dense()
    torch.testing.assert_close(A.T.to_dense(), D.T, rtol=0, atol=0)
    S = A.to_scipy_sparse()
    torch.testing.assert_close(torch.as_tensor(S.toarray()), D, rtol=0, atol=1e-15)  # type: ignore[attr-defined]
    # every ray sample carries weight `step`, split bilinearly over <= 4 pixels: a constant
    # image of ones integrates to the chord length, <= the image diagonal
    chords = A @ torch.ones(63, dtype=F64)
    assert float(chords.max()) <= math.hypot(9, 7) + 0.5
    A32 = ParallelBeamProjection((9, 7), [0.1, 1.0, 2.5], step=0.5, dtype=torch.float32)
    torch.testing.assert_close(A32.to_dense().double(), D, rtol=0, atol=1e-6)


def test_projection_bad_input() -> None:
    with pytest.raises(ValueError, match="at least one angle"):
        ParallelBeamProjection((8, 8), [])
    with pytest.raises(ValueError, match="non-finite"):
        ParallelBeamProjection((8, 8), [0.0, float("nan")])
    with pytest.raises(ValueError, match="step"):
        ParallelBeamProjection((8, 8), [0.0], step=2.0)
    with pytest.raises(ValueError, match="step"):
        ParallelBeamProjection((8, 8), [0.0], step=0.0)
    with pytest.raises(TypeError, match="dtype"):
        ParallelBeamProjection((8, 8), [0.0], dtype=torch.int64)
    with pytest.raises(ValueError, match="shape"):
        ParallelBeamProjection((8,), [0.0])  # type: ignore[arg-type]
    A = ParallelBeamProjection((4, 4), [0.0])
    with pytest.raises(ValueError, match="shape"):
        A @ torch.ones(15, dtype=F64)
