"""The snapshot models the causal tools run, and a task made ready for them.

A crosscoder's snapshots are models: a suite loaded one at a time, or resident
HookedTransformers in snapshot order (:data:`SnapshotModels`). Here are what the causal tools
(:mod:`~crosslens.causal.attribution`, :mod:`~crosslens.causal.ablation`,
:mod:`~crosslens.causal.spliced_loss_eval`, the causal stage and its claims) ask of them: each model
in turn, checked to be the crosscoder's snapshot (:func:`iter_snapshot_models`); the activation
at a hook (:func:`activations_at`, :func:`collect_activations` for every snapshot); the rest of
the forward pass from that hook to logits (:func:`run_from_hook`); and a task tokenized for the
models' tokenizer and context (:func:`tokenize_task`), with every snapshot's activations on it
(:func:`collect_task_activations`). Splicing the crosscoder in is :mod:`~crosslens.causal.splicing`'s.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Union

import torch
from jaxtyping import Float, Int
from transformer_lens import HookedTransformer

from crosslens.activations.store import snapshot_label
from crosslens.core.errors import CrosslensError, PartnerMismatchError
from crosslens.core.hooks import block_index
from crosslens.core.metadata import metadata_value
from crosslens.core.progress import progress_bar
from crosslens.tasks.base import TaskDataset, TokenizedTask, resolve_tokenizer

if TYPE_CHECKING:
    from crosslens.checkpoints.suite import CheckpointSuite
    from crosslens.crosscoders.protocol import Crosscoder

SnapshotModels = Union["CheckpointSuite", Sequence[HookedTransformer]]
"""The snapshots' models: a suite (each loaded when its turn comes) or resident models, in snapshot order."""

_RESID_HOOK = re.compile(r"^blocks\.(\d+)\.hook_resid_(pre|post)$")


def check_hook(model: HookedTransformer, hook: str) -> None:
    if hook not in model.hook_dict:
        near = [name for name in model.hook_dict if name.split(".")[-1] == hook.split(".")[-1]][:4]
        raise ValueError(f"the model has no hook {hook!r}; hooks with that ending: {near or 'none'}")


def final_residual_from_hook(
    model: HookedTransformer,
    hook: str,
    acts: Float[torch.Tensor, "batch seq d_in"],
    tokens: Int[torch.Tensor, "batch seq"],
    attention_mask: torch.Tensor | None = None,
) -> Float[torch.Tensor, "batch seq d_model"]:
    """The final residual stream (before ``ln_final``) with the activation at ``hook`` set to ``acts``.

    Residual-stream hooks start the forward pass at the block after the hook, so the
    layers before it are not recomputed; any other hook replaces the activation
    inside a full forward pass.
    """
    n_layers = model.cfg.n_layers
    resid = _RESID_HOOK.match(hook)
    if resid is not None:
        layer = int(resid.group(1)) + (resid.group(2) == "post")
        if layer == n_layers:
            return acts
        return model(acts, start_at_layer=layer, stop_at_layer=n_layers, attention_mask=attention_mask)

    def replace(activation: torch.Tensor, hook: Any) -> torch.Tensor:
        return acts

    with model.hooks(fwd_hooks=[(hook, replace)]):
        return model(tokens, stop_at_layer=n_layers, attention_mask=attention_mask)


def unembed(model: HookedTransformer, resid: Float[torch.Tensor, "batch seq d_model"]) -> torch.Tensor:
    """Logits from a final residual stream: ``ln_final``, unembedding, soft-cap (as the model does)."""
    if model.cfg.normalization_type is not None:
        resid = model.ln_final(resid)
    logits = model.unembed(resid)
    cap = getattr(model.cfg, "output_logits_soft_cap", -1.0)
    if cap is not None and cap > 0:
        logits = cap * torch.tanh(logits / cap)
    return logits


