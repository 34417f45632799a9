"""Latent scaling per snapshot (Minder et al. 2025): how much of a latent each snapshot's
activations hold, measured on the activations rather than read from the decoder norm.

A decoder norm can mislead. The sparsity penalty shrinks the row of a snapshot where the
latent is weak to zero (*Complete Shrinkage*), and a crosscoder can give one concept two
latents that each carry it at some snapshots (*Latent Decoupling*). Latent scaling asks the
activations instead: for latent ``j`` and snapshot ``s``, the least-squares scale of the
latent's contribution ``f_j(x) d_js`` that best explains a target ``y_s`` over the tokens,

    beta_js = sum_t f_j(x_t) <d_js, y_ts> / (||d_js||^2 sum_t f_j(x_t)^2),

for two targets, as Minder et al. fit both: snapshot ``s``'s activations less the decoder bias
(``y = x_s - b_dec_s``), and its reconstruction error without latent ``j``
(``y = x_s - x_hat_s + f_js d_js``, where ``f_js`` is the latent's code in snapshot ``s``'s
reconstruction: the shared code, or for JumpReLU the code behind snapshot ``s``'s gate). The
part of the activation target that other latents reconstruct is the difference of the two.

Where the decoder has shrunk a row its direction is not to be trusted, so, as Minder et al.
score a latent in the model where its decoder has shrunk with the other model's decoder,
``d_js`` is the latent's own row where that row carries at least
:attr:`LatentScalingConfig.own_row_floor` of the latent's peak decoder norm, and the nearest
snapshot's row that does elsewhere (:func:`reference_rows`). The scale times the row's norm
is an *amplitude* in the training space's units, directly comparable with the decoder norm:
a latent whose decoder is right has amplitude = decoder norm (beta = 1).

Everything comes from sums over tokens, kept for all latents at once (:class:`ScalingSums`):
one pass over the tokens, per batch one encode, one decode and one projection matmul per
snapshot, never a loop over latents. :func:`per_latent_scaling` is that loop, kept to check
the pass against. Nothing here assumes the snapshot axis is time: for a crosscoder of two
models (base and fine-tuned), :meth:`LatentScaling.ratio` is Minder et al.'s ``nu``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int

from crosslens.activations.partners import check_recorded_partner
from crosslens.analysis.evolution import decoder_norm_table, normalize_norms
from crosslens.analysis.probes import device_and_dtype, reads_normalized, sample_index
from crosslens.core.errors import CrosslensError
from crosslens.core.hooks import resolve_hook
from crosslens.core.progress import progress_bar
from crosslens.crosscoders.folding import folded_factors, training_space_decoder

if TYPE_CHECKING:
    from crosslens.analysis.composition import CoFiring
    from crosslens.crosscoders.protocol import Crosscoder

_EPS = 1e-12
CARRIER_CHUNK = 4096
"""Latents whose cosines with the present rows are computed at once (:func:`carriers`): a
``[CARRIER_CHUNK, d_sae]`` table per step."""
PER_SNAPSHOT_CODE_ELEMENTS = {"cpu": 1 << 24, "cuda": 1 << 28}
"""Largest ``[tokens, snapshots, d_sae]`` per-snapshot code held at once (JumpReLU's gated codes),
by device type (64 MB on a CPU, 1 GB on a GPU): a batch is split into pieces of at most this many."""


class NoSnapshotDecodersError(CrosslensError):
    """The model handed over has no decoder per snapshot (a plain SAE, or a one-snapshot crosscoder)."""


@dataclass(frozen=True)
class LatentScalingConfig:
    """How many tokens latent scaling reads, and which decoder rows it trusts."""

    n_tokens: int = 65_536
    """Tokens sampled (seeded) from a store; a tensor or a stream gives all it holds up to this."""
    batch_size: int = 4096
    """Tokens per batch of the pass."""
    own_row_floor: float = 0.3
    """A latent's own row at snapshot s is used where its decoder norm is at least this share of
    the latent's peak; a row below it (shrunk, its direction unreliable) is replaced by the
    nearest row at or above it. 0.3 is the evolution analysis's presence line
    (``EvolutionConfig.emergence_threshold``): the rows it calls present are the ones used."""
    seed: int = 0
    """Seed of the token sample drawn from a store."""

    def __post_init__(self) -> None:
        if self.n_tokens < 2 or self.batch_size < 1:
            raise ValueError(f"n_tokens={self.n_tokens}, batch_size={self.batch_size}: use n_tokens >= 2, batch >= 1.")
        if not 0.0 < self.own_row_floor <= 1.0:
            raise ValueError(f"own_row_floor={self.own_row_floor} is a share of the peak norm: pick (0, 1], e.g. 0.3.")


# --------------------------------------------------------------------------- rows and sums
def check_snapshot_decoders(crosscoder: Any, name: str = "the crosscoder") -> None:
    """Refuse a model without one decoder row per snapshot (``W_dec [d_sae, n_snapshots, d_in]``)."""
    W_dec = getattr(crosscoder, "W_dec", None)
    shape = tuple(W_dec.shape) if isinstance(W_dec, torch.Tensor) else None
    if shape is None or len(shape) != 3 or shape[1] < 2:
        got = f"W_dec of shape {list(shape)}" if shape is not None else "no W_dec"
        # a crosscoder of one snapshot was trained by `crosslens train`: on a store of one snapshot
        fix = (
            "harvest two or more snapshots (`crosslens harvest --steps A,B,...` or --n-snapshots N) and train on "
            "that store (`crosslens train`): a crosscoder of one snapshot has no other snapshot to compare with"
            if shape is not None and len(shape) == 3
            else "train one with `crosslens train` (a per-snapshot SAE has no other snapshot to compare with)"
        )
        raise NoSnapshotDecodersError(
            f"{name} has {got}, not a decoder per snapshot [d_sae, n_snapshots >= 2, d_in]: latent scaling and "
            f"lineage read a multi-snapshot crosscoder; {fix}"
        )


def reference_rows(
    norms_FS: Float[torch.Tensor, "d_sae n_snapshots"], own_row_floor: float = LatentScalingConfig.own_row_floor
) -> Int[torch.Tensor, "d_sae n_snapshots"]:
    """For every latent and snapshot, the snapshot whose decoder row scores it: the snapshot
    itself where its norm is at least ``own_row_floor`` of the latent's peak, else the nearest
    snapshot where it is (the later one on a tie: a row shrunk before an emergence is scored
    with the row that emerges). All-zero latents keep their own rows."""
    S = norms_FS.shape[1]
    trusted_FS = normalize_norms(norms_FS) >= own_row_floor
    index_S = torch.arange(S, device=norms_FS.device)
    distance_SS = (index_S[:, None] - index_S[None, :]).abs().float() - 0.25 * (index_S[None, :] > index_S[:, None])
    distance_FSS = torch.where(trusted_FS[:, None, :], distance_SS[None], torch.inf)
    nearest_FS = distance_FSS.argmin(dim=-1)
    return torch.where(trusted_FS.any(dim=1, keepdim=True), nearest_FS, index_S[None, :].expand_as(nearest_FS))


@torch.no_grad()
def carriers(
    W_dec_FSD: Float[torch.Tensor, "d_sae n_snapshots d_in"],
    reference_FS: Int[torch.Tensor, "d_sae n_snapshots"],
    fires_F: torch.Tensor,
) -> tuple[Int[torch.Tensor, "d_sae n_snapshots"], Float[torch.Tensor, "d_sae n_snapshots"]]:
    """For every latent and snapshot, the other latent present there whose row is nearest the
    latent's reference direction, and their cosine: present means it fires (``fires_F``) and its
    own row is trusted at the snapshot (``reference == s``, nonzero). -1 and -1 where no other
    latent is present. Where the cosine is low, what other latents reconstruct along the
    direction is not this latent's concept carried by a partner, only tokens it shares with
    unrelated latents."""
    W_FSD = W_dec_FSD.detach()
    F, S, _ = W_FSD.shape
    ref_FS = reference_FS.to(W_FSD.device).long()
    latent_F = torch.arange(F, device=W_FSD.device)
    carrier_FS, cosine_FS = torch.full((F, S), -1, dtype=torch.long), torch.full((F, S), -1.0)
    for s in range(S):
        own_FD = W_FSD[:, s].float()
        own_norm_F = own_FD.norm(dim=-1)
        present_F = (ref_FS[:, s] == s) & (own_norm_F > 0) & fires_F.to(W_FSD.device)
        if not bool(present_F.any()):
            continue
        carriers_DK = (own_FD[present_F] / own_norm_F[present_F, None]).T
        carrier_K = latent_F[present_F]
        for chunk_J in latent_F.split(CARRIER_CHUNK):
            rows_JD = W_FSD[chunk_J, ref_FS[chunk_J, s]].float()
            norm_J1 = rows_JD.norm(dim=-1, keepdim=True)
            cos_JK = (rows_JD / norm_J1.clamp_min(_EPS)) @ carriers_DK
            cos_JK.masked_fill_(chunk_J[:, None] == carrier_K[None, :], -2.0)
            best_J, at_J = cos_JK.max(dim=1)
            # none where the latent is the only one present, or has no direction (an all-zero row)
            found_J = (best_J > -2.0) & (norm_J1[:, 0] > 0)
            carrier_FS[chunk_J.cpu(), s] = torch.where(found_J, carrier_K[at_J], -1).cpu()
            cosine_FS[chunk_J.cpu(), s] = torch.where(found_J, best_J, -1.0).cpu()
    return carrier_FS, cosine_FS


@dataclass
class ScalingSums:
    """Latent scaling's sufficient statistics, summed over tokens (float64). ``R_js`` is the
    reference row's unit direction (:func:`reference_rows`), ``f`` the shared code, ``f_s`` the
    code in snapshot s's reconstruction, ``x_s`` the activation less the decoder bias, ``e_s``
    the reconstruction error. Sums over disjoint token sets add (:meth:`merge`)."""

    n_tokens: int
    n_fire: Float[torch.Tensor, " d_sae"]
    """Tokens with ``f > 0``."""
    ff: Float[torch.Tensor, " d_sae"]
    """``sum f^2``."""
    fx: Float[torch.Tensor, "d_sae n_snapshots"]
    """``sum f <R, x_s>``."""
    xx: Float[torch.Tensor, "d_sae n_snapshots"]
    """``sum_{f > 0} <R, x_s>^2`` (the residual, for the standard error)."""
    fe: Float[torch.Tensor, "d_sae n_snapshots"]
    """``sum f <R, e_s>``."""
    ffs: Float[torch.Tensor, "d_sae n_snapshots"]
    """``sum f f_s``."""

    @classmethod
    def zeros(cls, d_sae: int, n_snapshots: int, device: torch.device | str = "cpu") -> ScalingSums:
        vector = lambda: torch.zeros(d_sae, dtype=torch.float64, device=device)  # noqa: E731
        table = lambda: torch.zeros(d_sae, n_snapshots, dtype=torch.float64, device=device)  # noqa: E731
        return cls(0, vector(), vector(), table(), table(), table(), table())

    def merge(self, other: ScalingSums) -> ScalingSums:
        """The sums over both token sets."""
        tensors = {f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self) if f.name != "n_tokens"}
        return ScalingSums(n_tokens=self.n_tokens + other.n_tokens, **tensors)

    @torch.no_grad()
    def add(
        self,
        f_BF: Float[torch.Tensor, "batch d_sae"],
        f_BSF: Float[torch.Tensor, "batch n_snapshots d_sae"] | None,
        x_BSD: Float[torch.Tensor, "batch n_snapshots d_in"],
        error_BSD: Float[torch.Tensor, "batch n_snapshots d_in"],
        unit_SDF: Float[torch.Tensor, "n_snapshots d_in d_sae"],
    ) -> None:
        """Fold one batch in: per snapshot one matmul projects the activations and the errors on
        every latent's reference direction at once."""
        B = f_BF.shape[0]
        fires_BF = (f_BF > 0).to(f_BF.dtype)
        self.n_tokens += B
        self.n_fire += fires_BF.sum(0).double()
        self.ff += f_BF.square().sum(0).double()
        for s in range(unit_SDF.shape[0]):
            proj_2BF = torch.cat([x_BSD[:, s], error_BSD[:, s]]) @ unit_SDF[s]
            px_BF, pe_BF = proj_2BF[:B], proj_2BF[B:]
            self.fx[:, s] += (f_BF * px_BF).sum(0).double()
            self.xx[:, s] += (fires_BF * px_BF.square()).sum(0).double()
            self.fe[:, s] += (f_BF * pe_BF).sum(0).double()
            f_s_BF = f_BF if f_BSF is None else f_BSF[:, s]
            self.ffs[:, s] += (f_BF * f_s_BF).sum(0).double()


# --------------------------------------------------------------------------- the result
@dataclass(frozen=True)
class LatentScaling:
    """Latent scaling of every latent at every snapshot (:func:`latent_scaling`). Amplitudes are
    lengths along the reference row's direction in the training space's units (the decoder
    norm's); betas are Minder et al.'s scales of the reference row itself."""

    reference: Int[torch.Tensor, "d_sae n_snapshots"]
    """Snapshot whose decoder row scored the latent there (:func:`reference_rows`)."""
    row_norm: Float[torch.Tensor, "d_sae n_snapshots"]
    """Norm of that row (training space)."""
    own_cosine: Float[torch.Tensor, "d_sae n_snapshots"]
    """Cosine of that row with the latent's own row at the snapshot (1 where it is its own)."""
    own_norm: Float[torch.Tensor, "d_sae n_snapshots"]
    """The latent's own decoder norm at the snapshot (training space)."""
    carrier: Int[torch.Tensor, "d_sae n_snapshots"]
    """The other latent present at the snapshot whose row is nearest the reference row
    (:func:`carriers`; -1 where none is present)."""
    carrier_cosine: Float[torch.Tensor, "d_sae n_snapshots"]
    """Their cosine (-1 where none is present)."""
    amplitude: Float[torch.Tensor, "d_sae n_snapshots"]
    """Activation target: ``sum f <R, x_s - b_s> / sum f^2``, the latent's length in snapshot s's
    activations on the tokens it fires on."""
    error_amplitude: Float[torch.Tensor, "d_sae n_snapshots"]
    """Error target: the same for snapshot s's reconstruction error without the latent."""
    stderr: Float[torch.Tensor, "d_sae n_snapshots"]
    """Standard error of ``amplitude`` (a regression through the origin over the firing tokens)."""
    n_fire: Float[torch.Tensor, " d_sae"]
    """Tokens the latent fires on."""
    n_tokens: int
    """Tokens read."""

    @property
    def d_sae(self) -> int:
        return self.amplitude.shape[0]

    @property
    def n_snapshots(self) -> int:
        return self.amplitude.shape[1]

    @property
    def beta(self) -> Float[torch.Tensor, "d_sae n_snapshots"]:
        """Minder et al.'s beta on the activation target: the scale of ``f_j d_js`` (0 where the row is zero)."""
        return self.amplitude / self.row_norm.clamp_min(_EPS) * (self.row_norm > 0)

    @property
    def beta_error(self) -> Float[torch.Tensor, "d_sae n_snapshots"]:
        """Minder et al.'s beta on the error target (the reconstruction error without the latent)."""
        return self.error_amplitude / self.row_norm.clamp_min(_EPS) * (self.row_norm > 0)

    @property
    def reconstruction_amplitude(self) -> Float[torch.Tensor, "d_sae n_snapshots"]:
        """The part of ``amplitude`` other latents reconstruct (activation target less error target)."""
        return self.amplitude - self.error_amplitude

    @property
    def activation_share(self) -> Float[torch.Tensor, "d_sae n_snapshots"]:
        """``amplitude / error_amplitude``: how far the activations lie along the latent's row beside
        how far the error the other latents leave does. About 1 or more for a latent that carries a
        direction of the data; small or negative for one only the error holds, a latent firing beside
        a partner to correct it, its row turned against the partner's. Infinite where the error holds
        none of the latent (its presence then does not rest on the error)."""
        share_FS = self.amplitude / self.error_amplitude.clamp_min(_EPS)
        return torch.where(self.error_amplitude > 0, share_FS, torch.inf)

    @property
    def t_value(self) -> Float[torch.Tensor, "d_sae n_snapshots"]:
        """``amplitude / stderr``: infinite where the fit is exact (no residual), 0 where the latent
        fires on fewer than 2 tokens."""
        exact_FS = torch.where(self.amplitude != 0, torch.inf * self.amplitude.sign(), 0.0)
        fitted_FS = torch.where(self.stderr > 0, self.amplitude / self.stderr.clamp_min(_EPS), exact_FS)
        return torch.where(self.n_fire[:, None] >= 2, fitted_FS, 0.0)

    def ratio(self, snapshot: int, reference: int, target: str = "error") -> Float[torch.Tensor, " d_sae"]:
        """Minder et al.'s ``nu``: the latent's amplitude at ``snapshot`` over its amplitude at
        ``reference`` on ``target`` ("error", "reconstruction": what other latents reconstruct, or
        "activation"); for a two-model crosscoder, base over fine-tuned. NaN where the reference
        amplitude is 0."""
        tables = {
            "error": self.error_amplitude,
            "reconstruction": self.reconstruction_amplitude,
            "activation": self.amplitude,
        }
        if target not in tables:
            raise ValueError(f"target={target!r}: choose one of {', '.join(map(repr, tables))}.")
        table = tables[target]
        denominator = table[:, reference]
        return torch.where(denominator != 0, table[:, snapshot] / denominator, torch.nan)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every table by name (float32, int32), for saving; :meth:`from_tensors` reads them back."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "n_tokens"}
        return {k: (v.int() if k in ("reference", "carrier") else v.float()).contiguous() for k, v in out.items()}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], n_tokens: int) -> LatentScaling:
        names = [f.name for f in fields(cls) if f.name != "n_tokens"]
        missing = [name for name in names if name not in tensors]
        if missing:
            raise KeyError(f"latent scaling tables missing: {', '.join(missing)}")
        return cls(n_tokens=int(n_tokens), **{name: tensors[name] for name in names})


