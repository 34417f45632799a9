"""Spliced-model loss per snapshot: the cross-entropy and KL with the crosscoder's
reconstruction in place of the activation, checked against a by-hand computation and against
crosscoders whose answers are known (a perfect one recovers everything, an empty one nothing)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_causal import D_MODEL, HOOK, N_SNAPSHOTS, make_crosscoder, snapshots, tokenizer  # noqa: F401

import crosslens.crosscoders as crosscoders
from crosslens.causal.snapshot_models import collect_activations
from crosslens.causal.spliced_loss_eval import (
    MIN_FLOOR_COST,
    format_comparison,
    format_spliced_loss,
    recovered_share,
    spliced_loss,
)
from crosslens.causal.splicing import exact_codes
from crosslens.crosscoders.per_snapshot_sae import SnapshotCodec


@pytest.fixture(scope="module")
def tokens(tokenizer):
    generator = torch.Generator().manual_seed(0)
    return torch.randint(3, len(tokenizer), (5, 12), generator=generator)


def _by_hand(model, tokens, replacement, counted):
    """Mean next-token cross-entropy over the ``counted`` predicting positions, and the logits,
    with the hook's activation set to ``replacement``."""

    def put(activation, hook):
        return replacement if replacement is not None else activation

    with torch.no_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=[(HOOK, put)])
    ce = F.cross_entropy(logits[:, :-1][counted].double(), tokens[:, 1:][counted])
    return float(ce), logits


@pytest.mark.parametrize("recorded", [False, True], ids=["every-position", "recorded-positions"])
@pytest.mark.parametrize("ablation", ["zero", "mean"])
def test_spliced_loss_matches_a_by_hand_computation(snapshots, tokens, ablation, recorded):
    """The reconstruction replaces the activation where the crosscoder was trained (as its metadata
    records it: position 0 and one token id left out) and the losses are averaged there; the floor
    replaces every position. A crosscoder that records nothing is spliced everywhere."""
    crosscoder = make_crosscoder("jumprelu_crosscoder")
    trained = torch.ones_like(tokens, dtype=torch.bool)
    if recorded:
        left_out = int(tokens[1, 4])
        crosscoder.cfg.metadata["seqpos_slice"] = [1, None]
        crosscoder.cfg.metadata["exclude_special_tokens"] = [left_out]
        trained = (tokens != left_out) & (torch.arange(tokens.shape[1]) > 0)
        assert 0 < (~trained[:, 1:]).sum() < trained.sum()
    rows = spliced_loss(snapshots, crosscoder, tokens, ablation=ablation, labels=["a", "b", "c"])
    acts = collect_activations(snapshots, HOOK, tokens)
    counted = trained[:, :-1]
    n = int(counted.sum())
    for s, (model, row) in enumerate(zip(snapshots, rows)):
        recon = SnapshotCodec(crosscoder, s).decode(exact_codes(crosscoder, acts, s))
        recon = torch.where(trained[..., None], recon, acts[:, :, s])
        floor = acts[:, :, s][trained].mean(dim=0).expand_as(recon) if ablation == "mean" else torch.zeros_like(recon)
        clean, clean_logits = _by_hand(model, tokens, None, counted)
        spliced, spliced_logits = _by_hand(model, tokens, recon, counted)
        ablated, _ = _by_hand(model, tokens, floor, counted)
        kl = (
            F.kl_div(
                F.log_softmax(spliced_logits[:, :-1][counted].double(), -1),
                F.log_softmax(clean_logits[:, :-1][counted].double(), -1),
                log_target=True,
                reduction="sum",
            )
            / n
        )
        assert row["snapshot"] == "abc"[s] and row["ablation"] == ablation and row["n_positions"] == n
        assert row["ce_loss_without_sae"] == pytest.approx(clean, rel=1e-5)
        assert row["ce_loss_with_sae"] == pytest.approx(spliced, rel=1e-5)
        assert row["ce_loss_with_ablation"] == pytest.approx(ablated, rel=1e-5)
        assert row["ce_loss_score"] == pytest.approx((ablated - spliced) / (ablated - clean), rel=1e-4)
        assert row["kl_div_with_sae"] == pytest.approx(float(kl), rel=1e-4, abs=1e-9)
        assert row["kl_div_with_sae"] > 0 and row["ce_loss_with_sae"] != pytest.approx(clean)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_spliced_loss_takes_models_and_token_rows_on_cuda(snapshots, tokens):
    """The rows ``HookedTransformer.to_tokens`` gives on a GPU: the recorded positions' mask is
    built there and brought beside the activations, which the splice keeps on the host."""
    import copy

    crosscoder = make_crosscoder("jumprelu_crosscoder")
    crosscoder.cfg.metadata["seqpos_slice"] = [1, None]
    crosscoder.cfg.metadata["exclude_special_tokens"] = [int(tokens[1, 4])]
    on_cpu = spliced_loss(snapshots, crosscoder, tokens, ablation="mean")
    on_cuda = spliced_loss([copy.deepcopy(m).to("cuda") for m in snapshots], crosscoder, tokens.cuda(), ablation="mean")
    for cpu_row, cuda_row in zip(on_cpu, on_cuda, strict=True):
        assert cuda_row["n_positions"] == cpu_row["n_positions"]
        for name in ("ce_loss_without_sae", "ce_loss_with_sae", "ce_loss_with_ablation", "kl_div_with_sae"):
            assert cuda_row[name] == pytest.approx(cpu_row[name], rel=1e-4, abs=1e-6), name


