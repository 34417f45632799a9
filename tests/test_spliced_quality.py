"""The spliced-model loss wherever a crosscoder's quality is reported: ``train``'s quality table
and quality.json, the W&B summary, the HTML report, the registry entry and model card, and the
per-snapshot SAEs beside the crosscoder. Each figure is checked against
:func:`crosslens.causal.spliced_loss_eval` (or :func:`sae_spliced_loss`) on the same token rows."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from trust_fixtures import HOOK, harvest, write_suite
from wandb_files import item_values, wandb_records

from crosslens.causal.spliced_loss_eval import (
    format_spliced_loss,
    percent_or_na,
    recovered_share,
    sae_spliced_loss,
    spliced_loss,
)
from crosslens.cli import main
from crosslens.core.paths import QUALITY_NAME

N_SEQS = 4


def cli_train(store: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--store",
        str(store),
        "--out",
        str(out),
        "--arch",
        "crosscoder",
        "--d-sae",
        "32",
        "--n-steps",
        "30",
        "--batch-size",
        "64",
        "--lr",
        "3e-3",
        "--sparsity",
        "0.01",
        "--checkpoint-every",
        "0",
        "--device",
        "cpu",
        *extra,
    ]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny suite, a store harvested from it, and a run trained on it by the CLI."""
    root = tmp_path_factory.mktemp("spliced")
    suite_root = write_suite(root / "suite")
    harvest(suite_root, root / "store")
    assert main(cli_train(root / "store", root / "run", "--spliced-seqs", str(N_SEQS))) == 0
    return {"suite": suite_root, "store": root / "store", "run": root / "run"}


def library_rows(world, ablation: str = "zero") -> list[dict]:
    from crosslens.activations import ActivationStore
    from crosslens.checkpoints import CheckpointSuite
    from crosslens.crosscoders.saved import load_crosscoder_folder

    store = ActivationStore.open(world["store"])
    return spliced_loss(
        CheckpointSuite.local(world["suite"]),
        load_crosscoder_folder(world["run"] / "final"),
        store.sequences[:N_SEQS],
        hook=HOOK,
        ablation=ablation,
        labels=[s["revision"] for s in store.snapshots],
    )


def assert_same_rows(saved: list[dict], expected: list[dict]) -> None:
    assert [r["snapshot"] for r in saved] == [r["snapshot"] for r in expected]
    for got, want in zip(saved, expected):
        for key, value in want.items():
            if isinstance(value, float) and not math.isnan(value):
                assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
            elif not isinstance(value, float):
                assert got[key] == value, key


def test_train_quality_json_holds_the_spliced_rows_and_stays_sealed(world):
    from crosslens.training.runfolder import crosscoder_folder

    quality = json.loads((world["run"] / QUALITY_NAME).read_text())
    spliced = quality["spliced_loss"]
    assert spliced["ablation"] == "zero" and spliced["n_seqs"] == N_SEQS and spliced["seq_len"] == 16
    assert spliced["measured_on"] == str(world["store"].resolve())
    assert_same_rows(spliced["crosscoder"], library_rows(world))
    assert crosscoder_folder(world["run"]) == world["run"] / "final"  # the seal covers the new quality.json


def test_train_prints_the_spliced_table_and_can_skip_it(world, tmp_path, capsys):
    assert main(cli_train(world["store"], tmp_path / "run", "--spliced-seqs", str(N_SEQS))) == 0
    out = capsys.readouterr().out
    assert format_spliced_loss(library_rows(world)) in out  # same seed, same store: the same crosscoder
    assert f"spliced-model loss per snapshot on {N_SEQS} rows of" in out
    assert main(cli_train(world["store"], tmp_path / "skip", "--spliced-seqs", "0")) == 0
    assert "spliced-model loss" not in capsys.readouterr().out
    assert "spliced_loss" not in json.loads((tmp_path / "skip" / QUALITY_NAME).read_text())


def test_train_says_why_when_the_snapshot_models_are_gone(world, tmp_path, capsys):
    import shutil

    from trust_fixtures import copy_tree

    suite = copy_tree(world["suite"], tmp_path / "suite")
    harvest(suite, tmp_path / "store")
    shutil.rmtree(suite)
    assert main(cli_train(tmp_path / "store", tmp_path / "run", "--spliced-seqs", "2")) == 0
    out = capsys.readouterr().out
    assert "spliced-model loss not measured:" in out and str(suite) in out
    assert json.loads((tmp_path / "run" / QUALITY_NAME).read_text())["spliced_loss"] is None


