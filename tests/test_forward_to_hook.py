"""The forward to the hook gives run_with_cache's activation at the hook, for each family and hook kind."""

from __future__ import annotations

import pytest
import torch
from hf_cache import make_word_tokenizer, tiny_bloom, tiny_neox, tiny_olmo, tiny_olmo2, tiny_olmo3, write_local_suite

from crosslens.activations.forward import (
    ForwardToHooks,
    forward_to_hook,
    keep_first_blocks,
    residual_stop,
    trunk_attention,
)
from crosslens.activations.sdpa import sdpa_refusal
from crosslens.checkpoints import CheckpointSuite

FAMILIES = {"neox": tiny_neox, "olmo": tiny_olmo, "bloom": tiny_bloom}
HOOKS = [
    "hook_embed",
    "blocks.0.hook_resid_pre",
    "blocks.1.hook_resid_pre",
    "blocks.1.hook_resid_post",
    "blocks.1.hook_mlp_out",
    "blocks.1.hook_attn_out",
    "blocks.1.attn.hook_z",
]
TOKENS = torch.randint(3, 50, (3, 12), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def model(request, tmp_path_factory):
    """A three-block tiny model of the family, loaded through a local suite as crosslens loads snapshots."""
    root = tmp_path_factory.mktemp(request.param)
    make = FAMILIES[request.param]
    write_local_suite(root, {"step0": make(seed=5, num_hidden_layers=3)}, make_word_tokenizer())
    return CheckpointSuite.local(root).load(0)


def _cached(model, hook):
    with torch.inference_mode():
        _, cache = model.run_with_cache(TOKENS, names_filter=[hook])
    return cache[hook]


@pytest.mark.parametrize("hook", HOOKS)
def test_forward_to_hook_equals_run_with_cache(model, hook):
    expected = _cached(model, hook)
    got = forward_to_hook(model, TOKENS, hook)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert not any(point._forward_hooks for point in model.hook_dict.values())


@pytest.mark.parametrize("hook", ["blocks.1.hook_resid_post", "blocks.1.hook_mlp_out", "blocks.1.attn.hook_z"])
def test_the_compiled_path_gives_the_same_activations(model, hook):
    # aot_eager traces the graph as inductor would get it, without code generation (seconds on a CPU)
    with torch.inference_mode(), ForwardToHooks(model, [hook], compile=True, backend="aot_eager") as forward:
        got = forward(TOKENS)[hook]
        assert forward._direct is not None or forward._split_at == 1  # the trunk is compiled
    torch.testing.assert_close(got, _cached(model, hook), rtol=0, atol=1e-5)


def test_only_the_blocks_up_to_the_hook_run(model):
    ran = []
    handles = [block.register_forward_hook(lambda m, i, o, k=k: ran.append(k)) for k, block in enumerate(model.blocks)]
    try:
        forward_to_hook(model, TOKENS, "blocks.1.hook_resid_post")
        assert ran == [0, 1]
        ran.clear()
        forward_to_hook(model, TOKENS, "blocks.0.hook_resid_pre")
        assert ran == []
    finally:
        for handle in handles:
            handle.remove()


def test_several_hooks_and_a_truncated_model(tmp_path):
    write_local_suite(tmp_path, {"step0": tiny_neox(seed=6, num_hidden_layers=3)}, make_word_tokenizer())
    model = CheckpointSuite.local(tmp_path).load(0)
    hooks = ["blocks.0.hook_mlp_out", "blocks.1.hook_resid_post"]
    with torch.inference_mode():
        _, cache = model.run_with_cache(TOKENS, names_filter=hooks)
        keep_first_blocks(model, 2)
        with ForwardToHooks(model, hooks, compile=True, backend="aot_eager") as forward:
            got = forward(TOKENS)
            assert forward._split_at is None  # hooks in two blocks: nothing compiled around a hook
    assert model.cfg.n_layers == 2
    for hook in hooks:
        torch.testing.assert_close(got[hook], cache[hook], rtol=0, atol=1e-5)


def test_bfloat16_models_give_bfloat16_activations(tmp_path):
    write_local_suite(tmp_path, {"step0": tiny_neox(seed=7)}, make_word_tokenizer())
    model = CheckpointSuite.local(tmp_path).load(0).to(torch.bfloat16)
    got = forward_to_hook(model, TOKENS, "blocks.0.hook_resid_post")
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, _cached(model, "blocks.0.hook_resid_post"))


def test_refusals(model):
    with pytest.raises(ValueError, match="no hook 'blocks.7.hook_resid_post'"):
        ForwardToHooks(model, ["blocks.7.hook_resid_post"])
    with pytest.raises(RuntimeError, match="inside its context"):
        ForwardToHooks(model, ["blocks.0.hook_resid_post"])(TOKENS)
    with pytest.raises(ValueError, match="not one vector per token"), torch.inference_mode():
        from crosslens.activations.forward import harvest_rows

        harvest_rows(model, TOKENS, torch.ones_like(TOKENS, dtype=torch.bool), ["blocks.0.attn.hook_pattern"])
    assert not any(point._forward_hooks for point in model.hook_dict.values())


def test_residual_stop():
    assert residual_stop("blocks.3.hook_resid_pre") == 3
    assert residual_stop("blocks.3.hook_resid_post") == 4
    assert residual_stop("blocks.3.hook_mlp_out") is None
    assert residual_stop("hook_embed") is None


