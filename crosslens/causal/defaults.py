"""The causal stage's defaults, in a module without torch so that ``crosslens attribute --help``
shows them: the demo, :func:`~crosslens.causal.sections.attribution_sections` and the command line
read them here."""

TASK = "agreement_pp"
"""The task attributed when none is named: subject-verb agreement across a prepositional phrase
(:mod:`crosslens.tasks`)."""

N_EXAMPLES = 64
"""Minimal pairs of the task scored."""
