"""Train the crowd-and-incident CNN and export it: `python -m training.train --out models/crowd_incident.onnx`.

Seeded end to end (scene seeds, torch seed, one fixed thread count, deterministic algorithms), so
on the same machine and library versions the same command writes the same bytes. Add
`--footage DIR` (repeatable) to train on real labelled footage as well (see training/dataset.py).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from training.dataset import LabelledSet, load_labelled_folder, synthetic_set
from training.export import write_onnx
from training.model import COUNT_SCALE, CrowdIncidentNet, folded_weights

TRAIN_SEEDS = range(0, 1600)         # eval.HELDOUT_SEED_BASE keeps the held-out seeds far away
TRAIN_SIZES = [(160, 120), (320, 240)]      # both: the 32x32 input looks a little different
CHUNKS, CHUNK_LEN = 6, 5             # per sequence: 6 runs of 5 consecutive frames -> 24 samples


def train(data: LabelledSet, *, epochs: int = 40, batch: int = 128, lr: float = 3e-3,
          seed: int = 0, log=print) -> CrowdIncidentNet:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = CrowdIncidentNet()
    x = torch.from_numpy(data.x)
    y_count = torch.from_numpy(data.count) / COUNT_SCALE
    y_inc = torch.from_numpy(data.incident)
    # no positive re-weighting: logit > 0 should mean "more likely than not" (alert precision)
    bce = nn.BCEWithLogitsLoss()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * ((len(x) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(x), generator=gen)
        flips = torch.rand(len(x), generator=gen) < 0.5    # mirror images: same count, same incident
        tot = n = 0.0
        for i in range(0, len(x), batch):
            idx = order[i:i + batch]
            if len(idx) < 2:          # BatchNorm needs two samples
                continue
            xb = x[idx]
            xb = torch.where(flips[idx][:, None, None, None], xb.flip(-1), xb)
            # exposure/contrast jitter: gain on both channels (motion scales with it), offset on gray
            gain = 0.75 + 0.5 * torch.rand(len(idx), 1, 1, 1, generator=gen)
            offset = torch.zeros(len(idx), 2, 1, 1)
            offset[:, 0] = 0.2 * (torch.rand(len(idx), 1, 1, generator=gen) - 0.5)
            xb = (xb * gain + offset).clamp(0.0, 1.0)
            out = net(xb)
            loss = nn.functional.smooth_l1_loss(out[:, 0] / COUNT_SCALE, y_count[idx], beta=0.2) \
                + 0.5 * bce(out[:, 1], y_inc[idx])
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), 1.0)    # squares can spike: keep steps bounded
            opt.step()
            sched.step()
            tot += float(loss.detach()) * len(idx)
            n += len(idx)
        if epoch % 5 == 0 or epoch == epochs - 1:
            log(f"epoch {epoch + 1}/{epochs} loss {tot / n:.4f}")
    net.eval()
    return net


def check_export(net: CrowdIncidentNet, path: Path, x: np.ndarray) -> float:
    """Largest |onnxruntime - torch| over some inputs: the folded ONNX must match the net."""
    import onnxruntime as ort
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    got = np.concatenate([sess.run(None, {"input": x[i:i + 1]})[0] for i in range(len(x))])
    return float(np.abs(got - ref).max())


def _synthetic(args) -> LabelledSet:
    """The rendered training set; --data-cache keeps it in an .npz keyed by the arguments
    (rendering is deterministic, so a cached set is the same data, only faster)."""
    key = f"{args.sequences}-{args.frames}-{TRAIN_SIZES}-{CHUNKS}-{CHUNK_LEN}"
    cache = Path(args.data_cache) if args.data_cache else None
    if cache and cache.is_file():
        z = np.load(cache, allow_pickle=False)
        if str(z["key"]) == key:
            return LabelledSet(z["x"], z["count"], z["incident"], z["kind"])
    data = synthetic_set(range(args.sequences), n_frames=args.frames, workers=args.workers,
                         sizes=TRAIN_SIZES, chunks=CHUNKS, chunk_len=CHUNK_LEN)
    if cache:
        np.savez(cache, key=key, x=data.x, count=data.count, incident=data.incident, kind=data.kind)
    return data


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="models/crowd_incident.onnx", help="ONNX file to write")
    ap.add_argument("--sequences", type=int, default=len(TRAIN_SEEDS),
                    help="synthetic sequences (0: train on --footage only)")
    ap.add_argument("--frames", type=int, default=100, help="frames per synthetic sequence (10 fps)")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0, help="torch seed")
    ap.add_argument("--footage", action="append", default=[], help="folder of real labelled frames (repeatable)")
    ap.add_argument("--workers", type=int, default=2, help="processes rendering scenes")
    ap.add_argument("--data-cache", help="an .npz to keep the rendered synthetic set in (re-used if present)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)          # a fixed reduction order: reproducible bytes
    torch.use_deterministic_algorithms(True)
    t0 = time.time()
    parts = [load_labelled_folder(f) for f in args.footage]      # fail fast on a bad CSV
    if args.sequences > 0:
        parts.insert(0, _synthetic(args))
    if not parts:
        raise SystemExit("nothing to train on: --sequences 0 and no --footage")
    data = LabelledSet.concat(parts)
    print(f"data: {len(data)} frames ({time.time() - t0:.0f} s), incident share "
          f"{data.incident.mean():.2f}, mean count {data.count.mean():.1f}", flush=True)
    net = train(data, epochs=args.epochs, seed=args.seed, log=lambda m: print(m, flush=True))
    out = write_onnx(folded_weights(net), args.out)
    err = check_export(net, out, data.x[:64])
    print(f"wrote {out} ({out.stat().st_size} bytes), max |onnx - torch| = {err:.2e}, "
          f"total {time.time() - t0:.0f} s")
    if err > 1e-3:
        raise SystemExit(f"exported ONNX disagrees with the trained net by {err}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
