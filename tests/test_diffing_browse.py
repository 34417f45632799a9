"""Latent scaling's verdict on a two-model crosscoder's one-model-only latents, carried from
``crosslens analyze`` into the feature database and served by ``browse`` (the list's filter and
chips, the feature page's words, in Chromium), on two tiny models that differ by construction: the
fine-tune writes four new directions into its embeddings of four groups of tokens."""

from __future__ import annotations

import json
import sqlite3
import urllib.error
import urllib.parse
import urllib.request

import pytest
import torch
from hf_cache import make_word_tokenizer, offline_hf_home_at, tiny_neox, write_fake_hub_repo
from test_browser import driver, get, open_page, screenshot, serving, wait_for  # noqa: F401  (driver: Chromium, a fixture)

from crosslens.analysis.diffing import DiffingAnalysis
from crosslens.analysis.emergence_check import EmergenceCheckConfig
from crosslens.browser.emergence import DIFFING_VERDICTS as BROWSER_VERDICTS
from crosslens.cli import main
from crosslens.core.paths import FINAL_DIRNAME
from crosslens.crosscoders.saved import load_crosscoder_folder
from crosslens.dashboards.emergence_rows import run_emergence

BASE, CHAT = "crosslens-test/tiny-base", "crosslens-test/tiny-chat"
HOOK = "blocks.0.hook_resid_post"
CPU = ["--device", "cpu"]
ONLY = ("tiny-base-only", "tiny-chat-only")


def diverged_chat(n_groups: int = 4, scale: float = 3.0):
    """The base model with ``n_groups`` random unit directions (times ``scale``) added to its
    embeddings of every ``n_groups``-th token: what the chat model's activations hold and the base's do not."""
    chat = tiny_neox(0)
    weight = chat.gpt_neox.embed_in.weight
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for group in range(n_groups):
            direction = torch.randn(weight.shape[1], generator=generator)
            weight[torch.arange(3 + group, weight.shape[0], n_groups)] += direction / direction.norm() * scale
    return chat


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("diffing-browse")
    with offline_hf_home_at(root / "hf_home") as hf_home:
        tokenizer = make_word_tokenizer()
        write_fake_hub_repo(hf_home, BASE, {"main": tiny_neox(0)}, tokenizer)
        write_fake_hub_repo(hf_home, CHAT, {"main": diverged_chat()}, tokenizer)
        store, run = root / "store", root / "run"
        budget = ["--n-tokens", "2048", "--seq-len", "16"]
        assert main(["harvest", "--models", f"{BASE},{CHAT}", "--hook", HOOK, "--out", str(store), *budget, *CPU]) == 0
        train = ["--arch", "crosscoder", "--d-sae", "48", "--n-steps", "200", "--batch-size", "64"]
        assert main(["train", "--store", str(store), "--out", str(run), *train, "--spliced-seqs", "0", *CPU]) == 0
        assert main(["analyze", "--crosscoder", str(run), *CPU]) == 0
        dashboards = ["--top-k", "4", "--window", "3", "--batch-size", "48", "--n-logits", "3", *CPU]
        assert main(["dashboards", str(run), *dashboards]) == 0
    return run


@pytest.fixture(scope="module")
def server(run):
    with serving(run) as server:
        yield server


def api(server, path: str):
    status, answer = get(server, path)
    assert status == 200, answer
    return answer


def database_verdicts(run) -> dict[int, tuple[str, str, float]]:
    """Each one-model-only latent's class, verdict and latent-scaled presence in the other model."""
    with sqlite3.connect(run / "dashboards.sqlite") as db:
        rows = db.execute(
            "SELECT f.feature, f.class, e.diffing, o.presence FROM features f JOIN emergence e USING (feature) "
            "JOIN emergence_snapshots o ON o.feature = f.feature "
            "AND o.snapshot = CASE f.class WHEN 'tiny-base-only' THEN 1 ELSE 0 END "
            "WHERE e.diffing IS NOT NULL OR f.class IN ('tiny-base-only', 'tiny-chat-only')"
        ).fetchall()
    return {f: (cls, verdict, presence) for f, cls, verdict, presence in rows}