def _identity_crosscoder():
    """A ReLU crosscoder that reconstructs every snapshot exactly: features 2(sD + d) and
    2(sD + d) + 1 carry the positive and negative parts of snapshot s's coordinate d."""
    sae_cls, cfg_cls = crosscoders.ARCHITECTURES["crosscoder"][:2]
    d_sae = 2 * N_SNAPSHOTS * D_MODEL
    crosscoder = sae_cls(cfg_cls(d_in=D_MODEL, d_sae=d_sae, n_snapshots=N_SNAPSHOTS, apply_b_dec_to_input=False))
    with torch.no_grad():
        for param in crosscoder.parameters():
            param.zero_()
        for s in range(N_SNAPSHOTS):
            for d in range(D_MODEL):
                i = 2 * (s * D_MODEL + d)
                crosscoder.W_enc[s, d, i], crosscoder.W_enc[s, d, i + 1] = 1.0, -1.0
                crosscoder.W_dec[i, s, d], crosscoder.W_dec[i + 1, s, d] = 1.0, -1.0
    crosscoder.cfg.metadata.hook_name = HOOK
    return crosscoder


def test_a_perfect_reconstruction_recovers_all_and_an_empty_one_nothing(snapshots, tokens):
    perfect = spliced_loss(snapshots, _identity_crosscoder(), tokens)
    for row in perfect:
        assert row["ce_loss_with_sae"] == pytest.approx(row["ce_loss_without_sae"], abs=1e-5)
        assert row["ce_loss_score"] == pytest.approx(1.0, abs=1e-4)
        assert row["kl_div_with_sae"] == pytest.approx(0.0, abs=1e-6) and row["kl_div_score"] == pytest.approx(
            1.0, abs=1e-4
        )
    empty = _identity_crosscoder()
    with torch.no_grad():
        empty.W_dec.zero_()
    for row in spliced_loss(snapshots, empty, tokens):
        assert row["ce_loss_with_sae"] == pytest.approx(row["ce_loss_with_ablation"], rel=1e-6)
        assert row["ce_loss_score"] == pytest.approx(0.0, abs=1e-5) and row["kl_div_score"] == pytest.approx(
            0.0, abs=1e-5
        )
    # these tiny random models barely use the hook, so every table cell reads n/a
    assert all(row["ce_loss_with_ablation"] - row["ce_loss_without_sae"] < MIN_FLOOR_COST for row in perfect)
    table = format_spliced_loss(perfect).splitlines()
    assert "CE recovered" in table[0] and len(table) == 2 + N_SNAPSHOTS + 1
    assert [line.split()[-2] for line in table[2:-1]] == ["n/a"] * N_SNAPSHOTS and table[-1].startswith(
        "n/a at 0, 1, 2"
    )


def test_spliced_loss_refuses_what_it_cannot_measure(snapshots, tokens):
    crosscoder = make_crosscoder("crosscoder")
    with pytest.raises(ValueError, match="ablation must be"):
        spliced_loss(snapshots, crosscoder, tokens, ablation="resample")
    with pytest.raises(ValueError, match="seq >= 2"):
        spliced_loss(snapshots, crosscoder, tokens[:, :1])
    with pytest.raises(ValueError, match="reads 3 snapshots but 2 models"):
        spliced_loss(snapshots[:2], crosscoder, tokens)
    crosscoder.cfg.metadata["seqpos_slice"] = [1, None]
    with pytest.raises(ValueError, match="none of the 5 token rows has a position the dictionary was trained on"):
        spliced_loss(snapshots, crosscoder, tokens[:, :2])


