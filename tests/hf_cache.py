"""Offline stand-ins for Hugging Face hub repos, for tests.

`write_fake_hub_repo` lays tiny models out exactly as `huggingface_hub` caches real
downloads (``hub/models--ORG--NAME/refs/<revision>`` holds a commit hash,
``snapshots/<hash>/`` holds the files), so with ``HF_HUB_OFFLINE=1`` the real loading
code (``AutoModelForCausalLM.from_pretrained("EleutherAI/pythia-14m", revision="step1000")``,
TransformerLens's checkpoint loader, ...) resolves them as if they had been downloaded.

`offline_hf_home_at` points the running process at such a cache. huggingface_hub copies its
environment into module constants at import time, so the test session fixes the cache's path
once, to a link (``conftest.py``), and a test re-points the link.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    BloomConfig,
    BloomForCausalLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    Olmo2Config,
    Olmo2ForCausalLM,
    Olmo3Config,
    Olmo3ForCausalLM,
    OlmoConfig,
    OlmoForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

FAKE_WORDS = (
    "the a cat cats dog dogs sees see runs run near park tree old young big small "
    "is are was were and but with on in under over red blue green bird birds man men "
    "woman women child children house houses eats eat walks walk quickly slowly here there"
).split()
SPECIAL_TOKENS = ("<|endoftext|>", "<unk>", "<pad>")
FAKE_VOCAB_SIZE = 64  # model vocab; the tokenizer uses the first len(SPECIAL_TOKENS + FAKE_WORDS)


def make_word_tokenizer() -> PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer over `FAKE_WORDS` (ids 0-2 are special tokens)."""
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + tuple(FAKE_WORDS))}
    assert len(vocab) <= FAKE_VOCAB_SIZE
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<unk>",
        pad_token="<pad>",
    )


_SMALL = dict(
    vocab_size=FAKE_VOCAB_SIZE,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
)
"""The shape every tiny model but BLOOM shares (BLOOM names its fields differently)."""


def _tiny(model_cls, config_cls, seed: int, settings: dict, overrides: dict):
    """``model_cls`` from ``config_cls(**settings, **overrides)``, its weights drawn after
    ``torch.manual_seed(seed)``, in eval mode."""
    torch.manual_seed(seed)
    config = config_cls(**{**settings, **overrides})
    config.architectures = [model_cls.__name__]
    return model_cls(config).eval()


def tiny_neox(seed: int, **overrides) -> GPTNeoXForCausalLM:
    """A randomly initialised 2-layer GPT-NeoX (Pythia's architecture), d_model 32."""
    settings = dict(_SMALL, rotary_pct=0.25, bos_token_id=0, eos_token_id=0, tie_word_embeddings=False)
    return _tiny(GPTNeoXForCausalLM, GPTNeoXConfig, seed, settings, overrides)


_OLMO_TOKENS = dict(pad_token_id=2, bos_token_id=None, eos_token_id=0)


def tiny_olmo(seed: int, **overrides) -> OlmoForCausalLM:
    """A randomly initialised 2-layer OLMo (v1, as in ``allenai/OLMo-1B-hf``), d_model 32."""
    settings = dict(_SMALL, **_OLMO_TOKENS, tie_word_embeddings=True)
    return _tiny(OlmoForCausalLM, OlmoConfig, seed, settings, overrides)


def tiny_olmo2(seed: int, **overrides) -> Olmo2ForCausalLM:
    """A randomly initialised 2-layer OLMo-2 (as in ``allenai/OLMo-2-0425-1B``), d_model 32.

    Norm gains and the QK-norm weights are randomised too (they start at 1), so a converter
    that dropped or misplaced one would change the log-probs."""
    settings = dict(_SMALL, **_OLMO_TOKENS, tie_word_embeddings=False)
    return _randomise_norms(_tiny(Olmo2ForCausalLM, Olmo2Config, seed, settings, overrides))


def tiny_olmo3(seed: int, **overrides) -> Olmo3ForCausalLM:
    """A randomly initialised 2-layer OLMo-3 (as in ``allenai/Olmo-3-1025-7B``), d_model 32:
    grouped-query attention (2 key/value heads for 4), one sliding-window layer (window 4)
    and one full-attention layer, random norm gains."""
    settings = dict(
        _SMALL,
        **_OLMO_TOKENS,
        num_key_value_heads=2,
        sliding_window=4,
        layer_types=["sliding_attention", "full_attention"],
        tie_word_embeddings=False,
    )
    return _randomise_norms(_tiny(Olmo3ForCausalLM, Olmo3Config, seed, settings, overrides))


def _randomise_norms(model: PreTrainedModel) -> PreTrainedModel:
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.uniform_(0.5, 1.5)
    return model


