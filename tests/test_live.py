"""``crosslens.live``: your own text and steering at every snapshot, from Python.

The activations are checked against the crosscoder run by hand on each snapshot model's
TransformerLens cache; the steered continuations against a plain greedy loop that recomputes the
whole sequence through ``run_with_hooks`` at every token (no key-value cache, one row). Refusals
are one line naming the fix, and nothing on disk changes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import trust_fixtures as tf
from hf_cache import make_word_tokenizer, tiny_neox, write_local_suite
from live_fixtures import PROMPT, TEXT, edited_copy, live, run, words  # noqa: F401  (fixtures)
from safetensors.torch import load_file, save_file

from crosslens.checkpoints import CheckpointSuite
from crosslens.core.errors import LiveInputError, LiveUnavailableError
from crosslens.core.hashing import crosscoder_sha256
from crosslens.core.paths import final_weights
from crosslens.crosscoders.folding import resolve_norm_factors
from crosslens.crosscoders.per_snapshot_sae import SnapshotCodec
from crosslens.crosscoders.saved import load_crosscoder_folder
from crosslens.dashboards.logits import vocabulary_pieces
from crosslens.live import LiveConfig, LiveModels

HOOK = tf.HOOK
S = 3


@pytest.fixture(scope="module")
def reference(run):
    """The suite's models and the crosscoder, loaded by hand."""
    suite = CheckpointSuite.local(run.parent / "suite")
    crosscoder = load_crosscoder_folder(run / "final").eval()
    return suite, [suite.load(s) for s in range(S)], crosscoder


def token_ids(suite, text: str) -> list[int]:
    return suite.tokenizer().encode(text, add_special_tokens=False)


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    return message


# --------------------------------------------------------------------------- your text
def test_a_text_gives_every_feature_at_every_snapshot_as_the_crosscoder_reads_it(live, reference):
    suite, models, crosscoder = reference
    ids = token_ids(suite, TEXT)
    tokens_1L = torch.tensor([[0, *ids]])  # BOS first, as a harvest's rows start
    with torch.no_grad():
        acts_NSD = torch.stack([m.run_with_cache(tokens_1L, names_filter=HOOK)[1][HOOK][0, 1:] for m in models], 1)
        factors_S = resolve_norm_factors(crosscoder)
        want_code = crosscoder.encode(acts_NSD * factors_S[:, None]).numpy()
        want_snapshots = np.stack(
            [SnapshotCodec(crosscoder, s).encode_single(acts_NSD[:, s]).numpy() for s in range(S)]
        )

    got = live.activations(TEXT)
    assert got.token_ids.tolist() == ids and len(got.tokens) == len(ids)
    assert "".join(got.tokens).split() == TEXT.split()  # BOS is not among them
    assert got.crosscoder_NF.shape == (len(ids), 32) and got.snapshots_SNF.shape == (S, len(ids), 32)
    np.testing.assert_allclose(got.crosscoder_NF, want_code, atol=1e-5)
    np.testing.assert_allclose(got.snapshots_SNF, want_snapshots, atol=1e-5)
    assert (want_code > 0).any() and (want_snapshots > 0).any()
    f = int(want_code.max(0).argmax())
    np.testing.assert_allclose(
        got.feature(f), np.concatenate([want_code[None, :, f], want_snapshots[:, :, f]]), atol=1e-5
    )
    assert got.steps == (0, 10, 20)
    assert live.activations(TEXT) is got  # kept: asking again computes nothing


def test_the_strongest_features_are_listed_per_reading(live):
    acts = live.activations(TEXT)
    for reading in (-1, 0, 1, 2):
        code_NF = acts.reading(reading)
        peak_F = code_NF.max(0)
        top = acts.top(reading, k=5)
        want = sorted((f for f in range(32) if peak_F[f] > 0), key=lambda f: (-peak_F[f], f))[:5]
        assert [f for f, _, _ in top] == want
        assert all(a == pytest.approx(float(peak_F[f])) and code_NF[t, f] == peak_F[f] for f, a, t in top)
    with pytest.raises(IndexError, match="reading 3: -1"):
        acts.reading(3)


