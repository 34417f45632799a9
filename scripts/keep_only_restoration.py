"""Keep-only top-k restoration at the demo's final snapshot: zero vs mean ablation, all vs last position.

Usage: python scripts/keep_only_restoration.py [DEMO_DIR]   (default $CROSSLENS_HOME/demo)
"""

import json
import sys

import torch
from sae_lens import SAE

import crosslens.crosscoders  # noqa: F401  (registers the crosscoder architectures with SAELens)
from crosslens.causal.ablation import ablate, mean_feature_codes, task_metric, top_k_features
from crosslens.causal.ie_table import IETable
from crosslens.causal.snapshot_models import collect_activations, tokenize_task
from crosslens.causal.splicing import exact_codes
from crosslens.checkpoints import CheckpointSuite
from crosslens.core.hooks import crosscoder_hook
from crosslens.tasks import task_for_tokenizer

torch.set_grad_enabled(False)
from crosslens.core.paths import crosslens_home

# the demo's outputs (run `make demo` first), or a demo folder given on the command line
DEMO = sys.argv[1] if len(sys.argv) > 1 else str(crosslens_home() / "demo")
cc = SAE.load_from_disk(f"{DEMO}/crosscoder/final", device="cpu")
provenance = cc.cfg.metadata.suite
STEPS = [int(entry["step"]) for entry in provenance["snapshots"]]
suite = CheckpointSuite.local(provenance["root"]).select(steps=STEPS)
hook = crosscoder_hook(cc, None)
table = IETable.load(f"{DEMO}/causal-agreement_pp/ie_table.json")
dataset = task_for_tokenizer("agreement_pp", suite.tokenizer(), n=64, seed=0)  # as the demo
_, task = tokenize_task(dataset, suite, None)
acts = collect_activations(suite, hook, task.clean_tokens, task.mask.long())
snap = len(STEPS) - 1
column = table.snapshots.index(snap)
ie = table.ie[:, column]
model = suite.load(snap)
codes = exact_codes(cc, acts, snap)
feat_mask = task.feature_mask()
last_mask = torch.zeros_like(feat_mask)
last_mask[torch.arange(len(task)), task.last_pos] = True
means = mean_feature_codes(codes, feat_mask)
d_sae = cc.cfg.d_sae
print(
    f"d_sae {d_sae}; active on task: {int((codes[feat_mask] != 0).any(0).sum())}; "
    f"mean L0 per token {float((codes[feat_mask] != 0).sum(-1).float().mean()):.1f}"
)


def metric(features, mode, where, keep_only=True):
    with ablate(
        model,
        cc,
        snapshot=snap,
        features=features,
        mode=mode,
        keep_only=keep_only,
        mean_codes=means if mode == "mean" else None,
        hook=hook,
        codes=codes,
        positions=where,
    ):
        return float(task_metric(model, task).mean())


m_clean = float(task_metric(model, task).mean())
KS = [10, 20, 50, 100, 200]
rows = []
for mode in ("zero", "mean"):
    for where_name, where in (("all positions", feat_mask), ("last position", last_mask)):
        base = metric([], mode, where)  # keep nothing = ablate every feature
        abl10 = metric(top_k_features(ie, 10), mode, where, keep_only=False)
        out = {"mode": mode, "where": where_name, "clean": m_clean, "ablate_all": base, "ablate_top10": abl10}
        for k in KS:
            m = metric(top_k_features(ie, k), mode, where)
            out[f"keep{k}"] = m
            out[f"restore{k}"] = (m - base) / (m_clean - base)
            out[f"restore_vs_chance{k}"] = m / m_clean
        rows.append(out)
        print(json.dumps(out))
json.dump(rows, open(f"{DEMO}/keep_only_restoration.json", "w"), indent=1)
print(f"\nclean m = {m_clean:+.3f}")
print(
    "| ablation | positions | ablate-all m | ablate top-10 m | "
    + " | ".join(f"keep {k}: m (restore / vs chance)" for k in KS)
    + " |"
)
for r in rows:
    cells = " | ".join(f"{r[f'keep{k}']:+.2f} ({r[f'restore{k}']:.0%} / {r[f'restore_vs_chance{k}']:.0%})" for k in KS)
    print(f"| {r['mode']} | {r['where']} | {r['ablate_all']:+.2f} | {r['ablate_top10']:+.2f} | {cells} |")

# Why the jump between k=50 and k=100: which features in ranks 51..100 carry the restoration?
ranked = top_k_features(ie, d_sae)
n_nonzero = int((ie != 0).sum())
freq = (codes[feat_mask] != 0).float().mean(0)
print(f"\nfeatures with nonzero IE at the final snapshot: {n_nonzero}; active on task: {int((freq > 0).sum())}")
print("rank, feature, IE, firing rate on task tokens, mean code")
for r in range(0, 110):
    f = int(ranked[r])
    if r < 12 or freq[f] > 0.2:
        print(r, f, f"{float(ie[f]):+.4f}", f"{float(freq[f]):.2f}", f"{float(means[f]):.3f}")
base = metric([], "zero", feat_mask)
for k in (50, 60, 70, 80, 90, 100):
    print("zero keep", k, f"{metric(top_k_features(ie, k), 'zero', feat_mask):+.2f}")
dense = torch.nonzero(freq > 0.5).flatten()
print("dense (>50% of task tokens) features:", dense.tolist(), "IE:", [round(float(ie[f]), 4) for f in dense])
for k in (10, 20, 50):
    keep = torch.unique(torch.cat([top_k_features(ie, k), dense]))
    print(
        f"zero keep top-{k} + dense ({len(keep)} features): {metric(keep, 'zero', feat_mask):+.2f}; mean: {metric(keep, 'mean', feat_mask):+.2f}"
    )

# Feature 901 (rank ~90 by |IE|, IE ~ 0, on 40% of task tokens, large code): does it hold the restoration?
big = torch.nonzero((freq > 0.2) & (means > 1.0)).flatten()
print("frequent large-code features:", big.tolist(), "IE:", [round(float(ie[f]), 4) for f in big])
print(
    f"ablate only 901: zero {metric([901], 'zero', feat_mask, keep_only=False):+.2f}, mean {metric([901], 'mean', feat_mask, keep_only=False):+.2f}"
)
for k in (3, 10, 20, 50):
    for extra_name, extra in (("901", torch.tensor([901])), ("frequent large-code", big)):
        keep = torch.unique(torch.cat([top_k_features(ie, k), extra]))
        print(
            f"keep top-{k} + {extra_name} ({len(keep)}): zero {metric(keep, 'zero', feat_mask):+.2f}, mean {metric(keep, 'mean', feat_mask):+.2f}"
        )
