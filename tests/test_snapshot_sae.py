"""crosscoder.snapshot_sae(s): a plain SAELens SAE equal to the crosscoder's per-snapshot
mode at snapshot s, usable in a HookedSAETransformer; attaching the crosscoder itself is refused."""

from __future__ import annotations

import pytest
import torch
from sae_lens import HookedSAETransformer, JumpReLUSAE, StandardSAE, TopKSAE
from sae_lens.registry import SAE_CLASS_REGISTRY

import crosslens.crosscoders as cc
from crosslens.causal import SnapshotCodec

S, D, F = 3, 16, 48
HOOK = "blocks.0.hook_resid_post"
EXPECTED_CLASS = {
    "crosscoder": StandardSAE,
    "jumprelu_crosscoder": JumpReLUSAE,
    "topk_crosscoder": TopKSAE,
    "batchtopk_crosscoder": JumpReLUSAE,
}


def random_crosscoder(arch: str, *, apply_b_dec_to_input: bool = False, seed: int = 0):
    """An inference crosscoder with every parameter random (biases, thresholds, uneven norms)."""
    sae_cls, cfg_cls, _, _ = cc.ARCHITECTURES[arch]
    extra = {"k": 6} if arch == "topk_crosscoder" else {}
    crosscoder = sae_cls(cfg_cls(d_in=D, d_sae=F, n_snapshots=S, apply_b_dec_to_input=apply_b_dec_to_input, **extra))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        crosscoder.W_enc.copy_(torch.randn(S, D, F, generator=gen) * 0.3)
        crosscoder.b_enc.copy_(torch.randn(F, generator=gen) * 0.2)
        scale_FS1 = torch.rand(F, S, 1, generator=gen) * 2
        scale_FS1[:4, 1] = 0.0  # features absent at snapshot 1
        scale_FS1[4] = 0.0  # a feature with no decoder anywhere
        crosscoder.W_dec.copy_(torch.randn(F, S, D, generator=gen) * 0.1 * scale_FS1)
        crosscoder.b_dec.copy_(torch.randn(S, D, generator=gen) * 0.1)
        if hasattr(crosscoder, "threshold"):
            crosscoder.threshold.copy_(torch.rand(F, generator=gen) * 0.05)
    crosscoder.cfg.metadata.hook_name = HOOK
    crosscoder.cfg.metadata.activation_norm_factors = [0.5, 2.0, 4.0]
    return crosscoder


@pytest.mark.parametrize("apply_b_dec", [False, True])
@pytest.mark.parametrize("folded", [False, True])
@pytest.mark.parametrize("arch", list(cc.ARCHITECTURES))
def test_snapshot_sae_equals_the_per_snapshot_mode(arch, folded, apply_b_dec):
    crosscoder = random_crosscoder(arch, apply_b_dec_to_input=apply_b_dec)
    if folded:
        crosscoder.fold_activation_norm_scaling_factors()
    acts_ND = torch.randn(256, D, generator=torch.Generator().manual_seed(1)) * 3  # raw scale
    for s in range(S):
        sae = crosscoder.snapshot_sae(s)
        assert type(sae) is EXPECTED_CLASS[arch]
        assert sae.cfg.metadata.hook_name == HOOK and sae.cfg.metadata.snapshot_index == s
        codec = SnapshotCodec(crosscoder, s)
        want_codes = codec.encode_single(acts_ND)
        codes = sae.encode(acts_ND)
        assert torch.equal(codes != 0, want_codes != 0)  # same active features
        assert (want_codes != 0).any(dim=-1).float().mean() > 0.5  # and the test exercises some
        if arch == "topk_crosscoder":  # TopK's code is its ranking score, ReLU(h) * sum_s norms
            want_codes = want_codes * crosscoder.snapshot_norms().sum(dim=1)
        torch.testing.assert_close(codes, want_codes, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sae.decode(codes), codec.decode(codec.encode_single(acts_ND)), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sae(acts_ND), codec.decode(codec.encode_single(acts_ND)), rtol=1e-5, atol=1e-5)


def test_a_snapshot_sae_attaches_only_where_its_crosscoder_read():
    """A hook other than the crosscoder's is refused (attached there, a HookedSAETransformer would
    run the SAE on activations it never saw, or skip a misspelt hook with a log line); with no
    hook recorded, the one given is the SAE's."""
    from crosslens.core.errors import PartnerMismatchError

    crosscoder = random_crosscoder("crosscoder")
    assert crosscoder.snapshot_sae(0, hook_name=HOOK).cfg.metadata.hook_name == HOOK
    for other in (HOOK.replace("resid_post", "resid_pre"), HOOK[:-1]):
        with pytest.raises(
            PartnerMismatchError, match=f"the crosscoder reads {HOOK}, not hook '{other}'; pass hook_name='{HOOK}'"
        ):
            crosscoder.snapshot_sae(0, hook_name=other)
    crosscoder.cfg.metadata.hook_name = None
    assert crosscoder.snapshot_sae(0).cfg.metadata.hook_name is None
    assert crosscoder.snapshot_sae(0, hook_name=HOOK[:-1]).cfg.metadata.hook_name == HOOK[:-1]