SDPA_FAMILIES = {
    **FAMILIES,
    "olmo2": tiny_olmo2,  # post-norm blocks, QK norm over all heads
    # grouped-query attention and sliding windows of 4 positions (the 12 tokens overrun them)
    "olmo3": lambda **kw: tiny_olmo3(**kw, layer_types=["sliding_attention", "full_attention", "sliding_attention"]),
}


@pytest.fixture(scope="module", params=sorted(SDPA_FAMILIES))
def sdpa_model(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"sdpa-{request.param}")
    write_local_suite(root, {"step0": SDPA_FAMILIES[request.param](seed=5, num_hidden_layers=3)}, make_word_tokenizer())
    return CheckpointSuite.local(root).load(0)


@pytest.mark.parametrize(
    "hook", ["blocks.1.hook_resid_post", "blocks.2.hook_resid_pre", "blocks.1.hook_mlp_out", "blocks.1.attn.hook_z"]
)
def test_the_trunk_with_sdpa_attention_gives_run_with_cache_activations(sdpa_model, hook):
    assert sdpa_refusal(sdpa_model) is None
    with torch.inference_mode(), ForwardToHooks(sdpa_model, [hook], attention="sdpa") as forward:
        got = forward(TOKENS)[hook]
        assert forward._direct is not None or forward._split_at == 1  # the SDPA trunk ran
    torch.testing.assert_close(got, _cached(sdpa_model, hook), rtol=0, atol=1e-5)


def test_the_compiled_trunk_with_sdpa_attention_gives_run_with_cache_activations(sdpa_model):
    hook = "blocks.2.hook_resid_post"
    with (
        torch.inference_mode(),
        ForwardToHooks(sdpa_model, [hook], compile=True, backend="aot_eager", attention="sdpa") as forward,
    ):
        got = forward(TOKENS)[hook]
    torch.testing.assert_close(got, _cached(sdpa_model, hook), rtol=0, atol=1e-5)


def test_the_compiled_sdpa_trunk_compiles_once_for_every_snapshot_model(tmp_path):
    # A streamed run keeps 32 models of one architecture; a graph per model would pass Dynamo's
    # recompile limit (8) and leave the rest to run uncompiled.
    from torch._dynamo.utils import counters

    write_local_suite(tmp_path, {f"step{i}": tiny_neox(seed=i) for i in range(3)}, make_word_tokenizer())
    suite = CheckpointSuite.local(tmp_path)
    torch._dynamo.reset()  # no graph from an earlier test
    counters.clear()
    for i in range(3):
        forward_to_hook(
            suite.load(i), TOKENS, "blocks.1.hook_resid_post", compile=True, backend="aot_eager", attention="sdpa"
        )
    assert counters["stats"]["unique_graphs"] == 1


def test_the_trunk_attention_is_chosen_by_device_and_refused_where_sdpa_would_differ(tmp_path):
    write_local_suite(tmp_path, {"step0": tiny_neox(seed=8)}, make_word_tokenizer())
    model = CheckpointSuite.local(tmp_path).load(0)
    assert trunk_attention(model, None) == "hooked"  # on a CPU, TransformerLens's own attention
    assert trunk_attention(model, "sdpa") == "sdpa"
    with pytest.raises(ValueError, match="choose one of \\['hooked', 'sdpa'\\]"):
        trunk_attention(model, "flash")
    model.cfg.attn_scores_soft_cap = 30.0  # Gemma-2's tanh cap: SDPA has no such step
    assert sdpa_refusal(model) == "its config sets attn_scores_soft_cap=30.0"
    with pytest.raises(
        ValueError,
        match="attention='sdpa' cannot run this model: its config sets attn_scores_soft_cap=30.0; use attention='hooked'",
    ):
        ForwardToHooks(model, ["blocks.0.hook_resid_post"], attention="sdpa")
    with ForwardToHooks(model, ["blocks.0.hook_resid_post"]) as forward:
        assert forward.attention == "hooked"
    model.cfg.attn_scores_soft_cap = -1.0
    assert sdpa_refusal(model) is None
    # a hook left on the model (a steering edit, say): the trunk would skip some hook points
    model.add_hook("blocks.0.attn.hook_pattern", lambda pattern, hook: pattern)
    assert sdpa_refusal(model) == "hook points carry hooks (blocks.0.attn.hook_pattern) that it would not all run"
    model.reset_hooks()
    assert sdpa_refusal(model) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_the_compiled_trunk_takes_flash_attention_and_keeps_the_activations(tmp_path):
    write_local_suite(
        tmp_path, {"step0": tiny_neox(seed=9, num_hidden_layers=3, max_position_embeddings=256)}, make_word_tokenizer()
    )
    model = CheckpointSuite.local(tmp_path).load(0, device="cuda", dtype=torch.bfloat16)
    tokens = torch.randint(3, 50, (4, 256), generator=torch.Generator().manual_seed(1)).cuda()
    hook = "blocks.2.hook_resid_post"
    with torch.inference_mode(), ForwardToHooks(model, [hook], compile=True) as forward:
        assert forward.attention == "sdpa"
        got = forward(tokens)[hook].float()
    with torch.inference_mode():
        _, cache = model.run_with_cache(tokens, names_filter=[hook])
    expected = cache[hook].float()
    # bf16 rounding apart: within 2% of the activations' scale
    assert float((got - expected).abs().max()) <= 0.02 * float(expected.abs().max())
