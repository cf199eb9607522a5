"""One reader thread per camera: RTSP over TCP through OpenCV's FFmpeg backend.

The thread reads the stream at its full rate, so FFmpeg's buffer never fills and latency never
grows; of those frames only the newest is handed on, at most `max_fps` times a second. A stream
that fails to open, errors, or stays silent for the read timeout marks the camera offline; the
thread then reconnects with exponential backoff, forever, until stopped.
"""
from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import deque
from typing import Callable

# FFmpeg reads this when a stream is opened: RTSP over TCP (UDP loses packets across NATs and
# busy links, which shows up as smeared frames). Set before cv2 opens anything.
os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")
# OpenCV's own WARN lines on a failed open ("backend is generally available but can't be used to
# capture by name", stream timeouts) repeat on every retry and mislead; our log says it once.
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
# FFmpeg's own "[tcp @ 0x..] Connection refused" per attempt likewise: only fatal errors (8).
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "8")

import cv2  # noqa: E402  (after the environment above)
import numpy as np  # noqa: E402

from edge_agent.config import CameraConfig, CaptureConfig  # noqa: E402

log = logging.getLogger(__name__)

from service_common.topics import OFFLINE, ONLINE  # noqa: E402 (the camera status words)
# A reference frame further back than this many gaps (stalled stream) gives no motion channel.
MAX_REFERENCE_GAPS = 3.0
RECENT_FRAMES = 16       # frames kept to pick the motion reference from (~1.6 s at 10 fps)
# A dead camera is retried every few seconds forever; its failures are logged once, then as one
# summary line per this many seconds (not ~130k lines a day per camera).
RETRY_LOG_INTERVAL_S = 300.0

# camera id, BGR frame, unix time, reference BGR frame (~reference_gap_s earlier) or None
FrameCallback = Callable[[str, np.ndarray, float, "np.ndarray | None"], None]
StatusCallback = Callable[[str, str], None]                  # camera id, ONLINE | OFFLINE


def redact(url: str) -> str:
    """The URL without user:password, for logs."""
    return re.sub(r"//[^@/]*@", "//***@", url)


