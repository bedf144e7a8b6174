"""Merge methods: hand-computed cases, dense references written here, mergekit as an oracle."""

from __future__ import annotations

import math
import types

import pytest
import torch

from subspaces.merging import (
    Gradient,
    Rules,
    breadcrumbs_sparsify,
    dare_sparsify,
    magnitude_sparsify,
    merge,
    resolve_all,
    slerp,
)
from subspaces.merging.methods import _generator_for


def _random_models(k=3, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    base = {
        "0.weight": torch.randn(6, 5, generator=g, dtype=dtype),
        "0.bias": torch.randn(6, generator=g, dtype=dtype),
        "2.weight": torch.randn(3, 6, generator=g, dtype=dtype),
    }
    models = [
        {n: v + torch.randn(v.shape, generator=g, dtype=dtype) for n, v in base.items()}
        for _ in range(k)
    ]
    return base, models


def _tol(dtype, scale=1.0):
    return 50 * torch.finfo(dtype).eps * scale


# ----- dense references (plain Python loops over entries) -------------------------------------
def _ref_trim(delta, density):
    flat = delta.flatten().tolist()
    k = max(1, int(density * len(flat)))
    keep = sorted(range(len(flat)), key=lambda i: -abs(flat[i]))[:k]
    out = [0.0] * len(flat)
    for i in keep:
        out[i] = flat[i]
    return out


def _ref_ties(base, models, weights, density, lam, consensus="sum"):
    out = {}
    for n, b in base.items():
        trimmed = [_ref_trim(m[n] - b, density) for m in models]
        flat_b = b.flatten().tolist()
        res = []
        for i in range(len(flat_b)):
            vals = [w * t[i] for w, t in zip(weights, trimmed, strict=False)]
            if consensus == "sum":
                s = 1 if sum(vals) >= 0 else -1
            else:
                s = 1 if sum(math.copysign(1, v) if v else 0 for v in vals) >= 0 else -1
            agree = [
                (v, w)
                for v, w in zip(vals, weights, strict=False)
                if v != 0 and math.copysign(1, v) == s
            ]
            num = sum(v for v, _ in agree)
            den = sum(w for _, w in agree) or 1.0
            res.append(flat_b[i] + lam * num / den)
        out[n] = torch.tensor(res, dtype=b.dtype).view_as(b)
    return out


# ----- hand-computed cases ----------------------------------------------------------------------
def test_task_arithmetic_hand_case():
    base = {"w": torch.tensor([1.0, 1.0])}
    a, b = {"w": torch.tensor([2.0, 3.0])}, {"w": torch.tensor([4.0, -3.0])}
    out = merge([a, b], method="task_arithmetic", base=base, lambda_=0.5)
    assert out["w"].tolist() == [3.0, 0.0]  # deltas [1, 2] and [3, -4]: 1 + 0.5 * [4, -2]


def test_linear_hand_case_and_single_model_identity():
    a, b = {"w": torch.tensor([0.0, 4.0])}, {"w": torch.tensor([4.0, 8.0])}
    assert merge([a, b], method="linear", weights=[1, 3])["w"].tolist() == [3.0, 7.0]
    base, models = _random_models(1)
    for method in ("task_arithmetic", "ties", "dare", "breadcrumbs"):
        out = merge(models, method=method, base=base, density=1.0)
        for n in base:  # merging one task vector at full density returns that model
            assert torch.allclose(out[n], models[0][n], atol=_tol(torch.float64, 10), rtol=0)


def test_ties_hand_case():
    base = {"w": torch.zeros(4)}
    a = {"w": torch.tensor([4.0, -1.0, 2.0, 0.5])}
    b = {"w": torch.tensor([-3.0, 2.0, 1.0, 0.1])}
    # trim to 2 of 4: a -> [4, 0, 2, 0], b -> [-3, 2, 0, 0]; elected signs +,+,+,+(tie)
    out = merge([a, b], method="ties", base=base, density=0.5)
    assert out["w"].tolist() == [4.0, 2.0, 2.0, 0.0]


def test_ties_sum_and_count_elect_differently():
    base = {"w": torch.zeros(1)}
    models = [{"w": torch.tensor([1.0])}, {"w": torch.tensor([1.0])}, {"w": torch.tensor([-5.0])}]
    assert merge(models, method="ties", base=base, consensus="sum")["w"].tolist() == [-5.0]
    assert merge(models, method="ties", base=base, consensus="count")["w"].tolist() == [1.0]


def test_breadcrumbs_hand_case():
    x = torch.arange(1.0, 11.0)  # keep 5 after dropping the top 1 (10) and the bottom 4 (1..4)
    assert breadcrumbs_sparsify(x, 0.5, 0.1).tolist() == [0, 0, 0, 0, 5, 6, 7, 8, 9, 0]


def test_magnitude_keeps_at_least_one_entry():
    assert magnitude_sparsify(torch.tensor([1.0, -3.0, 2.0]), 0.1).tolist() == [0.0, -3.0, 0.0]


def test_dare_rescales_survivors():
    delta = torch.linspace(-1, 1, 1001, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    out = dare_sparsify(delta, 0.3, generator=g)
    kept = out != 0
    assert torch.allclose(out[kept], delta[kept] / 0.3, rtol=_tol(torch.float64), atol=0)
    assert 0.2 < kept.double().mean() < 0.4
    out_l1 = dare_sparsify(delta, 0.3, rescale="l1", generator=torch.Generator().manual_seed(0))
    assert torch.equal(out_l1 != 0, kept)  # same drops for the same generator
    rel = abs(out_l1.abs().sum() - delta.abs().sum()) / delta.abs().sum()
    assert rel < _tol(torch.float64, 1001)


def test_dare_merge_is_deterministic_and_full_density_is_task_arithmetic():
    base, models = _random_models(3)
    a = merge(models, method="dare", base=base, density=0.5, seed=1)
    b = merge(models, method="dare", base=base, density=0.5, seed=1)
    c = merge(models, method="dare", base=base, density=0.5, seed=2)
    assert all(torch.equal(a[n], b[n]) for n in base)
    assert any(not torch.equal(a[n], c[n]) for n in base)
    full = merge(models, method="dare", base=base, density=1.0)
    ta = merge(models, method="task_arithmetic", base=base)
    assert all(torch.allclose(full[n], ta[n], atol=_tol(torch.float64, 10), rtol=0) for n in base)


# ----- dense references -------------------------------------------------------------------------
@pytest.mark.parametrize("consensus", ["sum", "count"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ties_matches_dense_reference(consensus, dtype):
    base, models = _random_models(4, seed=3, dtype=dtype)
    weights, density, lam = [1.0, 0.5, 2.0, 1.5], 0.4, 0.8
    out = merge(
        models,
        method="ties",
        base=base,
        weights=weights,
        density=density,
        lambda_=lam,
        consensus=consensus,
    )
    ref = _ref_ties(
        {n: v.double() for n, v in base.items()},
        [{n: v.double() for n, v in m.items()} for m in models],
        weights,
        density,
        lam,
        consensus,
    )
    for n in base:
        scale = float(ref[n].abs().max()) * 8
        assert out[n].dtype == dtype
        assert torch.allclose(out[n].double(), ref[n], atol=_tol(dtype, scale), rtol=0), n


def test_task_arithmetic_and_linear_match_dense_reference():
    base, models = _random_models(3, seed=4)
    weights = [0.2, 1.0, 3.0]
    ta = merge(models, method="task_arithmetic", base=base, weights=weights, lambda_=0.3)
    lin = merge(models, method="linear", weights=weights)
    for n in base:
        ref_ta = base[n] + 0.3 * sum(
            w * (m[n] - base[n]) for w, m in zip(weights, models, strict=False)
        )
        ref_lin = sum(w * m[n] for w, m in zip(weights, models, strict=False)) / sum(weights)
        assert torch.allclose(ta[n], ref_ta, atol=_tol(torch.float64, 10), rtol=0)
        assert torch.allclose(lin[n], ref_lin, atol=_tol(torch.float64, 10), rtol=0)


def test_dare_ties_matches_reference_with_the_same_drops():
    base, models = _random_models(3, seed=5)
    out = merge(models, method="dare_ties", base=base, density=0.6, seed=7)
    for n in base:
        kept = []
        for k, m in enumerate(models):
            mask = torch.rand(base[n].shape, generator=_generator_for(7, k, n)) < 0.6
            kept.append((m[n] - base[n]) * mask / 0.6)
        stacked = torch.stack(kept)
        sign = torch.where(stacked.sum(0) >= 0, 1.0, -1.0).double()
        agree = stacked.sign() == sign
        ref = base[n] + (stacked * agree).sum(0)  # dare_ties: no normalization by default
        assert torch.allclose(out[n], ref, atol=_tol(torch.float64, 10), rtol=0)


def test_slerp_endpoints_reference_and_fallback():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(7, 3, generator=g), torch.randn(7, 3, generator=g)
    assert torch.equal(slerp(a, b, 0.0), a) and torch.equal(slerp(a, b, 1.0), b)
    ad, bd = a.double(), b.double()
    omega = torch.arccos((ad * bd).sum() / ad.norm() / bd.norm())
    t = 0.3
    ref = (torch.sin((1 - t) * omega) * ad + torch.sin(t * omega) * bd) / torch.sin(omega)
    assert torch.allclose(slerp(ad, bd, t), ref, atol=_tol(torch.float64, 10), rtol=0)
    assert torch.allclose(slerp(a, b, t).double(), ref, atol=_tol(torch.float32, 10), rtol=0)
    parallel = 2.0 * a
    assert torch.allclose(slerp(a, parallel, 0.5), 1.5 * a, atol=_tol(torch.float32, 10))
    out = merge([{"w": a}, {"w": b}], method="slerp", t=Rules((("*", 0.0),)))
    assert torch.equal(out["w"], a)


# ----- schedules -------------------------------------------------------------------------------
def test_schedules_vary_by_tensor():
    base, models = _random_models(2, seed=6)
    weights_rule = Rules((("*.bias", 0.0),), default=1.0)
    out = merge(
        models,
        method="task_arithmetic",
        base=base,
        weights=[weights_rule, 1.0],
        lambda_=Gradient((0.0, 1.0)),
    )
    # lambda 0 at layer 0 (first), 1 at layer 2 (last); the bias of model 0 has weight 0
    assert torch.equal(out["0.bias"], base["0.bias"])
    ref = base["2.weight"] + sum(m["2.weight"] - base["2.weight"] for m in models)
    assert torch.allclose(out["2.weight"], ref, atol=_tol(torch.float64, 10), rtol=0)
    table = resolve_all(Gradient((0.2, 0.4, 1.0)), ["0.w", "1.w", "2.w", "3.w", "4.w", "emb"])
    assert table == pytest.approx(
        {"0.w": 0.2, "1.w": 0.3, "2.w": 0.4, "3.w": 0.7, "4.w": 1.0, "emb": 0.2}
    )
    dens = merge(models, method="ties", base=base, density=Rules((("re:^0\\.", 0.2),), 1.0))
    full = merge(models, method="ties", base=base, density=1.0)
    assert torch.equal(dens["2.weight"], full["2.weight"])
    assert not torch.equal(dens["0.weight"], full["0.weight"])


# ----- bad input -------------------------------------------------------------------------------
def test_bad_input_names_the_tensor_and_value():
    base, models = _random_models(2)
    with pytest.raises(ValueError, match="at least one model"):
        merge([], method="ties", base=base)
    missing = {k: v for k, v in models[1].items() if k != "0.bias"}
    with pytest.raises(ValueError, match=r"'0\.bias'.*missing from models\[1\]"):
        merge([models[0], missing], method="ties", base=base)
    extra = {**models[1], "extra.w": torch.zeros(2, dtype=torch.float64)}
    with pytest.raises(ValueError, match=r"'extra\.w'"):
        merge([models[0], extra], method="ties", base=base)
    wrong = {**models[1], "0.weight": torch.zeros(5, 6, dtype=torch.float64)}
    with pytest.raises(
        ValueError, match=r"'0\.weight' has shape \(5, 6\) in models\[1\] but \(6, 5\)"
    ):
        merge([models[0], wrong], method="ties", base=base)
    ints = {**models[1], "0.bias": torch.zeros(6, dtype=torch.long)}
    with pytest.raises(TypeError, match=r"'0\.bias' of models\[1\] has dtype torch\.int64"):
        merge([models[0], ints], method="ties", base=base)
    for d in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=rf"density must be in \(0, 1\], got {d}"):
            merge(models, method="ties", base=base, density=d)
    nan = {**models[1], "2.weight": models[1]["2.weight"].clone()}
    nan["2.weight"][1, 2] = float("nan")
    with pytest.raises(
        ValueError, match=r"'2\.weight' of models\[1\] contains 1 non-finite.*nan at index \(1, 2\)"
    ):
        merge([models[0], nan], method="task_arithmetic", base=base)
    with pytest.raises(ValueError, match="needs the base"):
        merge(models, method="ties")
    with pytest.raises(ValueError, match="method must be one of"):
        merge(models, method="average", base=base)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="exactly two"):
        merge(models[:1], method="slerp")


def test_non_float_buffers_copied_from_base_on_request():
    base = {"w": torch.zeros(2), "n": torch.tensor(3)}
    models = [{"w": torch.ones(2), "n": torch.tensor(5)}]
    out = merge(models, method="task_arithmetic", base=base, non_float="base")
    assert out["n"].item() == 3 and out["w"].tolist() == [1.0, 1.0]


# ----- mergekit as an oracle (optional) ----------------------------------------------------------
def _mergekit_group(base, models, name):
    from mergekit.merge_methods.base import TensorGroup

    return TensorGroup.from_tensors([base[name], *(m[name] for m in models)], base_index=0)


@pytest.mark.parametrize(
    "method,options",
    [
        ("task_arithmetic", {}),
        ("ties", {"density": 0.3}),
        ("breadcrumbs", {"density": 0.5, "gamma": 0.1}),
        ("breadcrumbs_ties", {"density": 0.5, "gamma": 0.1}),
        ("dare_ties", {"density": 0.4}),
        ("dare", {"density": 0.4}),
    ],
)
def test_equal_to_mergekit(method, options, monkeypatch):
    pytest.importorskip("mergekit")
    import mergekit.sparsify as mk_sparsify
    from mergekit.merge_methods.registry import get

    mk_name = {"dare": "dare_linear"}.get(method, method)
    base, models = _random_models(3, seed=11, dtype=torch.float32)
    weights = [1.0, 0.5, 2.0]
    seed = 5
    ours = merge(
        models,
        method=method,
        base=base,
        weights=weights,
        lambda_=0.7,
        seed=seed,
        rescale="l1" if method.startswith("dare") else None,
        **options,
    )
    mk = get(mk_name)
    for name in base:
        if method.startswith("dare"):  # feed mergekit the drops our generator made
            masks = [
                (
                    torch.rand(base[name].shape, generator=_generator_for(seed, k, name))
                    < options["density"]
                ).float()
                for k in range(len(models))
            ]
            shim = types.SimpleNamespace(
                **{a: getattr(torch, a) for a in dir(torch) if not a.startswith("__")}
            )
            shim.bernoulli = lambda probs, _m=masks: _m.pop(0)
            monkeypatch.setattr(mk_sparsify, "torch", shim)
        group = _mergekit_group(base, models, name)
        ids = [e.id for e in group.entries if not e.is_base]
        params = {
            "weight": dict(zip(ids, weights, strict=False)),
            "density": {i: options.get("density", 1.0) for i in ids},
            "lambda": 0.7,
            "int8_mask": False,
            "normalize": method == "ties",
            "rescale": method.startswith("dare"),
        }
        if "gamma" in options:
            params["gamma"] = {i: options["gamma"] for i in ids}
        expected = mk.merge_group(group, **params)
        scale = float(expected.abs().max())
        assert torch.allclose(ours[name], expected, atol=_tol(torch.float32, scale), rtol=0), name


def test_breadcrumbs_and_dare_merges_match_dense_references():
    base, models = _random_models(3, seed=8)
    bc = merge(models, method="breadcrumbs", base=base, density=0.5, gamma=0.1, lambda_=0.6)
    dare = merge(models, method="dare", base=base, density=0.7, seed=3, lambda_=0.6)
    for n in base:
        bc_ref, dare_ref = base[n].clone(), base[n].clone()
        for k, m in enumerate(models):
            delta = (m[n] - base[n]).flatten().tolist()
            order = sorted(range(len(delta)), key=lambda i: abs(delta[i]))
            keep, top = int(0.5 * len(delta)), int(0.1 * len(delta))
            bottom = max(len(delta) - keep - top, 0)
            kept = set(order[bottom : bottom + keep])
            trimmed = [d if i in kept else 0.0 for i, d in enumerate(delta)]
            bc_ref += 0.6 * torch.tensor(trimmed, dtype=torch.float64).view_as(base[n])
            drop = torch.rand(base[n].shape, generator=_generator_for(3, k, n)) < 0.7
            dare_ref += 0.6 * (m[n] - base[n]) * drop / 0.7
        assert torch.allclose(bc[n], bc_ref, atol=_tol(torch.float64, 10), rtol=0)
        assert torch.allclose(dare[n], dare_ref, atol=_tol(torch.float64, 10), rtol=0)


@pytest.mark.parametrize("method", ["task_arithmetic", "ties", "dare", "linear"])
def test_nan_is_named_for_every_method_and_overflow_is_reported(method):
    base, models = _random_models(2)
    bad = {**models[1], "0.bias": models[1]["0.bias"].clone()}
    bad["0.bias"][3] = float("inf")
    kwargs = {} if method == "linear" else {"base": base}
    with pytest.raises(ValueError, match=r"'0\.bias' of models\[1\] contains 1 non-finite.*inf"):
        merge([models[0], bad], method=method, density=0.5, **kwargs)
    if method == "linear":
        return
    nan_base = {**base, "2.weight": base["2.weight"].clone()}
    nan_base["2.weight"][0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"'2\.weight' of base contains 1 non-finite"):
        merge(models, method=method, base=nan_base)
    big = {n: torch.full_like(v, 6e4, dtype=torch.float16) for n, v in base.items()}
    zero = {n: torch.zeros_like(v, dtype=torch.float16) for n, v in base.items()}
    if method == "task_arithmetic":
        with pytest.raises(ValueError, match="overflowed"):
            merge([big, big], method=method, base=zero)