def _wandb_summaries(run_file: Path) -> dict[str, str]:
    """Every summary item written to an offline .wandb file (key -> value_json), last write winning."""
    summary: dict[str, str] = {}
    for record in wandb_records(run_file):
        if record.WhichOneof("record_type") == "summary":
            summary.update(item_values(record.summary.update))
    return summary


def test_train_puts_the_spliced_figures_in_the_wandb_summary(world, tmp_path, monkeypatch, capsys):
    import wandb

    from crosslens.crosscoders.saved import load_crosscoder_folder

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    assert main(cli_train(world["store"], tmp_path / "run", "--spliced-seqs", str(N_SEQS), "--wandb")) == 0
    wandb.teardown()  # flushes the offline run files
    run_id = load_crosscoder_folder(tmp_path / "run" / "final").cfg.metadata["wandb_run_id"]
    # the reopened run's folder gets a "-1" suffix when it starts within the same second as training's
    files = sorted((tmp_path / "run" / "wandb").glob(f"offline-run-*-{run_id}*/run-{run_id}.wandb"))
    assert files, "no offline W&B run with the training run's id"
    summary = {}
    for run_file in files:
        summary.update(_wandb_summaries(run_file))
    rows = library_rows(world)
    for row in rows:
        for key in ("ce_loss_score", "kl_div_with_sae"):
            assert float(summary[f"spliced/{key}/{row['snapshot']}"]) == pytest.approx(row[key], rel=1e-9)


def test_report_shows_the_spliced_table_with_raw_losses_and_the_floor(world, tmp_path, capsys):
    from crosslens.htmlreport import format_cell

    out = tmp_path / "report.html"
    assert main(["report", str(world["run"]), "--out", str(out), "--device", "cpu"]) == 0
    page = out.read_text()
    assert "Spliced-model loss" in page and "CE zero-ablated" in page and "KL zero-ablated" in page
    assert "The reconstruction replaced the positions the crosscoder was trained on" in page
    body = page[page.index("Crosscoder spliced into each snapshot") :]
    for row in library_rows(world):
        cells = [
            row["snapshot"],
            row["ce_loss_without_sae"],
            row["ce_loss_with_sae"],
            row["ce_loss_with_ablation"],
            recovered_share(row),
            row["kl_div_with_sae"],
            row["kl_div_with_ablation"],
        ]
        expected = "".join(f'<td class="{"text" if isinstance(c, str) else ""}">{format_cell(c)}</td>' for c in cells)
        assert expected in body


def test_a_record_that_spliced_every_position_says_so():
    """A quality.json measured before the splice kept BOS and the excluded tokens clean: its
    rows do not count their positions, and the report, model card and registry entry say what it spliced."""
    from crosslens.causal.spliced_loss_eval import positions_sentence, spliced_where_trained

    old = {"n_seqs": 4, "seq_len": 16, "crosscoder": [{"snapshot": "step0"}, {"snapshot": "step8"}]}
    new = {**old, "crosscoder": [{"snapshot": "step0", "n_positions": 52}, {"snapshot": "step8", "n_positions": 52}]}
    assert not spliced_where_trained(old) and spliced_where_trained(new)
    assert positions_sentence(old).startswith("The reconstruction replaced every position")
    assert "averaged over the 52 of 60 predicting positions it replaced" in positions_sentence(new)
    # a crosscoder that records no trained positions (one from another library) is spliced everywhere, and said so
    unrecorded = {**old, "crosscoder": [{"snapshot": "step0", "n_positions": 60}]}
    assert positions_sentence(unrecorded).startswith(
        "The reconstruction replaced every position: the crosscoder records none"
    )


def test_report_without_spliced_figures_has_no_section(world, tmp_path):
    assert main(cli_train(world["store"], tmp_path / "run", "--spliced-seqs", "0")) == 0
    assert main(["report", str(tmp_path / "run"), "--device", "cpu"]) == 0
    assert "Spliced-model loss" not in (tmp_path / "run" / "report.html").read_text()