class CameraCapture:
    """`start()` / `stop()`; calls on_frame for sampled frames and on_status on every change."""

    def __init__(self, camera: CameraConfig, settings: CaptureConfig,
                 on_frame: FrameCallback, on_status: StatusCallback,
                 on_read: Callable[[str], None] | None = None):
        self.camera = camera
        self.settings = settings
        self.on_frame = on_frame
        self.on_status = on_status
        self.on_read = on_read or (lambda cam_id: None)
        self.status: str | None = None
        self.reference_gap_s = 0.1      # set from the model card (motion frame interval)
        self.reconnects = 0
        self._failures_unlogged = 0      # failed attempts since the last log line about them
        self._failure_logged_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"capture-{camera.id}", daemon=True)

    def start(self) -> "CameraCapture":
        self._thread.start()
        return self

    def request_stop(self) -> None:
        self._stop.set()

    def stop(self, timeout: float = 2.0) -> None:
        """Ask the thread to end; a read blocked inside FFmpeg ends at its read timeout at the
        latest, so we wait only briefly (the thread is a daemon and cannot hold up exit)."""
        self._stop.set()
        self._thread.join(timeout)

    def _log_failure(self, what: str) -> None:
        """The first failure of an outage at WARNING; later ones as one summary line per
        RETRY_LOG_INTERVAL_S, so a camera that stays dead does not flood the journal."""
        now = time.monotonic()
        if self._failure_logged_at is None:
            log.warning("camera %s: %s; retrying every <= %g s (repeats summarised every %g s)",
                        self.camera.id, what, self.settings.reconnect_max_s, RETRY_LOG_INTERVAL_S)
            self._failure_logged_at = now
        elif now - self._failure_logged_at >= RETRY_LOG_INTERVAL_S:
            log.warning("camera %s: still failing (%s), %d attempts in the last %.0f s",
                        self.camera.id, what, self._failures_unlogged + 1, now - self._failure_logged_at)
            self._failure_logged_at, self._failures_unlogged = now, 0
        else:
            self._failures_unlogged += 1

    def _set_status(self, status: str) -> None:
        if status != self.status:
            self.status = status
            log.info("camera %s %s", self.camera.id, status)
            try:
                self.on_status(self.camera.id, status)
            except Exception:  # a status consumer must not kill the capture thread
                log.exception("status callback failed for camera %s", self.camera.id)

    def _open(self) -> cv2.VideoCapture | None:
        s = self.settings
        cap = cv2.VideoCapture(self.camera.url, cv2.CAP_FFMPEG, [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(s.open_timeout_s * 1000),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(s.read_timeout_s * 1000)])
        if cap.isOpened():
            return cap
        cap.release()
        return None

    def _run(self) -> None:
        delay = self.settings.reconnect_min_s
        while not self._stop.is_set():
            cap = self._open()
            got_frames = False
            if cap is None:
                self._log_failure(f"cannot open {redact(self.camera.url)}")
            else:
                try:
                    got_frames = self._read_until_failure(cap)
                finally:
                    cap.release()
            if self._stop.is_set():
                break
            self._set_status(OFFLINE)
            if got_frames:
                delay = self.settings.reconnect_min_s
                self._failure_logged_at, self._failures_unlogged = None, 0   # a new outage
            self.reconnects += 1
            self._stop.wait(delay)
            delay = min(delay * 2, self.settings.reconnect_max_s)

    def _read_until_failure(self, cap: cv2.VideoCapture) -> bool:
        """Read every frame; emit the newest one each sampling period (wall clock, max_fps),
        together with a reference frame `reference_gap_s` earlier in the STREAM (the motion
        channel's "previous frame", at the spacing the model was trained with).

        The reference is chosen on the stream's own timestamps when it has them: under CPU load
        frames are read in bursts, and read times would pick frames several frames apart, which
        the model reads as motion. A sample without a proper reference waits for the next frame
        (zero motion makes the model undercount)."""
        period = 1.0 / self.camera.max_fps
        next_sample = 0.0
        recent: deque[tuple[np.ndarray, float]] = deque(maxlen=RECENT_FRAMES)
        got_frames = False
        read_clock = time.monotonic()
        last_t = -1.0
        while not self._stop.is_set():
            ok, frame = cap.read()
            if not ok or frame is None or frame.size == 0:
                if got_frames:   # a stream that never delivered is the open failure, logged above
                    log.warning("camera %s: stream ended or timed out", self.camera.id)
                else:
                    self._log_failure("stream opened but delivered no frame")
                return got_frames
            now = time.time()
            pts = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
            t = pts if pts > last_t and pts > 0 else last_t + (time.monotonic() - read_clock)
            read_clock = time.monotonic()
            last_t = t
            got_frames = True
            self._set_status(ONLINE)
            self.on_read(self.camera.id)
            if now >= next_sample:
                ref = self._reference(recent, t)
                if ref is not None:
                    try:
                        self.on_frame(self.camera.id, frame, now, ref)
                    except Exception:
                        log.exception("frame handler failed for camera %s", self.camera.id)
                    next_sample = now + period
            recent.append((frame, t))
        return got_frames

    def _reference(self, recent, t: float) -> np.ndarray | None:
        """The recent frame closest to `reference_gap_s` before stream time t, if it is at least
        half a gap and at most MAX_REFERENCE_GAPS gaps earlier."""
        gap = self.reference_gap_s
        best, best_err = None, None
        for frame, tf in recent:
            dt = t - tf
            if 0.5 * gap <= dt <= MAX_REFERENCE_GAPS * gap:
                err = abs(dt - gap)
                if best_err is None or err < best_err:
                    best, best_err = frame, err
        return best
