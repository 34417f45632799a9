"""The demo's own logic (the stages themselves are tested in their modules and tutorials)."""

import json
import math

import pytest

from crosslens.cli.demo_stages import choose_steps

PICO_STEPS = [0, 1, 2, 4, 8, 16, 32, 64, 96, 144, 192, 240, 288, 336, 384, 432, 480, 528, 576, 624, 640]


def test_choose_steps_keeps_ends_and_covers_early_and_late_training():
    steps = choose_steps(PICO_STEPS, 12)
    assert len(steps) == 12 and steps == sorted(set(steps))
    assert steps[0] == 0 and steps[-1] == 640
    assert sum(s <= 64 for s in steps) >= 4  # early, fast learning is sampled densely
    assert sum(s >= 192 for s in steps) >= 4  # and so is the attractor-agreement phase


def test_choose_steps_returns_everything_when_asked_for_more():
    assert choose_steps(PICO_STEPS, 30) == PICO_STEPS


def test_a_cached_quality_table_is_reused_only_with_the_splice_and_baselines_this_run_measures():
    """An older demo's quality.json (no spliced loss at all, one that spliced every position, or
    baselines trained otherwise) is measured again; this version's, or a table whose spliced loss
    was skipped, is reused."""
    from dataclasses import replace

    from crosslens.cli.demo_stages import DemoConfig, baseline_settings, current_quality

    config = DemoConfig.fast()
    baselines = json.loads(json.dumps(baseline_settings(config)))  # as quality.json keeps it
    row = {"snapshot": "step0", "ce_loss_score": 1.0}
    assert not current_quality([{"kind": "ev"}], config) and not current_quality(None, config)
    assert not current_quality({"rows": [], "spliced_loss": {"crosscoder": [row]}, "baselines": baselines}, config)
    spliced = {"crosscoder": [{**row, "n_positions": 60}]}
    assert current_quality({"rows": [], "spliced_loss": spliced, "baselines": baselines}, config)
    assert current_quality({"rows": [], "spliced_loss": None, "baselines": baselines}, config)
    # a table from before the baselines' settings were recorded, or from other settings
    assert not current_quality({"rows": [], "spliced_loss": spliced}, config)
    for changed in (dict(baseline_steps=50), dict(seed=3), dict(baseline_snapshots=2), dict(spliced_seqs=8)):
        assert not current_quality(
            {"rows": [], "spliced_loss": spliced, "baselines": baselines}, replace(config, **changed)
        )
    assert not current_quality(
        {"rows": [], "spliced_loss": spliced, "baselines": {**baselines, "jumprelu_threshold_start": "0.01"}}, config
    )


def test_train_stage_reuses_its_crosscoder_and_retrains_on_new_settings(tmp_path, capsys):
    """A second demo run reuses the trained crosscoder (run.json records the precision that
    "auto" resolved to, which must compare equal), and a changed setting retrains it."""
    from dataclasses import replace

    import torch
    from hf_cache import FAKE_VOCAB_SIZE, make_word_tokenizer, tiny_neox, write_local_suite

    from crosslens.activations import harvest_activations
    from crosslens.checkpoints import CheckpointSuite
    from crosslens.cli.demo_stages import DemoConfig, train_stage
    from crosslens.training.config import ArchitectureConfig
    from crosslens.training.records import read_record, record_problem, write_record

    hook = "blocks.0.hook_resid_post"
    write_local_suite(tmp_path / "suite", {f"step{s}": tiny_neox(seed=s) for s in (0, 10)}, make_word_tokenizer())
    tokens = torch.randint(3, FAKE_VOCAB_SIZE, (16, 16), generator=torch.Generator().manual_seed(0))
    harvest_activations(CheckpointSuite.local(tmp_path / "suite"), hook, tokens, tmp_path / "store", progress=False)
    config = replace(
        DemoConfig(),
        hook=hook,
        sae=ArchitectureConfig("jumprelu_crosscoder", d_sae=32),
        n_steps=20,
        train_batch_size_tokens=64,
    )
    first = train_stage(tmp_path / "store", tmp_path / "run", config)
    assert "--resume" not in capsys.readouterr().out  # a flag the demo's user never gave
    again = train_stage(tmp_path / "store", tmp_path / "run", config)
    assert "reusing trained crosscoder" in capsys.readouterr().out
    assert torch.equal(first.W_dec, again.W_dec)
    # a folder whose run.json predates its process count: the demo runs in one process, so reused
    run_file = tmp_path / "run" / "run.json"
    recorded = json.loads(run_file.read_text())
    assert recorded.pop("world_size") == 1
    run_file.write_text(json.dumps(recorded, indent=2))
    train_stage(tmp_path / "store", tmp_path / "run", config)
    assert "reusing trained crosscoder" in capsys.readouterr().out
    # a crosscoder trained by code whose architecture named or defaulted a training field otherwise
    # (run.json holds the runner's settings only): sealed as that code sealed it, and trained again
    final = tmp_path / "run" / "final"
    saved = json.loads((final / "cfg.json").read_text())
    details = saved["metadata"]["training_architecture_details"]
    details["tanh_scale"] = details["jumprelu_tanh_scale"]
    details["threshold_lr_scale"] *= 2
    (final / "cfg.json").write_text(json.dumps(saved))
    record = read_record(final)
    write_record(final, **{k: v for k, v in record.items() if k not in ("format", "files")})
    assert record_problem(final) is None
    retrained = train_stage(tmp_path / "store", tmp_path / "run", config)
    assert (
        "demo settings changed (the crosscoder's training fields tanh_scale, threshold_lr_scale): retraining"
        in capsys.readouterr().out
    )
    assert torch.equal(retrained.W_dec, first.W_dec)  # the same seed and settings: the same bytes
    train_stage(tmp_path / "store", tmp_path / "run", config)
    assert "reusing trained crosscoder" in capsys.readouterr().out
    train_stage(tmp_path / "store", tmp_path / "run", replace(config, n_steps=30))
    assert (
        f"demo settings changed (n_steps): retraining the crosscoder in {tmp_path / 'run'}" in capsys.readouterr().out
    )
    other = torch.randint(3, FAKE_VOCAB_SIZE, (16, 16), generator=torch.Generator().manual_seed(1))
    harvest_activations(
        CheckpointSuite.local(tmp_path / "suite"), hook, other, tmp_path / "store", progress=False, overwrite=True
    )
    train_stage(tmp_path / "store", tmp_path / "run", replace(config, n_steps=30))
    assert "the activations changed since it was trained" in capsys.readouterr().out


