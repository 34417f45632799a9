"""Every feature explained in words, at its code and at each phase of its life, scored, and
searchable: ``crosslens explain RUN``.

A language model behind an OpenAI-compatible endpoint (vLLM, llama.cpp's server, Ollama, a hosted
API) reads each feature's stored contexts (:mod:`crosslens.dashboards`; nothing is computed again)
and writes one explanation of the crosscoder's own code and one per phase of the feature's life:
at its emergence snapshot, its peak and the last snapshot, where the contexts there differ. The
same model then judges held-out activating and non-activating contexts from each explanation alone:
the balanced accuracy of its judgements is the explanation's detection score (delphi's). Each
phase's explanation is also judged on the other phases' contexts; a feature whose explanation holds
at one phase and not at another has drifted in meaning.

* :func:`explain_run` (``crosslens explain RUN --endpoint URL --model NAME``) and :func:`dry_run`;
* :func:`import_explanations` (``--import FILE``): a delphi run's output or Neuronpedia's export;
* :class:`StubEndpoint`: a stand-in endpoint from the standard library (tests, tutorials, trials).

The answers go to ``RUN/explanations.sqlite`` (:mod:`crosslens.dashboards.explanation_schema`),
which ``crosslens browse`` searches and ``crosslens export --format neuronpedia`` carries across.
The prompt format is :data:`~crosslens.explain.prompts.PROMPT_FORMAT`.
"""

from crosslens.core.lazy import lazy_attributes

_LAZY = {
    "ExplainConfig": "crosslens.explain.config",
    "ExplainError": "crosslens.explain.config",
    "EndpointError": "crosslens.explain.client",
    "PROMPT_FORMAT": "crosslens.explain.prompts",
    "Summary": "crosslens.explain.run",
    "dry_run": "crosslens.explain.run",
    "explain_run": "crosslens.explain.run",
    "ImportSummary": "crosslens.explain.imports",
    "import_explanations": "crosslens.explain.imports",
    "StubEndpoint": "crosslens.explain.stub",
}

__all__ = sorted(_LAZY)
__getattr__ = lazy_attributes(__name__, _LAZY)
