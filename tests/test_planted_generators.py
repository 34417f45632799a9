"""Planted generators that vary what a real model varies, and defaults that hold on them.

- The generators (``PlantedConfig.preset``) build what their docstrings say.
- JumpReLU's ``target_l0`` controller steers lambda to a sparsity, and a run killed and
  resumed from a checkpoint continues the controller exactly.
- CI-sized planted runs, one generator each, and the full grid (slow): see
  ``scripts/planted_generators.py``, whose command reproduces the numbers.
"""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
from test_planted_architectures import ARCHITECTURES, _quiet, _score  # noqa: F401  (quiet, autouse)
from test_trainer import make_batches, make_sae, trainer_cfg

from crosslens.analysis import PlantedConfig, PlantedEvolution
from crosslens.analysis.planted_generators import GENERATORS
from crosslens.architectures import sparsity_coefficient_for
from crosslens.training import CrosscoderTrainer, latest_checkpoint
from crosslens.training.config import CrosscoderRunnerConfig
from crosslens.training.planted import train_planted


def test_generators_build_what_they_say():
    zipf = PlantedEvolution.build(PlantedConfig.preset("zipf", seed=0))
    # log-uniform over 25x: about as many features below 2% (the middle on a log scale) as above
    probs = zipf.firing_probs
    assert 0.004 <= float(probs.min()) and float(probs.max()) <= 0.1
    assert 0.3 <= float((probs < 0.02).float().mean()) <= 0.7
    correlated = PlantedEvolution.build(PlantedConfig.preset("correlated", seed=0))
    assert correlated.config.n_snapshots == 12 and len(correlated.pairs) == 16
    wide = PlantedEvolution.build(PlantedConfig.preset("wide", seed=0))
    peak_F = wide.magnitudes.amax(dim=1)
    assert wide.config.d_in == 128 and float(peak_F.max() / peak_F.min()) > 2.5
    for planted in (zipf, correlated, wide):  # normalised like an activation store
        acts_NSD, _ = planted.sample(4000, torch.Generator().manual_seed(1))
        mean_norm_S = acts_NSD.norm(dim=-1).mean(0)
        assert torch.allclose(mean_norm_S, torch.full_like(mean_norm_S, planted.config.d_in**0.5), rtol=0.05)
    assert PlantedConfig.preset("hard", seed=3) == PlantedConfig.hard(seed=3)
    with pytest.raises(ValueError, match="unknown planted generator 'zipff'"):
        PlantedConfig.preset("zipff")
    assert set(GENERATORS) == {"zipf", "correlated", "wide", "rare", "cofiring", "late"}


@pytest.mark.parametrize("seed", [0, 1])
def test_rare_cofiring_and_late_generators_hold_the_kinds_they_name(seed):
    rare = PlantedEvolution.build(PlantedConfig.preset("rare", seed=seed))
    transient = [i for i, c in enumerate(rare.classes) if c == "transient"]
    assert len(transient) == 16
    assert {int(rare.fade[i] - rare.emergence[i]) for i in transient} <= {1, 2, 3, 4}
    assert all(0.01 <= float(rare.firing_probs[i]) <= 0.04 for i in transient if not _second_of_pair(rare, i))

    cofiring = PlantedEvolution.build(PlantedConfig.preset("cofiring", seed=seed))
    assert len(cofiring.pairs) == 12 and cofiring.pair_shares.tolist() == pytest.approx([0.3, 0.6, 0.9] * 4)
    fires = cofiring.sample(40_000, torch.Generator().manual_seed(1))[1] > 0
    for (a, b), share in zip(cofiring.pairs, cofiring.pair_shares.tolist()):
        # b fires with a on its share of a's tokens, and on chance otherwise
        together = float((fires[:, a] & fires[:, b]).float().mean() / fires[:, a].float().mean())
        assert together == pytest.approx(share + (1 - share) * float(cofiring.firing_probs[b]), abs=0.08)

    late = PlantedEvolution.build(PlantedConfig.preset("late", seed=seed))
    persistent = [i for i, c in enumerate(late.classes) if c == "persistent"]
    assert len(persistent) == 18 and min(int(late.emergence[i]) for i in persistent) == 3
    assert {int(late.emergence[i]) for i in persistent} == {3, 4, 5, 6, 7}
    assert all(0.015 <= float(late.firing_probs[i]) <= 0.035 for i in persistent if not _second_of_pair(late, i))
    for planted in (rare, cofiring, late):  # the weaker, more varied features of scripts/planted_independent.py
        assert planted.config.noise_std == 0.05 and planted.config.adjacent_cosine == 0.93
        peak_F = planted.magnitudes.amax(dim=1)
        assert float(peak_F.max() / peak_F.min()) > 2.5


