"""Streaming evaluation: per-sample seeds, feature shards, resume after a crash, splitting over processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from eval_common import inception_weights, small_inception  # noqa: F401
from mgen.errors import UserError
from mgen.eval.streaming import gather_shards, images_to_uint8, sample_plan, sample_seed, stream_features

INDEX = {sample_seed(0, i): i for i in range(1000)}  # seed -> sample index (seed 0)


def toy_sample_fn(calls: list | None = None, fail_after: int | None = None):
    """A deterministic 'model': image i is noise from its own seed, shifted by its class."""

    def sample(labels: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        if calls is not None:
            calls.append(list(seeds))
            if fail_after is not None and len(calls) > fail_after:
                raise KeyboardInterrupt("killed")
        out = [torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(s)) * 2 - 1 for s in seeds]
        return (torch.stack(out) * 0.5 + labels.view(-1, 1, 1, 1).float() / 10).clamp(-1, 1)

    return sample


def toy_extract(images: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"feat": images.mean(dim=(2, 3)), "pix": images.flatten(1)[:, :5]}


def test_sample_plan_labels_and_seeds():
    labels, seeds = sample_plan(20, 10, seed=3)
    assert labels.tolist() == [c for c in range(10) for _ in range(2)]  # MAR: arange(C).repeat(N // C)
    assert seeds == [sample_seed(3, i) for i in range(20)] and len(set(seeds)) == 20
    assert sample_plan(5, None, 0)[0] is None
    with pytest.raises(UserError):
        sample_plan(-1, 10, 0)


def test_seed_changes_the_samples_on_cpu_generators():
    """torch's CPU generator keeps only the low 32 bits of a seed: (seed << 32) + i would ignore --seed."""
    assert torch.equal(torch.randn(4, generator=torch.Generator().manual_seed(1 << 32)),
                       torch.randn(4, generator=torch.Generator().manual_seed(0)))  # the trap
    low = {s: {sample_seed(s, i) & 0xFFFFFFFF for i in range(5000)} for s in (0, 1, 2, 2**31 - 1)}
    assert all(len(v) == 5000 for v in low.values())  # distinct streams within a run
    assert not low[0] & low[1] and not low[1] & low[2] and not low[0] & low[2 ** 31 - 1]  # and across seeds
    x0 = torch.randn(4, generator=torch.Generator().manual_seed(sample_seed(0, 0)))
    x1 = torch.randn(4, generator=torch.Generator().manual_seed(sample_seed(1, 0)))
    assert not torch.equal(x0, x1)


def test_features_do_not_depend_on_batch_size(tmp_path):
    a = stream_features(toy_sample_fn(), toy_extract, 41, tmp_path / "a", num_classes=10, batch_size=4, progress=False)
    b = stream_features(toy_sample_fn(), toy_extract, 41, tmp_path / "b", num_classes=10, batch_size=7,
                        shard_size=16, progress=False)
    assert torch.equal(a["feat"], b["feat"]) and torch.equal(a["label"], b["label"])
    assert a["feat"].shape == (41, 3) and a["index"].tolist() == list(range(41))


def test_extractor_sees_the_same_aligned_blocks_whatever_the_batch_and_shard(tmp_path):
    """What makes batch-dependent float rounding of the extractors harmless: identical block contents."""
    def blocks_of(batch_size, shard_size, world):
        seen: list = []

        def extract(images):
            seen.append(images.clone())
            return toy_extract(images)

        for rank in reversed(range(world)):
            stream_features(toy_sample_fn(), extract, 37, tmp_path / f"w{batch_size}-{shard_size}-{world}",
                            num_classes=10, batch_size=batch_size, shard_size=shard_size, progress=False,
                            rank=rank, world_size=world)
        return sorted(((b.shape[0], b.sum().item()) for b in seen))

    ref = blocks_of(37, 48, 1)
    assert [n for n, _ in ref] == [5, 16, 16]
    for bs, shard, world in ((1, 16, 1), (5, 32, 1), (7, 16, 2), (16, 16, 3)):
        assert blocks_of(bs, shard, world) == ref