def run_from_hook(
    model: HookedTransformer,
    hook: str,
    acts: Float[torch.Tensor, "batch seq d_in"],
    tokens: Int[torch.Tensor, "batch seq"],
    attention_mask: torch.Tensor | None = None,
    *,
    positions: Int[torch.Tensor, " batch"] | None = None,
) -> Float[torch.Tensor, "batch seq d_vocab"] | Float[torch.Tensor, "batch d_vocab"]:
    """Logits of the model with the activation at ``hook`` set to ``acts``: :func:`unembed` of
    :func:`final_residual_from_hook`; with ``positions`` (one per row) only there, ``[batch,
    d_vocab]``, the unembedding run on those positions alone."""
    resid = final_residual_from_hook(model, hook, acts, tokens, attention_mask)
    if positions is None:
        return unembed(model, resid)
    rows = torch.arange(resid.shape[0], device=resid.device)
    return unembed(model, resid[rows, positions.to(resid.device)][:, None, :])[:, 0]


@torch.no_grad()
def activations_at(
    model: HookedTransformer,
    hook: str,
    tokens: Int[torch.Tensor, "n seq"],
    attention_mask: torch.Tensor | None = None,
    batch_size: int = 64,
) -> Float[torch.Tensor, "n seq d_in"]:
    """The activation at ``hook`` for every token, stopping the forward pass right after it."""
    check_hook(model, hook)
    layer = block_index(hook)
    out = []
    for start in range(0, tokens.shape[0], batch_size):
        rows = slice(start, start + batch_size)
        _, cache = model.run_with_cache(
            tokens[rows],
            names_filter=[hook],
            stop_at_layer=None if layer is None else layer + 1,
            attention_mask=None if attention_mask is None else attention_mask[rows],
        )
        out.append(cache[hook].detach().cpu())
    return torch.cat(out, dim=0)


def check_snapshot_model(crosscoder: Any, snapshot: int, model: Any) -> None:
    """Refuse ``model`` as the crosscoder's snapshot ``snapshot`` when both say which checkpoint
    they are and the two differ: the model's ``crosslens_snapshot`` (as a suite loads it) against
    the crosscoder's record of its snapshots, by revision and step. Neither the model id (a local
    suite's is its folder's name, which a copy changes) nor the weights' hash (taken in the dtype
    the weights were loaded in) is compared. A model built by hand, or a crosscoder without the
    record, is the caller's to pair."""
    check_snapshot_info(crosscoder, snapshot, getattr(model, "crosslens_snapshot", None))


def check_snapshot_info(crosscoder: Any, snapshot: int, info: Any) -> None:
    """:func:`check_snapshot_model` on what a model says it is: its ``crosslens_snapshot``, or a
    suite's :class:`~crosslens.checkpoints.snapshot.SnapshotRef` before it loads (None passes)."""
    recorded = (metadata_value(crosscoder, "suite") or {}).get("snapshots") or []
    if info is None or not 0 <= snapshot < len(recorded) or not isinstance(recorded[snapshot], Mapping):
        return
    want, have = recorded[snapshot], info.to_dict()
    if snapshot_label(want) != snapshot_label(have) or want.get("step") != have.get("step"):
        raise PartnerMismatchError(
            f"the model given as snapshot {snapshot} is {snapshot_label(have)}, but the crosscoder's snapshot {snapshot} "
            f"is {snapshot_label(want)}; pass that snapshot's model (the crosscoder's snapshots in order: a suite "
            "selected at its steps)"
        )


def iter_snapshot_models(
    models: SnapshotModels, indices: Sequence[int] | None = None, crosscoder: Any = None
) -> Iterator[tuple[int, HookedTransformer]]:
    """``(snapshot index, model)`` one at a time from a CheckpointSuite or a sequence of models;
    with ``crosscoder``, each model is checked to be its snapshot (:func:`check_snapshot_model`)."""
    if hasattr(models, "load") and hasattr(models, "snapshots"):  # a CheckpointSuite
        chosen = range(len(models)) if indices is None else indices
        for index in chosen:
            model = models.load(index)
            if crosscoder is not None:
                check_snapshot_model(crosscoder, index, model)
            yield index, model
            del model
        return
    models = list(models)
    for index in range(len(models)) if indices is None else indices:
        if crosscoder is not None:
            check_snapshot_model(crosscoder, index, models[index])
        yield index, models[index]