def _second_of_pair(planted: PlantedEvolution, i: int) -> bool:
    """The second feature of a correlated pair takes its partner's firing probability."""
    return any(b == i for _, b in planted.pairs)


def test_new_planted_options_are_checked_and_leave_old_sets_alone():
    base = dict(n_features=16, n_initialization=4, n_transient=4, n_correlated_pairs=2)
    plain = PlantedEvolution.build(PlantedConfig(**base))
    same = PlantedEvolution.build(PlantedConfig(**base, pair_correlations=(0.5,)))
    assert torch.equal(plain.firing_probs, same.firing_probs) and torch.equal(plain.decoder, same.decoder)
    assert torch.equal(
        plain.sample(100, torch.Generator().manual_seed(0))[0], same.sample(100, torch.Generator().manual_seed(0))[0]
    )
    # each config is refused for its own reason, not an earlier check's (n_snapshots is 6)
    for bad, message in (
        (dict(pair_correlations=(0.5, 1.5)), r"^pair correlation 1\.5 is a share of tokens; use \[0, 1\]\.$"),
        (dict(pair_correlations=()), r"^pair_correlations is empty; give at least one share or None\.$"),
        (dict(transient_firing=(0.05, 0.01)), r"^transient_firing=\(0\.05, 0\.01\): give \(low, high\) with 0 < low"),
        (dict(persistent_firing=(0.0, 0.1)), r"^persistent_firing=\(0\.0, 0\.1\): give \(low, high\) with 0 < low"),
        (dict(persistent_emergence_min=0), r"^persistent_emergence_min=0: .* use \[1, n_snapshots - 1=5\]\.$"),
        (dict(persistent_emergence_min=6), r"^persistent_emergence_min=6: .* use \[1, n_snapshots - 1=5\]\.$"),
    ):
        with pytest.raises(ValueError, match=message):
            PlantedConfig(**base, **bad)


def test_log_uniform_firing_draws_the_same_numbers_on_another_scale():
    base = dict(n_features=16, n_initialization=4, firing_prob_min=0.01, firing_prob_max=0.1)
    uniform = PlantedEvolution.build(PlantedConfig(**base))
    spread = PlantedEvolution.build(PlantedConfig(**base, firing_log_uniform=True))
    # same draw u: uniform gives lo + (hi - lo) u, log-uniform lo (hi / lo) ** u
    u = (uniform.firing_probs - 0.01) / 0.09
    assert torch.allclose(spread.firing_probs, 0.01 * 10.0**u, rtol=1e-5)
    assert torch.equal(uniform.directions, spread.directions) and torch.equal(uniform.emergence, spread.emergence)


def test_target_l0_steers_lambda_and_resumes_exactly(tmp_path):
    controlled = dict(l0_coefficient=0.01, l0_warm_up_steps=5, target_l0=2.0, l0_controller_gain=0.05)
    straight = make_sae("jumprelu_crosscoder", **controlled)
    CrosscoderTrainer(straight, trainer_cfg()).fit(make_batches)
    # lambda 0.01 leaves L0 far above 2 on these batches, so the controller raised it
    assert float(straight.l0_scale) > 1.2
    fixed = make_sae("jumprelu_crosscoder", l0_coefficient=0.01, l0_warm_up_steps=5)
    CrosscoderTrainer(fixed, trainer_cfg()).fit(make_batches)
    assert float(fixed.l0_scale) == 1.0

    interrupted = make_sae("jumprelu_crosscoder", **controlled)
    cfg = trainer_cfg(checkpoint_dir=str(tmp_path), checkpoint_every=10)
    with pytest.raises(ValueError, match="ran out after 10 of 20"):
        CrosscoderTrainer(interrupted, cfg).fit(itertools.islice(make_batches(), 10))
    resumed = CrosscoderTrainer.from_checkpoint(latest_checkpoint(tmp_path))
    assert 1.0 < float(resumed.sae.l0_scale) < float(straight.l0_scale)
    resumed.fit(make_batches)
    for name, value in straight.state_dict().items():
        assert torch.equal(resumed.sae.state_dict()[name], value), name

    # the inference crosscoder has no controller: the factor is not saved with it
    from sae_lens import SAE

    straight.save_inference_model(tmp_path / "final")
    loaded = SAE.load_from_disk(tmp_path / "final")
    assert "l0_scale" not in loaded.state_dict()
    x = next(make_batches())
    assert torch.allclose(loaded.encode(x), straight.encode(x))