def test_shard_size_from_the_first_batch_and_kept_on_resume(tmp_path):
    from mgen.eval.streaming import auto_shard_size

    assert auto_shard_size(0.5) == 112  # 60 s / 0.5 s = 120 samples -> a multiple of 16
    assert auto_shard_size(100.0) == 16 and auto_shard_size(1e-6) == 1024 and auto_shard_size(0.0) == 1024
    ticks = iter([0.0, 20.0, 20.5])  # first batch of 40: 20 s; first block of 16 features: 0.5 s
    calls: list = []
    a = stream_features(toy_sample_fn(calls), toy_extract, 50, tmp_path / "w", num_classes=10, batch_size=40,
                        progress=False, shard_seconds=10, clock=lambda: next(ticks))  # 10 s / 0.53 s -> 16
    meta = json.loads((tmp_path / "w" / "meta.json").read_text())
    assert meta["shard_size"] == 16 and len(list((tmp_path / "w").glob("shard-*"))) == 4
    assert [len(c) for c in calls] == [40, 8, 2]  # the timed first batch (2.5 shards) is kept; 40..47, 48..49 drawn
    ref = stream_features(toy_sample_fn(), toy_extract, 50, tmp_path / "ref", num_classes=10, batch_size=8,
                          shard_size=32, progress=False)
    assert torch.equal(a["feat"], ref["feat"])
    # a rerun (other timing) reuses the recorded shard size and finds everything done
    again: list = []
    b = stream_features(toy_sample_fn(again), toy_extract, 50, tmp_path / "w", num_classes=10, batch_size=3,
                        progress=False, clock=lambda: 0.0)
    assert again == [] and torch.equal(b["feat"], a["feat"])
    with pytest.raises(UserError, match="shard_size"):
        stream_features(toy_sample_fn(), toy_extract, 50, tmp_path / "w", num_classes=10, batch_size=3,
                        shard_size=32, progress=False)
    with pytest.raises(UserError, match="multiple of 16"):
        stream_features(toy_sample_fn(), toy_extract, 50, tmp_path / "x", shard_size=20, progress=False)


def test_killed_run_resumes_with_identical_features(tmp_path):
    full = stream_features(toy_sample_fn(), toy_extract, 30, tmp_path / "full", num_classes=10, batch_size=4,
                           shard_size=8, progress=False, block=4)
    calls: list = []
    with pytest.raises(KeyboardInterrupt):
        stream_features(toy_sample_fn(calls, fail_after=5), toy_extract, 30, tmp_path / "w", num_classes=10,
                        batch_size=4, shard_size=8, progress=False, block=4)
    assert len(list((tmp_path / "w").glob("shard-*.safetensors"))) == 2  # shards 0, 1 finished; 2 was cut short
    assert not list((tmp_path / "w").glob(".tmp-*"))
    resumed: list = []
    (tmp_path / "w" / ".tmp-left-by-a-kill.safetensors").write_bytes(b"")
    out = stream_features(toy_sample_fn(resumed), toy_extract, 30, tmp_path / "w", num_classes=10, batch_size=4,
                          shard_size=8, progress=False, block=4)
    assert not list((tmp_path / "w").glob(".tmp-*"))  # a killed run's temp files are cleaned
    assert min(INDEX[s] for c in resumed for s in c) == 16  # only shards 2 and 3 were sampled again
    for k in ("feat", "pix", "label", "index"):
        assert torch.equal(out[k], full[k])


def test_damaged_shard_is_redone_and_other_settings_refused(tmp_path):
    stream_features(toy_sample_fn(), toy_extract, 12, tmp_path, num_classes=10, batch_size=4, progress=False,
                    shard_size=4, block=4)
    (tmp_path / "shard-000001.safetensors").write_bytes(b"garbage")
    calls: list = []
    out = stream_features(toy_sample_fn(calls), toy_extract, 12, tmp_path, num_classes=10, batch_size=4,
                          shard_size=4, progress=False, block=4)
    assert [INDEX[c[0]] for c in calls] == [4] and out["feat"].shape == (12, 3)
    with pytest.raises(UserError, match="another run"):
        stream_features(toy_sample_fn(), toy_extract, 12, tmp_path, num_classes=10, batch_size=4, seed=1,
                        shard_size=4, progress=False, block=4)