def collect_activations(
    models: SnapshotModels,
    hook: str,
    tokens: Int[torch.Tensor, "n seq"],
    attention_mask: torch.Tensor | None = None,
    *,
    batch_size: int = 64,
    progress: bool = False,
    crosscoder: Any = None,
) -> Float[torch.Tensor, "n seq n_snapshots d_in"]:
    """Every snapshot's activation at ``hook`` for the same tokens (exact mode's input).

    ``models`` is a CheckpointSuite (loaded one model at a time) or a sequence of
    HookedTransformers in snapshot order; with ``crosscoder``, each is checked to be its snapshot.
    """
    per_snapshot = []
    n = len(models) if hasattr(models, "__len__") else None
    for _, model in progress_bar(
        iter_snapshot_models(models, crosscoder=crosscoder), total=n, desc=f"activations at {hook}", show=progress
    ):
        per_snapshot.append(activations_at(model, hook, tokens, attention_mask, batch_size).cpu())
    return torch.stack(per_snapshot, dim=2)


# ---------------------------------------------------------------------------- a task for the models
def _own_tokenizer(models: SnapshotModels) -> Any:
    """The models' own tokenizer (a suite's, or the first model's), or None where they carry none."""
    if hasattr(models, "tokenizer") and callable(models.tokenizer):
        return models.tokenizer()
    if hasattr(models, "load"):  # a stand-in for a suite that names no tokenizer
        return None
    return getattr(models[0], "tokenizer", None)


def _task_tokenizer(models: SnapshotModels, tokenizer: Any) -> Any:
    """The tokenizer a task is tokenized with for ``models``: their own, or ``tokenizer``, refused
    where its vocabulary is not theirs (the ids would name other tokens in their embedding)."""
    own = _own_tokenizer(models)
    if tokenizer is None:
        if own is None:
            raise ValueError("the models carry no tokenizer; pass tokenizer= (or already tokenized inputs)")
        return resolve_tokenizer(own)
    tokenizer = resolve_tokenizer(tokenizer)
    if own is not None and tokenizer is not own and tokenizer.get_vocab() != resolve_tokenizer(own).get_vocab():
        raise PartnerMismatchError(
            f"tokenizer= has another vocabulary than the models' own tokenizer ({len(tokenizer.get_vocab())} tokens, "
            f"theirs {len(resolve_tokenizer(own).get_vocab())}, or the same tokens at other ids); leave tokenizer= "
            "out to tokenize the task with the models' own"
        )
    return tokenizer


def check_token_ids(task: TokenizedTask, d_vocab: int | None) -> None:
    """Refuse a tokenized task holding an id outside the models' vocabulary (``0..d_vocab-1``)."""
    tensors = [task.clean_tokens, task.corrupted_tokens, task.continuation_tokens]
    ids = torch.cat([t.flatten() for t in tensors if t is not None])
    if d_vocab is None or not ids.numel():
        return
    outside = ids[(ids < 0) | (ids >= d_vocab)]
    if outside.numel():
        raise CrosslensError(
            f"the tokenized task holds token id {int(outside[0])}, but the models read ids 0 to {d_vocab - 1}; "
            "tokenize it with the models' tokenizer (or pass the TaskDataset, which is tokenized with theirs)"
        )


def snapshot_labels(models: SnapshotModels, n: int) -> list[str]:
    """Revision names from a CheckpointSuite, else ``s{index}``."""
    refs = getattr(models, "snapshots", None)
    if refs is not None and len(refs) == n:
        return [str(getattr(ref, "revision", f"s{i}")) for i, ref in enumerate(refs)]
    return [f"s{i}" for i in range(n)]


