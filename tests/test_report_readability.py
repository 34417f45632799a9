"""What a reader sees: contexts with their spaces and document breaks, log axes ticked at the
plotted values, tick labels that do not overlap, ablation curves one panel per snapshot,
RelIE scatters coloured by the classes the stage decided, and demo lines that say what a
zero means."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hf_cache import make_word_tokenizer
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from crosslens.analysis import EvolutionAnalysis
from crosslens.analysis.contexts import BREAK, Context, _WindowIndex, window_pieces
from crosslens.analysis.plots import _log_bar_widths, emergence_histogram, evolution_heatmap
from crosslens.causal.plots import ablation_curves_figure, relie_vs_reldec
from crosslens.htmlreport import log_axis, spaced


# ---------------------------------------------------------------------------- contexts
def test_word_level_windows_keep_their_spaces():
    tokenizer = make_word_tokenizer()
    ids = tokenizer.encode("the old man walks near the park", add_special_tokens=False)
    assert [tokenizer.decode([i]) for i in ids][:3] == ["the", "old", "man"]  # alone: no spaces
    pieces = window_pieces(tokenizer, ids)
    assert "".join(pieces) == "the old man walks near the park"
    context = Context(0, 1.0, 0, 0, 3, ids, 2, pieces)
    assert context.text() == "the old [[man]] walks near the park"
    assert "the old <mark>man</mark> walks" in context.html()


def test_byte_level_windows_keep_their_spaces():
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    text = "the cats see the dogs near the old park and the dogs see the cats"
    backend.train_from_iterator([text] * 20, trainers.BpeTrainer(vocab_size=300, show_progress=False))
    ids = backend.encode("the dogs see the cats").ids
    assert "".join(window_pieces(backend, ids)) == "the dogs see the cats"


def test_a_token_that_does_not_grow_the_text_is_decoded_alone():
    # a decoder that reads only the first id (as a character split over byte tokens might)
    first_only = SimpleNamespace(decode=lambda ids: f"<{ids[0]}>")
    assert window_pieces(first_only, [7, 8, 9]) == ["<7>", "<8>", "<9>"]


class _TwoDocumentStore:
    """One sequence whose position 4 (the EOS between two documents) is not stored."""

    def __init__(self):
        kept = [1, 2, 3, 5, 6, 7]
        self.positions = torch.tensor([[0, p] for p in kept])
        self.token_ids = torch.tensor([10 + p for p in kept])


def test_a_window_across_two_documents_shows_the_break():
    window = _WindowIndex(_TwoDocumentStore())
    ids, focus, seq, pos, breaks = window.around(3, left=3, right=2)  # row 3 holds position 5
    assert ids == [12, 13, 15, 16, 17] and (focus, seq, pos) == (2, 0, 5) and breaks == (2,)
    context = Context(0, 1.0, 3, seq, pos, ids, focus, ["a", " b", "C", " d", " e"], breaks)
    assert context.text() == f"a b{BREAK} [[C]] d e"
    assert context.html() == f"a b{BREAK} <mark>C</mark> d e"
    assert _WindowIndex(_TwoDocumentStore()).around(0, left=1, right=1)[4] == ()  # BOS at the edge: no break


# ---------------------------------------------------------------------------- axes
def test_log_axis_ticks_are_plotted_values_spread_in_log_space():
    ks = [1, 2, 3, 5, 10, 20, 30, 50, 100, 200, 300, 500, 1000]
    axis = log_axis(ks, max_ticks=4)
    assert axis["type"] == "log" and axis["tickmode"] == "array"
    assert set(axis["tickvals"]) <= set(ks) and axis["tickvals"][0] == 1 and len(axis["tickvals"]) <= 5
    gaps = np.diff(np.log10(axis["tickvals"]))
    assert gaps.min() >= math.log10(1000) / 4 - 1e-9
    assert axis["ticktext"] == [f"{v:g}" for v in axis["tickvals"]]
    assert log_axis([1, 10, 100])["tickvals"] == [1.0, 10.0, 100.0]
    assert log_axis([0, 4, 4, 8])["tickvals"] == [4.0, 8.0]  # 0 has no place on a log axis


def test_spaced_keeps_labels_a_gap_apart():
    assert spaced([0, 1, 2, 5, 6, 9, 20], min_gap=3) == [0, 5, 9, 20]
    assert spaced([], min_gap=1) == []


def _analysis() -> EvolutionAnalysis:
    """600 features emerging at every one of 12 snapshots, most of them at the first few."""
    steps = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 640]
    emergence = torch.tensor([min(11, int(k**0.5 // 2)) for k in range(600)])
    norms = (torch.arange(12)[None, :] >= emergence[:, None]).float() + 0.01
    W_dec = torch.randn(600, 12, 8, generator=torch.Generator().manual_seed(0))
    W_dec = W_dec / W_dec.norm(dim=-1, keepdim=True) * norms[..., None]
    return EvolutionAnalysis.from_decoder(W_dec, steps)


def test_heatmap_row_labels_do_not_overlap():
    analysis = _analysis()
    figure = evolution_heatmap(analysis)
    ticks = list(figure.layout.yaxis.tickvals)
    n_rows = len(figure.data[0].z)
    assert len(ticks) >= 2 and min(np.diff(ticks)) >= n_rows * 16 / 400


def test_emergence_histogram_is_ticked_at_its_steps():
    analysis = _analysis()
    axis = emergence_histogram(analysis).layout.xaxis
    plotted = {float(x) for bar in emergence_histogram(analysis).data for x in bar.x}
    assert axis.type == "log" and set(axis.tickvals) <= plotted
    assert list(axis.ticktext) == [f"{int(v)}" for v in axis.tickvals] and 3 <= len(axis.tickvals) <= 11


def test_emergence_bars_at_close_steps_do_not_overlap():
    # the demo's late snapshots sit 17-20% apart, where bars 30% of their step wide overlapped
    widths = _log_bar_widths([2, 8, 32, 64, 144, 192, 240, 288, 336, 384, 640])
    steps = sorted(widths)
    for left, right in zip(steps, steps[1:]):
        assert left + widths[left] / 2 < right - widths[right] / 2, (left, right)
    assert widths[2] == pytest.approx(0.6) and widths[640] == pytest.approx(0.6 * 256)


# ---------------------------------------------------------------------------- causal figures
def _curve_rows(n_snapshots: int) -> list[dict]:
    rows = []
    for s in range(n_snapshots):
        for keep_only in (False, True):
            for k in (1, 3, 10, 30, 100):
                rows.append(
                    {
                        "snapshot": s,
                        "label": f"step{s}",
                        "keep_only": keep_only,
                        "selection": "top",
                        "k": k,
                        "metric": -1.0 + 0.01 * k,
                    }
                )
                for draw in range(2):
                    rows.append(
                        {
                            "snapshot": s,
                            "label": f"step{s}",
                            "keep_only": keep_only,
                            "selection": "random",
                            "k": k,
                            "metric": -1.0 + 0.001 * k * (draw + 1),
                        }
                    )
    return rows


def test_ablation_curves_draw_one_panel_per_snapshot():
    figure = ablation_curves_figure(_curve_rows(12))
    x_axes = [name for name in figure.layout if name.startswith("xaxis")]
    assert len(x_axes) == 12 and len(figure.layout.annotations) == 12  # one titled panel each
    assert [a.text for a in figure.layout.annotations][:2] == ["step0", "step1"]
    assert len(figure.data) == 12 * 4 and sum(bool(t.showlegend) for t in figure.data) == 4
    names = {t.name for t in figure.data}
    assert names == {"ablate top-k", "ablate random k", "keep only top-k", "keep only random k"}
    random_keep = next(t for t in figure.data if t.name == "keep only random k")
    assert random_keep.y[0] == pytest.approx(-1.0 + 0.001 * 1.5)  # the mean of the random draws
    assert list(figure.layout.xaxis.tickvals) == [1, 10, 100] and figure.layout.xaxis.type == "log"


def test_relie_scatter_uses_the_stage_classes():
    relie_F = torch.tensor([0.9, 0.5, 0.1, 0.95])
    reldec_F = torch.tensor([0.8, 0.4, 0.2, 0.7])
    alone = relie_vs_reldec(relie_F, reldec_F)
    assert {t.name for t in alone.data} == {"specific", "shared", "other"}
    decided = relie_vs_reldec(relie_F, reldec_F, labels=["specific", "shared", "other", "below_floor"])
    by_name = {t.name: list(t.text) for t in decided.data}
    assert by_name["specific"] == ["feature 0"] and by_name["below the noise floor"] == ["feature 3"]


def test_relie_scatter_panels_fit_reldec_and_share_relie():
    relie_FP = torch.tensor([[0.9, 0.1], [0.5, 0.4], [0.1, 0.8], [0.95, 0.05]])
    reldec_FP = torch.tensor([[0.10, 0.05], [0.12, 0.20], [0.08, 0.10], [0.02, 0.30]])
    figure = relie_vs_reldec(relie_FP, reldec_FP, feature_ids=[7, 8, 9, 10], snapshot_labels=["step64", "step640"])
    assert [a.text for a in figure.layout.annotations] == ["step64", "step640"]  # one titled panel each
    assert {t.xaxis for t in figure.data} == {"x", "x2"}
    # each class in the legend once, however many panels it appears in
    assert sorted(t.name for t in figure.data if t.showlegend) == ["other", "shared", "specific"]
    by_panel = {(t.xaxis, t.name): list(t.text) for t in figure.data}
    assert by_panel[("x2", "specific")] == ["feature 9"] and by_panel[("x2", "other")] == ["feature 7", "feature 10"]
    # RelDec reaches 0.12 and 0.30, so each panel's axis ends at the next 0.05 above 1.1x that,
    # not at 1; RelIE keeps 0-1 in both
    assert list(figure.layout.xaxis.range) == [0, 0.15] and list(figure.layout.xaxis2.range) == [0, 0.35]
    assert list(figure.layout.yaxis.tickvals) == [0, 0.3, 0.7, 1]
    cuts = sorted({s.y0 for s in figure.layout.shapes if s.line.dash == "dash"})
    assert cuts == [0.3, 0.7]  # the thresholds the colours stand for, drawn in every panel
    assert sum(s.line.dash == "dash" for s in figure.layout.shapes) == 4
    with pytest.raises(ValueError, match="one label per column"):
        relie_vs_reldec(relie_FP, reldec_FP, snapshot_labels=["step64"])
    empty = relie_vs_reldec(relie_FP[:0], reldec_FP[:0], snapshot_labels=["step64", "step640"])  # no feature selected
    assert len(empty.data) == 0 and list(empty.layout.xaxis.range) == [0, 0.05]


# ---------------------------------------------------------------------------- demo lines
def _summary(specific: list[int]) -> SimpleNamespace:
    behaviour = [
        {
            "label": f"s{c}",
            "accuracy": 1.0,
            "ci_low": 0.8,
            "ci_high": 1.0,
            "n_pairs": 12,
            "metric_mean": -1.0,
            "metric_sd": 0.1,
            "at_chance": False,
        }
        for c in range(2)
    ]
    return SimpleNamespace(
        behaviour=behaviour,
        snapshots=["s0", "s1"],
        metric_clean=[-1.0, -2.0],
        specific_per_snapshot=specific,
        ablation="zero",
        keep_only_restored_final={1: 0.5},
    )


def test_demo_lines_say_what_no_specific_feature_means(capsys):
    from crosslens.causal.sections import _print_snapshots

    _print_snapshots(_summary([0, 0]))
    printed = capsys.readouterr().out
    assert printed.count("snapshot-specific features 0") == 2
    assert "no feature is snapshot-specific (RelIE > 0.7, above the noise floor)" in printed
    _print_snapshots(_summary([0, 3]))
    assert "no feature is snapshot-specific" not in capsys.readouterr().out
    _print_snapshots(_summary([0, 0]), specific_line=0.8)  # the stage's own line, where it was given another
    assert "no feature is snapshot-specific (RelIE > 0.8, above the noise floor)" in capsys.readouterr().out


def test_a_second_crosscoder_does_not_print_the_model_again(capsys):
    from crosslens.causal.sections import _print_snapshots

    _print_snapshots(_summary([0, 3]), model_lines=False)
    printed = capsys.readouterr().out
    assert "metric" not in printed and "snapshot-specific features: s0 0, s1 3" in printed
    assert "keep-only restoration at s1 (zero-ablation): top-1 50%" in printed


def test_the_claims_across_seeds_read_as_a_sentence_and_a_list():
    from crosslens.cli.demo_stages import add_claims_text
    from crosslens.htmlreport import Report

    text = (
        "causal claims at step640 over 3 crosscoder seeds, counting only stable features:\n"
        "  ablating the top-10 stable features moves the metric by 59% +/- 31%\n"
        "  keeping only the top-k stable features restores 4% +/- 5%"
    )
    report = Report("claims")
    add_claims_text(report, text, "The demo's claims.")
    page = report.render()
    assert "<p>The demo&#x27;s claims. Causal claims at step640 over 3 crosscoder seeds" in page
    assert "<li>ablating the top-10 stable features moves the metric by 59% +/- 31%</li>" in page
    assert page.count("<li>") == 2  # no headings, so no contents list: the two claims
    at_chance = Report("none")
    add_claims_text(at_chance, "causal claims at step640: none, the model is at chance on the task there", "Intro.")
    assert "<p>Intro. Causal claims at step640: none" in at_chance.render() and "<ul>" not in at_chance.render()


def test_long_snake_case_headers_can_wrap_at_their_underscores():
    from crosslens.htmlreport import Report

    page = Report("t").add_table([{"emergence_step (decoder_norm)": 64, "dip": 1}]).render()
    assert "<th>emergence_<wbr>step (decoder_<wbr>norm)</th>" in page.replace(' class=""', "")
    assert "<td>64</td>" in page.replace(' class=""', "")


def test_percent_columns_print_fractions_as_the_console_does():
    from crosslens.htmlreport import Report

    rows = [
        {"snapshot": "step8", "CE recovered": 0.98834, "KL": 0.0031},
        {"snapshot": "step0", "CE recovered": None, "KL": 0.0016},
    ]
    page = Report("t").add_table(rows, percent=["CE recovered"]).render().replace(' class=""', "")
    assert "<td>98.8%</td>" in page and "<td>&mdash;</td>" in page  # a share left out stays a dash
    assert "<td>0.0031</td>" in page  # other numbers keep four significant digits
    with pytest.raises(ValueError, match=r"percent names \['CE recoverd'\], not columns"):
        Report("t").add_table(rows, percent=["CE recoverd"])