def scaling_from_sums(
    sums: ScalingSums, W_dec_FSD: Float[torch.Tensor, "d_sae n_snapshots d_in"], reference_FS: torch.Tensor
) -> LatentScaling:
    """The result from the sums; ``W_dec_FSD`` in the training space (amplitudes are scaled to it
    by the caller's choice of sums: see :func:`training_space_sums`). Its cost does not grow with
    the tokens: per snapshot, the rows' norms and the carriers (:func:`carriers`)."""
    W_FSD = W_dec_FSD.detach()
    F, S = W_FSD.shape[:2]
    ref_FS = reference_FS.to(W_FSD.device).long()
    own_norm_FS = torch.empty(F, S, dtype=torch.float64)
    along_FS = torch.empty(F, S, dtype=torch.float64)
    latent_F = torch.arange(F, device=W_FSD.device)
    for s in range(S):  # a snapshot at a time: a float64 copy of the whole decoder would double its memory
        own_FD = W_FSD[:, s].double()
        own_norm_FS[:, s] = own_FD.norm(dim=-1).cpu()
        along_FS[:, s] = (W_FSD[latent_F, ref_FS[:, s]].double() * own_FD).sum(-1).cpu()
    carrier_FS, carrier_cos_FS = carriers(W_FSD, ref_FS, sums.n_fire > 0)
    ref_FS = ref_FS.cpu()
    row_norm_FS = own_norm_FS.gather(1, ref_FS)
    own_cos_FS = along_FS / (row_norm_FS * own_norm_FS).clamp_min(_EPS)
    ff_F1 = sums.ff.cpu()[:, None]
    amplitude_FS = torch.where(ff_F1 > 0, sums.fx.cpu() / ff_F1.clamp_min(_EPS), 0.0)
    # the error without the latent adds its own contribution f_s d_js back: <R, d_js> sum f f_s
    own_along_FS = own_cos_FS * own_norm_FS
    error_FS = torch.where(ff_F1 > 0, (sums.fe.cpu() + own_along_FS * sums.ffs.cpu()) / ff_F1.clamp_min(_EPS), 0.0)
    n_F1 = sums.n_fire.cpu()[:, None]
    residual_FS = (sums.xx.cpu() - amplitude_FS.square() * ff_F1).clamp_min(0.0)
    variance_FS = torch.where(n_F1 > 1, residual_FS / (n_F1 - 1).clamp_min(1) / ff_F1.clamp_min(_EPS), 0.0)
    return LatentScaling(
        reference=ref_FS.int(),
        row_norm=row_norm_FS.float(),
        own_cosine=torch.where(row_norm_FS * own_norm_FS > 0, own_cos_FS, 0.0).float(),
        own_norm=own_norm_FS.float(),
        carrier=carrier_FS.int(),
        carrier_cosine=carrier_cos_FS,
        amplitude=amplitude_FS.float(),
        error_amplitude=error_FS.float(),
        stderr=variance_FS.sqrt().float(),
        n_fire=sums.n_fire.cpu().float(),
        n_tokens=sums.n_tokens,
    )