def test_a_kept_text_s_arrays_cannot_be_changed_by_one_asker_for_the_next(live):
    """The kept answer's arrays were writable: a notebook thresholding ``acts.reading(-1)`` in place
    changed what the next question about the text got."""
    text = TEXT + " and the cat"
    acts = live.activations(text)
    code = acts.reading(-1)
    peak = float(code.max())
    assert peak > 0
    with pytest.raises(ValueError, match="read-only"):
        code[code > 0] = 0.0
    for array in (acts.token_ids, acts.snapshots_SNF, acts.reading(0)):
        with pytest.raises(ValueError, match="read-only"):
            array[...] = 0
    again = live.activations(text)
    assert again is acts and float(again.crosscoder_NF.max()) == peak
    mine = acts.reading(-1).copy()
    mine[mine > 0] = 0.0  # a copy is the asker's own
    assert float(mine.max()) == 0.0 and float(live.activations(text).crosscoder_NF.max()) == peak


# --------------------------------------------------------------------------- steering
def reference_continuation(model, ids, n, fn=None) -> list[int]:
    """Greedy tokens after ``ids``, the whole sequence recomputed for each (``fn`` hooked at HOOK)."""
    tokens = [0, *ids]
    with torch.no_grad():
        for _ in range(n):
            hooks = [(HOOK, fn)] if fn is not None else []
            logits = model.run_with_hooks(torch.tensor([tokens]), fwd_hooks=hooks)
            tokens.append(int(logits[0, -1].argmax()))
    return tokens[len(ids) + 1 :]


def raw_direction(crosscoder, feature: int, s: int) -> torch.Tensor:
    """What a code of 1 in ``feature`` adds to snapshot s's reconstruction on the raw scale."""
    codec = SnapshotCodec(crosscoder, s)
    one = torch.zeros(crosscoder.cfg.d_sae)
    one[feature] = 1.0
    return (codec.decode(one) - codec.bias()).detach()


@pytest.mark.parametrize("mode, strength", [("add", 6.0), ("clamp", 5.0), ("clamp", 0.0)])
def test_steering_writes_the_snapshot_direction_as_a_plain_loop_does(live, reference, mode, strength):
    suite, models, crosscoder = reference
    feature, n = 7, 8
    ids = token_ids(suite, PROMPT)
    pieces = vocabulary_pieces(suite.tokenizer())
    got = live.steer(feature, PROMPT, strength=strength, mode=mode, n_tokens=n)
    assert [row.snapshot for row in got.snapshots] == [0, 1, 2] and got.prompt_tokens == [
        live.activations(PROMPT).tokens[i] for i in range(len(ids))
    ]
    differ = 0
    for s, row in enumerate(got.snapshots):
        d_D = raw_direction(crosscoder, feature, s)
        codec = SnapshotCodec(crosscoder, s)

        def add(x, hook, d_D=d_D):
            return x + strength * d_D

        def clamp(x, hook, d_D=d_D, codec=codec):
            return x + (strength - codec.encode_single(x)[..., feature])[..., None] * d_D

        assert row.plain_ids == reference_continuation(models[s], ids, n)
        assert row.steered_ids == reference_continuation(models[s], ids, n, add if mode == "add" else clamp)
        assert row.direction_norm == pytest.approx(float(d_D.norm()), rel=1e-5)
        assert row.plain == [pieces[i] if i < len(pieces) else f"<{i}>" for i in row.plain_ids]
        assert row.steered_text == "".join(row.steered)
        differ += row.plain_ids != row.steered_ids
    assert differ >= 1  # the steering changes something somewhere
    again = live.steer(feature, PROMPT, strength=strength, mode=mode, n_tokens=n)
    assert [r.steered_ids for r in again.snapshots] == [r.steered_ids for r in got.snapshots]


def test_a_zero_strength_changes_nothing_and_the_hooks_are_gone_after(live, reference):
    got = live.steer(3, PROMPT, strength=0.0, n_tokens=6)
    assert all(row.plain_ids == row.steered_ids for row in got.snapshots)
    opened = live._opened
    for s in range(S):
        with opened.models.use(s) as model:
            assert not model.hook_dict[HOOK]._forward_hooks  # the context removed its hook


