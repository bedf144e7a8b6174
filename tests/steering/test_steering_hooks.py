"""Steering hooks: effect on a model trained in the test, exact operators, KV cache, cleanup."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from subspaces.linalg import Subspace
from subspaces.steering import (
    Intervention,
    MeanDifference,
    PCADifference,
    collect_activations,
    find_sites,
    steer,
)

transformers = pytest.importorskip("transformers")

V = 8  # tokens per mode vocabulary; ids: 0, 1 = mode tokens, 2..9 = mode A, 10..17 = mode B


def sample(mode: int, n: int, length: int, g: torch.Generator) -> torch.Tensor:
    lo = 2 + mode * V
    toks = torch.randint(lo, lo + V, (n, length), generator=g)
    return torch.cat([torch.full((n, 1), mode), toks], 1)


@pytest.fixture(scope="module")
def trained() -> torch.nn.Module:
    """2-layer GPT-2 trained on a two-mode language: the mode token fixes the vocabulary."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=2 + 2 * V, n_embd=32, n_layer=2, n_head=2, n_positions=16, bos_token_id=0,
        eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    model = transformers.GPT2LMHeadModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-2)
    for _ in range(25):
        x = torch.cat([sample(0, 16, 7, g), sample(1, 16, 7, g)])
        loss = model(x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 2.2  # optimum ln 8 = 2.08
    return model.eval()


def mass_a(model: torch.nn.Module, prompts: torch.Tensor) -> float:
    with torch.no_grad():
        p = model(prompts).logits[:, -1].softmax(-1)
    return float(p[:, 2 : 2 + V].sum(-1).mean())


@pytest.mark.parametrize("method", [MeanDifference, PCADifference])
def test_steering_moves_target_mass_on_trained_model(trained, method) -> None:
    g = torch.Generator().manual_seed(1)
    a, b = sample(0, 64, 3, g), sample(1, 64, 3, g)
    site = find_sites(trained, "block", 0)[0]
    acts = collect_activations(trained, list(a) + list(b), site, token="last")[site.name]
    direction = method().fit(acts[:64], acts[64:])
    assert direction.sign_check_ == 1.0
    held_out = sample(1, 32, 3, torch.Generator().manual_seed(2))
    before = mass_a(trained, held_out)
    with steer(trained, Intervention(site, direction.vector(), alpha=1.0)):
        after = mass_a(trained, held_out)
    assert before < 0.01 and after > 0.95
    # the opposite sign keeps B prompts in B
    with steer(trained, Intervention(site, direction.vector(), alpha=-1.0)):
        assert mass_a(trained, held_out) < 0.01


def llama(dtype: torch.dtype = torch.float64) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(cfg).to(dtype).eval()


def gpt2(dtype: torch.dtype = torch.float64) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=64, n_embd=32, n_layer=2, n_head=2, n_positions=64, bos_token_id=0,
        eos_token_id=0,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(cfg).to(dtype).eval()


def test_ablation_removes_projection_and_clamp_sets_it() -> None:
    model = gpt2(torch.float32)
    ids = torch.randint(0, 64, (3, 6), generator=torch.Generator().manual_seed(0))
    block, nxt = find_sites(model, "block", 0)[0], find_sites(model, "residual_pre", 1)[0]
    g = torch.Generator().manual_seed(3)
    v = torch.randn(32, generator=g)
    u = v / v.norm()
    Q = Subspace.from_vectors(torch.randn(32, 3, generator=g)).basis

    def resid() -> torch.Tensor:
        return collect_activations(model, [{"input_ids": ids}], nxt, token="all")[nxt.key]

    h = resid()
    with steer(model, Intervention(block, v, mode="ablate")):
        ablated = resid()
    assert float((ablated @ u).abs().max()) <= 0.01 * float((h @ u).abs().max())
    torch.testing.assert_close(ablated, h - torch.outer(h @ u, u), rtol=0, atol=1e-5)
    with steer(model, Intervention(block, subspace=Q, mode="ablate")):
        sub = resid()
    assert float((sub @ Q).norm()) <= 0.01 * float((h @ Q).norm())
    with steer(model, Intervention(block, v, mode="clamp", clamp_value=2.5)):
        clamped = resid()
    torch.testing.assert_close(clamped @ u, torch.full((18,), 2.5), rtol=0, atol=1e-4)
    with steer(model, Intervention(block, v, mode="ablate_add")):
        replaced = resid()
    torch.testing.assert_close(replaced @ u, torch.full((18,), float(v.norm())), rtol=0, atol=1e-4)
    # two interventions at one site compose in order: ablate, then add
    with steer(model, [Intervention(block, v, mode="ablate"), Intervention(block, v, alpha=0.5)]):
        both = resid()
    torch.testing.assert_close(both, h - torch.outer(h @ u, u) + 0.5 * v, rtol=0, atol=1e-5)


@pytest.mark.parametrize("mode", ["add", "ablate", "ablate_add", "clamp"])
@pytest.mark.parametrize("kind", ["block", "attention", "mlp", "residual_pre"])
def test_strength_zero_is_bitwise_noop(mode: str, kind: str) -> None:
    model = gpt2(torch.float32)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        ref = model(ids).logits
        iv = Intervention(find_sites(model, kind, 1)[0], torch.ones(32), mode=mode, alpha=0.0,
                          clamp_value=1.0)  # fmt: skip
        with steer(model, iv):
            out = model(ids).logits
        iv1 = Intervention(iv.site, torch.ones(32), mode=mode, alpha=1.0, clamp_value=1.0)
        with steer(model, iv1):
            moved = model(ids).logits
    assert torch.equal(out, ref)
    assert not torch.equal(moved, ref)


def step_by_step(model, prompt, n_new, intervention):
    """Greedy decode with the KV cache; then recompute the full sequence without it."""
    # transformers renamed `past_key_values` to `cache` during 5.x: use whichever this one has
    key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    with torch.no_grad(), steer(model, intervention):
        out = model(prompt, use_cache=True)
        logits, cache, seq = [out.logits[:, -1]], getattr(out, key), prompt
        for _ in range(n_new):
            nxt = logits[-1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
            out = model(nxt, **{key: cache}, use_cache=True)
            logits.append(out.logits[:, -1])
            cache = getattr(out, key)
        full = model(seq, use_cache=False).logits
    return torch.stack(logits, 1), full[:, prompt.shape[1] - 1 :], seq


@pytest.mark.parametrize("build", [llama, gpt2])
@pytest.mark.parametrize("positions", ["new", "prompt", "all", "mask"])
def test_kv_cache_gives_identical_logits(build, positions) -> None:
    model = build()
    prompt = torch.tensor([[5, 6, 7, 8, 9], [9, 8, 7, 6, 5]])
    v = 4 * torch.randn(32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    pos = positions
    if positions == "mask":
        pos = torch.zeros(12, dtype=torch.bool)
        pos[[1, 6, 7]] = True  # one prompt token and two generated ones
    iv = Intervention(find_sites(model, "block", 0)[0], v, positions=pos)
    cached, recomputed, seq = step_by_step(model, prompt, 4, iv)
    torch.testing.assert_close(cached, recomputed, rtol=0, atol=1e-10)
    with torch.no_grad():
        plain = model(seq).logits[:, prompt.shape[1] - 1 :]
    assert float((plain - recomputed).abs().max()) > 1e-2  # steering did something
    if positions == "new":  # the prompt's own logits are untouched
        with torch.no_grad():
            unsteered = model(prompt).logits
            with steer(model, iv):
                assert torch.equal(model(prompt).logits, unsteered)
        assert torch.equal(plain[:, 0], recomputed[:, 0])


def test_generate_with_new_token_steering_matches_manual_loop() -> None:
    model = llama()
    prompt = torch.tensor([[5, 6, 7, 8]])
    v = 4 * torch.randn(32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    iv = Intervention(find_sites(model, "block", 1)[0], v, positions="new")
    with torch.no_grad(), steer(model, iv) as handle:
        generated = model.generate(prompt, max_new_tokens=4, do_sample=False, pad_token_id=0)
        assert handle.prompt_length == 4
    _, _, seq = step_by_step(model, prompt, 4, iv)
    assert torch.equal(generated, seq)
    with torch.no_grad():
        plain = model.generate(prompt, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(plain[:, :5], generated[:, :5])  # first new token: prompt unsteered


def all_hooks(model: torch.nn.Module) -> dict:
    return {
        n: (dict(m._forward_hooks), dict(m._forward_pre_hooks), dict(m._forward_hooks_with_kwargs))
        for n, m in model.named_modules()
    }


def test_hooks_removed_on_exit_and_on_exception_model_never_mutated() -> None:
    model = gpt2()
    user = model.transformer.h[0].register_forward_hook(lambda *a: None)
    before = all_hooks(model)
    params = {k: v.clone() for k, v in model.state_dict().items()}
    iv = [
        Intervention(find_sites(model, k, 0)[0], torch.ones(32, dtype=torch.float64))
        for k in ("block", "attention", "mlp", "residual_pre")
    ]
    with steer(model, iv) as handle:
        assert all_hooks(model) != before
        model(torch.tensor([[1, 2, 3]]))
    assert not handle.active
    assert all_hooks(model) == before
    with pytest.raises(RuntimeError, match="boom"), steer(model, iv):
        model(torch.tensor([[1, 2, 3]]))
        raise RuntimeError("boom")
    assert all_hooks(model) == before
    # an error inside the forward pass (wrong width at a custom site) also cleans up
    bad = Intervention("transformer.h.0.mlp.c_fc", torch.ones(32, dtype=torch.float64))
    with pytest.raises(ValueError, match="width 128"), steer(model, bad):
        model(torch.tensor([[1, 2, 3]]))
    assert all_hooks(model) == before
    assert all(torch.equal(v, params[k]) for k, v in model.state_dict().items())
    user.remove()


def test_bad_input_raises_clear_errors() -> None:
    model = gpt2()
    v = torch.ones(32, dtype=torch.float64)
    with pytest.raises(ValueError, match="unknown site"), steer(model, Intervention("x.9", v)):
        pass
    with (
        pytest.raises(ValueError, match="dimension 16 but the model's hidden size is 32"),
        steer(model, Intervention("transformer.h.0", torch.ones(16))),
    ):
        pass
    with pytest.raises(ValueError, match="empty"), steer(model, []):
        pass
    bad: list = ["transformer.h.0"]
    with pytest.raises(TypeError, match="Intervention"), steer(model, bad):
        pass
    with pytest.raises(ValueError, match="mode must be one of"):
        Intervention("transformer.h.0", v, mode="multiply")
    with pytest.raises(ValueError, match="needs a vector"):
        Intervention("transformer.h.0", mode="add")
    with pytest.raises(ValueError, match="clamp_value"):
        Intervention("transformer.h.0", v, mode="clamp")
    with pytest.raises(ValueError, match="finite"):
        Intervention("transformer.h.0", v, alpha=float("nan"))
    with pytest.raises(ValueError, match="positions"):
        Intervention("transformer.h.0", v, positions="decode")
    with pytest.raises(ValueError, match="dimension 32 but the subspace"):
        Intervention("transformer.h.0", v, subspace=torch.eye(16)[:, :2], mode="ablate_add")
    assert all_hooks(model) == {n: ({}, {}, {}) for n, _ in model.named_modules()}


def test_vector_overflowing_the_model_dtype_is_refused() -> None:
    # the vector is finite in float32 but not in the float16 model: the check runs on the cast
    model = gpt2(torch.float16)
    site = find_sites(model, "block", 0)[0]
    ids = torch.tensor([[1, 2, 3]])
    big = torch.full((32,), 1e5)
    with (
        pytest.raises(ValueError, match=r"overflows.*float16"),
        steer(model, Intervention(site, big)),
    ):
        model(ids)
    # alpha * vector is what is added: finite vector, overflowing product
    scaled = Intervention(site, torch.full((32,), 1e3), alpha=100.0)
    with pytest.raises(ValueError, match=r"overflows.*float16"), steer(model, scaled):
        model(ids)
    # the clamp target is set in the model's dtype too
    clamp = Intervention(site, torch.ones(32), mode="clamp", clamp_value=1e5)
    with pytest.raises(ValueError, match=r"clamp_value.*overflows.*float16"), steer(model, clamp):
        model(ids)
    # a direction only (ablate) is normalised in float64 before the cast: a huge vector is fine
    with torch.no_grad(), steer(model, Intervention(site, big, mode="ablate")):
        assert bool(torch.isfinite(model(ids).logits).all())
    with torch.no_grad(), steer(model, Intervention(site, torch.full((32,), 1e3))):
        assert bool(torch.isfinite(model(ids).logits).all())


def test_overflow_is_also_caught_when_the_model_dtype_changes_inside_the_block() -> None:
    model = gpt2(torch.float32)
    site = find_sites(model, "block", 0)[0]
    with steer(model, Intervention(site, torch.full((32,), 1e5))):
        model(torch.tensor([[1, 2]]))  # fine in float32
        model.half()
        with pytest.raises(ValueError, match=r"overflows.*float16"):
            model(torch.tensor([[1, 2]]))


@pytest.mark.parametrize(
    "alpha", [torch.tensor(2.0), torch.tensor(2), np.float32(2.0), np.int64(2), np.array(2.0)]
)
def test_alpha_as_tensor_or_numpy_scalar_is_converted(alpha) -> None:
    model = gpt2()
    site = find_sites(model, "block", 0)[0]
    v = torch.randn(32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    iv = Intervention(site, v, alpha=alpha)
    assert type(iv.alpha) is float and iv.alpha == 2.0
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        with steer(model, iv):
            got = model(ids).logits
        with steer(model, Intervention(site, v, alpha=2.0)):
            want = model(ids).logits
    assert torch.equal(got, want)


@pytest.mark.parametrize(
    ("alpha", "shown"),
    [("2", "'2'"), (True, "True"), (torch.ones(2), "tensor"), (1j, "1j"), (None, "None")],
)
def test_alpha_of_wrong_type_names_the_value(alpha, shown) -> None:
    with pytest.raises(TypeError, match=rf"alpha must be a real number.*got {shown}"):
        Intervention("transformer.h.0", torch.ones(32), alpha=alpha)


def beam_generate(model, prompt, positions, v):
    iv = Intervention(find_sites(model, "block", 0)[0], v, positions=positions)
    with torch.no_grad(), steer(model, iv):
        return model.generate(
            prompt, max_new_tokens=4, num_beams=2, do_sample=False, pad_token_id=0,
            return_dict_in_generate=True, output_scores=True,
        )  # fmt: skip


def test_per_row_mask_follows_the_rows_under_beam_search() -> None:
    # generate(num_beams=2) runs the batch as 2 * B rows (each prompt's beams next to each
    # other): row i of a (B, L) mask must steer the beams of prompt i
    model = llama()
    prompt = torch.tensor([[5, 6, 7, 8], [9, 8, 7, 6]])
    v = 4 * torch.randn(32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[0, [1, 5]] = True
    mask[1, [2, 4, 6]] = True
    both = beam_generate(model, prompt, mask, v)
    for i in range(2):
        alone = beam_generate(model, prompt[i : i + 1], mask[i], v)
        assert torch.equal(both.sequences[i], alone.sequences[0])
        torch.testing.assert_close(
            both.sequences_scores[i], alone.sequences_scores[0], rtol=0, atol=1e-10
        )
        plain = beam_generate(model, prompt[i : i + 1], torch.zeros(8, dtype=torch.bool), v)
        assert float((plain.sequences_scores[0] - alone.sequences_scores[0]).abs()) > 1e-3


def test_mask_rows_that_do_not_divide_the_batch_are_refused() -> None:
    model = llama()
    iv = Intervention(find_sites(model, "block", 0)[0], torch.ones(32, dtype=torch.float64),
                      positions=torch.ones(3, 4, dtype=torch.bool))  # fmt: skip
    with (
        pytest.raises(ValueError, match=r"positions mask has 3 rows.*4 sequences"),
        steer(model, iv),
    ):
        model(torch.ones(4, 4, dtype=torch.long))