# CI: the JumpReLU crosscoder at its defaults, 1000 steps of 512 tokens, one generator per test.
# Recovery is still climbing at that length: seed 0 reached (recovered, exact) 0.96, 0.98
# on zipf, 0.93, 0.97 on correlated and 0.71, 0.94 on wide (scripts/planted_generators.py
# --arch jumprelu_crosscoder --seeds 0 --steps 1000 --set batch_size=512), where the old
# default (lr 1e-3) reached 0.79, 0.87 / 0.78, 0.77 / 0.54, 0.96; rare 0.92, 0.98, cofiring
# 0.92, 0.93 and late 0.94, 1.00. The bars are those numbers less about 0.1, to catch a
# regression without holding CI to the full run's bars (the slow test's).
SHORT_BARS = {
    "zipf": (0.85, 0.85),
    "correlated": (0.8, 0.85),
    "wide": (0.6, 0.85),
    "rare": (0.8, 0.85),
    "cofiring": (0.8, 0.8),
    "late": (0.8, 0.85),
}


@pytest.mark.parametrize("generator", sorted(GENERATORS))
def test_jumprelu_defaults_on_a_generator_short_run(generator):
    planted = PlantedEvolution.build(PlantedConfig.preset(generator, seed=0))
    acts_NSD, _ = planted.sample(8000, torch.Generator().manual_seed(5))
    crosscoder = train_planted(planted, "jumprelu_crosscoder", seed=0, n_steps=1000, batch_size=512)
    result = _score(planted, acts_NSD, crosscoder)
    min_recovered, min_exact = SHORT_BARS[generator]
    assert result["recovered_fraction"] >= min_recovered, (generator, result["n_recovered"])
    assert result["timeline_accuracy"] >= min_exact, (generator, result["mismatches"])


ABSORBED = pytest.mark.xfail(
    strict=True,
    reason=(
        "absorption: where pairs co-fire on 80% of tokens, ReLU's and TopK's latents for one feature write "
        "part of its partner (absorbing_fraction 0.28-0.42, against 0.03-0.07 for JumpReLU), 0.80-0.95 "
        "recovered, and that code ends at a lower training objective than a run started at the planted "
        "code; benchmarks/README.md, 'Planted features recovered'"
    ),
)
"""The cells that miss the bars for a measured reason; strict, so a cell that starts passing says so."""


def _grid_cells() -> list:
    return [
        pytest.param(g, a, marks=ABSORBED) if g == "correlated" and a in ("crosscoder", "topk_crosscoder") else (g, a)
        for g, a in itertools.product(sorted(GENERATORS), ARCHITECTURES)
    ]


@pytest.mark.slow
@pytest.mark.parametrize(("generator", "arch"), _grid_cells())
def test_defaults_on_every_generator_over_three_seeds(generator, arch):
    """The issue's bars: >= 90% recovered, >= 90% of those with emergence and class exact, for
    every seed, at train_planted's defaults (TopK/BatchTopK's k from the set's mean L0).
    Each training takes 1-3 CPU-minutes."""
    for seed in (0, 1, 2):
        planted = PlantedEvolution.build(PlantedConfig.preset(generator, seed=seed))
        acts_NSD, _ = planted.sample(8000, torch.Generator().manual_seed(5))
        crosscoder = train_planted(planted, arch, seed=seed)
        result = _score(planted, acts_NSD, crosscoder)
        assert result["recovered_fraction"] >= 0.9, (generator, arch, seed, result["n_recovered"])
        assert result["timeline_accuracy"] >= 0.9, (generator, arch, seed, result["mismatches"])


def test_target_l0_is_a_jumprelu_flag():
    from crosslens.training.config import ArchitectureConfig

    assert ArchitectureConfig(architecture="jumprelu_crosscoder", target_l0=20.0).target_l0 == 20.0
    with pytest.raises(ValueError, match="topk_crosscoder sets its sparsity with k"):
        ArchitectureConfig(architecture="topk_crosscoder", target_l0=20.0)
    with pytest.raises(ValueError, match="target_l0 must be > 0"):
        ArchitectureConfig(architecture="jumprelu_crosscoder", target_l0=0.0)