def test_evaluate_prints_the_spliced_loss_of_a_trained_run(tmp_path, capsys):
    """``crosslens evaluate --spliced-loss`` loads the suite the store records and prints one row
    per snapshot, the same numbers as the library function on the same rows."""
    from trust_fixtures import HOOK, harvest, train, write_suite

    from crosslens.activations import ActivationStore
    from crosslens.checkpoints import CheckpointSuite
    from crosslens.cli import main
    from crosslens.crosscoders.saved import load_crosscoder_folder

    suite_root = write_suite(tmp_path / "suite")
    harvest(suite_root, tmp_path / "store")
    train(tmp_path / "store", tmp_path / "run", checkpoint_every=0)
    capsys.readouterr()
    assert (
        main(
            [
                "evaluate",
                str(tmp_path / "run"),
                "--store",
                str(tmp_path / "store"),
                "--spliced-loss",
                "--spliced-seqs",
                "4",
                "--spliced-ablation",
                "mean",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    store = ActivationStore.open(tmp_path / "store")
    rows = spliced_loss(
        CheckpointSuite.local(suite_root),
        load_crosscoder_folder(tmp_path / "run" / "final"),
        store.sequences[:4],
        hook=HOOK,
        ablation="mean",
        labels=[s["revision"] for s in store.snapshots],
    )
    assert "spliced-model loss per snapshot on 4 rows" in out and "mean-ablation floor" in out
    assert format_spliced_loss(rows) in out
    assert [row["snapshot"] for row in rows] == ["step0", "step10", "step20"]


def test_a_floor_that_costs_almost_nothing_gets_no_recovered_share():
    """Where ablating the hook barely changes the loss (a randomly initialised snapshot), the
    share is a ratio of two differences near their noise; the tables print n/a and say why."""

    def row(snapshot: str, clean: float, spliced: float, ablated: float) -> dict:
        return dict(
            snapshot=snapshot,
            ablation="zero",
            ce_loss_without_sae=clean,
            ce_loss_with_sae=spliced,
            ce_loss_with_ablation=ablated,
            ce_loss_score=(ablated - spliced) / (ablated - clean),
            kl_div_with_sae=0.001,
        )

    flat = row("step0", 5.7059, 5.7079, 5.7038)  # the floor is below the clean loss: a score of 190%
    thin = row("step1", 5.0, 5.01, 5.0 + MIN_FLOOR_COST / 2)
    real = row("step2", 5.3137, 5.3112, 5.4814)
    assert flat["ce_loss_score"] == pytest.approx(1.952, abs=1e-3)
    assert recovered_share(flat) is None and recovered_share(thin) is None
    assert recovered_share(real) == pytest.approx(1.0149, abs=1e-4)
    table = format_spliced_loss([flat, thin, real]).splitlines()
    assert table[2].split()[-2] == "n/a" and table[3].split()[-2] == "n/a" and table[4].split()[-2] == "101.5%"
    assert table[-1].startswith("n/a at step0, step1: zero-ablating the hook costs under 0.05 nats")
    assert len(format_spliced_loss([real]).splitlines()) == 3  # no note where every share is shown
    beside = format_comparison({"crosscoder": [flat, real], "baselines": {"topk": [dict(flat), dict(real)]}})
    assert [line.split()[-2] for line in beside.splitlines()[2:]] == ["n/a", "n/a", "101.5%", "101.5%"]
    assert [line[:12].strip() for line in beside.splitlines()[2:]] == ["step0", "", "step2", ""]
    assert "topk SAE" in beside and max(map(len, beside.splitlines())) <= 80  # narrow, one line per model
    # an SAE averaged over other positions than the crosscoder's (it records others, or none) is named
    counted = {"crosscoder": [{**flat, "n_positions": 60}, {**real, "n_positions": 60}]}
    same = format_comparison(
        {**counted, "baselines": {"topk": [{**flat, "n_positions": 60}, {**real, "n_positions": 60}]}}
    )
    other = format_comparison(
        {**counted, "baselines": {"topk": [{**flat, "n_positions": 60}, {**real, "n_positions": 64}]}}
    )
    assert same.splitlines()[-1].split()[:2] == ["topk", "SAE"]  # no note
    assert other.splitlines()[-1] == (
        "averaged over other positions than the crosscoder's (its trained positions differ): topk SAE at step2 "
        "(64 against 60); their CE spliced and KL do not compare with its row"
    )
