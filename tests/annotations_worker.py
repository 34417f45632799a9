"""A small crosslens workflow run with the package's jaxtyping annotations checked at run time:
jaxtyping's import hook wraps every function of ``crosslens`` as it is imported, and
:func:`check_arrays` has beartype check its array annotations (shapes, dtypes, and the dimension
names shared between arguments and the return value of one call). An annotation the code does not
keep fails here. Run by ``test_annotations.py`` in a fresh process: the hook must see crosslens's
first import.

    python tests/annotations_worker.py OUT_DIR
"""

from __future__ import annotations

import sys
import typing
from pathlib import Path

from beartype import beartype
from jaxtyping import AbstractArray, install_import_hook


def _has_array(hint: object) -> bool:
    if isinstance(hint, type) and issubclass(hint, AbstractArray):
        return True
    return any(_has_array(arg) for arg in typing.get_args(hint))


def check_arrays(function: typing.Any) -> typing.Any:
    """``function`` with its array annotations checked by beartype; the others (some of which name
    types imported only for type checkers) are left to the static checkers."""
    hints = {name: hint for name, hint in getattr(function, "__annotations__", {}).items() if _has_array(hint)}
    if not hints:
        return function
    function.__annotations__ = hints
    return beartype(function)


def main(out: Path) -> None:
    with install_import_hook("crosslens", "annotations_worker.check_arrays"):
        import torch
        from test_activations import HOOK, SEQ_LEN, _open_suite, _texts, _write_suite

        from crosslens import ArchitectureConfig, CrosscoderRunnerConfig, CrosscoderTrainingRunner, evaluate_crosscoder
        from crosslens.activations import harvest_activations, tokenize_texts
        from crosslens.causal import SnapshotCodec, spliced_loss

    suite = _open_suite(_write_suite(out / "suite", seeds=[0, 1, 2]))
    tokens_NL = tokenize_texts(suite.tokenizer(), _texts(120), SEQ_LEN, n_seqs=24)
    store = harvest_activations(suite, HOOK, tokens_NL, out / "store", progress=False)
    x_NSD = store.read(HOOK, torch.arange(6), normalize=True)
    for arch in ("crosscoder", "jumprelu_crosscoder", "topk_crosscoder", "batchtopk_crosscoder"):
        config = CrosscoderRunnerConfig(
            store_path=str(store.path),
            out_dir=str(out / arch),
            hook_name=HOOK,
            n_steps=6,
            train_batch_size_tokens=32,
            sae=ArchitectureConfig(architecture=arch, d_sae=64, k=4),
            progress=False,
        )
        crosscoder = CrosscoderTrainingRunner(config).run()
        crosscoder.decode(crosscoder.encode(x_NSD))
        crosscoder(x_NSD.reshape(2, 3, *x_NSD.shape[1:]))
        evaluate_crosscoder(crosscoder, store, HOOK, n_tokens=64)
        codec = SnapshotCodec(crosscoder, 1)
        codec.decode(codec.encode_single(torch.randn(2, 5, x_NSD.shape[-1])))
        crosscoder.snapshot_sae(1).encode(x_NSD[:, 1])
        spliced_loss(suite, crosscoder, tokens_NL[:4], hook=HOOK, batch_size=2)
        print(f"{arch}: checked")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