def test_push_puts_the_spliced_figures_in_the_registry_entry_and_model_card(world, tmp_path):
    import yaml

    from crosslens.pretrained.local_hub import LocalHubApi
    from crosslens.pretrained.push import push_to_hub
    from crosslens.pretrained.registry import PretrainedRegistryError, parse_registry

    result = push_to_hub(world["run"], "someone/spliced", api=LocalHubApi(tmp_path / "hub"))
    rows = library_rows(world)
    (entry,) = yaml.safe_load(result.registry_yaml)["spliced"]["saes"]
    assert entry["spliced_ablation"] == "zero"
    assert entry["ce_loss_score"] == pytest.approx([r["ce_loss_score"] for r in rows], abs=1e-4)
    assert entry["kl_div_with_sae"] == pytest.approx([r["kl_div_with_sae"] for r in rows], abs=1e-5)
    (parsed,) = parse_registry(result.registry_yaml, source="pushed").values()
    assert parsed.entries[entry["id"]].ce_loss_score == tuple(entry["ce_loss_score"])
    assert entry["spliced_positions"] == parsed.entries[entry["id"]].spliced_positions == "trained"
    assert "## Spliced-model loss" in result.card and "CE zero-ablated" in result.card
    assert (
        f"averaged over the {rows[0]['n_positions']:,} of" in result.card
        and "kept their clean activation" in result.card
    )
    with pytest.raises(PretrainedRegistryError, match="spliced_positions must be trained or every, got 'some'"):
        parse_registry(
            result.registry_yaml.replace("spliced_positions: trained", "spliced_positions: some"), source="edited"
        )
    for r in rows:
        line = (
            f"| {r['snapshot']} | {r['ce_loss_without_sae']:.4f} | {r['ce_loss_with_sae']:.4f} | "
            f"{r['ce_loss_with_ablation']:.4f} | {percent_or_na(recovered_share(r))} | {r['kl_div_with_sae']:.4f} |"
        )
        assert line in result.card
    without_floor = result.registry_yaml.replace("spliced_ablation: zero", "")
    with pytest.raises(PretrainedRegistryError, match="ce_loss_score needs spliced_ablation"):
        parse_registry(without_floor, source="edited")


def test_push_of_a_run_without_spliced_figures_leaves_them_out(world, tmp_path):
    from crosslens.pretrained.local_hub import LocalHubApi
    from crosslens.pretrained.push import push_to_hub

    assert main(cli_train(world["store"], tmp_path / "run", "--spliced-seqs", "0")) == 0
    result = push_to_hub(tmp_path / "run", "someone/plain", api=LocalHubApi(tmp_path / "hub"))
    assert "ce_loss_score" not in result.registry_yaml and "Spliced-model loss" not in result.card


@pytest.fixture(scope="module")
def baseline_sae(world):
    from crosslens.training.baselines import train_snapshot_sae

    return train_snapshot_sae(world["store"], HOOK, 2, "topk", 32, k=4, n_steps=20, batch_size=64)


