"""Sites: the right modules per Hugging Face family, and clear errors for unsupported places."""

from __future__ import annotations

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
}  # fmt: skip


def build(family: str) -> torch.nn.Module:
    cfg_name, model_name, kwargs, *_ = FAMILIES[family]
    torch.manual_seed(0)
    model = getattr(T, model_name)(getattr(T, cfg_name)(**kwargs))
    return model.double().eval()


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


def moe_model() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = T.MixtralConfig(**LLAMA_LIKE, num_local_experts=4, num_experts_per_tok=2)
    return T.MixtralForCausalLM(cfg).eval()


def test_moe_experts_refused_but_layer_sites_work() -> None:
    model = moe_model()
    with pytest.raises(ValueError, match="mixture-of-experts"):
        find_sites(model, pattern="model.layers.{i}.mlp.experts")
    with pytest.raises(ValueError, match="mixture-of-experts"):
        resolve_site(model, "model.layers.0.mlp.experts")
    sites = find_sites(model, "mlp") + find_sites(model, "block")
    acts = collect_activations(model, [torch.tensor([1, 2, 3])], sites, token="all")
    assert all(a.shape == (3, 32) for a in acts.values())


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
    with pytest.raises(ValueError, match="kind"):
        Site("x", 0, "resid")
