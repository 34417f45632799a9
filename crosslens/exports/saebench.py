"""One snapshot of a crosscoder as an SAEBench custom SAE, and ``crosslens export RUN --format
saebench``, which writes one per snapshot.

SAEBench evaluates any module with SAEBench's custom-SAE interface (sae_bench 0.6.0,
``sae_bench/custom_saes/base_sae.py`` and ``custom_saes/README.md``): ``encode``, ``decode`` and
``forward``; ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]`` with unit-norm rows, ``b_enc``,
``b_dec`` as parameters; ``device`` and ``dtype`` attributes; and a ``cfg`` with the fields of its
``CustomSAEConfig`` (``custom_saes/custom_sae_config.py``), which SAEBench's
``_standardize_sae_cfg`` reads (``model_name``, ``hook_name``, ``hook_layer``, ...).
:class:`SnapshotBenchSAE` is that, over snapshot s's per-snapshot mode: the SAELens SAE
:func:`~crosslens.crosscoders.per_snapshot_sae.snapshot_sae` builds (snapshot s's activation alone,
raw activation scale), with each decoder row ``R_i`` divided by its norm ``m_i`` and ``m_i``
folded into the encoder (``W_enc``, ``b_enc`` and the JumpReLU threshold times ``m_i``). The
reconstruction is the :class:`~crosslens.crosscoders.per_snapshot_sae.SnapshotCodec`'s
``decode(encode_single(x))``; the code is the codec's times ``||W_dec[i, s]||`` on the raw scale.

* ReLU (``standard``) and JumpReLU / BatchTopK (``jumprelu``): ``f = ReLU(h) * (h > threshold)``
  with ``h = (x - b_dec·apply_b_dec_to_input) W_enc + b_enc`` (threshold 0 for ReLU).
* TopK (``topk``): the k features are ranked by ``ReLU(h_i) / scale_i``, the crosscoder's own
  ranking, since a folded norm would reorder them; the code is ``ReLU(h_i)`` on those.
* A feature whose snapshot-s decoder is zero never reaches snapshot s: its threshold is
  infinite (it reads 0), its ``W_dec`` row a unit basis vector (SAEBench checks every row), and
  under TopK it still takes the slot it takes in the crosscoder.

Layout of ``OUT`` (``--format saebench``)::

    crosslens_export.json              the manifest (crosslens.exports.run)
    step1000/                          one folder per snapshot, named by its revision
        sae_weights.safetensors        W_enc, W_dec, b_enc, b_dec, threshold, scale
        cfg.json                       BenchSAEConfig.to_dict(): CustomSAEConfig's fields + crosslens's

``load_bench_sae(OUT / "step1000")`` loads one back, ready for SAEBench's ``run_eval_single_sae``
functions with the snapshot's model (``CheckpointSuite.load``); ``scale`` is ``m_i`` (1 where the
row is zero), which TopK ranks with.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

import crosslens.core.cpu_math  # noqa: F401  (torch's CPU math started on one thread; see that module)
from crosslens.core.metadata import CFG_NAME, WEIGHTS_NAME, metadata_value
from crosslens.core.model_specs import snapshot_model
from crosslens.exports.run import ExportContext, SnapshotRef

SAEBENCH_VERSION = "0.6.0"
"""The sae-bench release whose custom-SAE interface this implements."""


@dataclass
class BenchSAEConfig:
    """SAEBench's ``CustomSAEConfig`` (same field names, order and defaults), then crosslens's own
    fields naming the snapshot."""

    model_name: str
    d_in: int
    d_sae: int
    hook_layer: int
    hook_name: str
    context_size: int | None = None
    hook_head_index: int | None = None
    architecture: str = ""
    apply_b_dec_to_input: bool | None = None
    finetuning_scaling_factor: bool | None = None
    activation_fn_str: str = ""
    prepend_bos: bool = True
    normalize_activations: str = "none"
    dtype: str = ""
    device: str = ""
    dataset_path: str = ""
    dataset_trust_remote_code: bool = True
    seqpos_slice: tuple = (None,)
    training_tokens: int = -100_000
    sae_lens_training_version: str | None = None
    neuronpedia_id: str | None = None
    k: int | None = None
    """TopK: how many features stay on per token (None for the other architectures)."""
    snapshot: str = ""
    """The snapshot's revision (``step1000``)."""
    snapshot_index: int = 0
    """Its index in the crosscoder."""
    step: int | None = None
    """Its training step."""
    crosscoder_architecture: str = ""
    """The crosscoder's architecture (``jumprelu_crosscoder``, ...)."""

    # CustomSAEConfig keeps these two as class attributes, outside its dataclass fields
    activation_fn_kwargs = {}  # noqa: RUF012
    model_from_pretrained_kwargs = {}  # noqa: RUF012

    def to_dict(self) -> dict[str, Any]:
        """Every field, as CustomSAEConfig's ``to_dict`` gives them."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> BenchSAEConfig:
        """The config ``to_dict`` wrote (unknown keys ignored)."""
        known = {f.name for f in fields(cls)}
        kept = {key: value for key, value in values.items() if key in known}
        if isinstance(kept.get("seqpos_slice"), list):
            kept["seqpos_slice"] = tuple(kept["seqpos_slice"])
        return cls(**kept)


def folded_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A SAELens snapshot SAE's weights with unit-norm decoder rows, the norms folded into the
    encoder, the bias and the threshold; rows of norm 0 become basis vectors that never fire."""
    W_dec = state["W_dec"]
    d_sae, d_in = W_dec.shape
    norms = W_dec.norm(dim=1)
    alive = norms > 0
    scale = torch.where(alive, norms, torch.ones_like(norms))
    threshold = state.get("threshold", torch.zeros_like(norms)).to(W_dec.dtype)
    basis = torch.zeros_like(W_dec)
    basis[torch.arange(d_sae), torch.arange(d_sae) % d_in] = 1
    return {
        "W_enc": state["W_enc"] * scale,
        "W_dec": torch.where(alive[:, None], W_dec / scale[:, None], basis),
        "b_enc": state["b_enc"] * scale,
        "b_dec": state["b_dec"].clone(),
        "threshold": torch.where(alive, threshold * scale, torch.full_like(threshold, torch.inf)),
        "scale": scale,
    }