def chosen_snapshots(snapshots: Sequence[int] | None, n_models: int) -> list[int]:
    """The snapshot indices to work on: ``snapshots``, each checked to be one of the ``n_models``
    snapshots, or all of them."""
    if snapshots is None:
        return list(range(n_models))
    chosen = [int(s) for s in snapshots]
    if not all(0 <= s < n_models for s in chosen) or len(set(chosen)) != len(chosen):
        raise ValueError(
            f"snapshots must be distinct indices of the crosscoder's {n_models} snapshots (0..{n_models - 1}), got {list(snapshots)}"
        )
    return chosen


def check_models_match(models: SnapshotModels, crosscoder: Crosscoder) -> int:
    """The number of snapshot models, refused unless it is the crosscoder's and every model is its
    snapshot (:func:`check_snapshot_info`), all before any model runs: exact mode reads every
    snapshot's activations, whichever snapshots are then attributed. A suite's snapshots are
    checked by their refs, without loading."""
    n_models = len(models)
    if n_models != crosscoder.cfg.n_snapshots:
        raise ValueError(
            f"the crosscoder reads {crosscoder.cfg.n_snapshots} snapshots but {n_models} models were given; "
            "pass the same suite (and snapshot selection) the crosscoder was trained on"
        )
    is_suite = hasattr(models, "load") and hasattr(models, "snapshots")
    for index in range(n_models):
        info = models.snapshots[index] if is_suite else getattr(models[index], "crosslens_snapshot", None)
        check_snapshot_info(crosscoder, index, info)
    return n_models


def task_sha256(task: TokenizedTask) -> str:
    """The identity of a tokenized task: sha256 of its prompts, corrupted prompts, mask and
    continuations, which what was computed on it (its activations, an IE table) records."""
    digest = hashlib.sha256()
    for tensor in (task.clean_tokens, task.corrupted_tokens, task.mask, task.continuation_tokens):
        if tensor is None:
            digest.update(b"none")
            continue
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().to("cpu", torch.int64).contiguous().numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class TaskActivations:
    """Every snapshot's activations at ``hook`` on a tokenized task (:func:`collect_task_activations`),
    with the task they ran on, so that they are used with no other."""

    clean: Float[torch.Tensor, "n seq n_snapshots d_in"]
    corrupted: Float[torch.Tensor, "n seq n_snapshots d_in"] | None
    """None where the task has no corrupted prompts."""
    hook: str
    task_sha256: str
    """:func:`task_sha256` of the task they ran on."""