def test_train_planteds_default_k_follows_the_planted_sparsity():
    """TopK's k at train_planted's default: about 1.5x the planted mean L0, which a sample confirms."""
    from crosslens.analysis import PlantedEvolution as Planted

    for name in ("hard", "zipf", "correlated", "wide"):
        planted = Planted.build(PlantedConfig.preset(name, seed=0))
        _, coeff_NF = planted.sample(50_000, torch.Generator().manual_seed(0))
        assert planted.mean_l0 == pytest.approx(float((coeff_NF > 0).sum(1).float().mean()), rel=0.02), name
    tiny = Planted.build(PlantedConfig(n_features=16, n_initialization=4, n_snapshots=3, d_in=16))
    crosscoder = train_planted(tiny, "topk_crosscoder", n_steps=2, batch_size=64, d_sae=32)
    assert crosscoder.cfg.k == round(1.5 * tiny.mean_l0) == 2


def test_topk_keeps_two_latents_a_token_where_the_planted_set_fires_under_one():
    """A set firing 0.72 features a token (``split``) gives 1.5 x L0 = 1.07: BatchTopK's k of 1 is a
    batch mean, so it stays; TopK's would leave one latent for every token, and is raised to 2."""
    from crosslens.analysis import PlantedEvolution as Planted
    from crosslens.training.planted import planted_k

    sparse = Planted.build(PlantedConfig.preset("split", seed=0))
    assert sparse.mean_l0 == pytest.approx(0.716, abs=0.001)
    assert planted_k(sparse, "batchtopk_crosscoder") == 1
    assert planted_k(sparse, "topk_crosscoder") == 2
    assert train_planted(sparse, "topk_crosscoder", n_steps=2, batch_size=64, d_sae=32).cfg.k == 2
    denser = Planted.build(PlantedConfig.preset("wide", seed=1))
    assert planted_k(denser, "topk_crosscoder") == planted_k(denser, "batchtopk_crosscoder") == 3


def test_train_planted_takes_any_planted_set_and_asks_for_k_where_it_cannot_derive_it():
    """A planted set of one's own (config + batches, no mean_l0) trains every architecture;
    TopK-style ones without k are refused with the fix, not given the real-model k of 32."""
    from types import SimpleNamespace

    from crosslens.analysis import PlantedEvolution as Planted

    built = Planted.build(PlantedConfig(n_features=16, n_initialization=4, n_snapshots=3, d_in=16))
    own = SimpleNamespace(config=SimpleNamespace(n_snapshots=3, d_in=16), batches=built.batches)
    with pytest.raises(ValueError, match=r"needs k: .* pass k="):
        train_planted(own, "batchtopk_crosscoder", n_steps=2, batch_size=64, d_sae=32)
    assert train_planted(own, "topk_crosscoder", n_steps=2, batch_size=64, d_sae=32, k=3).cfg.k == 3
    relu = train_planted(own, "crosscoder", n_steps=2, batch_size=64, d_sae=32)
    assert relu.W_dec.shape == (32, 3, 16)


def test_train_planted_applies_init_before_training():
    """``init`` sets the built crosscoder's weights before the first step: at a learning rate
    too small to move them, the trained decoder is still the planted one and scores as such."""
    tiny = PlantedEvolution.build(PlantedConfig(n_features=16, n_initialization=4, n_snapshots=3, d_in=16))
    decoder_FSD = tiny.decoder
    calls = []

    def start_at_planted(crosscoder) -> None:
        calls.append(crosscoder.cfg.d_sae)
        crosscoder.W_dec[:16] = decoder_FSD

    started = train_planted(tiny, "crosscoder", n_steps=2, batch_size=64, d_sae=32, lr=1e-12, init=start_at_planted)
    assert calls == [32]
    assert torch.allclose(started.W_dec[:16], decoder_FSD, atol=1e-6)
    usual = train_planted(tiny, "crosscoder", n_steps=2, batch_size=64, d_sae=32, lr=1e-12)
    assert not torch.allclose(usual.W_dec[:16], decoder_FSD, atol=1e-2)


def _script(name: str, monkeypatch):
    """``scripts/NAME.py`` as a module."""
    import importlib.util
    import sys
    from pathlib import Path

    monkeypatch.setattr(sys, "path", list(sys.path))  # the script puts its folder first
    monkeypatch.delenv("TQDM_DISABLE", raising=False)  # ... and turns progress bars off
    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


