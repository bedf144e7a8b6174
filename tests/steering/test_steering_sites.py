"""Sites: the right modules per Hugging Face family, and clear errors for unsupported places."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from subspaces.steering import (
    Site,
    collect_activations,
    find_sites,
    hidden_size,
    num_layers,
    resolve_site,
)

transformers = pytest.importorskip("transformers")
T = transformers

ATT = {"vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
LLAMA_LIKE = {**ATT, "intermediate_size": 64, "num_key_value_heads": 2}

# family -> (config, model, kwargs, block list, attention child, mlp child or None)
FAMILIES = {
    "gpt2": ("GPT2Config", "GPT2LMHeadModel",
             {"vocab_size": 64, "n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 64,
              "bos_token_id": 0, "eos_token_id": 0}, "transformer.h", "attn", "mlp"),
    "llama": ("LlamaConfig", "LlamaForCausalLM", LLAMA_LIKE, "model.layers", "self_attn", "mlp"),
    "mistral": ("MistralConfig", "MistralForCausalLM", LLAMA_LIKE, "model.layers", "self_attn",
                "mlp"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", LLAMA_LIKE, "model.layers", "self_attn", "mlp"),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", {**LLAMA_LIKE, "head_dim": 16}, "model.layers",
              "self_attn", "mlp"),
    "phi": ("PhiConfig", "PhiForCausalLM", {**ATT, "intermediate_size": 64}, "model.layers",
            "self_attn", "mlp"),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", {**ATT, "intermediate_size": 64},
                 "gpt_neox.layers", "attention", "mlp"),
    "gptj": ("GPTJConfig", "GPTJForCausalLM",
             {"vocab_size": 64, "n_embd": 32, "n_layer": 2, "n_head": 2, "rotary_dim": 8,
              "n_positions": 64, "bos_token_id": 0, "eos_token_id": 0}, "transformer.h", "attn",
             "mlp"),
    "falcon": ("FalconConfig", "FalconForCausalLM", ATT, "transformer.h", "self_attention", "mlp"),
    "opt": ("OPTConfig", "OPTForCausalLM",
            {**ATT, "ffn_dim": 64, "word_embed_proj_dim": 32, "max_position_embeddings": 64},
            "model.decoder.layers", "self_attn", None),
    # Bloom's attention and MLP modules add the residual themselves: the sites are their output
    # projections; MPT's MLP does the same
    "bloom": ("BloomConfig", "BloomForCausalLM",
              {"vocab_size": 64, "hidden_size": 32, "n_layer": 2, "n_head": 2},
              "transformer.h", "self_attention.dense", "mlp.dense_4h_to_h"),
    "mpt": ("MptConfig", "MptForCausalLM",
            {"vocab_size": 64, "d_model": 32, "n_layers": 2, "n_heads": 2, "max_seq_len": 64},
            "transformer.blocks", "attn", "ffn.down_proj"),
    # sandwich norms: each sublayer's output is normalized before the residual add
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {**LLAMA_LIKE, "head_dim": 16},
               "model.layers", "post_attention_layernorm", "post_feedforward_layernorm"),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", {**LLAMA_LIKE, "head_dim": 16},
               "model.layers", "post_attention_layernorm", "post_feedforward_layernorm"),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM",
              {**LLAMA_LIKE, "pad_token_id": 0, "bos_token_id": 0, "eos_token_id": 0},
              "model.layers", "post_attention_layernorm", "post_feedforward_layernorm"),
}  # fmt: skip


FLOAT32_ONLY = {"mpt"}


def build(family: str, **overrides: object) -> torch.nn.Module:
    cfg_name, model_name, kwargs, *_ = FAMILIES[family]
    if not hasattr(T, model_name):  # families newer than the installed transformers
        pytest.skip(f"transformers {T.__version__} has no {model_name}")
    torch.manual_seed(0)
    model = getattr(T, model_name)(getattr(T, cfg_name)(**kwargs, **overrides))
    # MPT before transformers 5.2 builds its causal mask in float32 from finfo(float64).min
    return (model.float() if family in FLOAT32_ONLY else model.double()).eval()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_sites_per_family(family: str) -> None:
    _, _, _, blocks, attn, mlp = FAMILIES[family]
    model = build(family)
    assert num_layers(model) == 2 and hidden_size(model) == 32
    assert find_sites(model) == [Site(f"{blocks}.0", 0, "block"), Site(f"{blocks}.1", 1, "block")]
    assert find_sites(model, "residual_pre", -1) == [Site(f"{blocks}.1", 1, "residual_pre")]
    assert find_sites(model, "attention", [1]) == [Site(f"{blocks}.1.{attn}", 1, "attention")]
    ids = torch.tensor([[3, 5, 7, 9, 11]])
    if mlp is None:
        with pytest.raises(ValueError, match="no mlp sublayer"):
            find_sites(model, "mlp")
        return
    sites = [*find_sites(model, "residual_pre", 1), *find_sites(model, "block", 1)]
    sites += [*find_sites(model, "attention", 1), *find_sites(model, "mlp", 1)]
    assert sites[-1] == Site(f"{blocks}.1.{mlp}", 1, "mlp")
    acts = collect_activations(model, [{"input_ids": ids}], sites, token="all")
    pre, out, att, ff = (acts[s.key] for s in sites)
    # every supported family is a residual network: block output = input + attention + MLP
    # (sequential or parallel), which pins down that each site is the place its kind names
    torch.testing.assert_close(pre + att + ff, out, rtol=0, atol=1e-5)
    assert float((att - out).abs().max()) > 1e-3 and float(ff.abs().max()) > 1e-3
    # residual_pre of layer 1 is the block output of layer 0 (hidden_states[1] in HF outputs)
    hs = model(ids, output_hidden_states=True).hidden_states
    torch.testing.assert_close(pre, hs[1][0].float(), rtol=0, atol=1e-6)
    # a name is classified as the kind find_sites gives it, and only that name
    assert resolve_site(model, f"{blocks}.1.{attn}").kind == "attention"
    assert resolve_site(model, f"{blocks}.1.{mlp}").kind == "mlp"


@pytest.mark.parametrize("family", ["bloom", "gemma2"])
def test_modules_that_are_not_the_sublayer_output_are_plain_modules(family: str) -> None:
    # Bloom's self_attention returns attention + residual; Gemma 2's self_attn output is
    # normalized before the add: neither is the "attention" site, so a name lookup must not
    # call them that
    outer = {"bloom": "transformer.h.1.self_attention", "gemma2": "model.layers.1.self_attn"}
    assert resolve_site(build(family), outer[family]).kind == "module"


def test_bloom_slow_but_exact_tensor_parallel_is_refused() -> None:
    # with pretraining_tp > 1 and slow_but_exact, Bloom bypasses its dense modules (F.linear on
    # weight slices): a hook there would never run, so the sublayer sites are refused
    model = build("bloom", pretraining_tp=2, slow_but_exact=True)
    for kind in ("attention", "mlp"):
        with pytest.raises(ValueError, match="slow_but_exact"):
            find_sites(model, kind)
    assert find_sites(model, "block", 0) == [Site("transformer.h.0", 0, "block")]


def test_bare_base_model_and_custom_pattern() -> None:
    model = build("llama").model  # LlamaModel: blocks at "layers"
    assert [s.name for s in find_sites(model)] == ["layers.0", "layers.1"]
    sites = find_sites(build("llama"), "mlp", pattern="model.layers.{i}.mlp.down_proj")
    assert [s.name for s in sites] == [
        "model.layers.0.mlp.down_proj",
        "model.layers.1.mlp.down_proj",
    ]
    assert resolve_site(build("gpt2"), "transformer.h.1.attn") == Site(
        "transformer.h.1.attn", 1, "attention"
    )
    assert resolve_site(build("gpt2"), "transformer.ln_f") == Site("transformer.ln_f", -1, "module")


MOE = {"mixtral": ("MixtralConfig", "MixtralForCausalLM"),
       "granitemoe": ("GraniteMoeConfig", "GraniteMoeForCausalLM")}  # fmt: skip


def moe_model(family: str = "mixtral") -> torch.nn.Module:
    cfg_name, model_name = MOE[family]
    if not hasattr(T, model_name):
        pytest.skip(f"transformers {T.__version__} has no {model_name}")
    torch.manual_seed(0)
    cfg = getattr(T, cfg_name)(**LLAMA_LIKE, num_local_experts=4, num_experts_per_tok=2)
    return getattr(T, model_name)(cfg).eval()  # float32: grouped expert kernels need it


@pytest.mark.parametrize("family", sorted(MOE))
def test_moe_experts_refused_but_layer_sites_work(family: str) -> None:
    # the MoE layer is `mlp` (Mixtral on transformers 5) or `block_sparse_moe` (Mixtral on
    # transformers 4, GraniteMoE, PhiMoE): both must be found as the layer's MLP site
    model = moe_model(family)
    moe = {n.rsplit(".", 1)[1] for n, _ in model.named_modules() if n.count(".") == 3}
    moe_name = "block_sparse_moe" if "block_sparse_moe" in moe else "mlp"
    mlp_sites = find_sites(model, "mlp")
    assert mlp_sites == [Site(f"model.layers.{i}.{moe_name}", i, "mlp") for i in (0, 1)]
    # the experts: one fused module (transformers 5), a list `experts.j` (Mixtral on
    # transformers 4) or `input_linear` / `output_linear` (GraniteMoE before 5.x fused them)
    experts = [
        n
        for n, m in model.named_modules()
        if n.startswith(f"model.layers.0.{moe_name}.")
        and (n.endswith(".experts") or type(m).__name__.endswith("Experts"))
    ]
    assert experts
    for name in experts:
        with pytest.raises(ValueError, match="mixture-of-experts"):
            find_sites(model, pattern=name.replace(".0.", ".{i}.", 1))
        with pytest.raises(ValueError, match="mixture-of-experts"):
            resolve_site(model, name)
    sites = [*find_sites(model, "residual_pre", 1), *find_sites(model, "block", 1)]
    sites += [*find_sites(model, "attention", 1), mlp_sites[1]]
    acts = collect_activations(model, [torch.tensor([1, 2, 3])], sites, token="all")
    assert all(a.shape == (3, 32) for a in acts.values())
    pre, out, att, ff = (acts[s.key] for s in sites)
    # block output = input + attention + MoE layer output, up to float32 rounding of the sums
    tol = 16 * torch.finfo(torch.float32).eps * float(out.abs().max() + pre.abs().max())
    torch.testing.assert_close(pre + att + ff, out, rtol=0, atol=tol)
    assert float(ff.abs().max()) > 1e3 * tol


def test_flattened_output_is_refused_at_run_time() -> None:
    # OPT runs its MLP on (batch*seq, d) rows: a custom pattern there is not a per-token site
    model = build("opt")
    sites = find_sites(model, pattern="model.decoder.layers.{i}.fc2", layers=0)
    with pytest.raises(ValueError, match="not a per-token hidden state"):
        collect_activations(model, [torch.tensor([1, 2, 3])], sites)


def test_bad_input_errors() -> None:
    model = build("gpt2")
    with pytest.raises(ValueError, match=r"unknown site 'transformer\.h\.7'.*did you mean"):
        resolve_site(model, "transformer.h.7")
    with pytest.raises(ValueError, match="out of range"):
        find_sites(model, layers=2)
    with pytest.raises(ValueError, match="kind must be one of"):
        find_sites(model, "resid_post")
    with pytest.raises(ValueError, match=r"\{i\}"):
        find_sites(model, pattern="transformer.h.0")
    with pytest.raises(ValueError, match="not a module"):
        find_sites(model, pattern="transformer.h.{i}.nothing")
    with pytest.raises(ValueError, match="could not find the list of decoder blocks"):
        find_sites(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="layers must be ints"):
        find_sites(model, layers=[0.5])  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"layers must be ints.*got 1\.5 \(float\)"):
        find_sites(model, layers=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"layers must be ints.*got '1' \(str\)"):
        find_sites(model, layers="1")  # type: ignore[arg-type]
    # NumPy 2 writes np.True_ (bool), NumPy 1 True (bool_)
    with pytest.raises(TypeError, match=r"layers must be ints.*got (np\.True_|True) \(bool_?\)"):
        find_sites(model, layers=[np.bool_(True)])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="kind"):
        Site("x", 0, "resid")


def test_layers_accept_numpy_and_tensor_integers() -> None:
    model = build("gpt2")
    want = find_sites(model, "mlp", [1])
    assert find_sites(model, "mlp", np.int64(1)) == want
    assert find_sites(model, "mlp", torch.tensor(-1)) == want
    assert find_sites(model, "mlp", [np.int32(1)]) == want
    assert find_sites(model, "block", np.array([0, 1])) == find_sites(model, "block", [0, 1])
    assert find_sites(model, pattern="transformer.h.{i}.attn", layers=np.int16(0))[0].layer == 0
    assert all(type(s.layer) is int for s in find_sites(model, "block", np.arange(2)))
