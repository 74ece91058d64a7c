"""The CLI skeleton: help for every subcommand, `mgen info`, one-line errors with exit 2."""

from __future__ import annotations

import json

import pytest

from mgen.cli import main
from mgen.commands import NAMES


def test_help_lists_every_subcommand(run_mgen):
    out = run_mgen("--help")
    assert out.returncode == 0
    for name in NAMES:
        assert name in out.stdout


@pytest.mark.parametrize("name", NAMES)
def test_subcommand_help(name, capsys):
    assert main([name, "--help"]) == 0
    assert "usage: mgen " + name in capsys.readouterr().out


def test_info_table(run_mgen):
    out = run_mgen("info")
    assert out.returncode == 0
    for col in ("name", "family", "params", "tokenizer", "present", "weights"):
        assert col in out.stdout
    assert "mar-b" in out.stdout and "208M" in out.stdout and "kl16" in out.stdout


def test_info_json(capsys):
    assert main(["info", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["models"]}
    assert rows["mar-b"]["present"] is False and rows["mar-b"]["family"] == "mar"


def test_bad_usage_is_one_line_exit_2(capsys):
    assert main(["info", "--no-such-flag"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unrecognized arguments" in err[0]


def test_unknown_model_exit_2(capsys):
    assert main(["info", "no-such-model"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown model 'no-such-model'" in err[0]


def test_train_unknown_config_exit_2(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
