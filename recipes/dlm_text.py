"""Recipe for the shipped ``dlm-text`` (configs/dlm-text.yaml): tokenizer, training, export, evaluation.

    nohup nice -n 5 .venv/bin/python recipes/dlm_text.py --out /tmp/dlm-text-run > /tmp/dlm_text.log 2>&1 &

1. trains a 4,096-entry byte-level BPE with Hugging Face ``tokenizers`` on the training split of the offline
   corpus (``mgen.models.dlm_data``) → ``mgen/weights/dlm-text-tokenizer.json`` (skipped when present);
2. trains the model with the shared trainer (``mgen train --config configs/dlm-text.yaml`` does the same),
   on ONE CPU thread, resumable;
3. writes ``mgen/weights/dlm-text.safetensors`` (float16) and prints the held-out ELBO (perplexity bound)
   and a sample.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/dlm-text-run")
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--config", default=str(ROOT / "configs" / "dlm-text.yaml"),
                    help="the dlm config to train (configs/dlm-text-12.yaml: the 12-layer base)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from mgen import registry
    from mgen.models.dlm import DLMConfig, load_dlm_file, nll_bound, save_dlm
    from mgen.train.data import text_windows as build_text_data
    from mgen.models.dlm_data import split_documents, stdlib_documents, train_bpe
    from mgen.train.tasks import build_training

    entry = registry.load_config_file(args.config)
    cfg = DLMConfig.from_mapping(entry.arch)
    tok_path = ROOT / "mgen" / "weights" / cfg.tokenizer_file
    if not tok_path.exists():
        train_txt, _ = split_documents(stdlib_documents())
        tok = train_bpe(train_txt, cfg.vocab_size, tok_path)
        print(f"tokenizer: {tok.vocab_size} entries → {tok_path}", flush=True)
    t0 = time.time()
    trainer = build_training(entry, out_dir=args.out, max_steps=args.max_steps)
    trainer.config.progress = False
    rec = trainer.train(resume=True)
    print(f"trained to step {trainer.step} in {time.time() - t0:.0f}s this run: {rec}", flush=True)
    out = ROOT / "mgen" / "weights" / entry.weights.package
    save_dlm(trainer.unwrapped, str(out))
    print(f"weights → {out} ({out.stat().st_size / 1e6:.1f} MB)", flush=True)

    model = load_dlm_file(str(out))
    _, held, tok = build_text_data(entry, cfg.seq_len)
    nll = nll_bound(model, held, cfg.mask_id, torch.Generator().manual_seed(0), samples_per_window=4)
    print(f"held-out: {held.shape[0]} windows x {cfg.seq_len} tokens; ELBO {nll:.3f} nats/token, "
          f"perplexity <= {torch.tensor(nll).exp().item():.1f}", flush=True)
    from mgen.samplers.dlm import LLaDASampler

    prompt = tok.encode("The \"for\" statement")
    ids = LLaDASampler(steps=64, gen_length=64, block_length=32, temperature=1.0).sample(
        model, [prompt], generator=torch.Generator().manual_seed(0))
    print("sample:", repr(tok.decode(ids[0].tolist())), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