def test_the_lineage_referee_is_trained_analysed_once_and_counts_the_events_it_makes_too(tmp_path, capsys):
    """The demo trains a crosscoder of another architecture on its store, saves its check, and
    prints what ``crosslens analyze --lineage-against`` prints; a second run reuses both."""
    from dataclasses import replace

    import torch
    from hf_cache import FAKE_VOCAB_SIZE, make_word_tokenizer, tiny_neox, write_local_suite
    from test_emergence_surfaces import LOOSE

    from crosslens.activations import ActivationStore, harvest_activations
    from crosslens.activations.partners import store_seal
    from crosslens.analysis import analyze_crosscoder, lineage_agreement
    from crosslens.analysis.agreement import agreement_line
    from crosslens.analysis.emergence_record import read_emergence
    from crosslens.checkpoints import CheckpointSuite
    from crosslens.cli.demo_lineage import lineage_referee_stage
    from crosslens.cli.demo_stages import DemoConfig, train_stage
    from crosslens.core.hashing import file_sha256
    from crosslens.training.config import ArchitectureConfig

    hook = "blocks.0.hook_resid_post"
    suite = {f"step{s}": tiny_neox(seed=s) for s in (0, 10, 20)}
    write_local_suite(tmp_path / "suite", suite, make_word_tokenizer())
    tokens = torch.randint(3, FAKE_VOCAB_SIZE, (24, 16), generator=torch.Generator().manual_seed(0))
    harvest_activations(CheckpointSuite.local(tmp_path / "suite"), hook, tokens, tmp_path / "store", progress=False)
    store = ActivationStore.open(tmp_path / "store")
    config = replace(DemoConfig(), hook=hook, sae=ArchitectureConfig("jumprelu_crosscoder", d_sae=32), n_steps=30)
    config = replace(config, train_batch_size_tokens=64)
    main = train_stage(store, tmp_path / "crosscoder", config)
    analysis, _ = analyze_crosscoder(main, store=store, progress=False, **LOOSE)
    assert analysis.emergence.lineage.events  # the loose lines give the tiny run events to check
    capsys.readouterr()

    line, section, kept = lineage_referee_stage(store, tmp_path, config, analysis)
    referee = tmp_path / "referee-crosscoder"
    assert read_emergence(referee).check is not None  # analysed with the store, saved in its run
    other = analyze_crosscoder(
        train_stage(store, referee, replace(config, sae=ArchitectureConfig("crosscoder", d_sae=32))), progress=False
    )[0]
    want = lineage_agreement(
        analysis.emergence.lineage,
        analysis,
        other,
        analysis.emergence.check.present,
        read_emergence(referee).check.present,
    )
    assert line == agreement_line(referee, analysis.emergence.lineage.events, want)
    # the agreement as the demo's emergence record keeps it: the same values, the referee named by its weights
    assert [None if math.isnan(a) else a for a in kept.agreement] == [None if math.isnan(a) else a for a in want]
    assert kept.against == str(referee) and kept.line == 0.5
    assert kept.crosscoder_sha256 == file_sha256(referee / "final" / "sae_weights.safetensors")
    assert kept.store == store_seal(store)  # the store both checks read
    page = section.render()
    assert "Lineage checked against referee-crosscoder" in page
    read = [a for a in want if not math.isnan(a)]  # each event's latents read where present on their side
    assert f"{sum(a >= 0.5 for a in read)} of {len(read)} lineage events are made too by referee-crosscoder" in page
    assert "more have no latent present beside their snapshot" not in page
    assert len(read) == len(want)
    printed = capsys.readouterr().out
    assert f"a second crosscoder (crosscoder) on the same store, to check the lineage against: {referee}" in printed

    saved = (referee / "emergence.json").stat().st_mtime_ns
    assert lineage_referee_stage(store, tmp_path, config, analysis)[0] == line
    assert "reusing trained crosscoder" in capsys.readouterr().out
    assert (referee / "emergence.json").stat().st_mtime_ns == saved  # its check is read, not computed again
    assert lineage_referee_stage(store, tmp_path, replace(config, lineage_referee=None), analysis) is None
    same = replace(config, lineage_referee="jumprelu_crosscoder")  # the same seed and steps: the same crosscoder
    with pytest.raises(ValueError, match=r"is the demo crosscoder's own architecture: .* name another architecture"):
        lineage_referee_stage(store, tmp_path, same, analysis)
