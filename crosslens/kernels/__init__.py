"""How a crosscoder's training step and the trainer's Adam run: the implementations beneath the
architectures, and the plan that chooses among them.

The architectures (:mod:`crosslens.crosscoders`) hold the maths and name their fast paths
through the run's :class:`~crosslens.kernels.plan.KernelPlan`; the modules here implement them,
each with an eager reference or twin held equal to it by the tests:

- :mod:`~crosslens.kernels.plan`: the plan, one per run, and the JumpReLU paths it allows;
- :mod:`~crosslens.kernels.weight_grads`: the weight matmuls and decoder norms (float32 weight
  gradients under autocast, one gradient a micro-batched step);
- :mod:`~crosslens.kernels.step_weights`: what the optimizer writes for the next step, passed by
  argument;
- :mod:`~crosslens.kernels.compiled`: the elementwise chains under ``torch.compile``;
- :mod:`~crosslens.kernels.active_pairs`, :mod:`~crosslens.kernels.sparse` and
  :mod:`~crosslens.kernels.triton_sparse`: decode and decoder gradients from the active pairs;
- ``jumprelu_*``: JumpReLU's step by its per-snapshot code (``jumprelu_dense``, the reference),
  by entry classes, from its pairs, split, and their arithmetic (``jumprelu_ops``);
  :mod:`~crosslens.kernels.regated_decode` its decodes that regate their code in backward;
- :mod:`~crosslens.kernels.adam` and :mod:`~crosslens.kernels.triton_adam`: Adam's pass.

Nothing here imports a crosscoder; the triton modules are imported only where the plan runs them.
"""

import crosslens.core.cpu_math  # noqa: F401  (torch's CPU math started on one thread; see that module)
from crosslens.kernels.plan import JUMPRELU_PATHS, KernelPlan, WindowTile
from crosslens.kernels.step_weights import StepWeights

__all__ = ["JUMPRELU_PATHS", "KernelPlan", "StepWeights", "WindowTile"]
