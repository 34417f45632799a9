"""How a :class:`~crosslens.checkpoints.suite.CheckpointSuite` finds its tokenizer: the first
snapshot's, else the repo's ``main``, else (a BLOOM intermediate repo, whose checkpoints ship
none usable) the released model's; and the check that every snapshot has that tokenizer."""

from __future__ import annotations

import logging
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from crosslens.checkpoints.hub import cached_revisions, hub_offline, not_in_cache
from crosslens.checkpoints.identity import TOKENIZER_FILES, tokenizer_files
from crosslens.checkpoints.snapshot import SnapshotRef
from crosslens.core.errors import CrosslensError, TokenizerMismatchError
from crosslens.core.model_specs import MODELS_FAMILY, drop_model_fix

logger = logging.getLogger("crosslens.checkpoints.suite")

_TOKENIZER_FALLBACK_LOGGED: set[str] = set()
"""Repos whose tokenizer fallback was already announced in this process (said once)."""
_NO_BOS_ARCHITECTURES = ("OlmoForCausalLM", "OlmoeForCausalLM", "Olmo2ForCausalLM")
"""TransformerLens gives these models their tokenizer as is, not re-loaded to prepend BOS."""
_SETTINGS_FILES = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
"""Tokenizer files that hold no vocabulary: a folder with only these ships no tokenizer (BLOOM's
intermediate checkpoints keep a tokenizer_config.json without the tokenizer.json it needs)."""


