"""Progress of long work in logs that are not a terminal: plain lines, not a redrawn bar
(`detcon pretrain` wrote nothing to a SLURM .out until it ended; `detcon masks precompute`
wrote 8-10 carriage-return updates a second)."""

from __future__ import annotations

import functools

import pytest

from detcon import cli
from detcon.progress import ProgressLines, format_duration


def test_durations_read_in_two_units_at_most():
    assert [format_duration(s) for s in (0, 42.4, 187, 3600 * 5 + 125)] == [
        "0s",
        "42s",
        "3m07s",
        "5h02m",
    ]


def test_a_line_a_period_with_the_rate_and_the_time_left_of_this_process():
    now = [100.0]
    lines: list[str] = []
    progress = ProgressLines(
        "pretrain", 1000, "steps", initial=200, every_s=60, write=lines.append, clock=lambda: now[0]
    )
    now[0] = 130.0
    progress.update(260)  # before the first minute: nothing
    assert lines == []
    now[0] = 160.0
    progress.update(320, "loss 2.5000")  # 120 steps in 60 s since the resume at 200
    assert lines == [
        "pretrain: 320/1000 steps (32.0%), 2 steps/s, 1m00s elapsed, ETA 5m40s; loss 2.5000"
    ]
    now[0] = 200.0
    progress.update(400)  # 40 s after the last line: none
    assert len(lines) == 1
    now[0] = 221.0
    progress.update(420)
    assert lines[-1].startswith("pretrain: 420/1000 steps (42.0%), 1.82 steps/s, 2m01s elapsed")


PRETRAIN = [
    *("pretrain", "--profile", "cpu"),
    *("--set", "data.num_images=16", "--set", "data.scene_size=32"),
    *("--set", "masks.fh_min_size=16", "--set", "augment.crop_size=32"),
    *("--set", "model.small_width=4", "--set", "model.head_hidden=32"),
    *("--set", "model.head_out=16", "--set", "optim.batch_size=4", "--set", "optim.epochs=1"),
    *("--set", "optim.warmup_epochs=0"),
    *("--set", "train.threads=1", "--set", "data.num_workers=0"),
]


@pytest.fixture
def every_call(monkeypatch):
    """Lines at every update (not one a minute), in the modules that draw them."""
    eager = functools.partial(ProgressLines, every_s=0.0)
    monkeypatch.setattr("detcon.train.ProgressLines", eager)
    monkeypatch.setattr("detcon.masks.store.ProgressLines", eager)


def test_pretrain_writes_lines_where_stderr_is_not_a_terminal(tmp_path, capsys, every_call):
    assert cli.main([*PRETRAIN, "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err  # captured: not a terminal
    assert "\r" not in err
    lines = [line for line in err.splitlines() if line.startswith("pretrain: ")]
    assert [line.split()[1] for line in lines] == ["1/4", "2/4", "3/4", "4/4"], err
    assert "steps/s" in lines[0] and "; loss " in lines[0]
    # --quiet: nothing
    assert cli.main([*PRETRAIN, "--out", str(tmp_path / "quiet"), "--quiet"]) == 0
    assert "pretrain: " not in capsys.readouterr().err


def test_precompute_writes_lines_where_stderr_is_not_a_terminal(tmp_path, capsys, every_call):
    args = ["masks", "precompute", "--profile", "cpu", "--source", "grid"]
    args += ["--set", "data.num_images=8", "--set", "data.scene_size=32", "--shard-size", "4"]
    assert cli.main([*args, "--out", str(tmp_path / "store")]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "%|" not in err  # no bar
    lines = [line for line in err.splitlines() if line.startswith("masks[grid] -> store: ")]
    assert lines and lines[-1].startswith("masks[grid] -> store: 8/8 img (100.0%)"), err


def test_an_interrupted_pretrain_says_what_it_kept(tmp_path, capsys, monkeypatch):
    import detcon.train

    real = detcon.train.train_step
    calls = []

    def interrupted_at_the_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(detcon.train, "train_step", interrupted_at_the_third)
    out = tmp_path / "run"
    args = [*PRETRAIN, "--set", "train.checkpoint_every=2", "--quiet", "--out", str(out)]
    assert cli.main(args) == 130
    err = capsys.readouterr().err
    assert err.startswith("detcon pretrain: interrupted. The last good checkpoint (")
    assert "step 2) is kept" in err and err.rstrip().endswith("the same command resumes it")
