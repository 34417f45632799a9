"""The demo's own logic (the stages themselves are tested in their modules and tutorials)."""

from crosslens.demo import _choose_steps

PICO_STEPS = [0, 1, 2, 4, 8, 16, 32, 64, 96, 144, 192, 240, 288, 336, 384, 432, 480, 528, 576, 624, 640]


def test_choose_steps_keeps_ends_and_covers_early_and_late_training():
    steps = _choose_steps(PICO_STEPS, 12)
    assert len(steps) == 12 and steps == sorted(set(steps))
    assert steps[0] == 0 and steps[-1] == 640
    assert sum(s <= 64 for s in steps) >= 4  # early, fast learning is sampled densely
    assert sum(s >= 192 for s in steps) >= 4  # and so is the attractor-agreement phase


def test_choose_steps_returns_everything_when_asked_for_more():
    assert _choose_steps(PICO_STEPS, 30) == PICO_STEPS
