"""dlm pipeline and the `mgen sample` text path: a tiny saved model file, text out, bad input → exit 2."""

from __future__ import annotations

import pytest
import torch

from mgen.models.dlm import DLMConfig, MaskedDiffusionLM, save_dlm
from mgen.models.joint_sampler import JointSamplerLayer, save_joint
from mgen.commands.sample_text import main
from mgen.pipelines.dlm import DLMPipeline


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("dlm")
    torch.manual_seed(0)
    m = MaskedDiffusionLM(DLMConfig(vocab_size=4096, dim=32, depth=1, num_heads=2, mlp_hidden=32,
                                    tokenizer_file="dlm-text-tokenizer.json"))
    save_dlm(m, str(d / "tiny.safetensors"))
    return d / "tiny.safetensors"


def test_pipeline_text_and_stream(tiny_file):
    pipe = DLMPipeline.from_name(str(tiny_file))
    seen = []
    out = pipe(["The for statement", "Return the"], gen_length=8, num_inference_steps=4, block_length=4,
               temperature=1.0, generator=torch.Generator().manual_seed(0), stream=lambda s, t: seen.append(t))
    assert out.sequences.shape[0] == 2 and len(out.texts) == 2 and all(isinstance(t, str) for t in out.texts)
    assert len(seen) == 4
    again = pipe(["The for statement", "Return the"], gen_length=8, num_inference_steps=4, block_length=4,
                 temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert again.texts == out.texts
    dream = pipe("Return the", gen_length=8, num_inference_steps=4, alg="entropy", temperature=0.5,
                 generator=torch.Generator().manual_seed(0))
    assert len(dream.texts) == 1


def test_cli_text_path_writes_file(tiny_file, tmp_path, capsys):
    out = tmp_path / "t.txt"
    rc = main(["--model", str(tiny_file), "--prompt", "Hello", "--gen-length", "8", "--steps", "4",
               "--remasking", "random", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert printed.startswith("Hello") and out.read_text().strip() == printed.strip()


def test_cli_joint_sampler(tiny_file, tmp_path, capsys):
    from mgen.models.dlm import load_dlm_file

    base = load_dlm_file(str(tiny_file))
    layer = JointSamplerLayer(base.cfg, base.fingerprint(), "tiny")
    save_joint(layer, str(tmp_path / "j.safetensors"))
    rc = main(["--model", str(tiny_file), "--prompt", "Hello", "--gen-length", "8", "--temperature", "1",
               "--joint-sampler", str(tmp_path / "j.safetensors"), "--tokens-per-step", "4"])
    assert rc == 0


@pytest.mark.parametrize("extra, message", [
    (["--gen-length", "10", "--block-length", "4", "--steps", "5"], "not divisible"),
    (["--gen-length", "8", "--steps", "0"], "steps must be"),
    (["--gen-length", "8", "--steps", "9"], "steps must be"),
    (["--remasking", "sideways", "--gen-length", "8", "--steps", "4"], "unknown remasking"),
])
def test_cli_bad_input(tiny_file, capsys, extra, message):
    rc = main(["--model", str(tiny_file), "--prompt", "Hello", *extra])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1


def test_cli_empty_prompt_and_other_base(tiny_file, tmp_path, capsys):
    assert main(["--model", str(tiny_file), "--prompt", ""]) == 2
    assert "empty" in capsys.readouterr().err
    torch.manual_seed(7)
    other = MaskedDiffusionLM(DLMConfig(vocab_size=4096, dim=32, depth=1, num_heads=2, mlp_hidden=32))
    save_joint(JointSamplerLayer(other.cfg, other.fingerprint(), "other"), str(tmp_path / "j.safetensors"))
    rc = main(["--model", str(tiny_file), "--prompt", "Hi", "--joint-sampler", str(tmp_path / "j.safetensors")])
    assert rc == 2 and "another base model" in capsys.readouterr().err


def test_cli_remote_code_folder_needs_opt_in(tmp_path, capsys):
    import json

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llada", "auto_map": {
        "AutoModel": "modeling_llada.LLaDAModelLM"}}))
    rc = main(["--model", str(tmp_path), "--prompt", "Hi"])
    assert rc == 2 and "--trust-remote-code" in capsys.readouterr().err


