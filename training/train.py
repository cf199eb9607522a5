"""Train the crowd-and-incident CNN and export it: `python -m training.train --out models/crowd_incident.onnx`.

Count: the real Mall frames 1-640 of the repository's copy (training/mall.py; frames 641-800 are
the validation split and never trained on). Incidents: rendered scenes (dispersal, fall, and
calm/crowd negatives) plus the real frames as calm negatives. Seeded end to end (scene seeds,
torch seed, one thread, deterministic algorithms): on the same machine and library versions the
same command writes the same bytes. `--footage DIR` (repeatable) adds other real labelled
footage (training/dataset.py); `--arch` picks a named shape (model.ARCHS).
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from training import mall
from training.dataset import LabelledSet, load_labelled_folder, synthetic_set
from training.export import write_onnx
from training.fit import RealSet, Weights, train
from training.model import ARCHS, Arch, CrowdIncidentNet, folded_weights

TRAIN_SEEDS = range(0, 1600)         # eval.HELDOUT_SEED_BASE keeps the held-out seeds far away
TRAIN_SIZES = [(160, 120), (320, 240)]      # both: the model input looks a little different
CHUNKS, CHUNK_LEN = 6, 5             # per sequence: 6 runs of 5 consecutive frames -> 24 samples
CALIBRATION_SEEDS = range(1_005_000, 1_005_004)   # held-out-like rendered frames for protect's calibration


def real_set(arch: Arch, split: str = "train") -> RealSet:
    s = mall.load(arch.size, split)
    prev = np.concatenate([s.gray[:1], s.gray[:-1]])
    return RealSet(s.gray, prev, s.count, mall.cell_counts(s, arch.cells()))


def check_export(net: CrowdIncidentNet, path: Path, x: np.ndarray) -> float:
    """Largest |onnxruntime - torch| over some inputs: the folded ONNX must match the net."""
    import onnxruntime as ort
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    got = np.concatenate([sess.run(None, {"input": x[i:i + 1]})[0] for i in range(len(x))])
    return float(np.abs(got - ref).max())


def _synthetic(args, arch: Arch) -> LabelledSet:
    """The rendered training set; --data-cache keeps it in an .npz keyed by the arguments
    (rendering is deterministic, so a cached set is the same data, only faster)."""
    key = f"{args.sequences}-{args.frames}-{TRAIN_SIZES}-{CHUNKS}-{CHUNK_LEN}-{arch.size}"
    cache = Path(args.data_cache) if args.data_cache else None
    if cache and cache.is_file():
        z = np.load(cache, allow_pickle=False)
        if str(z["key"]) == key:
            return LabelledSet(z["x"], z["count"], z["incident"], z["kind"])
    data = synthetic_set(range(args.sequences), n_frames=args.frames, workers=args.workers,
                         sizes=TRAIN_SIZES, chunks=CHUNKS, chunk_len=CHUNK_LEN, input_size=arch.size)
    if cache:
        np.savez(cache, key=key, x=data.x, count=data.count, incident=data.incident, kind=data.kind)
    return data


def calibration_inputs(arch: Arch) -> np.ndarray:
    """What `protect` calibrates with (MODEL.calibration.npy): rendered held-out-like frames
    and real frames of the training split, with and without motion."""
    synth = synthetic_set(CALIBRATION_SEEDS, n_frames=40, width=160, height=120, max_gap=1, workers=1,
                          input_size=arch.size)
    s = mall.load(arch.size, "train")
    real = np.concatenate([mall.inputs(s, motion=False)[::80], mall.inputs(s, motion=True)[40::80]])
    return np.concatenate([synth.x[::10], real]).astype(np.float32)


def _kind_weights(items: list[str]) -> dict[str, float]:
    from training.scenes import KINDS
    out = {}
    for item in items:
        kind, _, w = item.partition("=")
        if kind not in KINDS:
            raise SystemExit(f"--pos-weight-kind {item!r}: kind must be one of {list(KINDS)}")
        try:
            out[kind] = float(w)
        except ValueError:
            raise SystemExit(f"--pos-weight-kind {item!r}: weight must be a number (KIND=W)") from None
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="models/crowd_incident.onnx", help="ONNX file to write")
    ap.add_argument("--arch", default="32", choices=sorted(ARCHS), help="named model shape (training/model.py)")
    ap.add_argument("--sequences", type=int, default=len(TRAIN_SEEDS),
                    help="synthetic sequences for the incident output (0: none)")
    ap.add_argument("--frames", type=int, default=100, help="frames per synthetic sequence (10 fps)")
    ap.add_argument("--epochs", type=int, default=15,
                    help="passes over the synthetic set (the real frames are drawn 32 per step: ~150 passes)")
    ap.add_argument("--seed", type=int, default=1, help="torch seed (1: the shipped model; see models/README.md for the spread)")
    ap.add_argument("--pos-weight", type=float, default=Weights.incident_pos_weight,
                    help="weight of incident frames in the incident loss")
    ap.add_argument("--pos-weight-kind", action="append", default=[], metavar="KIND=W",
                    help="weight of one scenario kind's incident frames instead of --pos-weight (repeatable; "
                         f"default {Weights().pos_weight_by_kind})")
    ap.add_argument("--hidden", type=int, help="hidden width of the incident path (default: the arch's)")
    ap.add_argument("--no-mall", action="store_true", help="do not train on the repository's Mall frames")
    ap.add_argument("--footage", action="append", default=[], help="folder of real labelled frames (repeatable)")
    ap.add_argument("--workers", type=int, default=2, help="processes rendering scenes")
    ap.add_argument("--data-cache", help="an .npz to keep the rendered synthetic set in (re-used if present)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)          # a fixed reduction order: reproducible bytes
    torch.use_deterministic_algorithms(True)
    arch = ARCHS[args.arch] if args.hidden is None else replace(ARCHS[args.arch], hidden=args.hidden)
    by_kind = {**Weights().pos_weight_by_kind, **_kind_weights(args.pos_weight_kind)}
    t0 = time.time()
    footage = [load_labelled_folder(f, input_size=arch.size) for f in args.footage]   # fail fast on a bad CSV
    real = None if args.no_mall else real_set(arch)
    synth = _synthetic(args, arch) if args.sequences > 0 else None
    labelled = LabelledSet.concat(footage) if footage else None
    print(f"data ({time.time() - t0:.0f} s): real {0 if real is None else len(real.count)} frames, "
          f"synthetic {0 if synth is None else len(synth)} (incident share "
          f"{0 if synth is None else synth.incident.mean():.2f}), footage {0 if labelled is None else len(labelled)}",
          flush=True)
    net = train(arch, real, synth, labelled, epochs=args.epochs, seed=args.seed,
                weights=Weights(incident_pos_weight=args.pos_weight, pos_weight_by_kind=by_kind), log=lambda m: print(m, flush=True))
    out = write_onnx(folded_weights(net), arch, args.out,
                     extra_meta={"fhe_edge.arch": json.dumps(arch.to_dict())})
    probe = np.concatenate([a for a in (None if real is None else mall.inputs(mall.load(arch.size, "train"), True)[:32],
                                        None if synth is None else synth.x[:32],
                                        None if labelled is None else labelled.x[:32]) if a is not None])
    err = check_export(net, out, probe)
    if out.name.endswith(".onnx"):
        np.save(out.with_suffix(".calibration.npy"), calibration_inputs(arch))
    print(f"wrote {out} ({out.stat().st_size} bytes), max |onnx - torch| = {err:.2e}, "
          f"total {time.time() - t0:.0f} s", flush=True)
    if err > 1e-3:
        raise SystemExit(f"exported ONNX disagrees with the trained net by {err}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
