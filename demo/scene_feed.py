"""Play the demo scene in real time and write raw BGR frames to stdout (for camera_server.py).

    python -m demo.scene_feed --seconds 150 --truth demo-out/truth.jsonl | /usr/bin/python3 demo/camera_server.py ...

The scene has two parts. First `--real-seconds` of real footage: the Mall validation frames
(641-800, never trained on; training/mall.py) at their own pace, one every 0.5 s, scaled to the
camera size, with their annotated counts as the truth. Then, after a 1 s cross-fade (a cut
would be one burst of motion), the rendered plaza of `training.scenes.demo_scenario` for the
rest of the time: a crowd builds up, then the incident (the real footage has none).

Until SIGUSR1 arrives it shows the scene's first frame (the camera is "on" but nothing happens
yet), so the gateway can connect and load its model without missing the start. On SIGUSR1 the
scene runs on the wall clock: frame i is shown at start + i/fps; when rendering falls behind, the
world still advances (frames are skipped, as a loaded camera would), so scene time = wall time.
After the last frame the picture freezes until the process is stopped.

The truth file gets one JSON line per scene frame: {"i", "t" (unix s), "count", "incident", "shown",
"source" ("real" | "fade" | "rendered")}, after a first line {"start", "fps", "frames", "width",
"height", "seed", "scenario", "real_seconds"}. This is the annotation / the renderer's ground truth;
it never passes through the encrypted pipeline.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
import threading
import time

import cv2
import numpy as np

from training.mall import demo_frames
from training.scenes import SceneRenderer, demo_scenario

FPS = 10
REAL_FRAME_S = 0.5          # the Mall frames are about half a second apart
FADE_S = 1.0


class Scene:
    """Frame i of the whole scene: label and a lazily drawn BGR frame."""

    def __init__(self, args, n_frames: int):
        self.n_real = max(0, min(n_frames, int(round(args.real_seconds * FPS))))
        self.n_fade = int(round(FADE_S * FPS)) if self.n_real else 0
        n_rendered = max(1, n_frames - self.n_real)
        self.scenario = demo_scenario(incident=args.incident, peak_count=args.peak)
        self.renderer = SceneRenderer(args.seed, n_rendered, args.width, args.height, self.scenario, fps=FPS)
        self.size = (args.width, args.height)
        if self.n_real:
            self.real, self.real_count = demo_frames()
        self.label = None

    def _real(self, i: int) -> np.ndarray:
        j = min(int(i / FPS / REAL_FRAME_S), len(self.real) - 1)
        return cv2.cvtColor(cv2.resize(self.real[j], self.size, interpolation=cv2.INTER_LINEAR), cv2.COLOR_GRAY2BGR)

    def advance(self, i: int) -> dict:
        if i < self.n_real:
            j = min(int(i / FPS / REAL_FRAME_S), len(self.real) - 1)
            self.label = {"count": int(self.real_count[j]), "incident": False, "source": "real"}
        else:
            label = self.renderer.advance()
            fading = i < self.n_real + self.n_fade
            self.label = {**label, "source": "fade" if fading else "rendered"}
        return self.label

    def render(self, i: int) -> np.ndarray:
        if i < self.n_real:
            return self._real(i)
        frame = self.renderer.render()
        if i < self.n_real + self.n_fade:
            w = (i - self.n_real + 1) / (self.n_fade + 1)
            frame = cv2.addWeighted(self._real(self.n_real - 1), 1 - w, frame, w, 0)
        return frame


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
    scene = Scene(args, n_frames)
    out = sys.stdout.buffer
    truth = open(args.truth, "w", encoding="utf-8")

    label = scene.advance(0)
    frame = scene.render(0)
    while not go.is_set() and not stop.is_set():       # waiting room: the first frame, repeated
        if not _write(out, frame):
            return 0
        go.wait(1 / FPS)
    if stop.is_set():
        return 0

    start = time.time()
    truth.write(json.dumps({"start": start, "fps": FPS, "frames": n_frames, "width": args.width,
                            "height": args.height, "seed": args.seed, "real_seconds": scene.n_real / FPS,
                            "scenario": dataclasses.asdict(scene.scenario)}) + "\n")
    i = 0
    while not stop.is_set():
        due = start + i / FPS
        drawn = time.time() - due < 1 / FPS   # on time (or nearly): draw it; else skip the drawing
        # "shown": whether this frame reached the camera (a skipped one doubles the next frame's motion)
        truth.write(json.dumps({"i": i, "t": round(due, 3), **label, "shown": drawn}) + "\n")
        if i % 10 == 0:
            truth.flush()
        if drawn:
            frame = scene.render(i)
            time.sleep(max(0.0, due - time.time()))
            if not _write(out, frame):
                break
        if i + 1 >= n_frames:
            break
        i += 1
        label = scene.advance(i)
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
    parser.add_argument("--peak", type=int, default=40, help="people in view at the rendered crowd's peak")
    parser.add_argument("--real-seconds", type=float, default=0.0,
                        help="seconds of real Mall footage before the rendered scene (0: rendered only)")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