def test_mgen_sample_command_routes_text_folders_and_files(tiny_file, tmp_path, capsys):
    """`mgen sample --model FOLDER|FILE`: a transformers folder or our dlm file reaches the text path."""
    import json

    from mgen.cli import main as cli_main

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "Dream", "auto_map": {
        "AutoModel": "modeling_dream.DreamModel"}}))
    assert cli_main(["sample", "--model", str(tmp_path), "--prompt", "Hi"]) == 2
    err = capsys.readouterr().err
    assert "--trust-remote-code" in err and len(err.strip().splitlines()) == 1
    assert cli_main(["sample", "--model", str(tiny_file), "--prompt", "Hi", "--gen-length", "4", "--steps", "2",
                     "--tokens-per-step", "0"]) == 2
    assert "tokens_per_step" in capsys.readouterr().err
    assert cli_main(["sample", "--model", str(tiny_file), "--prompt", "Hi", "--gen-length", "4", "--steps", "2"]) == 0
    assert capsys.readouterr().out.startswith("Hi")


def test_joint_benchmark_rows_and_report(tiny_file, tmp_path, monkeypatch):
    from mgen.models.dlm import load_dlm_file
    from mgen.bench import joint as dlm_bench

    monkeypatch.setattr(dlm_bench, "mauve_score", lambda p, q, seed=0: 0.5)
    base = load_dlm_file(str(tiny_file))
    layer = JointSamplerLayer(base.cfg, base.fingerprint(), "tiny")
    res = dlm_bench.run_joint_benchmark(base, layer, [[5, 6, 7], [8, 9, 10]], ks=[2], gen_length=4, batch_size=2)
    rows = {(r["method"], r["k"]): r for r in res["rows"]}
    assert abs(rows[("exact", 1)]["kl_to_exact"]) < 1e-9
    assert rows[("marginal", 2)]["full_forwards_per_token"] == 0.5
    assert rows[("adjust", 2)]["sampler_passes_per_token"] == 0.5 and rows[("adjust", 2)]["mauve"] == 0.5
    md = dlm_bench.write_report(res, tmp_path)
    assert "mauve" in md.read_text() and (tmp_path / "joint_rows.json").exists()


def test_joint_layer_warns_off_its_trained_length(tiny_file, tmp_path):
    import warnings

    from mgen.models.dlm import load_dlm_file

    base = load_dlm_file(str(tiny_file))
    save_joint(JointSamplerLayer(base.cfg, base.fingerprint(), "tiny", gen_len=8), str(tmp_path / "j8.safetensors"))
    pipe = DLMPipeline.from_pretrained(str(tiny_file), joint_sampler=str(tmp_path / "j8.safetensors"))
    assert pipe.joint_sampler.trained_gen_length == 8  # read back from the file's metadata
    with pytest.warns(UserWarning, match="trained on 8-token generations; with gen_length 16"):
        pipe("Hello", gen_length=16, tokens_per_step=4, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipe("Hello", gen_length=8, tokens_per_step=4, generator=torch.Generator().manual_seed(0))
    # a bare file that does not record its length: nothing to compare, no warning
    from safetensors.torch import load_file, save_file

    from mgen.models.joint_sampler import read_metadata

    meta = {k: v for k, v in read_metadata(str(tmp_path / "j8.safetensors")).items() if k != "mgen_gen_len"}
    save_file(load_file(str(tmp_path / "j8.safetensors")), str(tmp_path / "bare.safetensors"), metadata=meta)
    bare = DLMPipeline.from_pretrained(str(tiny_file), joint_sampler=str(tmp_path / "bare.safetensors"))
    assert bare.joint_sampler.trained_gen_length is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bare("Hello", gen_length=16, tokens_per_step=4, generator=torch.Generator().manual_seed(0))