def test_jumprelu_threshold_is_rescaled_by_the_snapshot_decoder_norm():
    crosscoder = random_crosscoder("jumprelu_crosscoder")
    sae = crosscoder.snapshot_sae(1)
    norms_F = crosscoder.snapshot_norms()[:, 1].detach()
    live = norms_F > 0
    torch.testing.assert_close(sae.threshold[live], crosscoder.threshold[live] / norms_F[live])
    assert torch.isinf(sae.threshold[~live]).all() and (~live).sum() == 5
    with pytest.raises(
        ValueError, match=r"snapshot must be an int in \[-3, 3\) for this crosscoder \(-1: the last\), got 3"
    ):
        crosscoder.snapshot_sae(3)
    assert torch.equal(crosscoder.snapshot_sae(-1).W_dec, crosscoder.snapshot_sae(2).W_dec)


def test_negative_thresholds_warn():
    crosscoder = random_crosscoder("jumprelu_crosscoder")
    with torch.no_grad():
        crosscoder.threshold[:3] = -0.01
    with pytest.warns(UserWarning, match="3 features .* negative threshold"):
        sae = crosscoder.snapshot_sae(0)
    assert (sae.threshold >= 0).all()


def tiny_hooked_sae_transformer() -> HookedSAETransformer:
    from transformer_lens import HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=1, d_model=D, d_head=4, n_heads=4, n_ctx=8, d_vocab=20, act_fn="gelu", seed=0
    )
    return HookedSAETransformer(cfg)


def test_snapshot_sae_runs_in_a_hooked_sae_transformer():
    model = tiny_hooked_sae_transformer()
    crosscoder = random_crosscoder("jumprelu_crosscoder")
    sae = crosscoder.snapshot_sae(2)
    tokens = torch.randint(0, 20, (2, 8), generator=torch.Generator().manual_seed(0))
    _, clean_cache = model.run_with_cache(tokens)
    logits, cache = model.run_with_cache_with_saes(tokens, saes=[sae])
    acts = clean_cache[HOOK]
    codec = SnapshotCodec(crosscoder, 2)
    torch.testing.assert_close(cache[f"{HOOK}.hook_sae_acts_post"], codec.encode_single(acts), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        cache[f"{HOOK}.hook_sae_recons"], codec.decode(codec.encode_single(acts)), rtol=1e-5, atol=1e-5
    )
    assert logits.shape == (2, 8, 20) and not model.acts_to_saes  # removed after the run


def test_attaching_the_crosscoder_itself_is_refused():
    model = tiny_hooked_sae_transformer()
    crosscoder = random_crosscoder("crosscoder")
    tokens = torch.randint(0, 20, (2, S), generator=torch.Generator().manual_seed(0))  # seq len == n_snapshots
    with pytest.raises(ValueError, match=r"positions as its 3 snapshots.*snapshot_sae\(s\)"):
        model.run_with_cache_with_saes(tokens, saes=[crosscoder])
    with pytest.raises(ValueError, match="snapshot_sae"):
        model.add_sae(crosscoder)
    assert not model.acts_to_saes


def test_an_architecture_name_taken_by_another_class_is_refused(monkeypatch):
    class Impostor:
        pass

    monkeypatch.setitem(SAE_CLASS_REGISTRY, "topk_crosscoder", (Impostor, object))
    with pytest.raises(RuntimeError, match="'topk_crosscoder' is already registered to .*Impostor"):
        cc._register()
    monkeypatch.undo()
    cc._register()  # our own registrations are idempotent


def test_a_batchtopk_training_crosscoder_codes_a_snapshot_by_its_running_threshold():
    """What CrosscoderTrainer.fit returns can reach the codec: its per-snapshot code is the fixed-threshold
    one its snapshot SAE gives (one running threshold), not k codes per token of whatever batch it is handed."""
    from sae_lens.saes.sae import TrainStepInput

    _, _, train_cls, train_cfg = cc.ARCHITECTURES["batchtopk_crosscoder"]
    torch.manual_seed(0)
    crosscoder = train_cls(train_cfg(d_in=8, d_sae=32, n_snapshots=3, k=4))
    crosscoder.cfg.metadata.activation_norm_factors = [1.0, 1.0, 1.0]
    x = torch.randn(64, 3, 8, generator=torch.Generator().manual_seed(0))
    step = TrainStepInput(
        sae_in=x, coefficients={"l1": 0.25}, dead_neuron_mask=None, n_training_steps=0, is_logging_step=False
    )
    for _ in range(200):
        crosscoder.training_forward_pass(step)
    assert float(crosscoder.topk_threshold) > 0.01
    acts = torch.randn(50, 8, generator=torch.Generator().manual_seed(1))
    codec = SnapshotCodec(crosscoder, 1)
    codes = codec.encode_single(acts)
    sae_codes = crosscoder.snapshot_sae(1).encode(acts)
    assert torch.equal(codes != 0, sae_codes != 0)
    assert 0.5 < (codes != 0).sum(-1).float().mean() < 2  # batch top-k would keep k = 4 per token
    assert torch.equal(codec.encode_single(acts[:25]), codes[:25])  # a token's code is its own
    exact = codec.encode(torch.randn(50, 3, 8, generator=torch.Generator().manual_seed(2)))
    assert (exact != 0).sum(-1).float().mean() < 4
    torch.testing.assert_close(codec.decode(codes), crosscoder.snapshot_sae(1)(acts), rtol=1e-5, atol=1e-5)