def test_the_browser_knows_the_analysis_verdicts():
    from crosslens.analysis.diffing import DIFFING_VERDICTS

    assert BROWSER_VERDICTS == DIFFING_VERDICTS


def test_the_database_holds_a_verdict_for_every_one_model_latent(run):
    verdicts = database_verdicts(run)
    # the fine-tune's new directions give it latents of its own, which the base does not hold
    assert sum(cls == "tiny-chat-only" for cls, _, _ in verdicts.values()) >= 4
    line = EmergenceCheckConfig().presence_threshold
    for feature, (cls, verdict, presence) in verdicts.items():
        assert cls in ONLY and verdict in BROWSER_VERDICTS, (feature, cls, verdict)
        if verdict == "specific":
            assert presence < line, feature
        elif verdict in ("shrinkage", "decoupling"):
            assert presence >= line, feature
    with sqlite3.connect(run / "dashboards.sqlite") as db:
        assert db.execute("SELECT count(*) FROM emergence").fetchone()[0] == 48
        (meta,) = db.execute("SELECT value FROM meta WHERE key = 'suite'").fetchone()
    assert json.loads(meta)["family"] == "models"
    # the verdicts analyze's record gives the same crosscoder (the database's classes also drop
    # latents its own pass never saw fire)
    result = run_emergence(run)[0]
    crosscoder = load_crosscoder_folder(run / FINAL_DIRNAME, device="cpu")
    analysis = DiffingAnalysis.with_emergence(crosscoder, result)
    assert analysis.latent_scaling is not None
    expected = {
        f: (cls, verdict)
        for f, (cls, verdict) in enumerate(zip(analysis.classes, analysis.latent_scaling.verdicts))
        if verdict is not None
    }
    assert {f: (cls, v) for f, (cls, v, _) in verdicts.items()} == {f: expected[f] for f in verdicts}
    assert len(verdicts) >= len(expected) - 3


def test_the_neuronpedia_export_carries_the_verdicts(run, tmp_path):
    assert main(["export", str(run), "--format", "neuronpedia", "--out", str(tmp_path / "np")]) == 0
    written = json.loads((tmp_path / "np" / "emergence_flags.json").read_text())
    flags = written["features"]
    expected = {str(f): verdict for f, (_, verdict, _) in database_verdicts(run).items()}
    assert {f: entry["diffing"] for f, entry in flags.items() if "diffing" in entry} == expected
    # and nothing that reads the two models as a training order: no emergence at a model, no
    # contested flag, early presence or lineage event
    assert set(written) == {"format", "record", "n_tokens", "diffing", "features"}
    assert written["diffing"] == {v: list(expected.values()).count(v) for v in BROWSER_VERDICTS}
    assert len(flags) == 48 and all(set(entry) <= {"measured", "diffing"} for entry in flags.values())
    with sqlite3.connect(run / "dashboards.sqlite") as db:
        measured = dict(db.execute("SELECT feature, measured FROM emergence").fetchall())
    assert {f: entry["measured"] for f, entry in flags.items()} == {str(f): bool(m) for f, m in measured.items()}


def test_the_api_filters_on_the_verdict(run, server):
    verdicts = database_verdicts(run)
    summary = api(server, "/api/run")["emergence"]
    counts = {v: sum(verdict == v for _, verdict, _ in verdicts.values()) for v in BROWSER_VERDICTS}
    assert summary["diffing"] == counts
    for verdict in ("any", *BROWSER_VERDICTS):
        page = api(server, f"/api/features?diffing={urllib.parse.quote(verdict)}&limit=500")
        expected = sorted(f for f, (_, v, _) in verdicts.items() if verdict in ("any", v))
        assert sorted(r["feature"] for r in page["rows"]) == expected, verdict
        assert all(r["diffing"] == verdicts[r["feature"]][1] for r in page["rows"])
    shared = api(server, "/api/features?class=shared&limit=500")["rows"]
    assert shared and all(r["diffing"] is None for r in shared)
    status, answer = get(server, "/api/features?diffing=sometimes")
    assert (status, answer["error"]) == (
        400,
        "diffing=sometimes: use one of any, specific, shrinkage, decoupling, not measured.",
    )


