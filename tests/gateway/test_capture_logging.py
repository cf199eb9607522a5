"""A dead camera is retried forever; its log must not grow with every retry (issue 16: a dead
camera logged 3 lines every 2 s, ~130k a day, one of them OpenCV's misleading FFMPEG warning).
Run in a subprocess: OpenCV and FFmpeg write their warnings straight to file descriptor 2."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = r'''
import logging, socket, sys, time
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="LOG %(levelname)s %(message)s")
import edge_agent.capture as capture
from edge_agent.config import CameraConfig, CaptureConfig
capture.RETRY_LOG_INTERVAL_S = float(sys.argv[2])
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()   # nobody listens
cam = CameraConfig(id="cam-dead", url=f"rtsp://user:secret@127.0.0.1:{port}/stream")
settings = CaptureConfig(open_timeout_s=1, read_timeout_s=1, reconnect_min_s=0.05, reconnect_max_s=0.1)
cap = capture.CameraCapture(cam, settings, on_frame=lambda *a: None, on_status=lambda *a: None).start()
time.sleep(float(sys.argv[1]))
cap.stop()
print("RECONNECTS", cap.reconnects)
'''


def run_dead_camera(seconds: float, summary_every_s: float) -> tuple[list[str], str, int]:
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(seconds), str(summary_every_s)], cwd=REPO,
                         capture_output=True, text=True, timeout=120, check=True)
    lines = [l for l in out.stdout.splitlines() if l.startswith("LOG WARNING")]
    reconnects = int(out.stdout.split("RECONNECTS")[1])
    return lines, out.stderr, reconnects


def test_a_dead_camera_logs_once_not_per_retry():
    warnings, stderr, reconnects = run_dead_camera(3.0, summary_every_s=300)
    assert reconnects >= 5, "the camera must keep being retried"
    assert len(warnings) == 1, warnings
    assert "cannot open" in warnings[0] and "secret" not in warnings[0]
    # Neither OpenCV's "[ WARN:..] ... can't be used to capture by name" nor FFmpeg's
    # "[tcp @ ..] Connection refused" once per attempt.
    assert "WARN" not in stderr and "Connection refused" not in stderr, stderr[-2000:]


def test_a_long_outage_gets_periodic_summaries_with_the_attempt_count():
    warnings, _, reconnects = run_dead_camera(3.0, summary_every_s=1.0)
    summaries = [w for w in warnings if "still failing" in w]
    assert 1 <= len(summaries) <= 4, warnings
    assert "attempts in the last" in summaries[0]
    assert len(warnings) < reconnects / 2
