"""Tiny crosscoders in other projects' formats, file for file as those projects save them (random
weights at small sizes), and each project's forward written out from its published equations.

- Kissane / Nanda (``ckkissane/crosscoder-model-diff-replication``; crosscoder-through-time):
  ``cfg.json`` or ``cc_cfg.json`` + ``cc_weights.pt``.
- dictionary_learning's hub mixin (Minder et al.): ``config.json`` + ``model.safetensors``.
- Llamascopium (OpenMOSS): ``config.json`` + ``sae_weights.safetensors``.

The forwards below follow each project's documented equations, not crosslens's code, so a loader
that changed a sign, a layout or a gate would not match them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def kissane_state(n_models: int = 2, d_in: int = 8, d_hidden: int = 24, seed: int = 0) -> dict[str, torch.Tensor]:
    g = _generator(seed)
    return {
        "W_enc": torch.randn(n_models, d_in, d_hidden, generator=g) * 0.3,
        "W_dec": torch.randn(d_hidden, n_models, d_in, generator=g) * 0.3,
        "b_enc": torch.randn(d_hidden, generator=g) * 0.2,
        "b_dec": torch.randn(n_models, d_in, generator=g) * 0.1,
    }


def write_kissane(
    folder: Path, state: dict[str, torch.Tensor], *, through_time: bool = False, hook_point: str | None = None
) -> Path:
    """Kissane's layout (``cfg.json`` with his keys, two models implied), or crosscoder-through-time's
    (``cc_cfg.json`` with ``n_models``)."""
    folder.mkdir(parents=True, exist_ok=True)
    n_models, d_in, d_hidden = state["W_enc"].shape
    if through_time:
        cfg = {"d_in": d_in, "dict_size": d_hidden, "n_models": n_models, "enc_dtype": "float32"}
        cfg |= {"dec_init_norm": 0.08, "device": "cuda", "seed": 49}
        name = "cc_cfg.json"
    else:
        cfg = {"seed": 49, "batch_size": 4096, "buffer_mult": 128, "lr": 5e-05, "num_tokens": 400000000}
        cfg |= {"l1_coeff": 2, "beta1": 0.9, "beta2": 0.999, "d_in": d_in, "dict_size": d_hidden, "seq_len": 1024}
        cfg |= {"enc_dtype": "fp32", "model_name": "gemma-2-2b", "site": "resid_pre", "device": "cuda:0"}
        cfg |= {"model_batch_size": 4, "log_every": 100, "save_every": 30000, "dec_init_norm": 0.08}
        cfg |= {"hook_point": hook_point or "blocks.14.hook_resid_pre", "wandb_project": "p", "wandb_entity": "e"}
        name = "cfg.json"
    (folder / name).write_text(json.dumps(cfg))
    torch.save(state, folder / "cc_weights.pt")
    return folder


def kissane_forward(state: dict[str, torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """acts = ReLU(einsum(x, W_enc) + b_enc); x_hat = einsum(acts, W_dec) + b_dec."""
    acts = torch.relu(torch.einsum("bmd,mdh->bh", x, state["W_enc"]) + state["b_enc"])
    return acts, torch.einsum("bh,hmd->bmd", acts, state["W_dec"]) + state["b_dec"]


CODE_NORMALIZATION_IDS = {"CROSSCODER": 1, "SAE": 2, "MIXED": 3, "NONE": 4, "DECOUPLED": 5}


def dictionary_learning_state(
    n_layers: int = 2,
    d: int = 8,
    dict_size: int = 24,
    *,
    seed: int = 0,
    batchtopk: bool = False,
    code_normalization: str | None = None,
    normalizer: bool = False,
    encoder_layers: list[int] | None = None,
) -> dict[str, torch.Tensor]:
    """The hub mixin's state dict: ``encoder.*``, ``decoder.*`` and the buffers the class registers."""
    g = _generator(seed)
    n_enc = len(encoder_layers) if encoder_layers is not None else n_layers
    state = {
        "encoder.weight": torch.randn(n_enc, d, dict_size, generator=g) * 0.3,
        "encoder.bias": torch.randn(dict_size, generator=g) * 0.2,
        "decoder.weight": torch.randn(n_layers, dict_size, d, generator=g) * 0.3,
        "decoder.bias": torch.randn(n_layers, d, generator=g) * 0.1,
    }
    if code_normalization is not None:
        state["code_normalization_id"] = torch.tensor(CODE_NORMALIZATION_IDS[code_normalization])
    if batchtopk:
        state["k"] = torch.tensor(4, dtype=torch.int32)
        state["threshold"] = torch.tensor(0.6)
    if normalizer:
        mean = torch.randn(n_layers, d, generator=g)
        std = torch.rand(n_layers, d, generator=g) + 0.5
        state["target_rms"] = torch.tensor(1.0)
        state["activation_mean"], state["activation_std"] = mean, std
        state["activation_global_scale"] = 1.0 / torch.sqrt((std**2).sum(dim=-1) + 1e-8)
    return state