def tiny_gemma2(seed: int, **overrides) -> Gemma2ForCausalLM:
    """A randomly initialised 2-layer Gemma-2 (as in ``google/gemma-2-2b``), d_model 32: grouped-query
    attention, a sliding-window layer then a global one, soft caps, norms before and after each
    sublayer, random norm gains."""
    settings = dict(
        _SMALL,
        num_key_value_heads=2,
        head_dim=8,
        sliding_window=4,
        query_pre_attn_scalar=8,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=2,
    )
    return _randomise_norms(_tiny(Gemma2ForCausalLM, Gemma2Config, seed, settings, overrides))


def tiny_bloom(seed: int, **overrides) -> BloomForCausalLM:
    """A randomly initialised 2-layer BLOOM, d_model 32."""
    settings = dict(
        vocab_size=FAKE_VOCAB_SIZE, hidden_size=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0, pad_token_id=2
    )
    return _tiny(BloomForCausalLM, BloomConfig, seed, settings, overrides)


def repo_folder(hf_home: str | os.PathLike, repo_id: str) -> Path:
    """Where huggingface_hub caches `repo_id` under `hf_home`."""
    return Path(hf_home) / "hub" / ("models--" + repo_id.replace("/", "--"))


def write_fake_hub_repo(
    hf_home: str | os.PathLike,
    repo_id: str,
    revisions: Mapping[str, PreTrainedModel],
    tokenizer: PreTrainedTokenizerBase | None,
    *,
    main: str | None = None,
    tokenizer_files: str = "all",
) -> Path:
    """Write `revisions` (revision name -> model) into the hub cache under `hf_home`.

    Each revision gets its own commit hash and snapshot folder holding the model
    (``config.json``, ``model.safetensors``) and the tokenizer files. `main`, when given,
    names the revision that the ``main`` branch points at (as the hub's ``main`` holds
    Pythia's final step). `tokenizer_files`: ``"all"``; ``"config-only"`` keeps
    ``tokenizer_config.json`` but drops ``tokenizer.json`` (a fast tokenizer that cannot
    be built, as in BLOOM's intermediate repos); ``"none"`` writes no tokenizer at all.
    Returns the repo's cache folder.
    """
    if tokenizer_files not in ("all", "config-only", "none"):
        raise ValueError(f"tokenizer_files must be 'all', 'config-only' or 'none', got {tokenizer_files!r}")
    folder = repo_folder(hf_home, repo_id)
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    commits: dict[str, str] = {}
    for revision, model in revisions.items():
        commit = hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()
        commits[revision] = commit
        snapshot = folder / "snapshots" / commit
        model.save_pretrained(snapshot)
        if tokenizer is not None and tokenizer_files != "none":
            tokenizer.save_pretrained(snapshot)
            if tokenizer_files == "config-only":
                (snapshot / "tokenizer.json").unlink()
        (folder / "refs" / revision).write_text(commit)
    if main is not None:
        (folder / "refs" / "main").write_text(commits[main])
    return folder


@contextmanager
def offline_hf_home_at(hf_home: str | os.PathLike) -> Iterator[Path]:
    """Serve `hf_home`'s hub cache (``hf_home/hub``) as this process's Hugging Face cache, offline,
    inside the block. huggingface_hub reads the cache's path once, at import; the test session
    sets that path (``HF_HUB_CACHE``, in ``conftest.py``) to a link, which this points at
    `hf_home`, and back at an empty cache after the block: no module of huggingface_hub is
    edited."""
    hf_home = Path(hf_home)
    (hf_home / "hub").mkdir(parents=True, exist_ok=True)
    _point_hub_cache(hf_home / "hub")
    try:
        yield hf_home
    finally:
        _point_hub_cache(Path(os.environ["CROSSLENS_TEST_EMPTY_HUB"]))


def _point_hub_cache(target: Path) -> None:
    from huggingface_hub import constants

    link = Path(os.environ["HF_HUB_CACHE"])
    if not link.is_symlink() or Path(constants.HF_HUB_CACHE) != link:
        raise RuntimeError(
            f"huggingface_hub's cache is {constants.HF_HUB_CACHE}, not the test session's link {link}: "
            "tests/conftest.py sets HF_HUB_CACHE before anything imports huggingface_hub"
        )
    staged = link.with_name(link.name + ".next")
    staged.unlink(missing_ok=True)
    staged.symlink_to(target.resolve(), target_is_directory=True)
    os.replace(staged, link)  # one rename: the link always names a cache


def write_local_suite(
    root: str | os.PathLike,
    snapshots: Mapping[str, PreTrainedModel],
    tokenizer: PreTrainedTokenizerBase,
    *,
    suite_json: dict | None = None,
) -> Path:
    """Write one Hugging Face checkpoint folder per snapshot (``<root>/<name>/``), plus
    ``suite.json`` when given. Returns `root`."""
    import json

    root = Path(root)
    for name, model in snapshots.items():
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    if suite_json is not None:
        (root / "suite.json").write_text(json.dumps(suite_json, indent=2))
    return root