def test_sampling_repeats_with_its_seed(live):
    first = live.steer(5, PROMPT, strength=4.0, n_tokens=10, temperature=1.5, seed=11)
    again = live.steer(5, PROMPT, strength=4.0, n_tokens=10, temperature=1.5, seed=11)
    other = live.steer(5, PROMPT, strength=4.0, n_tokens=10, temperature=1.5, seed=12)
    ids = lambda answer: [(r.plain_ids, r.steered_ids) for r in answer.snapshots]  # noqa: E731
    assert ids(first) == ids(again) and ids(first) != ids(other)
    only = live.steer(5, PROMPT, strength=4.0, n_tokens=10, temperature=1.5, seed=11, snapshots=[2])
    assert ids(only) == ids(first)[2:]


def test_sampled_rows_share_each_step_s_draw_so_only_the_steering_makes_them_differ(live):
    """The plain and steered rows drew their tokens from one generator one after the other, so a
    strength of 0 at a temperature above 0 gave two texts, and the page marked the noise as the
    steering's."""
    ids = lambda answer, row: [getattr(r, row) for r in answer.snapshots]  # noqa: E731
    zero = live.steer(3, PROMPT, strength=0.0, n_tokens=10, temperature=0.8, seed=5)
    assert ids(zero, "plain_ids") == ids(zero, "steered_ids")
    greedy = live.steer(3, PROMPT, strength=0.0, n_tokens=10)
    assert ids(zero, "plain_ids") != ids(greedy, "plain_ids")  # it samples
    steered = live.steer(3, PROMPT, strength=8.0, n_tokens=10, temperature=0.8, seed=5)
    assert ids(steered, "plain_ids") == ids(zero, "plain_ids")  # the plain row does not hang on the strength
    assert ids(steered, "steered_ids") != ids(steered, "plain_ids")
    assert live.steer(3, PROMPT, strength=8.0, n_tokens=10, temperature=0.8, seed=5) == steered


def test_any_temperature_in_range_samples(live, reference):
    """``softmax(logits / 1e-45)`` is NaN: steering raised a bare RuntimeError (HTTP 500 from the page)."""
    for mode, strength in (("add", 6.0), ("clamp", 0.0)):
        greedy = live.steer(7, PROMPT, strength=strength, mode=mode, n_tokens=8)
        tiny = live.steer(7, PROMPT, strength=strength, mode=mode, n_tokens=8, temperature=1e-45, seed=3)
        assert [(r.plain_ids, r.steered_ids) for r in tiny.snapshots] == [
            (r.plain_ids, r.steered_ids) for r in greedy.snapshots
        ]
    hot = live.steer(7, PROMPT, strength=0.0, n_tokens=8, temperature=10.0, seed=3)
    vocabulary = reference[1][0].cfg.d_vocab
    assert all(row.plain_ids == row.steered_ids for row in hot.snapshots)
    assert all(0 <= i < vocabulary for row in hot.snapshots for i in row.plain_ids)


# --------------------------------------------------------------------------- resident models
def test_resident_models_are_bounded_and_reused(run):
    live = LiveModels(run, device="cpu", config=LiveConfig(resident_models=1))
    try:
        live.activations(TEXT)
        live.activations(TEXT + " here")
        live.steer(1, PROMPT, strength=1.0, n_tokens=2, snapshots=[0])
        status = live.status()
        assert status["state"] == "ready" and status["resident"] == [0] and status["loads"] == [1, 2, 2]
        budget = status["budget"]
        assert budget["models"] == 3 * budget["model"] > 0 and budget["limit"] > budget["base"]
    finally:
        live.close()


