"""Recipe: train the shipped digits classifier (``mgen/weights/digits-classifier.safetensors``).

    .venv/bin/python recipes/digits_classifier.py [--out mgen/weights/digits-classifier.safetensors]

Trains :class:`mgen.eval.digits.DigitsClassifier` on the fixed training split of
``sklearn.datasets.load_digits`` (:func:`mgen.eval.digits.digits_split`; the held-out split is never
seen) with Adam, one CPU thread, fixed seed. Augmentation keeps the classifier fair to generated
samples: ±1-pixel shifts, a random up-sample (nearest or bilinear, ×2/×4) followed by the same area
down-sampling the metric applies, small intensity jitter and pixel noise. Prints the held-out accuracy,
which is also stored in the file's metadata.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from mgen.eval.digits import DigitsClassifier, default_weights_path, digits_split, to_digits_grid
from mgen.hub import save_safetensors


def augment(x: torch.Tensor, g: torch.Tensor | None = None, gen: torch.Generator | None = None) -> torch.Tensor:
    b = x.shape[0]
    # ±1 pixel shifts (pad with background -1, random crop)
    xp = F.pad(x, (1, 1, 1, 1), value=-1.0)
    dx = torch.randint(0, 3, (b,), generator=gen)
    dy = torch.randint(0, 3, (b,), generator=gen)
    x = torch.stack([xp[i, :, dy[i]:dy[i] + 8, dx[i]:dx[i] + 8] for i in range(b)])
    # up-sample then area down-sample, as a generator at 16/32 px evaluated by to_digits_grid would be
    k = int(torch.randint(0, 4, (1,), generator=gen))
    if k:
        size = (16, 32, 16)[k - 1]
        mode = "nearest" if k == 1 else "bilinear"
        up = F.interpolate(x, size=(size, size), mode=mode, **({} if mode == "nearest" else {"align_corners": False}))
        x = to_digits_grid(up)
    scale = 1.0 + 0.15 * (torch.rand(b, 1, 1, 1, generator=gen) * 2 - 1)
    x = ((x + 1) * scale - 1) + 0.08 * torch.randn(x.shape, generator=gen)
    return x.clamp(-1, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(default_weights_path()))
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)  # parameter init
    gen = torch.Generator().manual_seed(args.seed)
    x_tr, y_tr, x_te, y_te = digits_split()
    model = DigitsClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs)
    t0 = time.time()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(x_tr), generator=gen)
        for i in range(0, len(perm), 64):
            idx = perm[i:i + 64]
            loss = F.cross_entropy(model(augment(x_tr[idx], gen=gen)), y_tr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
        if epoch % 10 == 9 or epoch == args.epochs - 1:
            model.eval()
            with torch.no_grad():
                acc = (model(x_te).argmax(1) == y_te).float().mean().item()
                acc_up = (model(F.interpolate(x_te, size=(32, 32), mode="bilinear", align_corners=False)).argmax(1)
                          == y_te).float().mean().item()
            print(f"epoch {epoch + 1}: loss {loss.item():.4f}  held-out acc {acc:.4f} (32px bilinear {acc_up:.4f})"
                  f"  {time.time() - t0:.0f}s", flush=True)
    model.eval()
    with torch.no_grad():
        acc = (model(x_te).argmax(1) == y_te).float().mean().item()
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_safetensors(state, args.out, metadata={"heldout_accuracy": f"{acc:.4f}", "recipe": "recipes/digits_classifier.py",
                                                "epochs": str(args.epochs), "seed": str(args.seed)})
    print(f"wrote {args.out}: held-out accuracy {acc:.4f}, {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
