"""`mgen train` input validation (issues 18/19: one line, exit 2, nothing started) and the loss/lr curve PNG."""

from __future__ import annotations

import json
import sys

import pytest

from mgen import cli
from mgen.errors import UserError
from mgen.train import TrainConfig, Trainer
from train_helpers import TinyTask, data

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture
def fake_builder(monkeypatch):
    """Any family's builder, reduced to what they share: TrainConfig.from_mapping(entry.train, overrides)."""
    import mgen.commands.train as cmd

    calls = []

    def build(entry, out_dir, max_steps, batch_size, seed):
        train = {k: v for k, v in entry.train.items() if k in {"lr", "plot", "mixed_precision", "seed", "micro_batch_size"}}
        cfg = TrainConfig.from_mapping({"max_steps": 3, "batch_size": 8, "log_every": 1, "progress": False, **train},
                                       out_dir=out_dir, max_steps=max_steps, batch_size=batch_size, seed=seed)
        calls.append(cfg)
        return Trainer(TinyTask(), data(), cfg)

    monkeypatch.setattr(cmd, "_build", build)
    return calls


def _main(capsys, *args: str) -> tuple[int, str]:
    try:
        code = cli.main(["train", *args])
    except SystemExit as e:  # argparse refusals
        code = e.code
    return code, capsys.readouterr().err


BAD_NUMBERS = [
    ["--batch-size", "0"], ["--batch-size", "-1"], ["--max-steps", "0"], ["--max-steps", "-5"],
    ["--lr", "nan"], ["--lr", "inf"], ["--lr", "-inf"], ["--lr", "0"], ["--lr", "-1e-3"], ["--lr", "2"],
    ["--seed", "-1"], ["--seed", "99999999999999999999999"],
    ["--micro-batch-size", "0"], ["--batch-size", "abc"], ["--batch-size", "1.5"], ["--max-steps", "nan"], ["--lr", "fast"],
    ["--mixed-precision", "fp64"],
]


@pytest.mark.parametrize("bad", BAD_NUMBERS, ids=[" ".join(b) for b in BAD_NUMBERS])
def test_bad_numbers_refused_in_one_line(tmp_path, capsys, fake_builder, bad):
    code, err = _main(capsys, "--config", "mar-digits", "--out", str(tmp_path / "run"), *bad)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "error" in err and "Traceback" not in err, err
    assert not fake_builder, "nothing may start on a bad value"
    assert not (tmp_path / "run").exists()


def _file(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    return f


OUTS = {
    "out is a file": lambda tmp: _file(tmp),
    "out under a file": lambda tmp: _file(tmp) / "run",
    "out deep under a file": lambda tmp: _file(tmp) / "a" / "b",
    "unwritable (read-only fs)": lambda tmp: "/sys/mgen-train-test-out",
}


@pytest.mark.parametrize("case", list(OUTS))
def test_bad_out_refused_in_one_line(tmp_path, capsys, fake_builder, case):
    code, err = _main(capsys, "--config", "mar-digits", "--out", str(OUTS[case](tmp_path)))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--out" in err, err
    assert not fake_builder


def test_unwritable_out_permission(tmp_path, capsys, fake_builder, monkeypatch):
    """No permission (simulated: the tests may run as root, which chmod does not stop)."""
    import tempfile

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    code, err = _main(capsys, "--config", "mar-digits", "--out", str(tmp_path / "run"))
    assert code == 2 and "Permission denied" in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("setting,value", [("lr", float("nan")), ("lr", float("inf")), ("min_lr", -1.0),
                                           ("ema_decay", 1.0), ("betas", [0.9, float("nan")]), ("grad_clip", float("inf")),
                                           ("weight_decay", float("nan")), ("batch_size", 0), ("warmup_steps", -1),
                                           ("epochs", float("inf")), ("max_steps", 2.5), ("checkpoint_every", 0),
                                           ("lr_schedule", "linear"), ("mixed_precision", "fp8x"), ("seed", -3),
                                           ("micro_batch_size", 0), ("progress", "yes"), ("lr", "1e-3")])
def test_bad_config_values_refused(setting, value):
    """The YAML `train:` section goes through the same checks (every builder calls TrainConfig.from_mapping)."""
    with pytest.raises(UserError, match=setting):
        TrainConfig.from_mapping({"max_steps": 2, "batch_size": 4, setting: value})


def test_bad_config_value_through_the_cli(tmp_path, capsys, fake_builder):
    import yaml

    from mgen.registry import configs_dir

    recipe = yaml.safe_load((configs_dir() / "mar-digits.yaml").read_text())
    recipe["train"]["lr"] = float("nan")
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(recipe))
    code, err = _main(capsys, "--config", str(cfg), "--out", str(tmp_path / "run"))
    assert code == 2 and "lr" in err and len(err.strip().splitlines()) == 1, err


