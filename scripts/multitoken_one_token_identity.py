"""Do one-token tasks give the same numbers as a revision without multi-token support?

Runs the causal stage's pieces on tests/test_causal.py's fixtures (three tiny random
snapshots, a seeded JumpReLU crosscoder, six one-token agreement pairs) with the code
on PYTHONPATH and saves every result; ``--compare`` checks two saves bit for bit.

    git archive d14e4ae | tar -x -C /tmp/old          # a revision before multi-token support
    PYTHONPATH=/tmp/old python scripts/multitoken_one_token_identity.py /tmp/old.pt
    PYTHONPATH=$PWD python scripts/multitoken_one_token_identity.py /tmp/new.pt
    python scripts/multitoken_one_token_identity.py --compare /tmp/old.pt /tmp/new.pt

The tests directory is taken from the first PYTHONPATH entry, so each run uses its own tree's fixtures.
"""

from __future__ import annotations

import os
import sys

import torch


def compute(path: str) -> None:
    root = os.environ["PYTHONPATH"].split(os.pathsep)[0]
    sys.path.insert(0, os.path.join(root, "tests"))
    torch.set_num_threads(1)
    import test_causal as fixtures

    from crosslens.causal import task_metric
    from crosslens.causal.ablation import ablation_curve
    from crosslens.causal.attribution import AttributionConfig, attribute, attribute_snapshot
    from crosslens.causal.snapshot_models import collect_activations
    from crosslens.causal.splicing import exact_codes
    from crosslens.tasks.agreement import agreement_pairs

    tokenizer = fixtures.tokenizer.__wrapped__()
    snapshots = fixtures.snapshots.__wrapped__(tokenizer)
    task = agreement_pairs("pp", n=6, seed=0).tokenize(tokenizer)
    crosscoder = fixtures.make_crosscoder("jumprelu_crosscoder")
    config = AttributionConfig(n_steps=4, batch_size=4)
    one = attribute_snapshot(snapshots[1], crosscoder, task, snapshot=1, config=config, keep_per_token=True)
    table = attribute(snapshots, crosscoder, task, config=AttributionConfig(n_steps=3), progress=False)
    codes = exact_codes(
        crosscoder, collect_activations(snapshots, fixtures.HOOK, task.clean_tokens, task.mask.long()), 1
    )
    rows = ablation_curve(
        snapshots[1], crosscoder, task, one.ie, snapshot=1, ks=[1, 5, 64], codes=codes, keep_only=True, batch_size=4
    )
    results = {
        "metric_clean": one.metric_clean,
        "metric_patch": one.metric_patch,
        "ie": one.ie,
        "per_token": one.per_token,
        "error_ie": torch.tensor(one.error_ie),
        "total_ie": one.total_ie,
        "table_ie": table.ie,
        "table_clean": table.metric_clean,
        "table_patch": table.metric_patch,
        "keep_only_curve": torch.tensor([r["metric"] for r in rows]),
        "task_metric": task_metric(snapshots[1], task),
    }
    torch.save(results, path)
    print(f"saved {len(results)} results to {path}")


def compare(first: str, second: str) -> None:
    a, b = torch.load(first), torch.load(second)
    same = [name for name in a if torch.equal(a[name], b[name])]
    for name in a:
        print(f"{name:>16s}  {'bit-identical' if name in same else 'DIFFERENT'}")
    print(f"{len(same)} of {len(a)} results bit-identical")


if __name__ == "__main__":
    if sys.argv[1] == "--compare":
        compare(sys.argv[2], sys.argv[3])
    else:
        compute(sys.argv[1])