def test_the_pages_show_the_verdict(run, server, driver):  # noqa: F811
    verdicts = database_verdicts(run)
    own = sorted(f for f, (cls, v, _) in verdicts.items() if cls == "tiny-chat-only" and v == "specific")
    open_page(driver, server, "/?diffing=specific")
    wait_for(lambda: driver.execute_script("return document.querySelectorAll('table.features tbody tr').length") > 0)
    assert driver.execute_script("return document.getElementById('diffing-filters').hidden") is False
    assert driver.execute_script("return document.getElementById('emergence-filters').hidden") is True
    n_tokens = api(server, "/api/run")["emergence"]["n_tokens"]
    assert driver.execute_script("return document.getElementById('diffing-hint').textContent") == (
        f"Latent scaling on {n_tokens:,} tokens: whether tiny-base's activations hold a tiny-chat-only latent "
        "(and the reverse), though its decoder there shrank."
    )
    shown = driver.execute_script(
        "return [...document.querySelectorAll('table.features tbody tr')].map(r => Number(r.dataset.feature))"
    )
    assert sorted(shown) == sorted(f for f, (_, v, _) in verdicts.items() if v == "specific")
    chips = driver.execute_script("return [...document.querySelectorAll('table.features .chip.diffing')].length")
    assert chips == len(shown)
    screenshot(driver, "diffing-list")
    assert driver.execute_script("return document.getElementById('emergence-step').hidden") is True
    boxes = driver.execute_script("return [...document.querySelectorAll('#classes input')].map(b => b.value)")
    assert set(boxes) == {"tiny-base-only", "tiny-chat-only", "shared", "other", "dead"}
    heads = driver.execute_script(
        "return [...document.querySelectorAll('table.features thead th')].map(h => h.textContent)"
    )
    assert "latent scaling" in " ".join(heads) and not any(h.startswith(("emerges", "fades")) for h in heads)

    open_page(driver, server, f"/feature/{own[0]}")
    wait_for(lambda: driver.execute_script("return document.body.dataset.reading") is not None, what="plots")
    title = driver.execute_script("return document.getElementById('emergence-title').textContent")
    chip = driver.execute_script("return document.querySelector('#emergence-chip .chip').textContent")
    note = driver.execute_script("return document.getElementById('emergence-note').textContent")
    assert (title, chip) == ("Which model holds it?", "latent scaling: specific")
    # two models have no training order: no emergence, fade or dip, and the plots' axis is the models
    facts = driver.execute_script("return [...document.querySelectorAll('#facts > div')].map(f => f.textContent)")
    assert facts[0] == "strongest intiny-chat" and not any("emerges" in f or "fades" in f for f in facts)
    titles = driver.execute_script(
        "return ['training-title', 'relatives-title'].map(id => document.getElementById(id).textContent)"
    )
    assert titles == ["Across the models", "Relatives in each model"]
    keys = driver.execute_script("return [...document.querySelectorAll('.events-key')].map(k => k.hidden)")
    assert keys and all(keys)
    header = driver.execute_script("return document.querySelector('header.bar .run').textContent")
    assert header.endswith("48 features \u00d7 2 models")
    screenshot(driver, "diffing-feature")
    assert (
        note == "Only tiny-chat's decoder writes it, and tiny-base's activations do not hold it: it is tiny-chat's own."
    )

    with sqlite3.connect(run / "dashboards.sqlite") as db:
        (shared,) = db.execute("SELECT min(feature) FROM features WHERE class = 'shared'").fetchone()
    open_page(driver, server, f"/feature/{shared}")
    wait_for(lambda: driver.execute_script("return document.body.dataset.reading") is not None, what="plots")
    chip = driver.execute_script("return document.querySelector('#emergence-chip .chip').textContent")
    note = driver.execute_script("return document.getElementById('emergence-note').textContent")
    assert chip == "both models' decoders write it"
    assert note == "Both models' decoders write it: latent scaling judges the one-model-only latents."
