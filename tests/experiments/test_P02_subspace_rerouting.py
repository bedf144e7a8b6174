"""P02 (subspace rerouting vs output-loss token search): patching helper and the fast run."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")


def test_patching_the_last_block_at_the_last_position_copies_the_donor_output():
    from subspaces.experiments.P02_subspace_rerouting import _patch_flip_rate
    from subspaces.steering import find_sites
    from subspaces.testing.tiny_lm import tiny_causal_lm

    model = tiny_causal_lm("llama", vocab_size=40, hidden=16, layers=2, heads=2, seed=0).eval()
    g = torch.Generator().manual_seed(0)
    refused = torch.randint(0, 40, (12, 7), generator=g)
    donors = torch.randint(0, 40, (12, 7), generator=g)
    with torch.no_grad():
        donor_out = model(input_ids=donors).logits[:, -1].argmax(-1)
        own_out = model(input_ids=refused).logits[:, -1].argmax(-1)
    target = int(donor_out.mode().values)
    sites = find_sites(model, kind="block")
    # after the last block only the final norm and the head act, position by position
    expected = float((donor_out == target).double().mean())
    assert _patch_flip_rate(model, sites[-1], refused, donors, target) == expected
    # the hooks are removed: the model is unchanged afterwards
    with torch.no_grad():
        assert torch.equal(model(input_ids=refused).logits[:, -1].argmax(-1), own_out)


@pytest.mark.slow
def test_p02_fast_run() -> None:
    from subspaces.experiments import get

    result = get("P02").run(True, 0)
    m = result.measured
    assert m["model_label_accuracy"] > 0.9  # the toy refusal rule was learned
    assert 0 <= m["targeted_layer"] < m["num_layers"]
    layer = m["targeted_layer"]
    carries = (
        m["probe_test_accuracy_by_layer"][layer] >= 0.95
        and m["patch_flip_rate_by_layer"][layer] >= 0.9
    )
    assert carries or layer == m["num_layers"] - 1
    assert len(m["trials"]) == 4 and len(m["old_criterion"]["trials"]) == 4
    for t in m["trials"]:
        for method in ("ssr", "output"):
            r = t[method]
            assert 0 <= r["steps"] <= m["max_steps"] and r["seconds"] >= 0
            # success now means the model's output flipped, checked again on the final input
            assert r["success"] == r["output_flipped"] or not r["success"]
    s, o = m["stats"]["ssr"], m["stats"]["output"]
    expected = (
        s["success_rate"] > 0
        and s["success_rate"] >= o["success_rate"]
        and m["log_time_ratio_ssr_over_output"]["ci95"][1] < 0
    )
    assert result.passed == expected
    assert result.headline == ("log_time_ratio_ssr_over_output",)