class SuiteTokenizer:
    """The tokenizer part of a suite (mixed into :class:`~crosslens.checkpoints.suite.CheckpointSuite`)."""

    family: str
    model_id: str
    snapshots: tuple[SnapshotRef, ...]
    _tokenizer: PreTrainedTokenizerBase | None
    _bos_tokenizer: PreTrainedTokenizerBase | None
    _tokenizer_source: tuple[str, dict[str, str]] | None

    def _hf_source(self, ref: SnapshotRef | None) -> tuple[str, dict[str, str]]:
        raise NotImplementedError

    def snapshot_folder(self, ref: SnapshotRef) -> Path | None:
        raise NotImplementedError

    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The tokenizer shared by all snapshots: the first snapshot's, else the repo's
        ``main``; for a BLOOM intermediate repo whose checkpoints ship no (usable) tokenizer,
        the released model's (``bigscience/bloom-1b1-intermediate`` -> ``bigscience/bloom-1b1``),
        which the checkpoints were trained with. That fallback is logged once and recorded
        in `provenance` (``"tokenizer"``)."""
        if self._tokenizer is None:
            errors = []
            offline_misses = 0
            for source, location in self._tokenizer_sources():
                try:
                    self._tokenizer = AutoTokenizer.from_pretrained(source, **location)
                    self._tokenizer_source = (source, location)
                    break
                except (OSError, ValueError) as error:  # ValueError: tokenizer_config.json without tokenizer.json
                    errors.append(f"{source}@{location.get('revision', 'main')}: {error}")
                    offline_misses += self.family != "local" and hub_offline() and not_in_cache(error)
            else:
                if offline_misses == len(errors):  # one line for what each source's long error says
                    raise CrosslensError(self._offline_tokenizer_message())
                raise CrosslensError(
                    f"found no tokenizer for {self.model_id} ({'; '.join(errors)}); save one next to the "
                    "checkpoint (tokenizer.save_pretrained) or make the repo's files reachable"
                )
            source = self._tokenizer_source[0]
            home = self._hf_source(None)[0] if self.family != "local" else source  # a suite of models: its first
            if source != home and self.model_id not in _TOKENIZER_FALLBACK_LOGGED:
                _TOKENIZER_FALLBACK_LOGGED.add(self.model_id)
                logger.warning(
                    "%s ships no usable tokenizer with its checkpoints; using %s's, as the released model was "
                    "trained with it (recorded in the suite's provenance)",
                    self.model_id,
                    source,
                )
        return self._tokenizer

    def _tokenizer_for_models(self, architecture: str) -> PreTrainedTokenizerBase:
        """`tokenizer()` as TransformerLens sets one on a model: loaded with
        ``add_bos_token=True`` except for OLMo. Loading it here, from the revision the suite's
        tokenizer came from, stops TransformerLens re-fetching it from the repo's ``main``."""
        tokenizer = self.tokenizer()
        if architecture in _NO_BOS_ARCHITECTURES or tokenizer.bos_token is None:
            return tokenizer
        if self._bos_tokenizer is None:
            source, location = self._tokenizer_source
            self._bos_tokenizer = AutoTokenizer.from_pretrained(source, add_bos_token=True, **location)
        return self._bos_tokenizer

    def check_same_tokenizer(self) -> tuple[str, ...]:
        """Check each snapshot's tokenizer has the same vocabulary as `tokenizer()`; raise
        `TokenizerMismatchError` naming the first that differs. Snapshots that ship no
        tokenizer (no vocabulary file: at most a tokenizer_config.json and special tokens) are
        skipped; one whose tokenizer files are there but cannot be read is refused, naming them.
        Returns the revisions compared. For hub suites this fetches each revision's tokenizer files."""
        reference = self.tokenizer().get_vocab()
        first = self.snapshots[0]
        read_first = self._tokenizer_source == self._hf_source(first)  # tokenizer() read the first snapshot's files
        same_files = tokenizer_files(self.snapshot_folder(first)) if read_first else {}
        checked = []
        for ref in self.snapshots:
            if same_files and tokenizer_files(self.snapshot_folder(ref)) == same_files:
                checked.append(ref.revision)  # the reference's very files: its vocabulary, without loading
                continue
            try:
                vocab = self._tokenizer_at(ref).get_vocab()
            except (OSError, ValueError) as error:
                self._check_ships_no_tokenizer(ref, error)
                continue
            if vocab != reference:
                only_here = sorted(set(vocab) - set(reference))[:5]
                only_there = sorted(set(reference) - set(vocab))[:5]
                moved = sum(1 for t in set(vocab) & set(reference) if vocab[t] != reference[t])
                drop = "drop it with suite.select(...)"
                if self.family == MODELS_FAMILY:
                    drop = drop_model_fix(self.model_id, ref.revision, drop)
                raise TokenizerMismatchError(
                    f"snapshot {ref.revision!r} of {self.model_id} has a different tokenizer "
                    f"({len(vocab)} vs {len(reference)} tokens; new {only_here}, missing {only_there}, "
                    f"{moved} with other ids); activations from different tokenizers cannot share "
                    f"token positions, so {drop}",
                    revision=ref.revision,
                    differences={"vocab_size": (len(reference), len(vocab))},
                )
            checked.append(ref.revision)
        return tuple(checked)

    def _check_ships_no_tokenizer(self, ref: SnapshotRef, error: Exception) -> None:
        """Refuse ``ref`` when its folder holds a vocabulary file that did not load (a hub
        snapshot not in the local cache: nothing to look at, so it counts as shipping none)."""
        folder = self.snapshot_folder(ref)
        if folder is None:
            return
        shipped = [name for name in TOKENIZER_FILES if name not in _SETTINGS_FILES and (folder / name).is_file()]
        if shipped:
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
            if self.family == "local":
                fix = "re-save its tokenizer (tokenizer.save_pretrained) or delete those files"
            else:  # the files are the hub cache's: fetched again, not edited
                repo, revision = self.repo_revision(ref)
                fix = f"fetch them again (huggingface-cli download {repo} --revision {revision} --force-download)"
            raise CrosslensError(
                f"snapshot {ref.revision!r} of {self.model_id} has tokenizer files that cannot be read "
                f"({', '.join(shipped)} in {folder}: {reason}); {fix}, or drop the snapshot with suite.select(...)"
            )

    def _tokenizer_sources(self) -> list[tuple[str, dict[str, str]]]:
        sources = [self._hf_source(self.snapshots[0])]
        if self.family != "local":
            sources.append(self._hf_source(None))
        if self.family == "bloom" and self.model_id.endswith("-intermediate"):
            sources.append((self.model_id.removesuffix("-intermediate"), {}))
        return sources

    def _offline_tokenizer_message(self) -> str:
        """Why no tokenizer loads offline: the repo, or its tokenizer files, are not in the local cache."""
        revision = self.snapshots[0].revision
        what = f"{self.model_id}'s tokenizer" if cached_revisions(self.model_id) else self.model_id
        return (
            f"{what} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set, so it cannot be "
            f"downloaded; check the name (--suite), fetch it once with network access (`hf download "
            f"{self.model_id} --revision {revision}`), or unset HF_HUB_OFFLINE"
        )

    def _tokenizer_at(self, ref: SnapshotRef | None) -> PreTrainedTokenizerBase:
        source, location = self._hf_source(ref)
        return AutoTokenizer.from_pretrained(source, **location)
