"""Leakage on the planted set: how much norm do learned decoder rows keep at snapshots
where their planted feature is absent, do those rows get any gradient, and how does that
follow the sparsity settings?

    PYTHONPATH=. python scripts/planted_leakage.py ARCH STEPS BATCH ['{"sparsity": 1.5, "k": 4, "seed": 0, ...}']

The JSON holds ``sparsity`` (lambda), ``k``, ``lr``, ``seed`` and any training-config field
of the architecture (e.g. ``closed_gate_decoder_grad``). Prints recovery, L0, the mean
normalised norm of recovered latents at absent snapshots (and the share >= 0.3), their
per-snapshot firing relative to peak, the share of those rows whose gradient is exactly
zero on a fresh batch, and the same norm figure every STEPS/6 steps of training.
"""

import json
import sys
import time

import torch

from crosslens.analysis import EvolutionAnalysis, PlantedConfig, PlantedEvolution, planted_scores
from crosslens.analysis.planted_match import match_planted
from crosslens.analysis.probes import firing_frequency
from crosslens.architectures import DEFAULT_LR, defaults_for, sparsity_coefficient_for
from crosslens.training import CrosscoderTrainer, CrosscoderTrainerConfig
from crosslens.training.factory import build_training_crosscoder

torch.set_num_threads(1)
arch = sys.argv[1]
steps = int(sys.argv[2])
bs = int(sys.argv[3])
extra = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
seed = extra.pop("seed", 0)
k = extra.pop("k", 4)
lr = extra.pop("lr", DEFAULT_LR)
coef = extra.pop("sparsity", sparsity_coefficient_for(arch, n_snapshots=8, d_in=64, d_sae=128))
p = PlantedEvolution.build(PlantedConfig.hard(seed=0))
torch.manual_seed(seed)
cc = build_training_crosscoder(
    arch,
    d_in=64,
    n_snapshots=8,
    d_sae=128,
    k=k,
    sparsity_coefficient=coef,
    sparsity_warm_up_steps=int(steps * defaults_for(arch).sparsity_warm_up),
    **extra,
)
tr = CrosscoderTrainer(
    cc, CrosscoderTrainerConfig(total_steps=steps, lr=lr, lr_decay_steps=steps // 5, seed=seed, save_final=False)
)
batches = p.batches(bs, seed=1000 + seed)
acts, coeff = p.sample(20000, torch.Generator().manual_seed(5))
absent = ~p.present
t = time.time()
history = []


def absent_stats():
    cc.eval()
    m = match_planted(cc.W_dec.detach(), p)
    norms = cc.decoder_norms()
    nn_ = norms / norms.amax(1, keepdim=True)
    pairs = m.recovered
    vals = [nn_[j][absent[i]] for j, i in pairs if absent[i].any()]
    v = torch.cat(vals) if vals else torch.zeros(1)
    cc.train()
    return len(pairs), float(v.mean()), float((v > 0.3).float().mean())


from crosslens.core.seeding import seed_everything

seed_everything(seed)
for step in range(steps):
    out = tr.step(next(batches))
    if (step + 1) % (steps // 6) == 0:
        history.append((step + 1,) + absent_stats())
cc.eval()
# gradient reaching absent rows on a fresh batch (sparsity coefficient at its final value)
from sae_lens.saes.sae import TrainStepInput

cc.train()
cc.zero_grad()
o = cc.training_forward_pass(
    TrainStepInput(
        sae_in=next(batches),
        coefficients=tr.coefficients,
        dead_neuron_mask=tr.dead_features,
        n_training_steps=steps,
        is_logging_step=False,
    )
)
o.loss.backward()
g = cc.W_dec.grad.norm(dim=-1)
cc.eval()
freq = firing_frequency(acts, cc)
sfreq = firing_frequency(acts, cc, per_snapshot=True)
an = EvolutionAnalysis.from_crosscoder(cc, steps=p.steps, frequency=freq)
an_dn = EvolutionAnalysis.from_crosscoder(
    cc,
    steps=p.steps,
    frequency=freq,
    config=__import__("crosslens.analysis", fromlist=["EvolutionConfig"]).EvolutionConfig(presence="decoder_norm"),
)
an_sf = EvolutionAnalysis.from_crosscoder(cc, steps=p.steps, frequency=freq, snapshot_frequency=sfreq)
m = match_planted(cc.W_dec.detach(), p)
pairs = m.recovered
norms = cc.decoder_norms()
nn_ = norms / norms.amax(1, keepdim=True)
ab_n = torch.cat([nn_[j][absent[i]] for j, i in pairs if absent[i].any()])
ab_f = torch.cat([(sfreq[j] / sfreq[j].amax().clamp_min(1e-9))[absent[i]] for j, i in pairs if absent[i].any()])
ab_g = torch.cat([g[j][absent[i]] for j, i in pairs if absent[i].any()])
pr_g = torch.cat([g[j][~absent[i]] for j, i in pairs])
r = planted_scores(an, p)
rd = planted_scores(an_dn, p)
rs = planted_scores(an_sf, p)
print(
    f"{arch} lambda={coef} k={k} {extra} seed={seed} bs={bs} steps={steps} {time.time() - t:.0f}s rec={r['n_recovered']} minmmcs={r['min_mmcs']:.3f} mcc={r['sae_lens_mcc']:.3f} "
    f"timeline robust={r['timeline_accuracy']:.2f} decnorm={rd['timeline_accuracy']:.2f} robust+firing={rs['timeline_accuracy']:.2f} L0={(cc.encode(acts) != 0).sum(-1).float().mean():.2f}"
)
print(
    f"  absent rows: mean norm/peak {ab_n.mean():.3f}, share>0.3 {(ab_n > 0.3).float().mean():.2f}, mean firing/peak {ab_f.mean():.3f}, "
    f"grad==0 share {(ab_g == 0).float().mean():.2f} (present rows grad==0 share {(pr_g == 0).float().mean():.2f})"
)
print(
    "  history (step, recovered, absent norm/peak mean, share>0.3):",
    [(a, b, round(c, 3), round(d, 2)) for a, b, c, d in history],
)
