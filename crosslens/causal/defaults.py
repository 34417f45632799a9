"""The causal stage's defaults, in a module without torch so that the command line (``crosslens
attribute``, the spliced-loss flags of ``train`` and ``evaluate``) shows them: the demo, the stage's
functions and the command line read them here."""

TASK = "agreement_pp"
"""The task attributed when none is named: subject-verb agreement across a prepositional phrase
(:mod:`crosslens.tasks`)."""

N_EXAMPLES = 64
"""Minimal pairs of the task scored."""

TOP_K = 10
"""Features taken from each snapshot's top by |IE| into the set whose RelIE is read."""

ABLATION_KS = (1, 2, 5, 10, 20, 50, 100, 200)
"""Sizes of the ablated and kept feature sets of the ablation curves."""

N_BOOT = 1000
"""Bootstrap resamples of the examples behind each selected feature's IE confidence interval."""

EFFECT_FLOOR_SHARE = 0.02
"""RelIE classes a feature only where its summed |IE| reaches this share of the mean clean-vs-patched
metric gap (the noise floor, unless the stage is given one)."""

SPLICED_ABLATIONS = ("zero", "mean")
"""The floors of the spliced-model loss: the activation zeroed, or replaced by its mean over the
trained positions (``crosslens.causal.spliced_loss_eval.SplicedAblation``)."""

SPLICED_ABLATION = "zero"
"""The floor the spliced-model loss is measured against when none is named."""
