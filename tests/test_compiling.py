"""crosslens's compiled functions in two threads: a call waits while the other thread compiles,
where a plain ``torch.compile`` call fails, and a backward compiles with its forward.

The compile in these tests holds an FX trace open (its backward compiler traces a module that
waits), as Inductor's passes trace while they lower a backward."""

from __future__ import annotations

import threading

import torch
from functorch.compile import make_boxed_func
from torch._dynamo.backends.common import aot_autograd

from crosslens.core.compiling import compile_function

TRACING, RELEASE = threading.Event(), threading.Event()


class _HeldTrace(torch.nn.Module):
    """Traced by FX, it stays inside the trace until the test lets go."""

    def forward(self, x):
        TRACING.set()
        RELEASE.wait(timeout=60)
        return x


def _backend(compiled_backwards: list[int] | None = None):
    def backward_compiler(graph, example_inputs):
        if compiled_backwards is not None:
            compiled_backwards.append(len(graph.graph.nodes))
        torch.fx.symbolic_trace(_HeldTrace())
        return make_boxed_func(graph)

    return aot_autograd(fw_compiler=lambda graph, example_inputs: make_boxed_func(graph), bw_compiler=backward_compiler)


def _race(squares, plus_one) -> dict:
    """``plus_one`` (compiled already) called from a second thread while this one trains through
    ``squares`` for the first time, whose compile holds an FX trace open for 0.5 s."""
    TRACING.clear()
    RELEASE.clear()
    plus_one(torch.ones(3))
    outcome: dict = {}

    def other() -> None:
        TRACING.wait(timeout=60)
        threading.Timer(0.5, RELEASE.set).start()
        try:
            outcome["value"] = plus_one(torch.ones(3))
        except RuntimeError as error:
            outcome["error"] = str(error)
        outcome["after_the_compile"] = RELEASE.is_set()

    thread = threading.Thread(target=other)
    thread.start()
    x = torch.arange(4.0, requires_grad=True)
    squares(x).backward()
    thread.join(timeout=60)
    torch.testing.assert_close(x.grad, 2 * torch.arange(4.0))
    return outcome


def _square_sum(x: torch.Tensor) -> torch.Tensor:
    return (x * x).sum()


def test_a_compiled_call_waits_for_the_other_threads_compile():
    outcome = _race(
        compile_function(_square_sum, backend=_backend()), compile_function(lambda x: x + 1, backend="eager")
    )
    assert outcome.get("error") is None
    torch.testing.assert_close(outcome["value"], torch.full((3,), 2.0))
    assert outcome["after_the_compile"]


def test_a_plain_compiled_call_fails_in_that_race():
    """The race is real: through ``torch.compile`` alone, the call fails at once."""
    outcome = _race(torch.compile(_square_sum, backend=_backend()), torch.compile(lambda x: x + 1, backend="eager"))
    assert "symbolically trace a dynamo-optimized function" in outcome["error"]
    assert not outcome["after_the_compile"]


def test_the_backward_compiles_with_the_forward():
    compiled_backwards: list[int] = []
    RELEASE.set()
    squares = compile_function(_square_sum, backend=_backend(compiled_backwards))
    x = torch.arange(4.0, requires_grad=True)
    loss = squares(x)
    assert len(compiled_backwards) == 1  # before any backward()
    loss.backward()
    torch.testing.assert_close(x.grad, 2 * torch.arange(4.0))
    assert len(compiled_backwards) == 1
