"""Train the footprint classifier and write ``cnn_classifier.pt``.

    python -m gpu_cnmf.evaluation.train_cnn [--n-train 16000] [--epochs 6]
        [--seed 0] [--out gpu_cnmf/evaluation/cnn_classifier.pt]

Deterministic for a given seed on the CPU (single-process data, seeded
torch and numpy); a few minutes on two cores. The training set and the
held-out set are drawn from :func:`gpu_cnmf.evaluation.shapes.make_footprint_set`
with different seeds; the held-out accuracy is printed and stored in the
weights' metadata.
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from torch.nn import functional as F

from .cnn import (CROP_SCALE, INPUT_SIZE, MODEL_VERSION, WEIGHTS_PATH, FootprintNet,
                  _n_params, classify_crops, crops_from_entries)
from .shapes import make_footprint_set

__all__ = ["dataset", "train", "evaluate", "main"]


def dataset(n: int, seed: int, device="cpu"):
    """Network inputs (n, 2, 50, 50), labels (n,) float and kinds (n,)."""
    d = make_footprint_set(n, seed=seed)
    x = crops_from_entries(d["rows"], d["cols"], d["vals"], d["comp"], n, d["gSig"],
                           d["fov"], INPUT_SIZE, device)
    return x, torch.as_tensor(d["labels"], dtype=torch.float32, device=device), d["kinds"]


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    # the 8 symmetries of the square: a cell is a cell whichever way it faces
    k = int(torch.randint(4, (1,), generator=gen))
    x = torch.rot90(x, k, dims=(2, 3))
    if int(torch.randint(2, (1,), generator=gen)):
        x = torch.flip(x, dims=(3,))
    return x


def evaluate(model, x, y, kinds=None) -> dict:
    """Accuracy at 0.5 overall and per kind of sample."""
    model.eval()
    p = classify_crops(model, x)
    correct = ((p >= 0.5).float() == y).cpu().numpy()
    out = {"accuracy": float(correct.mean())}
    if kinds is not None:
        for k in np.unique(kinds):
            out[str(k)] = float(correct[kinds == k].mean())
    return out


def train(n_train: int = 16000, n_val: int = 4000, epochs: int = 6, batch: int = 128,
          lr: float = 3e-3, seed: int = 0, verbose: bool = True):
    """Train a :class:`FootprintNet`; returns (model, metadata)."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.time()
    x, y, _ = dataset(n_train, seed)
    xv, yv, kv = dataset(n_val, seed + 1000)
    if verbose:
        print(f"data: {n_train} train / {n_val} held-out in {time.time() - t0:.1f} s")
    model = FootprintNet()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * math.ceil(n_train / batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps,
                                                pct_start=0.15)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(n_train, generator=gen)
        total = 0.0
        for i in range(0, n_train, batch):
            idx = order[i:i + batch]
            xb = _augment(x[idx], gen)
            loss = F.binary_cross_entropy_with_logits(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if verbose:
            acc = evaluate(model, xv, yv)["accuracy"]
            print(f"epoch {epoch + 1}/{epochs}: loss {total / n_train:.4f}, "
                  f"held-out accuracy {acc:.4f} ({time.time() - t0:.0f} s)")
    scores = evaluate(model, xv, yv, kv)
    meta = {"input_size": INPUT_SIZE, "channels": 2, "crop_scale": CROP_SCALE,
            "version": MODEL_VERSION, "widths": [8, 16, 32], "hidden": 64,
            "seed": seed, "n_train": n_train, "n_val": n_val, "epochs": epochs,
            "val_accuracy": scores["accuracy"], "n_params": _n_params(model),
            "train_seconds": round(time.time() - t0, 1)}
    if verbose:
        print("held-out accuracy by kind: " +
              ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    return model.eval(), meta


def save(model, meta, path=WEIGHTS_PATH):
    """Weights (as plain tensors) and metadata, loadable with weights_only."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "meta": meta}, str(path))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, default=16000)
    ap.add_argument("--n-val", type=int, default=4000)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(WEIGHTS_PATH))
    args = ap.parse_args(argv)
    model, meta = train(args.n_train, args.n_val, args.epochs, seed=args.seed)
    save(model, meta, args.out)
    print(f"held-out accuracy {meta['val_accuracy']:.4f}; wrote {args.out} "
          f"({meta['n_params']} parameters)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