@pytest.fixture
def emergence_script(monkeypatch):
    """``scripts/planted_emergence.py`` as a module."""
    return _script("planted_emergence", monkeypatch)


@pytest.fixture
def cache_script(monkeypatch):
    """``scripts/planted_cache.py``, the planted grid's cache, as a module."""
    return _script("planted_cache", monkeypatch)


def test_the_emergence_scripts_cache_trains_again_a_topk_of_another_k(tmp_path, cache_script):
    """``scripts/planted_emergence.py`` keeps each trained crosscoder; a TopK one trained at
    another ``k`` than ``train_planted`` gives now (or than ``--k``) is not reused."""
    script = cache_script

    def save(k: int, protocol: dict | None) -> None:
        settings = script.cache_settings("split", "topk_crosscoder", 0, protocol)
        training, planted = {**settings["training"], "k": k}, settings["planted"]
        dims = dict(d_in=planted["d_in"], n_snapshots=planted["n_snapshots"], n_steps=training["n_steps"])
        built = script.planted_crosscoder("topk_crosscoder", training, **dims, device="meta")  # its cfg, as trained
        saved = {"settings": settings, "cfg": built.cfg.to_dict(), "state": {}, "seconds": 1.0}
        torch.save(saved, script.cache_path(settings, tmp_path))

    save(1, None)  # the split set's k before TopK's floor of 2
    assert script.cached("split", "topk_crosscoder", 0, tmp_path) is None
    save(2, None)
    assert script.cached("split", "topk_crosscoder", 0, tmp_path)["cfg"]["k"] == 2
    save(1, {"k": 1})
    assert script.cached("split", "topk_crosscoder", 0, tmp_path, {"k": 1})["cfg"]["k"] == 1
    # --k 1's file is its own: the default protocol's k 2 is still there
    assert script.cached("split", "topk_crosscoder", 0, tmp_path)["cfg"]["k"] == 2


def test_the_emergence_scripts_cache_keeps_each_protocol_apart_and_reads_none_as_another(
    tmp_path, cache_script, capsys
):
    """A cached crosscoder records every argument it was trained with, resolved (the steps and
    batch size ``train_planted`` defaults to, the sparsity coefficient it derives), beside the
    planted set's config; each protocol has a file of its own, and one trained under other
    settings is never reused as this one, and said so."""
    script = cache_script
    planted = PlantedEvolution.build(PlantedConfig.preset("split", seed=0))
    crosscoder, _ = script.trained("split", "crosscoder", 0, planted, tmp_path, {"n_steps": 2})
    assert crosscoder.cfg.to_dict()["metadata"]["n_training_steps"] == 2
    (short,) = tmp_path.glob("*.pt")
    script.trained("split", "crosscoder", 0, planted, tmp_path, {"n_steps": 3})
    assert len(list(tmp_path.glob("*.pt"))) == 2  # --steps 3 wrote a file beside --steps 2's
    assert "training.n_steps: 2 in the run, 3 now" in capsys.readouterr().out
    recorded = torch.load(short, weights_only=False)["settings"]
    assert recorded["training"]["n_steps"] == 2
    assert recorded["planted"] == dataclasses.asdict(planted.config)
    # what the default protocol trains with, resolved: a changed default is another file
    default = script.cache_settings("split", "crosscoder", 0, None, planted)
    assert default["training"]["n_steps"] == CrosscoderRunnerConfig.n_steps
    assert (default["training"]["batch_size"], default["training"]["d_sae"]) == (256, 64)
    assert default["training"]["sparsity_coefficient"] == sparsity_coefficient_for(
        "crosscoder", n_snapshots=8, d_in=32, d_sae=64
    )
    assert script.cached("split", "crosscoder", 0, tmp_path, {"n_steps": 2}, planted) is not None
    # the default protocol reads no 2-step crosscoder, and names the setting that differs
    assert script.cached("split", "crosscoder", 0, tmp_path, None, planted) is None
    others = script.other_settings(default, tmp_path)
    assert any(
        o.startswith(short.name) and f"training.n_steps: 2 in the run, {CrosscoderRunnerConfig.n_steps} now" in o
        for o in others
    )
    # a file whose settings are not the ones its name stands for is not reused
    renamed = script.cache_path(script.cache_settings("split", "crosscoder", 0, {"n_steps": 4}, planted), tmp_path)
    short.rename(renamed)
    assert script.cached("split", "crosscoder", 0, tmp_path, {"n_steps": 4}, planted) is None
    assert "training.n_steps: 2 in the run, 4 now" in capsys.readouterr().out
    # one trained when the architecture's training config named or defaulted a field otherwise
    # (the settings hold the arguments it was trained with, not those) is not reused, and said so
    three = script.cache_path(script.cache_settings("split", "crosscoder", 0, {"n_steps": 3}, planted), tmp_path)
    assert script.cached("split", "crosscoder", 0, tmp_path, {"n_steps": 3}, planted) is not None
    saved = torch.load(three, weights_only=False)
    saved["cfg"] = {**saved["cfg"], "tanh_scale": 4.0, "decoder_init_norm": 0.1}
    torch.save(saved, three)
    assert script.cached("split", "crosscoder", 0, tmp_path, {"n_steps": 3}, planted) is None
    assert "other training fields (decoder_init_norm, tanh_scale) than this code builds; not reused" in (
        capsys.readouterr().out
    )