class SnapshotBenchSAE(nn.Module):
    """Snapshot ``snapshot`` of ``crosscoder`` with SAEBench's custom-SAE interface (see the module
    docstring); ``SnapshotBenchSAE.load(folder)`` reads one the saebench export wrote."""

    def __init__(self, crosscoder: Any, snapshot: int, *, device: str | torch.device | None = None):
        from crosslens.crosscoders.per_snapshot_sae import snapshot_sae

        super().__init__()
        sae = snapshot_sae(crosscoder, snapshot)
        with torch.no_grad():
            state = folded_state({name: value.detach() for name, value in sae.state_dict().items()})
        cfg = bench_config(crosscoder, snapshot % int(crosscoder.cfg.n_snapshots), sae)
        self._build(state, cfg)
        if device is not None:
            self.to(device=torch.device(device))

    def _build(self, state: dict[str, torch.Tensor], cfg: BenchSAEConfig) -> None:
        for name in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold"):
            setattr(self, name, nn.Parameter(state[name].contiguous().clone(), requires_grad=False))
        self.register_buffer("scale", state["scale"].contiguous().clone())
        self.cfg = cfg
        self.k = cfg.k
        self.dtype: torch.dtype = self.W_dec.dtype
        self.device: torch.device = self.W_dec.device
        cfg.dtype = str(self.dtype).split(".")[1]
        cfg.device = str(self.device)

    @classmethod
    def load(cls, folder: str | Path, *, device: str | torch.device = "cpu") -> SnapshotBenchSAE:
        """The SAE a saebench export wrote into ``folder`` (``sae_weights.safetensors``, ``cfg.json``)."""
        folder = Path(folder)
        for name in (WEIGHTS_NAME, CFG_NAME):
            if not (folder / name).is_file():
                raise FileNotFoundError(
                    f"{folder} holds no {name}; pass a snapshot folder of `crosslens export RUN --format saebench`"
                )
        cfg = BenchSAEConfig.from_dict(json.loads((folder / CFG_NAME).read_text(encoding="utf-8")))
        sae = cls.__new__(cls)
        nn.Module.__init__(sae)
        sae._build(load_file(str(folder / WEIGHTS_NAME), device=str(device)), cfg)
        return sae

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The code of ``x [..., d_in]``, ``[..., d_sae]``."""
        sae_in = x.to(self.dtype) - self.b_dec if self.cfg.apply_b_dec_to_input else x.to(self.dtype)
        pre = sae_in @ self.W_enc + self.b_enc
        code = pre.relu() * (pre > self.threshold)
        if self.k is None:
            return code
        ranked = torch.topk(pre.relu() / self.scale, k=min(int(self.k), pre.shape[-1]), dim=-1)
        return torch.zeros_like(code).scatter(-1, ranked.indices, code.gather(-1, ranked.indices))

    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        """The reconstruction of a code, ``[..., d_in]``."""
        return feature_acts.to(self.dtype) @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``decode(encode(x))``."""
        return self.decode(self.encode(x))

    def to(self, *args: Any, **kwargs: Any) -> SnapshotBenchSAE:
        """Move or cast, keeping ``device``, ``dtype`` and the cfg's names of them current (as
        SAEBench's ``BaseSAE.to``)."""
        super().to(*args, **kwargs)
        self.device, self.dtype = self.W_dec.device, self.W_dec.dtype
        self.cfg.dtype, self.cfg.device = str(self.dtype).split(".")[1], str(self.device)
        return self

    @torch.no_grad()
    def check_decoder_norms(self) -> bool:
        """Whether every decoder row has norm 1 (SAEBench's tolerance: 1e-5, 1e-2 in half precision)."""
        norms = self.W_dec.norm(dim=1)
        tolerance = 1e-2 if self.dtype in (torch.bfloat16, torch.float16) else 1e-5
        return bool(torch.allclose(norms, torch.ones_like(norms), atol=tolerance))

    def save(self, folder: str | Path) -> None:
        """Write ``sae_weights.safetensors`` and ``cfg.json`` into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        names = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold", "scale")
        tensors = {name: getattr(self, name).detach().cpu().contiguous() for name in names}
        save_file(tensors, str(folder / WEIGHTS_NAME))
        (folder / CFG_NAME).write_text(json.dumps(self.cfg.to_dict(), indent=1) + "\n", encoding="utf-8")


def load_bench_sae(folder: str | Path, *, device: str | torch.device = "cpu") -> SnapshotBenchSAE:
    """:meth:`SnapshotBenchSAE.load`: one snapshot folder of a saebench export."""
    return SnapshotBenchSAE.load(folder, device=device)


def bench_config(crosscoder: Any, snapshot: int, sae: Any) -> BenchSAEConfig:
    """The cfg of snapshot ``snapshot``'s SAE: the model, hook and snapshot it reads."""
    hook = str(metadata_value(crosscoder, "hook_name") or "")
    suite = metadata_value(crosscoder, "suite") or {}
    entries = suite.get("snapshots") or []
    entry = entries[snapshot] if snapshot < len(entries) else {}
    layer = re.search(r"blocks\.(\d+)\.", hook)
    return BenchSAEConfig(
        model_name=str(snapshot_model(suite, snapshot) or metadata_value(crosscoder, "model_name") or ""),
        d_in=int(crosscoder.cfg.d_in),
        d_sae=int(crosscoder.cfg.d_sae),
        hook_layer=int(layer.group(1)) if layer else 0,
        hook_name=hook,
        context_size=metadata_value(crosscoder, "context_size"),
        architecture=sae.cfg.architecture(),
        apply_b_dec_to_input=bool(crosscoder.cfg.apply_b_dec_to_input),
        activation_fn_str="relu",
        prepend_bos=metadata_value(crosscoder, "prepend_bos") is not False,
        k=int(sae.cfg.k) if getattr(sae.cfg, "k", None) is not None else None,
        snapshot=str(entry.get("revision", snapshot)),
        snapshot_index=snapshot,
        step=entry.get("step"),
        crosscoder_architecture=crosscoder.cfg.architecture(),
    )


def write_export(context: ExportContext, out: Path) -> dict[str, Any]:
    """One SAE folder per chosen snapshot; returns the manifest's ``saebench``."""
    folders = []
    for ref in context.snapshots:
        sae = SnapshotBenchSAE(context.crosscoder, ref.index)
        sae.to(device=torch.device("cpu"))
        sae.save(out / folder_name(ref))
        folders.append({"snapshot": ref.label, "folder": folder_name(ref), "architecture": sae.cfg.architecture})
    return {"saebench": {"saebench_version": SAEBENCH_VERSION, "saes": folders}}


def folder_name(ref: SnapshotRef) -> str:
    """A snapshot's folder: its revision."""
    return ref.label