# --------------------------------------------------------------------------- refusals
def test_bad_questions_are_refused_in_one_line(live):
    cases = [
        (lambda: live.activations(""), "the text is empty: type a few words"),
        (lambda: live.activations("   \n "), "the text is empty"),
        (lambda: live.activations("x" * 4001), "at most 4,000 are read at once; shorten it"),
        (lambda: live.activations(words(80)), "past the models' context of 64"),
        (lambda: live.steer(3, " ", strength=1.0), "the prompt is empty"),
        (lambda: live.steer(3, PROMPT, strength=float("nan")), "strength nan: give a finite number"),
        (lambda: live.steer(3, PROMPT, strength=float("inf"), mode="clamp"), "clamp value inf: give a finite"),
        (lambda: live.steer(3, PROMPT, strength=1.0, n_tokens=65), "length 65: generate 1 to 64 tokens"),
        (lambda: live.steer(3, PROMPT, strength=1.0, n_tokens=60), "past the models' context of 64"),
        (lambda: live.steer(32, PROMPT, strength=1.0), "feature 32: this crosscoder has features 0 to 31"),
        (lambda: live.steer(-1, PROMPT, strength=1.0), "feature -1: this crosscoder has features 0 to 31"),
        (lambda: live.steer(2**70, PROMPT, strength=1.0), "this crosscoder has features 0 to 31"),
        (lambda: live.steer(3, PROMPT, strength=1.0, snapshots=[3]), "snapshot 3: this crosscoder has snapshots"),
        (lambda: live.steer(3, PROMPT, strength=1.0, mode="multiply"), "mode 'multiply': use one of add, clamp"),
        (lambda: live.steer(3, PROMPT, strength=1.0, temperature=-1), "temperature -1: give 0 (greedy)"),
        (lambda: live.steer(3, PROMPT, strength=1.0, seed=-2), "seed -2: give a whole number"),
        (lambda: live.steer(3, ["the", "cat"], strength=1.0), "the prompt is list, not text: pass one string"),
        (lambda: live.steer(3, PROMPT, strength=1.0, snapshots=[]), "snapshots []: name 1 snapshot or more"),
        (lambda: live.steer(torch.tensor(32), PROMPT, strength=1.0), "this crosscoder has features 0 to 31"),
        (lambda: live.activations("hello the world"), "67% of the text's tokens ('hello', 'world') are unknown"),
        (lambda: live.steer(3, "qua qua the", strength=1.0), "67% of the prompt's tokens ('qua') are unknown"),
    ]
    for ask, words_ in cases:
        with pytest.raises(LiveInputError) as error:
            ask()
        assert words_ in one_line(error), (words_, str(error.value))
    with pytest.raises(IndexError, match=r"^feature -1: this crosscoder has features 0 to 31"):
        live.activations(PROMPT).feature(-1)  # it read the last feature


def test_a_text_of_words_the_models_do_not_know_is_refused_and_a_few_are_read_as_unknown(live):
    """Text outside a word-level vocabulary was answered as a row of <unk> tokens, which every snapshot
    reads alike; a few unknown words, as a harvest accepts them, are still answered."""
    with pytest.raises(LiveInputError) as error:
        live.activations("hello world, how are you")
    message = one_line(error)
    assert message.startswith(
        "80% of the text's tokens ('hello', 'world,', 'how', 'you') are unknown"
    )  # 'are' is a word
    assert "read as <unk>; at most 25% is accepted: use words of its vocabulary" in message
    got = live.activations(TEXT + " hello")  # 1 unknown of 14
    assert got.tokens[-1].strip() == "<unk>" and len(got.tokens) == len(TEXT.split()) + 1


def test_a_live_config_is_refused_where_it_is_built_not_at_its_first_question():
    """``threads=0`` and ``cached_texts=-1`` were accepted, then failed inside torch and the text cache."""
    for name, value, least in (("threads", 0, 1), ("cached_texts", -1, 0), ("max_new_tokens", 0, 1)):
        with pytest.raises(ValueError, match=rf"^{name} must be >= {least}, got {value}$"):
            LiveConfig(**{name: value})
    assert LiveConfig(threads=None, cached_texts=0).threads is None


def test_a_feature_and_its_settings_read_off_tensors_and_arrays_steer_as_python_numbers(live):
    """A feature taken from a table is a tensor, a length or strength from NumPy a NumPy scalar:
    "feature tensor(3): this crosscoder has features 0 to 31" refused them."""
    plain = live.steer(3, PROMPT, strength=4.0, n_tokens=3)
    read_off = live.steer(torch.tensor(3), PROMPT, strength=np.float32(4.0), n_tokens=np.int64(3))
    assert read_off == plain


