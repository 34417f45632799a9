"""Max |log-prob difference| between crosslens's HookedTransformer and Hugging Face, per family.

Tiny random models (tests/hf_cache.py), converted through crosslens.checkpoints.hf_to_hooked:

    PYTHONPATH=. HF_HUB_OFFLINE=1 python scripts/check_family_logprobs.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from hf_cache import make_word_tokenizer, tiny_bloom, tiny_neox, tiny_olmo, tiny_olmo2, tiny_olmo3

from crosslens.checkpoints.convert import hf_to_hooked

TOKENS = torch.tensor([[3, 4, 5, 6, 7, 8, 9, 10, 11], [20, 21, 3, 30, 31, 40, 41, 50, 12]])


def main() -> None:
    torch.set_num_threads(1)
    folder = tempfile.TemporaryDirectory()  # TransformerLens re-reads the tokenizer from its folder
    make_word_tokenizer().save_pretrained(folder.name)
    tokenizer = AutoTokenizer.from_pretrained(folder.name)
    families = {
        "GPT-NeoX (Pythia)": tiny_neox(1),
        "OLMo-1": tiny_olmo(2),
        "OLMo-2": tiny_olmo2(3),
        "OLMo-2, grouped-query attention": tiny_olmo2(4, num_key_value_heads=2),
        "OLMo-3 (sliding + full attention, GQA)": tiny_olmo3(5),
        "BLOOM": tiny_bloom(6),
    }
    print(f"{'family':40s} {'max |d log-prob|':>17s}  processing")
    for name, hf_model in families.items():
        model = hf_to_hooked(hf_model, model_id=f"test/{name}", tokenizer=tokenizer)
        with torch.no_grad():
            gap = (model(TOKENS).log_softmax(-1) - hf_model(TOKENS).logits.log_softmax(-1)).abs().max().item()
        folded = "fold_ln" if model.cfg.normalization_type in ("LNPre", "RMSPre") else "norms kept (post-norm)"
        print(f"{name:40s} {gap:17.2e}  {folded}")


if __name__ == "__main__":
    main()