def test_shards_split_over_processes_and_gathered(tmp_path):
    single = stream_features(toy_sample_fn(), toy_extract, 17, tmp_path / "one", num_classes=10, batch_size=3,
                             shard_size=3, progress=False, block=3)
    calls1: list = []
    assert stream_features(toy_sample_fn(calls1), toy_extract, 17, tmp_path / "two", num_classes=10, batch_size=3,
                           shard_size=3, progress=False, rank=1, world_size=2, block=3) is None
    calls0: list = []
    out = stream_features(toy_sample_fn(calls0), toy_extract, 17, tmp_path / "two", num_classes=10, batch_size=3,
                          shard_size=3, progress=False, rank=0, world_size=2, block=3)
    idx1 = {INDEX[s] for c in calls1 for s in c}
    idx0 = {INDEX[s] for c in calls0 for s in c}
    assert not idx0 & idx1 and idx0 | idx1 == set(range(17))
    assert torch.equal(out["feat"], single["feat"])


def test_streaming_inception_features_equal_saved_pngs(small_inception, inception_weights, tmp_path):
    from mgen.eval import evaluate
    from mgen.eval.inception import InceptionFeatures
    from mgen.images import save_png, to_pil

    ext = InceptionFeatures(inception_weights, "cpu")
    fn = toy_sample_fn()
    feats = stream_features(fn, lambda x: ext(images_to_uint8(x)), 6, tmp_path / "w", num_classes=10, batch_size=3,
                            progress=False)
    labels, seeds = sample_plan(6, 10, 0)
    for i, im in enumerate(to_pil(fn(labels, seeds))):
        save_png(im, tmp_path / "png" / f"{i}.png")
    ref = evaluate(tmp_path / "png", metrics=("is",), isc_splits=2, extractor=ext, batch_size=3,
                   return_features=True)["features"]["fake"]
    assert torch.equal(feats["2048"], ref["2048"])


def test_two_cpu_processes_split_the_samples(tmp_path):
    """torchrun (gloo) with 2 CPU processes: each draws only its shards; the gathered features equal 1 process."""
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import json, os, sys, torch
        sys.path.insert(0, {str(__import__('pathlib').Path(__file__).parent)!r})
        from test_eval_streaming import INDEX, toy_sample_fn, toy_extract
        from mgen.eval.streaming import stream_features
        calls = []
        out = stream_features(toy_sample_fn(calls), toy_extract, 10, {str(tmp_path / 'w')!r}, num_classes=10,
                              batch_size=2, shard_size=2, progress=False, block=2)
        with open({str(tmp_path)!r} + f"/seeds-{{os.environ['RANK']}}.json", "w") as f:
            json.dump([INDEX[s] for c in calls for s in c], f)
        if out is not None:
            torch.save(out["feat"], {str(tmp_path / 'feat.pt')!r})
    """))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-port=29517",
                        str(script)], capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    single = stream_features(toy_sample_fn(), toy_extract, 10, tmp_path / "one", num_classes=10, batch_size=2,
                             shard_size=2, progress=False, block=2)
    assert torch.equal(torch.load(tmp_path / "feat.pt"), single["feat"])
    seeds = [json.loads((tmp_path / f"seeds-{r}.json").read_text()) for r in (0, 1)]
    assert seeds[0] == [0, 1, 4, 5, 8, 9] and seeds[1] == [2, 3, 6, 7]  # shard k on process k mod 2
    meta = json.loads((tmp_path / "w" / "meta.json").read_text())
    assert meta["num_samples"] == 10 and meta["shard_size"] == 2


def test_accelerate_state_on_cpu_reports_the_processes(monkeypatch):
    """accelerate's PartialState() without cpu=True reports one process on a machine without CUDA."""
    from mgen.eval import streaming

    monkeypatch.setenv("WORLD_SIZE", "1")
    assert streaming._accelerate_state()[:2] == (0, 1)
    assert streaming.distributed_cpu("cpu") is True
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert streaming.distributed_cpu(None) is True
