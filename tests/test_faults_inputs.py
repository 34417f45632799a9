"""Input that is not what it claims is refused before any work, and a full disk or an unwritable
folder is one line naming the folder: text files (binary, wrong encoding, mostly unknown words),
token budgets beyond memory or disk, --seq-len beyond the model's context, a disk filling during
harvest or at a checkpoint, and library messages that name the command's flags."""

from __future__ import annotations

import errno
import json
import re
import subprocess
from pathlib import Path

import pytest
import torch
from hf_cache import FAKE_WORDS, make_word_tokenizer
from trust_fixtures import HOOK, harvest, token_table, train, write_suite

import crosslens.activations.budget as budget_module
import crosslens.activations.harvest as harvest_module
from crosslens.cli import build_parser, main
from crosslens.cli.common import CLIError
from crosslens.core.errors import StorageError
from crosslens.core.units import format_bytes

SENTENCE = "the old dog sees a small bird near the big tree and the young cat runs quickly"


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    return write_suite(tmp_path_factory.mktemp("suite"))


@pytest.fixture(scope="module")
def store(suite, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("store") / "store"
    harvest(suite, out)
    return out


def run_harvest(suite: Path, out: Path, *flags: str) -> list[str]:
    argv = [
        "harvest",
        "--suite",
        str(suite),
        "--hook",
        HOOK,
        "--out",
        str(out),
        "--device",
        "cpu",
        "--n-tokens",
        "256",
        "--seq-len",
        "16",
        "--heldout-tokens",
        "0",
        *flags,
    ]
    return ["crosslens", *argv]


def one_line_error(argv: list[str], capsys) -> str:
    """Run the CLI, expect exit status 2 and return its one error line."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv[1:])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "--debug" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("crosslens")]  # not the progress bar's
    assert len(lines) == 1, err
    return lines[0]


def succeeds(argv: list[str], capsys) -> str:
    assert main(argv[1:]) == 0
    return capsys.readouterr().out


# ----------------------------------------------------------------------------- text files
def test_a_binary_text_file_is_refused_before_anything_is_written(suite, tmp_path, capsys):
    binary = tmp_path / "weights.bin"
    binary.write_bytes(bytes(range(256)) * 8)
    out = tmp_path / "store"
    err = one_line_error(run_harvest(suite, out, "--text", str(binary)), capsys)
    assert (
        err
        == f"crosslens harvest: error: {binary} looks binary (a NUL byte at offset 0), not text; pass text files (--text)"
    )
    assert not out.exists()


def test_text_files_are_read_only_as_far_as_the_token_table_needs(suite, tmp_path, capsys):
    """A folder's files are read one at a time while they are tokenized: one past what the table
    needs is never opened (a corpus folder may be far larger than memory), and one that is
    needed is checked as it is read. The tokenizer reads a batch of documents ahead, so a.txt
    holds more than one batch."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text((SENTENCE + "\n\n") * 300)  # 300 documents, 4,800 words
    (corpus / "b.txt").write_bytes(bytes(range(256)) * 8)  # binary, sorted after a.txt
    printed = succeeds(run_harvest(suite, tmp_path / "store", "--text", str(corpus)), capsys)
    assert f"activation store: {tmp_path / 'store'} (" in printed
    (corpus / "a.txt").write_text(SENTENCE)  # now too short: b.txt is needed, and refused
    err = one_line_error(run_harvest(suite, tmp_path / "again", "--text", str(corpus)), capsys)
    assert (
        err
        == f"crosslens harvest: error: {corpus / 'b.txt'} looks binary (a NUL byte at offset 0), not text; pass text files (--text)"
    )
    assert not (tmp_path / "again").exists()


def test_text_files_of_blank_lines_are_refused_naming_the_flag(suite, tmp_path, capsys):
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n\n")
    err = one_line_error(run_harvest(suite, tmp_path / "store", "--text", str(blank)), capsys)
    assert (
        err
        == f"crosslens harvest: error: --text {blank}: the files hold no text (blank lines at most); pass files of text"
    )


def test_a_latin1_file_is_refused_as_utf8_and_accepted_with_its_encoding(suite, tmp_path, capsys):
    text = tmp_path / "latin1.txt"
    # one word in twelve is unknown (café), well under the refused share
    text.write_bytes(((SENTENCE + " café ") * 40).encode("latin-1"))
    offset = text.read_bytes().index(b"\xe9")
    out = tmp_path / "store"
    err = one_line_error(run_harvest(suite, out, "--text", str(text)), capsys)
    assert err == (
        f"crosslens harvest: error: {text} is not valid utf-8 (byte 0xe9 at offset {offset}); "
        "pass --encoding NAME (e.g. --encoding latin-1)"
    )
    assert not out.exists()
    printed = succeeds(run_harvest(suite, out, "--text", str(text), "--encoding", "latin-1"), capsys)
    assert f"activation store: {out} (" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["spec"]["n_seqs"] == 16 and manifest["spec"]["seq_len"] == 16


def test_an_unknown_encoding_names_the_flag(suite, tmp_path, capsys):
    text = tmp_path / "a.txt"
    text.write_text(SENTENCE)
    err = one_line_error(run_harvest(suite, tmp_path / "o", "--text", str(text), "--encoding", "klingon"), capsys)
    assert err == "crosslens harvest: error: --encoding klingon: unknown encoding; use e.g. utf-8, latin-1 or cp1252"


def test_text_of_mostly_unknown_words_is_refused_naming_the_file_and_the_share(suite, tmp_path, capsys):
    known, unknown = SENTENCE.split()[:3], ["zebra", "quantum", "umbrella", "violin", "glacier", "saffron"]
    assert not set(unknown) & set(FAKE_WORDS)
    text = tmp_path / "foreign.txt"
    text.write_text(" ".join((known + unknown) * 50))  # 6 of every 9 words unknown
    out = tmp_path / "store"
    err = one_line_error(run_harvest(suite, out, "--text", str(text)), capsys)
    assert err == (
        f"crosslens harvest: error: {text}: 67% of its tokens are unknown to the suite's tokenizer "
        "(at most 25% is accepted); is it in the model's language, and in the --encoding given?"
    )
    assert not out.exists()
    # a file of known words with an unknown one in twelve passes the same check
    ok = tmp_path / "ok.txt"
    ok.write_text((SENTENCE + " zebra ") * 40)
    assert succeeds(run_harvest(suite, tmp_path / "ok", "--text", str(ok)), capsys)


# ----------------------------------------------------------------------------- sizes
@pytest.mark.parametrize("command", ["harvest", "train --stream"])
def test_a_token_budget_beyond_memory_is_refused_at_once_with_its_numbers(
    suite, tmp_path, capsys, monkeypatch, command
):
    import crosslens.activations.tokens as tokens_module

    def must_not_build(*args, **kwargs):
        raise AssertionError("the token table was built: the budget must be refused from the sizes alone")

    monkeypatch.setattr(tokens_module, "token_table", must_not_build)
    out = tmp_path / "store"
    argv = [
        "crosslens",
        *command.split(),
        "--suite",
        str(suite),
        "--hook",
        HOOK,
        "--out",
        str(out),
        "--device",
        "cpu",
        "--n-tokens",
        "1e12",
    ]
    err = one_line_error(argv, capsys)
    n_tokens = (10**12 // 64 + 16_384 // 64) * 64  # rows of the default --seq-len 64, held-out rows included
    need = format_bytes(n_tokens * budget_module.TOKEN_TABLE_BYTES_PER_TOKEN)
    match = re.fullmatch(
        rf"crosslens {command.split()[0]}: error: --n-tokens: a table of {n_tokens:,} tokens needs about {re.escape(need)} of "
        r"memory while it is built, and ([\d.]+ \w+) is available; lower --n-tokens \(\+ --heldout-tokens\) to "
        r"at most about ([\d,]+)",
        err,
    )
    assert match, err
    assert 0 < int(match[2].replace(",", "")) < n_tokens
    assert not out.exists()


def test_a_store_beyond_the_free_disk_is_refused_with_its_numbers(suite, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(budget_module, "free_disk", lambda folder: 100_000)
    out = tmp_path / "store"
    err = one_line_error(run_harvest(suite, out, "--n-tokens", "4096"), capsys)
    # 4096 tokens x 3 snapshots x d_model 32 x float32, plus 32 B per token of the token file
    store = 4096 * (3 * 32 * 4 + 32)
    assert err == (
        f"crosslens harvest: error: --out {out}: the store needs about {format_bytes(store)} (4,096 tokens "
        f"x 3 snapshots x 32 values x 4 B) and its disk has {format_bytes(100_000)} free; free space, lower "
        "--n-tokens or the number of snapshots (`--n-snapshots`), pass --store-dtype bfloat16, or harvest into "
        "another --out"
    )
    assert not out.exists()


def test_seq_len_beyond_the_context_is_refused_before_writing_and_the_retry_works(suite, tmp_path, capsys):
    out = tmp_path / "store"
    err = one_line_error(run_harvest(suite, out, "--seq-len", "128"), capsys)
    assert err == (
        "crosslens harvest: error: --seq-len 128 is longer than the model's context of 64 tokens "
        "(its config.json); pass --seq-len 64 or less"
    )
    assert not out.exists()
    assert f"activation store: {out} (" in succeeds(run_harvest(suite, out, "--seq-len", "64"), capsys)


def test_two_token_sources_are_refused_not_one_ignored(suite, tmp_path, capsys):
    text = tmp_path / "words.txt"
    text.write_text(SENTENCE)
    err = one_line_error(
        run_harvest(suite, tmp_path / "store", "--text", str(text), "--dataset", "wikitext:text"), capsys
    )
    assert err == "crosslens harvest: error: --text and --dataset name two token sources; pass one of them"
    assert not (tmp_path / "store").exists()


def test_an_out_that_is_a_file_is_refused_naming_the_flag(suite, store, tmp_path, capsys):
    taken = tmp_path / "notes.txt"
    taken.write_text("mine")
    err = one_line_error(run_harvest(suite, taken), capsys)
    assert (
        err
        == f"crosslens harvest: error: --out {taken} is a file, not a folder; pass a folder path for the activation store"
    )
    for mode in (["--store", str(store)], ["--stream", "--suite", str(suite), "--hook", HOOK]):
        err = one_line_error(["crosslens", "train", *mode, "--out", str(taken), "--device", "cpu"], capsys)
        assert err == f"crosslens train: error: --out {taken} is a file, not a folder; pass a folder path for the run"
    assert taken.read_text() == "mine"


def test_train_stream_refuses_seq_len_beyond_the_context_before_loading_a_model(suite, tmp_path, capsys):
    out = tmp_path / "run"
    argv = [
        "crosslens",
        "train",
        "--stream",
        "--suite",
        str(suite),
        "--hook",
        HOOK,
        "--out",
        str(out),
        "--device",
        "cpu",
        "--n-tokens",
        "256",
        "--seq-len",
        "128",
        "--heldout-tokens",
        "0",
        "--n-steps",
        "1",
    ]
    err = one_line_error(argv, capsys)
    assert err == (
        "crosslens train: error: --seq-len 128 is longer than the model's context of 64 tokens "
        "(its config.json); pass --seq-len 64 or less"
    )
    assert "resident snapshot models" not in capsys.readouterr().out
    assert not out.exists()


def test_a_library_harvest_failing_on_too_long_rows_leaves_nothing_that_blocks_the_retry(suite, tmp_path):
    out = tmp_path / "store"
    with pytest.raises(ValueError, match=r"rows of 128 tokens are longer than snapshot 'step0''s context of 64"):
        harvest(suite, out, tokens=token_table(n_seqs=4, seq_len=128))
    assert (out / "manifest.json").is_file()  # what it wrote before loading the first snapshot
    store = harvest(suite, out)  # other inputs: the shard-less leftover is replaced, not refused
    assert store.n_snapshots == 3 and store.manifest["spec"]["seq_len"] == 16


def test_a_store_with_shards_for_other_inputs_is_still_refused_naming_the_flag(suite, store, tmp_path, capsys):
    import shutil

    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    with pytest.raises(ValueError, match=r"differs in: .*`crosslens harvest --overwrite`"):
        harvest(suite, copy, tokens=token_table(n_seqs=10))


# ----------------------------------------------------------------------------- full disk
def test_a_disk_filling_during_harvest_is_one_line_naming_the_folder(suite, tmp_path, capsys, monkeypatch):
    real, calls = harvest_module.write_npy_atomic, {"n": 0}

    def fills_up(path, array):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, array)

    monkeypatch.setattr(harvest_module, "write_npy_atomic", fills_up)
    out = tmp_path / "store"
    err = one_line_error(run_harvest(suite, out, "--n-tokens", "512"), capsys)
    store = 512 * (3 * 32 * 4 + 32)
    assert re.fullmatch(
        rf"crosslens harvest: error: no space left on the disk of {re.escape(str(out))} while writing the activation "
        rf"store \(needs about {re.escape(format_bytes(store))}; [\d.]+ \w+ free\); free space there, or harvest into "
        r"another out_dir \(`--out`\)",
        err,
    ), err
    monkeypatch.setattr(harvest_module, "write_npy_atomic", real)
    assert f"activation store: {out} (" in succeeds(run_harvest(suite, out, "--n-tokens", "512"), capsys)  # resumes


def test_an_unwritable_store_folder_is_one_line(suite, tmp_path, monkeypatch):
    def refused(path, array):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(harvest_module, "write_npy_atomic", refused)
    with pytest.raises(
        StorageError,
        match=rf"cannot write the activation store in {re.escape(str(tmp_path / 's'))}: "
        r"permission denied \(.*snap000_shard0000.npy\); make the folder writable",
    ):
        harvest(suite, tmp_path / "s")


def test_a_real_full_disk_during_harvest_is_one_error_naming_the_folder(suite, tmp_path):
    mount = tmp_path / "small_disk"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a 1 MiB tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        with pytest.raises(StorageError) as info:  # 400 x 16 tokens x 3 snapshots x 32 x 4 B: 2.4 MB
            harvest(suite, mount / "store", tokens=token_table(n_seqs=400))
        assert str(info.value).startswith(
            f"no space left on the disk of {mount / 'store'} while writing the activation store ("
        )
        assert info.value.folder == str(mount / "store")
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.parametrize(
    "failure",
    [
        RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0"),
        OSError(errno.ENOSPC, "No space left on device"),
    ],
    ids=["torch zip writer", "ENOSPC"],
)
def test_a_disk_filling_at_a_checkpoint_is_one_line_naming_the_folder(failure, store, tmp_path, monkeypatch):
    def full(obj, path, *args, **kwargs):
        raise failure

    monkeypatch.setattr(torch, "save", full)
    out = tmp_path / "run"
    with pytest.raises(StorageError) as info:
        train(store, out, n_steps=10)
    message = str(info.value)
    assert "\n" not in message
    assert re.fullmatch(
        rf"no space left on the disk of {re.escape(str(out))}\S* while writing checkpoint \S+ \(needs about "
        r"[\d.]+ \w+; [\d.]+ \w+ free\); free space there, or train into another folder \(`--out`\)",
        message,
    ), message


def test_an_unrelated_runtime_error_at_a_checkpoint_is_not_called_a_full_disk(store, tmp_path, monkeypatch):
    def broken(obj, path, *args, **kwargs):
        raise RuntimeError("something else went wrong")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(RuntimeError, match="something else went wrong") as info:
        train(store, tmp_path / "run", n_steps=10)
    assert not isinstance(info.value, StorageError)


# ----------------------------------------------------------------------------- flags in messages
def test_a_count_in_scientific_notation_is_a_whole_number_flag(capsys):
    args = build_parser().parse_args(["harvest", "--hook", HOOK, "--out", "o", "--n-tokens", "2.5e5"])
    assert args.budget__n_tokens == 250_000 and isinstance(args.budget__n_tokens, int)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["harvest", "--hook", HOOK, "--out", "o", "--n-tokens", "2.5"])
    assert "'2.5' is not an integer" in capsys.readouterr().err


def test_a_non_store_folder_names_the_overwrite_flag(suite, tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    err = one_line_error(run_harvest(suite, out), capsys)
    assert err.endswith("choose an empty out_dir or pass overwrite=True (`crosslens harvest --overwrite`).")


def test_a_pairs_file_error_names_the_skip_invalid_flag_which_skips(tmp_path):
    from crosslens.cli.attribute import _tasks_from_args

    pairs = tmp_path / "pairs.jsonl"
    good = {"sentence_good": "The dog runs.", "sentence_bad": "The dog run."}
    empty = {"sentence_good": "", "sentence_bad": "The dog run."}
    pairs.write_text("".join(json.dumps(line) + "\n" for line in (good, empty, good)))
    argv = ["attribute", "--crosscoder", "run", "--task", str(pairs)]
    with pytest.raises(
        CLIError,
        match=r"line 2: 'sentence_good' is '', not a sentence; fix the line \(pass on_invalid='skip' \(`crosslens attribute "
        r"--skip-invalid`\) to drop such lines\)",
    ):
        _tasks_from_args(build_parser().parse_args(argv))
    (task,) = _tasks_from_args(build_parser().parse_args([*argv, "--skip-invalid"]))
    assert len(task.pairs) == 2


def test_a_batch_larger_than_the_store_names_the_batch_size_and_token_flags(store):
    from crosslens.activations import ActivationProvider, ActivationStore

    opened = ActivationStore.open(store)
    flags = r"`crosslens train --batch-size`.*`--n-tokens` of `crosslens harvest` or of `crosslens train --stream`"
    with pytest.raises(ValueError, match=rf"fewer than one batch of 100000.*{flags}"):
        iter(ActivationProvider(opened, HOOK, 100_000, drop_last=True))


def test_a_file_of_records_is_read_by_its_text_column_and_refused_as_text(tmp_path, capsys):
    """A .jsonl file read as plain text would tokenize its markup ({"text": ...) without a word:
    --text refuses it with the --dataset that reads it, and --dataset reads its text column."""
    from crosslens.activations import TokenSource
    from crosslens.activations.tokens import tokenize_texts, tokens_from_dataset
    from crosslens.core.errors import CrosslensError

    words = FAKE_WORDS[:6]
    texts = [" ".join(words[i % 6 : i % 6 + 3]) for i in range(120)]
    records = tmp_path / "corpus.jsonl"
    records.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    with pytest.raises(
        CrosslensError,
        match=rf"--text {records}: a \.jsonl file holds records, not text; pass --dataset "
        rf"{records}:COLUMN, its text column \(e\.g\. --dataset {records}:text\)",
    ):
        TokenSource(text=[str(records)]).resolve()
    assert TokenSource(dataset=str(records)).resolve() == ("dataset", str(records))
    tokenizer = make_word_tokenizer()
    got = tokens_from_dataset(tokenizer, str(records), 8, 10)
    assert torch.equal(got, tokenize_texts(tokenizer, texts, 8, n_seqs=10))


@pytest.mark.parametrize(
    "content, column, says",
    [
        (
            "",
            "text",
            r"the file does not read as json records \(StopIteration\); check the file \(\.jsonl: one JSON object per line\)",
        ),
        (
            '{"text": "a b c"}\nnot json\n',
            "text",
            r"the file does not read as json records \(JSON parse error: .*\); check the file",
        ),
        (
            '{"text": "a b c", "id": 3}\n',
            "id",
            r"row 0 holds int \('3'\), not text, in column 'id'; name a column of text",
        ),
        ('{"text": "a b c"}\n{"text": null}\n', "text", r"row 1 holds NoneType \('None'\), not text, in column 'text'"),
    ],
    ids=["empty", "not-json", "numbers", "null"],
)
def test_a_file_of_records_that_does_not_read_as_text_is_named_with_the_flag(tmp_path, content, column, says):
    from crosslens.activations.tokens import tokens_from_dataset
    from crosslens.core.errors import CrosslensError

    records = tmp_path / "corpus.jsonl"
    records.write_text(content)
    flag = f"--dataset {records}" + ("" if column == "text" else f":{column}")
    with pytest.raises(CrosslensError, match=f"^{re.escape(flag)}: {says}"):
        tokens_from_dataset(make_word_tokenizer(), str(records), 8, 10, column=column)


def test_every_torchrun_worker_on_a_machine_builds_its_own_token_table(monkeypatch):
    n_tokens = 1_000_000
    one = n_tokens * budget_module.TOKEN_TABLE_BYTES_PER_TOKEN
    monkeypatch.setattr(budget_module, "available_memory", lambda device: 2 * one)
    budget_module.check_token_table_fits(n_tokens)  # one worker: it fits
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    with pytest.raises(
        Exception,
        match=r"a table of 1,000,000 tokens, one for each of the 8 workers on this machine, "
        r"needs about .* lower n_tokens \(`--n-tokens`\) \(\+ heldout_tokens \(`--heldout-tokens`\)\) to at most "
        r"about 250,000",
    ):
        budget_module.check_token_table_fits(n_tokens)
