"""The run's own log (train_log.jsonl): what the trainer writes there, what a resume keeps, and
what `crosslens train` adds after training."""

from __future__ import annotations

import itertools

import pytest
from test_trainer import B, make_batches, make_sae, trainer_cfg

from crosslens.training import CrosscoderTrainer, LoggingConfig, latest_checkpoint
from crosslens.training.run_log import RunLog, RunLogError, append_record, read_run_log


def _without_seconds(records):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def test_the_trainer_logs_each_interval_and_times_checkpoints_and_the_final_save(tmp_path):
    log = tmp_path / "train_log.jsonl"
    cfg = trainer_cfg(
        total_steps=12,
        checkpoint_dir=str(tmp_path),
        checkpoint_every=6,
        log_path=str(log),
        logger=LoggingConfig(wandb_log_frequency=4),
    )
    trainer = CrosscoderTrainer(make_sae("jumprelu_crosscoder"), cfg)
    trainer.fit(make_batches)
    records = read_run_log(log)
    assert [(r["kind"], r.get("step")) for r in records] == [
        ("start", 0),
        ("step", 4),
        ("checkpoint", 6),
        ("step", 8),
        ("step", 12),
        ("checkpoint", 12),
        ("final", 12),
    ]
    assert records[0]["total_steps"] == 12 and records[0]["d_sae"] == 32
    steps = [r for r in records if r["kind"] == "step"]
    assert [r["n_tokens"] for r in steps] == [4 * B, 8 * B, 12 * B]
    assert steps[-1]["l0"] == pytest.approx(float(trainer.last_l0))
    # the step's own schedule: decay over the last 5 steps reaches 0 at step 12 (SAELens's linear decay)
    assert steps[-1]["lr"] == pytest.approx(trainer.optimizer.param_groups[0]["lr"])
    assert steps[0]["coefficients"]["l0"] == pytest.approx(0.01 * 4 / 5)  # warm-up over 5 steps
    seconds = [r["seconds"] for r in steps]
    assert seconds == sorted(seconds) and seconds[0] > 0
    assert all(r["seconds"] >= 0 for r in records if r["kind"] in ("checkpoint", "final"))


def test_a_resume_keeps_the_log_up_to_its_checkpoint_and_reads_as_one_run(tmp_path):
    straight_log = tmp_path / "straight.jsonl"
    cfg = dict(total_steps=12, checkpoint_every=4, logger=LoggingConfig(wandb_log_frequency=2))
    straight_cfg = trainer_cfg(checkpoint_dir=str(tmp_path / "straight"), log_path=str(straight_log), **cfg)
    CrosscoderTrainer(make_sae("crosscoder"), straight_cfg).fit(make_batches)

    run = tmp_path / "run"
    log = run / "train_log.jsonl"
    interrupted = trainer_cfg(checkpoint_dir=str(run), log_path=str(log), **cfg)
    with pytest.raises(ValueError, match="ran out after 10 of 12"):
        CrosscoderTrainer(make_sae("crosscoder"), interrupted).fit(itertools.islice(make_batches(), 10))
    assert read_run_log(log)[-1] == {**read_run_log(log)[-1], "kind": "step", "step": 10}
    checkpoint = latest_checkpoint(run)
    assert checkpoint.name == "step_00000008"  # steps 9 and 10 ran after it and are logged
    CrosscoderTrainer.from_checkpoint(checkpoint).fit(make_batches)

    records = read_run_log(log)
    assert [(r["kind"], r["step"]) for r in records if r["kind"] == "start"] == [("start", 0), ("start", 8)]
    resumed = [r for r in records if r["kind"] != "start"]
    straight = [r for r in read_run_log(straight_log) if r["kind"] != "start"]
    # the same steps with the same losses and the same checkpoints, once each
    assert _without_seconds(resumed) == _without_seconds(straight)
    assert [r["step"] for r in resumed if r["kind"] == "checkpoint"] == [4, 8, 12]

    # killed after its final save, before the quality table was sealed: the resume from the last
    # checkpoint saves the crosscoder again and the log holds that save once, not two
    append_record(run, "evaluation", seconds=1.0)
    CrosscoderTrainer.from_checkpoint(latest_checkpoint(run)).fit(make_batches)
    records = read_run_log(log)
    assert [r["kind"] for r in records].count("final") == 1 and records[-1]["kind"] == "final"
    assert "evaluation" not in [r["kind"] for r in records]
    assert [r["step"] for r in records if r["kind"] == "start"] == [0, 8, 12]


def test_a_log_is_refused_at_the_line_that_is_not_a_record(tmp_path):
    log = tmp_path / "train_log.jsonl"
    RunLog(log).write("step", step=1)
    with log.open("a") as f:
        f.write('{"step": 2}\n{"kind": "step", "st\n')
    with pytest.raises(RunLogError, match=r"train_log.jsonl:2: a record must be a JSON object with a 'kind'"):
        read_run_log(log)
    log.write_text('{"kind": "start"}\n{"kind": "step", "st\n')
    with pytest.raises(RunLogError, match=r"train_log.jsonl:2: not JSON \(Unterminated string"):
        read_run_log(log)
    with pytest.raises(RunLogError, match=rf"^{tmp_path} is a folder; a run's log is the file {log}$"):
        read_run_log(tmp_path)  # the run folder, not its log


def test_a_log_without_a_path_writes_nothing_and_append_adds_to_a_run_folder(tmp_path):
    quiet = RunLog.begin(None, step=0, total_steps=3)
    quiet.write("step", step=1)
    with quiet.timed("checkpoint", "cpu", step=1):
        pass
    assert list(tmp_path.iterdir()) == []
    append_record(tmp_path, "evaluation", seconds=1.5)
    assert read_run_log(tmp_path / "train_log.jsonl") == [{"kind": "evaluation", "seconds": 1.5}]
