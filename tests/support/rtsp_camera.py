"""A real RTSP camera for the tests: GStreamer's RTSP server (Debian's gir1.2-gst-rtsp-server-1.0)
serving a test pattern (or a video file) on a loopback port.

The server runs under Debian's /usr/bin/python3 (python3-gi lives there, not in the venv) as a
separate process, so a test can kill it to simulate a camera going away and start it again on
the same port to simulate it coming back:

    with RtspCamera() as cam:          # cam.url == "rtsp://127.0.0.1:<port>/cam"
        cam.stop(); cam.start()

This file is also the server script itself (`/usr/bin/python3 rtsp_camera.py --port N`); only the
standard library is imported at module level so both interpreters can load it.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

SYSTEM_PYTHON = "/usr/bin/python3"
MOUNT = "/cam"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gstreamer_available() -> bool:
    """True when Debian's python3 can import the RTSP server bindings (tests skip otherwise)."""
    if not os.path.exists(SYSTEM_PYTHON):
        return False
    probe = ("import gi; gi.require_version('Gst','1.0'); gi.require_version('GstRtspServer','1.0');"
             "from gi.repository import Gst, GstRtspServer; Gst.init(None);"
             "assert Gst.ElementFactory.find('x264enc')")
    return subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True).returncode == 0


class RtspCamera:
    """Start/stop the GStreamer RTSP server subprocess; `url` stays valid across restarts."""

    def __init__(self, port: int | None = None, width: int = 320, height: int = 240,
                 fps: int = 10, video_file: str | None = None):
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.width, self.height, self.fps = width, height, fps
        self.video_file = video_file
        self.proc: subprocess.Popen | None = None
        self.log_path = Path(tempfile.mkstemp(prefix="rtsp-cam-", suffix=".log")[1])

    @property
    def url(self) -> str:
        return f"rtsp://{self.host}:{self.port}{MOUNT}"

    def start(self, timeout: float = 15.0) -> "RtspCamera":
        cmd = [SYSTEM_PYTHON, str(Path(__file__).resolve()), "--port", str(self.port),
               "--width", str(self.width), "--height", str(self.height), "--fps", str(self.fps)]
        if self.video_file:
            cmd += ["--file", self.video_file]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        from tests.support import process   # not at module level: Debian's python3 runs this file
        process.wait_listening(self.proc, self.host, self.port, timeout, "RTSP camera", self.log)
        return self

    def stop(self) -> None:
        from tests.support import process
        process.stop(self.proc)
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def __enter__(self) -> "RtspCamera":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        self.log_path.unlink(missing_ok=True)


def _pipeline(args) -> str:
    encode = ("videoconvert ! video/x-raw,format=I420 ! x264enc tune=zerolatency "
              f"speed-preset=ultrafast key-int-max={args.fps} ! rtph264pay name=pay0 pt=96")
    if args.file:
        # A file loops only per client session; good enough for a test camera.
        return (f"( filesrc location={args.file} ! decodebin ! videoscale ! videorate ! "
                f"video/x-raw,width={args.width},height={args.height},framerate={args.fps}/1 ! "
                f"{encode} )")
    return (f"( videotestsrc is-live=true pattern=ball ! "
            f"video/x-raw,width={args.width},height={args.height},framerate={args.fps}/1 ! "
            f"{encode} )")


def serve(argv: list[str]) -> None:
    """Run by /usr/bin/python3: serve one shared test stream until SIGTERM."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--fps", type=int, default=10)
    parser.add_argument("--file")
    args = parser.parse_args(argv)

    import gi
    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(_pipeline(args))
    factory.set_shared(True)
    server.get_mount_points().add_factory(MOUNT, factory)
    if server.attach(None) == 0:
        sys.exit(f"cannot listen on 127.0.0.1:{args.port}")
    loop = GLib.MainLoop()
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, loop.quit)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGINT, loop.quit)
    print(f"serving rtsp://127.0.0.1:{args.port}{MOUNT}", flush=True)
    loop.run()


if __name__ == "__main__":
    serve(sys.argv[1:])