def write_dictionary_learning(
    folder: Path, state: dict[str, torch.Tensor], *, config: dict | None = None, compiled: bool = False
) -> Path:
    """``config.json`` (the constructor's JSON-able arguments, as the hub mixin keeps them) and
    ``model.safetensors``."""
    folder.mkdir(parents=True, exist_ok=True)
    n_layers, dict_size, d = state["decoder.weight"].shape
    cfg = {"activation_dim": d, "dict_size": dict_size, "num_layers": n_layers, "norm_init_scale": 0.005}
    cfg |= {"init_with_transpose": True, "same_init_for_all_layers": False} | dict(config or {})
    if "threshold" in state:
        cfg["k"] = int(state["k"])
    (folder / "config.json").write_text(json.dumps(cfg))
    prefix = "_orig_mod." if compiled else ""
    save_file({prefix + k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    return folder


def dictionary_learning_forward(
    state: dict[str, torch.Tensor],
    x: torch.Tensor,
    *,
    code_normalization: str = "CROSSCODER",
    encoder_layers: list[int] | None = None,
    alphas: tuple[float, float] = (1.0, 0.1),
) -> tuple[torch.Tensor, torch.Tensor]:
    """x' = (x - mean) * g (with a normaliser); f = ReLU(sum_l x'_l W_enc[l] + b_enc), gated by
    ReLU(h) * w > threshold for BatchTopK; x_hat_l = f W_dec[l] + b_dec[l], then x_hat / (g + 1e-8) + mean."""
    normalised = "activation_mean" in state
    if normalised:
        x = (x - state["activation_mean"]) * state["activation_global_scale"][None, :, None]
    layers = encoder_layers if encoder_layers is not None else list(range(x.shape[1]))
    h = torch.einsum("bld,ldf->bf", x[:, layers], state["encoder.weight"]) + state["encoder.bias"]
    f = torch.relu(h)
    if "threshold" in state:
        dec = state["decoder.weight"]
        w = {
            "CROSSCODER": dec.norm(dim=2).sum(dim=0),
            "SAE": dec.norm(dim=(0, 2)),
            "MIXED": alphas[0] * dec.norm(dim=(0, 2)) + alphas[1] * dec.norm(dim=2).sum(dim=0),
            "NONE": torch.ones(dec.shape[1]),
        }[code_normalization]
        f = f * (f * w > state["threshold"])
    x_hat = torch.einsum("bf,lfd->bld", f, state["decoder.weight"]) + state["decoder.bias"]
    if normalised:
        x_hat = x_hat / (state["activation_global_scale"][None, :, None] + 1e-8) + state["activation_mean"]
    return f, x_hat


def llamascopium_state(
    n_heads: int = 3, d_model: int = 8, d_sae: int = 24, *, seed: int = 0, act_fn: str = "jumprelu"
) -> dict[str, torch.Tensor]:
    g = _generator(seed)
    state = {
        "W_E": torch.randn(n_heads, d_model, d_sae, generator=g) * 0.3,
        "b_E": torch.randn(n_heads, d_sae, generator=g) * 0.1,
        "W_D": torch.randn(n_heads, d_sae, d_model, generator=g) * 0.3,
        "b_D": torch.randn(n_heads, d_model, generator=g) * 0.1,
    }
    if act_fn == "jumprelu":
        state["activation_function.log_jumprelu_threshold"] = torch.randn(d_sae, generator=g) * 0.3 - 1.0
    return state


def write_llamascopium(
    folder: Path,
    state: dict[str, torch.Tensor],
    heads: list[str],
    *,
    act_fn: str = "jumprelu",
    norm_activation: str = "dataset-wise",
    average_norms: list[float] | None = None,
) -> Path:
    """``config.json`` (the config's model_dump, device and dtype excluded as the library does) and
    ``sae_weights.safetensors`` with one ``dataset_average_activation_norm.<hook>`` per head."""
    folder.mkdir(parents=True, exist_ok=True)
    n_heads, d_model, d_sae = state["W_E"].shape
    cfg = {"sae_type": "crosscoder", "d_model": d_model, "expansion_factor": d_sae / d_model, "hook_points": heads}
    cfg |= {"use_decoder_bias": True, "act_fn": act_fn, "norm_activation": norm_activation}
    cfg |= {"sparsity_include_decoder_norm": True, "top_k": 50, "use_triton_kernel": False}
    cfg |= {"sparsity_threshold_for_triton_spmm_kernel": 0.996, "jumprelu_threshold_window": 2.0}
    (folder / "config.json").write_text(json.dumps(cfg, indent=4))
    tensors = dict(state)
    for head, norm in zip(heads, average_norms or [1.0] * n_heads):
        tensors[f"dataset_average_activation_norm.{head}"] = torch.tensor(float(norm))
    save_file(tensors, str(folder / "sae_weights.safetensors"), metadata={"version": "2.0.0"})
    return folder


def llamascopium_forward(
    state: dict[str, torch.Tensor],
    x: torch.Tensor,
    *,
    act_fn: str = "jumprelu",
    average_norms: list[float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head code f_s = act(h * ||W_D[s]||) / ||W_D[s]|| with h = sum_s (c_s x_s W_E[s] + b_E[s]);
    x_hat_s = (f_s W_D[s] + b_D[s]) / c_s, where c_s = sqrt(d_model) / average norm (dataset-wise)."""
    d_model = x.shape[-1]
    c = torch.tensor([math.sqrt(d_model) / n for n in average_norms]) if average_norms else torch.ones(x.shape[1])
    h = (torch.einsum("bsd,sdf->bsf", x * c[None, :, None], state["W_E"]) + state["b_E"]).sum(dim=1)
    norms = state["W_D"].norm(dim=-1)  # [heads, d_sae]
    z = h[:, None, :] * norms[None]
    t = state["activation_function.log_jumprelu_threshold"].exp() if act_fn == "jumprelu" else torch.zeros(())
    f = z * (z > t) / norms[None]
    x_hat = torch.einsum("bsf,sfd->bsd", f, state["W_D"]) + state["b_D"]
    return f, x_hat / c[None, :, None]


GEMMA_BASE, GEMMA_CHAT = "google/gemma-2-2b", "google/gemma-2-2b-it"
PYTHIA_70M = "EleutherAI/pythia-70m"
D_MODEL = 32
"""The tiny stand-in models' width, which the tiny releases read."""


def _upload(hf_home: Path, repo_id: str, files: dict[str, Path]) -> None:
    """Put ``files`` (path in repo -> local file) into the offline cache as one commit of ``repo_id``."""
    from crosslens.pretrained import LocalHubApi

    api = LocalHubApi(Path(hf_home) / "hub")
    api.create_repo(repo_id, exist_ok=True)
    for path_in_repo, local in files.items():
        api.upload_file(path_or_fileobj=local, path_in_repo=path_in_repo, repo_id=repo_id)


def _folder_files(folder: Path, prefix: str = "") -> dict[str, Path]:
    return {(f"{prefix}/{p.name}" if prefix else p.name): p for p in sorted(folder.iterdir())}


def write_fake_releases(hf_home: Path, scratch: Path) -> dict[str, dict[str, torch.Tensor]]:
    """The packaged registry's releases, tiny, under their real repo ids and file names, with the
    models they read (tiny Gemma-2s and Pythias under the real names, wide enough for their hooks).
    Returns each release's source state dict, for comparing forwards."""
    from hf_cache import make_word_tokenizer, tiny_gemma2, tiny_neox, write_fake_hub_repo

    tokenizer = make_word_tokenizer()
    for repo_id, seed in ((GEMMA_BASE, 0), (GEMMA_CHAT, 1)):
        write_fake_hub_repo(hf_home, repo_id, {"main": tiny_gemma2(seed, num_hidden_layers=16)}, tokenizer)
    steps = {f"step{s}": tiny_neox(seed=s % 97, num_hidden_layers=6) for s in (100000, 143000)}
    write_fake_hub_repo(hf_home, PYTHIA_70M, steps, tokenizer, main="step143000")
    states = {
        "gemma-2-2b-crosscoder-kissane": kissane_state(2, D_MODEL, 48, seed=1),
        "pythia-70m-crosscoder-through-time": kissane_state(2, D_MODEL, 48, seed=2),
        "gemma-2-2b-crosscoder-l13-minder": dictionary_learning_state(2, D_MODEL, 48, seed=3),
        "gemma-2-2b-crosscoder-l13-k100-minder": dictionary_learning_state(2, D_MODEL, 48, seed=4, batchtopk=True),
        "gemma-2-2b-crosscoder-l13-k100-sae-loss-minder": dictionary_learning_state(
            2, D_MODEL, 48, seed=5, batchtopk=True
        ),
    }
    kissane = write_kissane(scratch / "kissane", states["gemma-2-2b-crosscoder-kissane"])
    _upload(hf_home, "ckkissane/crosscoder-gemma-2-2b-model-diff", _folder_files(kissane, "blocks.14.hook_resid_pre"))
    through_time = write_kissane(scratch / "ctt", states["pythia-70m-crosscoder-through-time"], through_time=True)
    _upload(hf_home, "tommyp111/pythia-70m-crosscoder-through-time", _folder_files(through_time))
    minder = write_dictionary_learning(scratch / "minder", states["gemma-2-2b-crosscoder-l13-minder"])
    _upload(hf_home, "Butanium/gemma-2-2b-crosscoder-l13-mu4.1e-02-lr1e-04", _folder_files(minder))
    for name, loss in (
        ("gemma-2-2b-crosscoder-l13-k100-minder", "CCLoss"),
        ("gemma-2-2b-crosscoder-l13-k100-sae-loss-minder", "SAELoss"),
    ):
        folder = write_dictionary_learning(scratch / loss, states[name], config={"dict_class": None})
        (folder / "trainer_config.json").write_text(
            json.dumps({"trainer": {"dict_class": "BatchTopKCrossCoder", "k": 4}})
        )
        _upload(
            hf_home, f"science-of-finetuning/gemma-2-2b-L13-k100-lr1e-04-local-shuffling-{loss}", _folder_files(folder)
        )
    return states