def test_batch_keys_and_overrides():
    assert TrainConfig.from_mapping({"global_batch_size": 64, "max_steps": 1}).global_batch == 64
    assert TrainConfig.from_mapping({"global_batch_size": 64, "max_steps": 1}, batch_size=8).global_batch == 8
    with pytest.raises(UserError, match="disagree"):
        TrainConfig.from_mapping({"global_batch_size": 64, "batch_size": 32, "max_steps": 1})


def test_train_writes_curves_png(tmp_path, capsys, fake_builder):
    pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    code, err = _main(capsys, "--config", "mar-digits", "--out", str(run), "--max-steps", "4", "--lr", "0.005",
                      "--plot", "--micro-batch-size", "3")
    assert code == 0, err
    cfg = fake_builder[0]
    assert (cfg.lr, cfg.plot, cfg.max_steps, cfg.micro_batch_size) == (0.005, True, 4, 3)
    png = run / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(png) as im:
        assert im.size[0] >= 600 and im.size[1] >= 250
    assert len((run / "log.jsonl").read_text().splitlines()) == 4
    assert str(png) in err and not list(run.glob(".tmp-*"))


@pytest.fixture
def no_matplotlib(monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails, find_spec raises


def test_plot_without_matplotlib_refused_in_one_line(tmp_path, capsys, fake_builder, no_matplotlib):
    code, err = _main(capsys, "--config", "mar-digits", "--out", str(tmp_path / "run"), "--plot")
    assert code == 2 and "matplotlib" in err and "mgen[plot]" in err and len(err.strip().splitlines()) == 1, err
    assert not fake_builder
    with pytest.raises(UserError, match="matplotlib"):
        Trainer(TinyTask(), data(), TrainConfig(out_dir=str(tmp_path / "lib"), max_steps=1, batch_size=4, plot=True))


def test_default_plot_is_skipped_without_matplotlib(tmp_path, capsys, fake_builder, no_matplotlib):
    run = tmp_path / "run"
    code, err = _main(capsys, "--config", "mar-digits", "--out", str(run), "--max-steps", "2")
    assert code == 0, err
    assert (run / "log.jsonl").exists() and not (run / "curves.png").exists()


def test_read_log_keeps_the_last_run(tmp_path):
    from mgen.train.plot import read_log

    log = tmp_path / "log.jsonl"
    rows = [1, 2, 3, 4, 3, 4, 5, 1, 2] + ["cut"]  # resumed at 2 (re-logs 3, 4), then started afresh
    log.write_text("\n".join(json.dumps({"step": s, "loss": 1.0, "lr": 0.1}) if s != "cut" else '{"step": 3, "lo'
                             for s in rows))
    assert [r["step"] for r in read_log(log)] == [1, 2]


def test_log_cut_by_a_kill_is_continued_on_a_new_line(tmp_path):
    from mgen.train.plot import read_log
    from train_helpers import trainer

    trainer(tmp_path, max_steps=4).train()
    log = tmp_path / "log.jsonl"
    log.write_text(log.read_text() + '{"step": 5, "lo')  # killed mid-write
    trainer(tmp_path, max_steps=6).train()
    assert [r["step"] for r in read_log(log)] == [1, 2, 3, 4, 5, 6]
