"""The shipped maskgit-digits / enat-digits models: load by name, sample, judge with the held-out classifier."""

from __future__ import annotations

import pytest
import torch

from mgen.hub import package_weights_dir


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.mark.parametrize("name", ["maskgit-digits", "enat-digits"])
def test_shipped_digits_model_draws_the_requested_digits(name):
    if not (package_weights_dir() / f"{name}.safetensors").exists():
        pytest.skip(f"{name} weights not shipped in this checkout (recipes/maskgit_digits.py {name})")
    from mgen.eval.digits import classifier_outputs, load_classifier
    from mgen.pipelines import load_pipeline

    pipe = load_pipeline(name)
    labels = torch.arange(10).repeat_interleave(3)
    images = pipe(labels, generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert images.shape == (30, 3, 16, 16)
    _, logits = classifier_outputs(load_classifier(), images * 2 - 1)
    acc = float((logits.argmax(1) == labels).float().mean())
    assert acc >= 0.8, acc
    again = pipe(labels[:4], generator=torch.Generator().manual_seed(0), output_type="latent").images
    first = pipe(labels, generator=torch.Generator().manual_seed(0), output_type="latent").images
    assert torch.equal(again, first[:4])