def collect_task_activations(
    models: SnapshotModels, hook: str, task: TokenizedTask, *, progress: bool = False
) -> TaskActivations:
    """Every snapshot's activations at ``hook`` for the clean and corrupted prompts, loading each model once."""
    tokens = task.clean_tokens
    if task.corrupted_tokens is not None:
        tokens = torch.cat([task.clean_tokens, task.corrupted_tokens])
    mask = task.mask.long().repeat(tokens.shape[0] // len(task), 1)
    acts = collect_activations(models, hook, tokens, mask, progress=progress)
    patch = acts[len(task) :] if tokens.shape[0] > len(task) else None
    return TaskActivations(acts[: len(task)], patch, hook, task_sha256(task))


def check_activations(activations: Any, task: TokenizedTask, hook: str, n_snapshots: int) -> None:
    """Refuse ``activations`` collected on another task, at another hook or of another number of
    snapshots than ``task``, ``hook`` and the crosscoder's."""
    fix = "collect them for this task: collect_task_activations(models, hook, tokenized task)"
    if not isinstance(activations, TaskActivations):
        raise CrosslensError(f"activations= is {type(activations).__name__}; pass what {fix.split(': ')[1]} returns")
    if activations.hook != hook:
        raise CrosslensError(f"the activations are at {activations.hook}, the crosscoder reads {hook}; {fix}")
    if activations.task_sha256 != task_sha256(task):
        raise CrosslensError(f"the activations were collected on other tokens than this task's; {fix}")
    if activations.clean.shape[2] != n_snapshots:
        raise CrosslensError(
            f"the activations are of {activations.clean.shape[2]} snapshots, the crosscoder reads {n_snapshots}; {fix}"
        )


def check_task(task: Any) -> None:
    """Refuse what is not a task: a task's name, or its pairs, where its dataset is read."""
    if not isinstance(task, (TaskDataset, TokenizedTask)):
        hint = f": crosslens.tasks.get_task({task!r})" if isinstance(task, str) else ""
        raise TypeError(f"the task is {type(task).__name__}; pass a TaskDataset or a TokenizedTask{hint}")


def tokenize_task(
    task: TaskDataset | TokenizedTask, models: SnapshotModels, tokenizer: Any = None
) -> tuple[str, TokenizedTask]:
    """``(name, tokens)`` of ``task`` for ``models``: tokenized with their tokenizer (or
    ``tokenizer``, refused where its vocabulary is not theirs) within their context; a
    TokenizedTask as it is, named ``"task"``. Either way every id is checked to be in their
    vocabulary."""
    check_task(task)
    if isinstance(task, TokenizedTask):
        name, tokenized = "task", task
    else:
        tokenizer = _task_tokenizer(models, tokenizer)
        name, tokenized = task.name, task.tokenize(tokenizer, max_tokens=context_length(models))
    check_token_ids(tokenized, _config_value(models, "d_vocab"))
    return name, tokenized


def context_length(models: SnapshotModels) -> int | None:
    """How many tokens the models read at most (``n_ctx``): from a suite's configs, or the
    first model's config; None when neither tells."""
    return _config_value(models, "n_ctx")


def _config_value(models: SnapshotModels, field: str) -> int | None:
    """A size every snapshot shares (``n_ctx``, ``d_vocab``): from a suite's configs, or the first
    model's config; None when neither tells."""
    if callable(getattr(models, "check_architectures", None)):
        value = models.check_architectures().get(field)
    else:
        try:
            value = getattr(getattr(models[0], "cfg", None), field, None)
        except (TypeError, IndexError, KeyError):
            return None
    return int(value) if value is not None else None


@dataclass(frozen=True)
class PreparedTask:
    """A task made ready for a crosscoder's snapshot models, once, for everything that runs it:
    tokenized for their tokenizer and context, with, in exact mode, every snapshot's activations
    on it at the hook."""

    name: str
    tokenized: TokenizedTask
    chosen: list[int]
    """The snapshots to work on, by index."""
    labels: list[str]
    """Every snapshot's label (:func:`snapshot_labels`)."""
    activations: TaskActivations | None
    """Every snapshot's activations at the hook on it (:func:`collect_task_activations`); None
    outside exact mode."""


def prepare_task(
    models: SnapshotModels,
    crosscoder: Crosscoder,
    task: TaskDataset | TokenizedTask,
    *,
    hook: str,
    snapshots: Sequence[int] | None = None,
    tokenizer: Any = None,
    exact: bool = True,
    activations: TaskActivations | None = None,
    progress: bool = False,
) -> PreparedTask:
    """``task`` made ready for ``models`` and ``crosscoder``: the models checked to be its snapshots
    (:func:`check_models_match`) and ``snapshots`` against their count, tokenized
    (:func:`tokenize_task`), and ``activations`` (collected earlier, to reuse them) checked to be
    of that task (:func:`check_activations`), all before any model runs; then in ``exact`` mode,
    unless given, every snapshot's activations on it collected (:func:`with_activations`), each
    model loaded once."""
    n_models = check_models_match(models, crosscoder)
    name, tokenized = tokenize_task(task, models, tokenizer)
    chosen = chosen_snapshots(snapshots, n_models)
    if activations is not None:
        check_activations(activations, tokenized, hook, n_models)
    prepared = PreparedTask(name, tokenized, chosen, snapshot_labels(models, n_models), activations)
    return with_activations(prepared, models, hook, progress=progress) if exact and activations is None else prepared


def with_activations(
    prepared: PreparedTask, models: SnapshotModels, hook: str, *, progress: bool = False
) -> PreparedTask:
    """``prepared`` with every snapshot's activations on its task collected (:func:`collect_task_activations`)."""
    return replace(prepared, activations=collect_task_activations(models, hook, prepared.tokenized, progress=progress))