def test_the_emergence_scripts_early_dates_are_a_share_of_the_features_they_are_counted_over(emergence_script, capsys):
    """The false-flag table's "earlier by the decoder norm at the 0.1 line" counts, on weak-early,
    the recovered features other than the weak ones, and prints its share over those, as the
    contested column does; on a family without weak features the others are every recovered one."""
    run = {"arch": "crosscoder", "false_events": 0, "decoupling_events": 0, "events": 0}
    run |= {"goal_events": 0, "goal_false_events": 0}
    runs = [
        {**run, "generator": "weak-early", "n_recovered": 24, "n_other": 16, "contested_other": 1, "low_line_early": 2},
        {**run, "generator": "hard", "n_recovered": 47, "n_other": 47, "contested_other": 0, "low_line_early": 3},
    ]
    emergence_script.false_flag_table(runs)
    rows = {line.split(" | ")[0]: line.split(" | ") for line in capsys.readouterr().out.splitlines()}
    assert rows["| weak-early"][3:6] == ["24", "1/16 (6%)", "2/16 (12%)"]
    assert rows["| hard"][3:6] == ["47", "0/47 (0%)", "3/47 (6%)"]


def test_the_emergence_scripts_false_share_goal_is_of_the_splits_and_handoffs_reported(emergence_script, capsys):
    """On the families without planted events, the verdict holds the splits and handoffs reported to
    at most 5% false, and prints the share over every kind and the merges' beside it: false merges
    alone leave the goal met, one false split in ten misses it."""
    run = {"arch": "crosscoder", "decoupling_events": 0, "n_recovered": 240, "n_other": 240, "contested_other": 0}
    run |= {"low_line_early": 0, "generator": "hard"}
    merges_false = [{**run, "events": 24, "false_events": 4, "goal_events": 20, "goal_false_events": 0}]
    assert emergence_script.false_flag_table(merges_false)
    assert (
        "false: 4/24 (17%) of those reported; of the 20 splits and handoffs, 0/20 (0%) (goal <= 5%); "
        "of the 4 merges, 4/4 (100%)" in capsys.readouterr().out
    )
    split_false = [{**run, "events": 10, "false_events": 1, "goal_events": 10, "goal_false_events": 1}]
    assert not emergence_script.false_flag_table(split_false)


def test_the_emergence_scripts_event_goal_is_of_splits_and_handoffs_not_merges(emergence_script, capsys):
    """Planted merges are scored beside splits and handoffs, but the 90% goal is the splits' and
    handoffs': merges found under it leave the goal met, a split family under it misses it."""
    run = {"arch": "crosscoder", "false_events": 0, "decoupling_events": 0, "events": 5, "n_recovered": 24}
    found = {"planted_events": 5, "events_carried": 5, "events_found_carried": 5, "events_found": 5}
    runs = [
        {**run, **found, "generator": "split"},
        {**run, **found, "generator": "handoff"},
        {**run, **found, "generator": "merge", "events_found": 3, "events_found_carried": 3},
    ]
    assert emergence_script.event_table(runs)
    rows = {line.split(" | ")[0]: line.split(" | ") for line in capsys.readouterr().out.splitlines()}
    assert rows["| merge"][2:4] == ["3/5 (60%)", "60% +/- 0% (1 seeds)"]
    runs[0] = {**runs[0], "events_found": 4}
    assert not emergence_script.event_table(runs)