def test_numpy_settings_steer_as_python_numbers_and_bools_or_one_snapshot_are_refused(live):
    """A NumPy seed or temperature was refused with a message asking for what it was ("seed
    np.int64(3): give a whole number"), ``True`` steered as a strength or temperature of 1, and
    ``snapshots=2`` raised TypeError."""
    plain = live.steer(3, PROMPT, strength=4.0, n_tokens=3, temperature=0.5, seed=3)
    read_off = live.steer(3, PROMPT, strength=4.0, n_tokens=3, temperature=np.float32(0.5), seed=np.int64(3))
    assert read_off == plain and type(read_off.seed) is int and type(read_off.temperature) is float
    assert live.steer(3, PROMPT, strength=4.0, n_tokens=3, seed=torch.tensor(3)).seed == 3
    cases = [
        (dict(strength=True), "strength True: give a finite number"),
        (dict(strength=1.0, mode="clamp", temperature=np.float64("nan")), "temperature np.float64(nan): give 0"),
        (dict(strength=1.0, temperature=True), "temperature True: give 0 (greedy) to 10"),
        (dict(strength=1.0, seed=True), "seed True: give a whole number"),
        (dict(strength=1.0, seed=2.0), "seed 2.0: give a whole number"),
        (dict(strength=10**400), "strength 1000"),
        (dict(strength=1.0, snapshots=2), "snapshots 2: pass a list, e.g. [2]"),
        (dict(strength=1.0, snapshots=np.int64(1)), "snapshots np.int64(1): pass a list, e.g. [1]"),
        (dict(strength=1.0, snapshots="01"), "snapshots '01': pass a list, e.g. [0]"),
        (dict(strength=1.0, snapshots=np.array([], dtype=int)), "snapshots []: name 1 snapshot or more"),
    ]
    for settings, words_ in cases:
        with pytest.raises(LiveInputError) as error:
            live.steer(3, PROMPT, n_tokens=3, **settings)
        assert one_line(error).startswith(words_), (words_, str(error.value))
    chosen = live.steer(3, PROMPT, strength=4.0, n_tokens=3, snapshots=np.array([0, 2]))
    assert [r.snapshot for r in chosen.snapshots] == [0, 2]
    assert (
        live.steer(3, PROMPT, strength=4.0, n_tokens=3, snapshots=(s for s in (2,))).snapshots == chosen.snapshots[1:]
    )


def other_suite(root: Path, seeds=(5, 6, 7), steps=(0, 10, 20), **overrides) -> CheckpointSuite:
    write_local_suite(
        root, {f"step{step}": tiny_neox(seed=s, **overrides) for step, s in zip(steps, seeds)}, make_word_tokenizer()
    )
    return CheckpointSuite.local(root)


def refused(live: LiveModels, words_: str) -> str:
    with pytest.raises(LiveUnavailableError) as error:
        live.activations(TEXT)
    message = one_line(error)
    assert words_ in message, message
    assert live.status()["state"] == "unavailable" and live.status()["problem"] == message
    with pytest.raises(LiveUnavailableError):  # and again (a suite that is not the crosscoder's without loading)
        live.steer(1, PROMPT, strength=1.0)
    return message


def test_a_suite_that_is_not_the_crosscoder_s_is_refused_in_one_line(run, tmp_path):
    message = refused(LiveModels(run, suite=other_suite(tmp_path / "other")), "the suite other is not the crosscoder's")
    assert "snapshot step0 has other weights" in message and "pass the suite the crosscoder was trained on" in message
    fewer = CheckpointSuite.local(run.parent / "suite").select(steps=[0, 10])
    refused(LiveModels(run, suite=fewer), "snapshots [step0, step10, step20] vs [step0, step10]")
    moved = edited_copy(run, tmp_path / "moved", lambda meta: meta["suite"].update(root=str(tmp_path / "gone")))
    refused(LiveModels(moved), f"its folder {tmp_path / 'gone'} is gone")


def test_a_suite_given_as_a_path_is_refused_where_the_live_models_are_made(run):
    """``suite="/path"`` raised AttributeError at the first question, and the status then said idle."""
    folder = run.parent / "suite"
    for given in (str(folder), folder):
        with pytest.raises(LiveInputError) as error:
            LiveModels(run, suite=given, device="cpu")
        message = one_line(error)
        assert message.startswith(f"suite={given!r} is a {type(given).__name__}, not a CheckpointSuite: pass ")
        assert f"suite=CheckpointSuite.local({str(folder)!r}) for a folder of checkpoints" in message
    with pytest.raises(LiveInputError, match=r"^suite=3 is a int, not a CheckpointSuite: .*local\(FOLDER\)"):
        LiveModels(run, suite=3)
    live = LiveModels(run, suite=CheckpointSuite.local(folder), device="cpu")
    try:
        assert live.activations(TEXT).crosscoder_NF.shape[1] == 32
    finally:
        live.close()


