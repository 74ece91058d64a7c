"""`mgen sample --batch-size`: sample i is the same image whatever the batch size (docs/ARCHITECTURE.md, "The three protocols")."""

from __future__ import annotations

import pytest
import torch

from mgen.cli import main
from mgen.errors import UserError
from mgen.samplers.base import per_sample_generators

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.mark.parametrize("model,extra", [("maskgit-digits", []), ("enat-digits", []),
                                         ("mar-digits", ["--steps", "2", "--head-steps", "4"])])
def test_cli_batches_do_not_change_samples(tmp_path, model, extra):
    for bs in (2, 5):
        assert main(["sample", "--model", model, "--num", "5", "--batch-size", str(bs), "--seed", "3",
                     "--no-progress", "--out", str(tmp_path / f"b{bs}"), *extra]) == 0
    for i in range(5):
        assert (tmp_path / "b2" / f"{i:04d}.png").read_bytes() == (tmp_path / "b5" / f"{i:04d}.png").read_bytes()


def test_generator_lists_are_used_as_the_per_sample_streams():
    gens = per_sample_generators(torch.Generator().manual_seed(0), 4)
    assert per_sample_generators(gens[1:3], 2) == gens[1:3]
    same = per_sample_generators(torch.Generator().manual_seed(0), 4)
    assert [torch.rand(1, generator=g).item() for g in gens] == [torch.rand(1, generator=g).item() for g in same]
    with pytest.raises(UserError, match="3 generators for a batch of 2"):
        per_sample_generators(gens[:3], 2)