# --------------------------------------------------------------------------- the pass
def codes_and_reconstruction(
    crosscoder: Any, x_BSD: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """The shared code ``[B, F]``, the per-snapshot code ``[B, S, F]`` where the architecture
    gates snapshots separately (JumpReLU's ``encode_per_snapshot``; None otherwise) and the
    reconstruction ``[B, S, D]``."""
    if hasattr(crosscoder, "encode_per_snapshot"):
        f_BSF = crosscoder.encode_per_snapshot(x_BSD)
        # an open gate needs a positive pre-activation, so the largest entry is the shared code
        return f_BSF.amax(dim=1), f_BSF, crosscoder.decode_per_snapshot(f_BSF)
    f_BF = crosscoder.encode(x_BSD)
    return f_BF, None, crosscoder.decode(f_BF)


def per_snapshot_piece(device: torch.device | str, n_snapshots: int, d_sae: int) -> int:
    """Tokens per piece of a batch whose per-snapshot code ``[tokens, n_snapshots, d_sae]`` stays
    within the device's :data:`PER_SNAPSHOT_CODE_ELEMENTS`."""
    kind = torch.device(device).type
    budget = PER_SNAPSHOT_CODE_ELEMENTS.get(kind, PER_SNAPSHOT_CODE_ELEMENTS["cpu"])
    return max(1, budget // (n_snapshots * d_sae))


@torch.no_grad()
def scaling_sums(
    crosscoder: Any,
    batches: Iterable[torch.Tensor],
    reference_FS: torch.Tensor,
    *,
    total: int | None = None,
    progress: bool = False,
    cofiring: CoFiring | None = None,
) -> ScalingSums:
    """One pass over ``batches`` (``[B, S, D]`` as the crosscoder reads them): the sums of every
    latent at every snapshot, amplitudes in the crosscoder's input space; ``cofiring``, where
    given, counts its latents' firing together on the same codes."""
    device, dtype = device_and_dtype(crosscoder)
    W_FSD = crosscoder.W_dec.detach()
    F, S, D = W_FSD.shape
    ref_FS, latent_F = reference_FS.to(W_FSD.device).long(), torch.arange(F, device=W_FSD.device)
    unit_SDF = torch.empty(S, D, F, dtype=W_FSD.dtype, device=W_FSD.device)
    for s in range(S):  # a snapshot at a time: the pass then holds one decoder-sized table beside the weights
        rows_FD = W_FSD[latent_F, ref_FS[:, s]]
        unit_SDF[s] = (rows_FD / rows_FD.norm(dim=-1, keepdim=True).clamp_min(_EPS)).T
    b_dec_SD = crosscoder.b_dec.detach()
    sums = ScalingSums.zeros(F, S, device)
    bar = progress_bar(total=total, unit="tok", unit_scale=True, desc="latent scaling", show=progress)
    piece = per_snapshot_piece(device, S, F) if hasattr(crosscoder, "encode_per_snapshot") else None
    for batch in batches:
        for x_BSD in batch.split(piece) if piece else (batch,):
            x_BSD = x_BSD.to(device, dtype)
            f_BF, f_BSF, recon_BSD = codes_and_reconstruction(crosscoder, x_BSD)
            sums.add(f_BF, f_BSF, x_BSD - b_dec_SD, x_BSD - recon_BSD, unit_SDF)
            if cofiring is not None:
                cofiring.add(f_BF)
            bar.update(x_BSD.shape[0])
    bar.close()
    return sums


def source_batches(
    source: Any, crosscoder: Any, *, hook: str | None, config: LatentScalingConfig
) -> tuple[Iterator[torch.Tensor], int | None]:
    """Batches ``[B, S, D]`` as the crosscoder reads them, and how many tokens they hold (None for a
    stream): from an activation store (a seeded sample of ``n_tokens``), a tensor (its first
    ``n_tokens``), or any iterable of batches (read up to ``n_tokens``, the last batch trimmed)."""
    if isinstance(source, torch.Tensor):
        if source.ndim != 3:
            raise ValueError(f"activations have shape {tuple(source.shape)}; expected [n_tokens, n_snapshots, d_in].")
        acts_NSD = source[: config.n_tokens]
        return iter(acts_NSD.split(config.batch_size)), len(acts_NSD)
    if hasattr(source, "read") and hasattr(source, "n_tokens"):
        hook = resolve_hook(source, hook)
        gen = torch.Generator().manual_seed(config.seed)
        idx = sample_index(int(source.n_tokens), config.n_tokens, gen)
        normalize = reads_normalized(crosscoder)
        return (source.read(hook, chunk, normalize=normalize) for chunk in idx.split(config.batch_size)), len(idx)
    return _capped_stream(source, config.n_tokens), None


def _capped_stream(batches: Iterable[torch.Tensor], n_tokens: int) -> Iterator[torch.Tensor]:
    """A stream's batches up to ``n_tokens`` tokens, the last one trimmed to them; the stream is not
    read past it, so an endless one ends there too."""
    left = n_tokens
    for batch in batches:
        batch = batch[:left]
        left -= len(batch)
        yield batch
        if left <= 0:
            return


def training_space_sums(
    crosscoder: Crosscoder,
    source: Any,
    *,
    hook: str | None = None,
    config: LatentScalingConfig | None = None,
    progress: bool = False,
    cofiring: CoFiring | None = None,
) -> tuple[ScalingSums, Int[torch.Tensor, "d_sae n_snapshots"]]:
    """:func:`latent_scaling`'s pass over the tokens: its sums, with lengths in the training space,
    and the reference rows they were taken on. :func:`scaling_from_sums` makes the result."""
    config = config or LatentScalingConfig()
    check_snapshot_decoders(crosscoder)
    check_recorded_partner(crosscoder, source, hook, used_by="latent_scaling")
    # the training-space decoder is formed again after the pass, so the pass holds no copy of it
    reference_FS = reference_rows(decoder_norm_table(training_space_decoder(crosscoder)), config.own_row_floor)
    batches, total = source_batches(source, crosscoder, hook=hook, config=config)
    sums = scaling_sums(crosscoder, batches, reference_FS, total=total, progress=progress, cofiring=cofiring)
    if sums.n_tokens == 0:
        raise ValueError("latent scaling read no tokens; pass a non-empty store, tensor or stream.")
    # lengths in the input space times the folded factors are lengths in the training space
    scale_S = folded_factors(crosscoder).double().to(sums.fx.device)
    sums = ScalingSums(
        n_tokens=sums.n_tokens,
        n_fire=sums.n_fire,
        ff=sums.ff,
        fx=sums.fx * scale_S,
        xx=sums.xx * scale_S.square(),
        fe=sums.fe * scale_S,
        ffs=sums.ffs,
    )
    return sums, reference_FS


def latent_scaling(
    crosscoder: Crosscoder,
    source: Any,
    *,
    hook: str | None = None,
    config: LatentScalingConfig | None = None,
    progress: bool = False,
    cofiring: CoFiring | None = None,
) -> LatentScaling:
    """Latent scaling of every latent at every snapshot, in one pass over ``source``.

    ``source``: an :class:`~crosslens.activations.store.ActivationStore` (``n_tokens`` tokens
    sampled with ``seed``, read normalised unless the crosscoder has its factors folded in; a
    store of other snapshots, hook or width than the crosscoder records is refused), a tensor
    ``[n_tokens, S, D]`` as the crosscoder reads it, or an iterable of such batches (a stream); a
    tensor or a stream is read up to ``config.n_tokens`` tokens.
    Rows are chosen on the training-space decoder (:func:`reference_rows`); amplitudes come back
    in the training space whether or not the normalisation factors are folded. ``cofiring`` (a
    :class:`~crosslens.analysis.composition.CoFiring` of the latents lineage's splits by
    composition ask about) is counted in the same pass.
    """
    sums, reference_FS = training_space_sums(
        crosscoder, source, hook=hook, config=config, progress=progress, cofiring=cofiring
    )
    return scaling_from_sums(sums, training_space_decoder(crosscoder).float(), reference_FS)


@torch.no_grad()
def per_latent_scaling(
    crosscoder: Crosscoder,
    acts_NSD: Float[torch.Tensor, "n n_snapshots d_in"],
    latents: Sequence[int] | None = None,
    *,
    config: LatentScalingConfig | None = None,
) -> LatentScaling:
    """The same numbers, latent by latent: for each latent its contribution and both targets
    formed token by token, and the least-squares scale fitted on them. A loop over latents, slow;
    it is what :func:`latent_scaling` is checked against. ``acts_NSD`` as the crosscoder reads
    them; ``latents`` (default all) picks the rows computed, the others stay 0."""
    config = config or LatentScalingConfig()
    check_snapshot_decoders(crosscoder)
    W_FSD = crosscoder.W_dec.detach().double()
    F, S, _ = W_FSD.shape
    W_train_FSD = training_space_decoder(crosscoder).double()
    reference_FS = reference_rows(W_train_FSD.norm(dim=-1), config.own_row_floor)
    scale_S = folded_factors(crosscoder).double().to(W_FSD.device)
    x_NSD = acts_NSD[: config.n_tokens].to(W_FSD.device, crosscoder.W_dec.dtype)
    f_NF, f_NSF, recon_NSD = codes_and_reconstruction(crosscoder, x_NSD)
    f_NF, x_NSD, recon_NSD = f_NF.double(), x_NSD.double(), recon_NSD.double()
    target_NSD = x_NSD - crosscoder.b_dec.detach().double()
    amplitude_FS, error_FS, stderr_FS = (torch.zeros(F, S, dtype=torch.float64) for _ in range(3))
    for j in range(F) if latents is None else latents:
        f_N = f_NF[:, j]
        fired_N, ff = f_N > 0, float((f_N * f_N).sum())
        if ff == 0:
            continue
        f_NS = f_N[:, None].expand(-1, S) if f_NSF is None else f_NSF[:, :, j].double()
        rows_SD = W_FSD[j, reference_FS[j].long()]
        unit_SD = rows_SD / rows_SD.norm(dim=-1, keepdim=True).clamp_min(_EPS)
        error_NSD = x_NSD - (recon_NSD - f_NS[..., None] * W_FSD[j][None])  # the error without latent j
        for s in range(S):
            along_N = target_NSD[:, s] @ unit_SD[s]
            amplitude = float((f_N * along_N).sum()) / ff
            amplitude_FS[j, s] = amplitude * scale_S[s]
            error_FS[j, s] = float((f_N * (error_NSD[:, s] @ unit_SD[s])).sum()) / ff * scale_S[s]
            residual_N = (along_N - amplitude * f_N)[fired_N]
            if len(residual_N) > 1:
                stderr_FS[j, s] = (residual_N.square().sum() / (len(residual_N) - 1) / ff).sqrt() * scale_S[s]
    rows_FSD = W_train_FSD[torch.arange(F)[:, None], reference_FS.long()].cpu()
    row_norm_FS, own_norm_FS = rows_FSD.norm(dim=-1), W_train_FSD.norm(dim=-1).cpu()
    own_cos_FS = (rows_FSD * W_train_FSD.cpu()).sum(-1) / (row_norm_FS * own_norm_FS).clamp_min(_EPS)
    carrier_FS, carrier_cos_FS = carriers(W_train_FSD, reference_FS, (f_NF > 0).any(0))
    return LatentScaling(
        reference=reference_FS.int().cpu(),
        row_norm=row_norm_FS.float(),
        own_cosine=own_cos_FS.float(),
        own_norm=own_norm_FS.float(),
        carrier=carrier_FS.int(),
        carrier_cosine=carrier_cos_FS,
        amplitude=amplitude_FS.float(),
        error_amplitude=error_FS.float(),
        stderr=stderr_FS.float(),
        n_fire=(f_NF > 0).sum(0).float().cpu(),
        n_tokens=len(x_NSD),
    )
