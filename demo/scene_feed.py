"""Render the demo scene in real time and write raw BGR frames to stdout (for camera_server.py).

    python -m demo.scene_feed --seconds 150 --truth demo-out/truth.jsonl | /usr/bin/python3 demo/camera_server.py ...

Until SIGUSR1 arrives it shows the scene's first frame (the camera is "on" but nothing happens
yet), so the gateway can connect and load its model without missing the start. On SIGUSR1 the
scene runs on the wall clock: frame i is shown at start + i/fps; when rendering falls behind, the
world still advances (frames are skipped, as a loaded camera would), so scene time = wall time.
After the last frame the picture freezes until the process is stopped.

The truth file gets one JSON line per scene frame: {"i", "t" (unix s), "count", "incident", "shown"},
after a first line {"start", "fps", "frames", "width", "height", "seed", "scenario"}. This is the
renderer's ground truth; it never passes through the encrypted pipeline.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
import threading
import time

from training.scenes import SceneRenderer, demo_scenario

FPS = 10


def _write(out, frame) -> bool:
    try:
        out.write(frame.tobytes())
        out.flush()
        return True
    except (BrokenPipeError, ValueError):   # the camera went away: nothing left to feed
        return False


def run(args) -> int:
    go = threading.Event()
    stop = threading.Event()
    signal.signal(signal.SIGUSR1, lambda *_: go.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    n_frames = max(1, int(round(args.seconds * FPS)))
    scenario = demo_scenario(incident=args.incident, peak_count=args.peak)
    renderer = SceneRenderer(args.seed, n_frames, args.width, args.height, scenario, fps=FPS)
    out = sys.stdout.buffer
    truth = open(args.truth, "w", encoding="utf-8")

    label = renderer.advance()
    frame = renderer.render()
    while not go.is_set() and not stop.is_set():       # waiting room: the first frame, repeated
        if not _write(out, frame):
            return 0
        go.wait(1 / FPS)
    if stop.is_set():
        return 0

    start = time.time()
    truth.write(json.dumps({"start": start, "fps": FPS, "frames": n_frames, "width": args.width,
                            "height": args.height, "seed": args.seed,
                            "scenario": dataclasses.asdict(scenario)}) + "\n")
    i = 0
    while not stop.is_set():
        due = start + i / FPS
        drawn = time.time() - due < 1 / FPS   # on time (or nearly): draw it; else skip the drawing
        # "shown": whether this frame reached the camera (a skipped one doubles the next frame's motion)
        truth.write(json.dumps({"i": i, "t": round(due, 3), **label, "shown": drawn}) + "\n")
        if i % 10 == 0:
            truth.flush()
        if drawn:
            frame = renderer.render()
            time.sleep(max(0.0, due - time.time()))
            if not _write(out, frame):
                break
        if i + 1 >= n_frames:
            break
        label = renderer.advance()
        i += 1
    truth.flush()
    while not stop.is_set():                           # the scene is over: a frozen picture
        if not _write(out, frame):
            break
        stop.wait(1 / FPS)
    truth.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, required=True, help="length of the scene")
    parser.add_argument("--truth", required=True, help="JSON lines file for the per-frame labels")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--incident", choices=("dispersal", "fall"), default="dispersal")
    parser.add_argument("--peak", type=int, default=40, help="people in view at the crowd's peak")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