def test_a_per_snapshot_sae_is_spliced_on_the_model_scale(world, baseline_sae):
    """By hand: the SAE encodes the activation times its snapshot's norm factor, and its
    reconstruction divided by it replaces the activation in that snapshot's model at the positions
    the store trained it on (BOS and the excluded tokens stay clean; the losses are averaged there)."""
    import torch.nn.functional as F

    from crosslens.activations import ActivationStore
    from crosslens.activations.tokens import keep_mask
    from crosslens.checkpoints import CheckpointSuite

    store = ActivationStore.open(world["store"])
    factor = float(store.norm_factors(HOOK)[2])
    assert baseline_sae.cfg.metadata["activation_norm_factor"] == pytest.approx(factor) and factor != pytest.approx(1.0)
    tokens = store.sequences[:N_SEQS]
    spec = store.manifest["spec"]
    trained = keep_mask(tokens, exclude_bos=spec["exclude_bos"], exclude_token_ids=spec["exclude_token_ids"])
    assert spec["exclude_bos"] and not trained[:, 0].any() and trained.sum() > tokens.shape[0]
    counted = trained[:, :-1]
    suite = CheckpointSuite.local(world["suite"])
    rows = sae_spliced_loss(suite, {2: baseline_sae}, tokens, hook=HOOK, labels=["a", "b", "c"])
    model = suite.load(2)

    def spliced(activation, hook):
        recon = baseline_sae.decode(baseline_sae.encode(activation * factor)) / factor
        return torch.where(trained[..., None], recon, activation)

    with torch.no_grad():
        clean = model(tokens)
        logits = model.run_with_hooks(tokens, fwd_hooks=[(HOOK, spliced)])
        zeroed = model.run_with_hooks(tokens, fwd_hooks=[(HOOK, lambda a, hook: torch.zeros_like(a))])

    def ce(x):
        return float(F.cross_entropy(x[:, :-1][counted].double(), tokens[:, 1:][counted]))

    kl = (
        F.kl_div(
            F.log_softmax(logits[:, :-1][counted].double(), -1),
            F.log_softmax(clean[:, :-1][counted].double(), -1),
            log_target=True,
            reduction="sum",
        )
        / counted.sum()
    )
    (row,) = rows.values()
    assert list(rows) == [2] and row["snapshot"] == "c" and row["n_positions"] == int(counted.sum())
    assert row["ce_loss_without_sae"] == pytest.approx(ce(clean), rel=1e-5)
    assert row["ce_loss_with_sae"] == pytest.approx(ce(logits), rel=1e-5)
    assert row["ce_loss_with_ablation"] == pytest.approx(ce(zeroed), rel=1e-5)
    assert row["kl_div_with_sae"] == pytest.approx(float(kl), rel=1e-4)
    with pytest.raises(ValueError, match="trained at 'blocks.0.hook_resid_post', not 'blocks.1.hook_resid_post'"):
        sae_spliced_loss(suite, {2: baseline_sae}, tokens, hook="blocks.1.hook_resid_post")
    # unlabelled, the row is named by the snapshot the SAE records, as the crosscoder's rows are
    (named,) = sae_spliced_loss(suite, {2: baseline_sae}, tokens[:2], hook=HOOK).values()
    assert named["snapshot"] == store.snapshots[2]["revision"]


def test_demo_quality_stage_puts_the_saes_beside_the_crosscoder(world, capsys):
    from crosslens.activations import ActivationStore
    from crosslens.causal.spliced_loss_eval import format_comparison
    from crosslens.checkpoints import CheckpointSuite
    from crosslens.cli.demo_stages import DemoConfig, quality_stage
    from crosslens.crosscoders.saved import load_crosscoder_folder
    from crosslens.training.config import ArchitectureConfig

    store = ActivationStore.open(world["store"])
    config = DemoConfig(
        hook=HOOK,
        sae=ArchitectureConfig("crosscoder", d_sae=32),
        baseline_snapshots=1,
        baseline_steps=20,
        train_batch_size_tokens=64,
        spliced_seqs=N_SEQS,
    )
    quality = quality_stage(
        load_crosscoder_folder(world["run"] / "final"),
        store,
        store,
        config,
        CheckpointSuite.local(world["suite"]),
    )
    out = capsys.readouterr().out
    spliced = quality["spliced_loss"]
    assert_same_rows(spliced["crosscoder"], library_rows(world))
    assert set(spliced["baselines"]) == {"jumprelu", "topk"}
    last = spliced["crosscoder"][-1]
    for _arch, (row,) in spliced["baselines"].items():  # one baseline snapshot: the last
        assert row["snapshot"] == last["snapshot"] == "step20"
        assert row["ce_loss_without_sae"] == pytest.approx(last["ce_loss_without_sae"], rel=1e-9)
        assert row["ce_loss_with_ablation"] == pytest.approx(last["ce_loss_with_ablation"], rel=1e-9)
        assert row["ce_loss_with_sae"] != last["ce_loss_with_sae"]
    beside = format_comparison(spliced)
    # header, rule, then one snapshot: the crosscoder and the two SAEs
    assert beside in out and beside.count("\n") == 4 and "jumprelu SAE" in beside and "topk SAE" in beside
    assert format_spliced_loss(spliced["crosscoder"]) in out
    # the demo's report takes the section in untitled, under the section's own heading alone
    from crosslens.causal.spliced_loss_eval import add_spliced_loss_section
    from crosslens.htmlreport import Report

    page = Report("demo").extend(add_spliced_loss_section(Report(""), spliced)).render()
    assert re.findall(r"<h2[^>]*>([^<]*)</h2>", page) == ["Spliced-model loss"]
