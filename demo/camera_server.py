"""The demo camera: GStreamer's RTSP server fed with raw BGR frames on stdin (appsrc -> x264).

Run by Debian's /usr/bin/python3 (python3-gi and the RTSP server bindings live there, not in the
venv), so only the standard library and gi are imported. The frames come from
`demo/scene_feed.py` (venv, numpy/OpenCV) through a pipe:

    venv/python -m demo.scene_feed ... | /usr/bin/python3 demo/camera_server.py --port N --width W --height H

It behaves like a live camera: the scene runs on the wall clock whether or not anyone watches;
frames arriving while no client is connected are simply not sent. Each client session gets the
frames from the moment it connects. End of stdin (the feeder stopped) ends the server.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

MOUNT = "/scene"


def _launch(width: int, height: int, fps: int) -> str:
    caps = f"video/x-raw,format=BGR,width={width},height={height},framerate={fps}/1"
    # zerolatency + one keyframe a second: a (re)connecting gateway gets a picture quickly
    return (f"( appsrc name=src is-live=true format=time do-timestamp=true caps={caps} ! "
            f"videoconvert ! video/x-raw,format=I420 ! "
            f"x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} ! "
            f"rtph264pay name=pay0 pt=96 config-interval=1 )")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="RTSP camera serving raw BGR frames read from stdin")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--width", type=int, required=True)
    parser.add_argument("--height", type=int, required=True)
    parser.add_argument("--fps", type=int, default=10)
    args = parser.parse_args(argv)

    import gi
    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)
    frame_bytes = args.width * args.height * 3
    sources: list = []          # appsrc of each live media (one, as the factory is shared)
    lock = threading.Lock()

    def on_configure(_factory, media):
        src = media.get_element().get_child_by_name("src")
        with lock:
            sources.append(src)

        def gone(_media):
            with lock:
                if src in sources:
                    sources.remove(src)
        media.connect("unprepared", gone)

    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(_launch(args.width, args.height, args.fps))
    factory.set_shared(True)
    factory.connect("media-configure", on_configure)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    server.get_mount_points().add_factory(MOUNT, factory)
    if server.attach(None) == 0:
        print(f"camera: cannot listen on 127.0.0.1:{args.port}", file=sys.stderr)
        return 1
    loop = GLib.MainLoop()

    def pump() -> None:
        """Copy frames from stdin to whichever client pipeline exists, until end of input."""
        stdin = sys.stdin.buffer
        while True:
            data = stdin.read(frame_bytes)
            if len(data) < frame_bytes:
                break
            with lock:
                targets = list(sources)
            for src in targets:
                src.emit("push-buffer", Gst.Buffer.new_wrapped(data))
        GLib.idle_add(loop.quit)

    threading.Thread(target=pump, name="pump", daemon=True).start()
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, loop.quit)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGINT, loop.quit)
    print(f"camera: serving rtsp://127.0.0.1:{args.port}{MOUNT} ({args.width}x{args.height} @ {args.fps} fps)",
          flush=True)
    loop.run()
    # The pump thread may be blocked reading stdin; a normal interpreter shutdown would then die
    # on the stdin lock ("Fatal Python error: _enter_buffered_busy"). Nothing is left to flush.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