def test_another_hook_or_width_is_refused_in_one_line(run, tmp_path):
    def unrecorded(meta, hook=HOOK):
        meta["hook_name"] = hook
        for entry in meta["suite"]["snapshots"]:  # no identity to compare: the shapes decide
            entry.pop("source"), entry.pop("weights_sha256")

    wide = other_suite(tmp_path / "wide", hidden_size=48)
    message = refused(LiveModels(edited_copy(run, tmp_path / "a", unrecorded), suite=wide), "does not fit")
    assert "its models give 48 numbers at blocks.0.hook_resid_post, the crosscoder reads d_in 32" in message
    deep = edited_copy(run, tmp_path / "b", lambda meta: unrecorded(meta, "blocks.5.hook_resid_post"))
    refused(LiveModels(deep), "the model has no hook 'blocks.5.hook_resid_post'")
    bare = tmp_path / "bare"
    shutil.copytree(run, bare, ignore=shutil.ignore_patterns("final"))
    refused(LiveModels(bare), "holds no trained crosscoder (final/cfg.json)")


def test_the_crosscoder_named_is_the_one_loaded_after_the_run_is_trained_again(run, tmp_path):
    """``crosscoder()`` hashed the weights file on disk at each call: after ``train --overwrite`` the
    page's pairing check passed while the answers came from the weights loaded before."""
    copy = tmp_path / "retrained"
    shutil.copytree(run, copy)
    live = LiveModels(copy, device="cpu")
    try:
        before = live.activations(TEXT).crosscoder_NF.copy()
        loaded = crosscoder_sha256(copy)
        assert live.crosscoder()["weights_sha256"] == loaded
        weights = final_weights(copy)
        tensors = load_file(weights)
        save_file({k: v * 2 if k.startswith("W_") else v for k, v in tensors.items()}, weights)
        assert crosscoder_sha256(copy) != loaded
        assert live.crosscoder()["weights_sha256"] == loaded  # the weights its answers come from
        np.testing.assert_allclose(live.activations(TEXT + " run").crosscoder_NF[:-1], before, atol=1e-5)
    finally:
        live.close()
    fresh = LiveModels(copy, device="cpu")
    try:
        assert fresh.crosscoder()["weights_sha256"] == crosscoder_sha256(copy)
    finally:
        fresh.close()


def test_a_missing_folder_or_a_run_s_final_folder_is_named_as_such(run, tmp_path):
    """Both were told "holds no trained crosscoder (final/cfg.json): ... browse that folder"."""
    for given, words_ in (
        (tmp_path / "nope", f"{tmp_path / 'nope'} does not exist: pass the run folder `crosslens train` wrote"),
        (
            run / "final",
            f"{run / 'final'} is a run's crosscoder folder, not its run folder: pass the run folder, {run}",
        ),
        (tmp_path, f"{tmp_path} holds no trained crosscoder (final/cfg.json): pass the run folder `crosslens train`"),
    ):
        live = LiveModels(given, device="cpu")
        with pytest.raises(LiveUnavailableError) as error:
            live.activations(TEXT)
        message = one_line(error)
        assert message.startswith(words_) and "browse" not in message, message
        assert live.status()["problem"] == message


def test_nothing_on_disk_changes(run, live):
    before = {**tf.tree_bytes(run), **{f"suite/{k}": v for k, v in tf.tree_bytes(run.parent / "suite").items()}}
    live.activations(TEXT + " there")
    live.steer(2, PROMPT, strength=3.0, n_tokens=3, mode="clamp")
    for ask in (lambda: live.activations(""), lambda: live.steer(2, PROMPT, strength=float("nan"))):
        with pytest.raises(LiveInputError):
            ask()
    after = {**tf.tree_bytes(run), **{f"suite/{k}": v for k, v in tf.tree_bytes(run.parent / "suite").items()}}
    assert after == before


def test_a_hub_suite_offline_without_its_files_is_refused_in_one_line(run, tmp_path, offline_hf_home):
    def on_the_hub(meta):
        meta["suite"].update(family="pythia", model_id="EleutherAI/pythia-14m", root=None)
        for entry, step in zip(meta["suite"]["snapshots"], (0, 1000, 2000)):
            entry.update(revision=f"step{step}", step=step)

    message = refused(LiveModels(edited_copy(run, tmp_path / "hub", on_the_hub)), "snapshot models cannot be found")
    assert (
        "step0' is a published checkpoint of EleutherAI/pythia-14m but it is not (completely) in the local" in message
    )
    assert "pass the suite the crosscoder was trained on" in message
