"""The one-command demo (scripts/demo.sh runs this after set-up): the whole system on one machine.

    python -m demo.run_demo [--duration 90] [--out demo-out] [--incident dispersal|fall]

1. owner: `backend-decryptor protect` the shipped model into demo-out/store (skipped when the store
   already holds this exact model file; --fresh protects again) and `export` the signed bundle;
2. a private Mosquitto and the RTSP camera (real mall footage with its annotated counts, then a
   rendered plaza scene: a crowd builds up, then an incident) on free loopback ports; the gateway's and the backend's YAML written to demo-out/;
3. `backend-decryptor run` and `edge-agent run` as they run in production; the scene starts once
   the gateway is ready and sees the camera;
4. alerts are printed as they arrive, with a progress line; after --duration seconds everything
   is stopped and demo-out/demo.png drawn.

Every process started here runs in its own process group and is stopped (group-wide, SIGKILL
after a grace period) in a `finally` block, on normal end, error, Ctrl-C or SIGTERM.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from demo import configs
from demo.monitor import Monitor, Progress
from demo.processes import Child, ChildFailed, NotifySocket, free_port, start_mosquitto, wait_port

REPO = Path(__file__).resolve().parents[1]
SYSTEM_PYTHON = "/usr/bin/python3"
FEED_SIZE = (320, 240)


def tool(name: str, module: str) -> list[str]:
    """The console script next to this interpreter (what a user types), else `python -m`."""
    script = Path(sys.executable).parent / name
    return [str(script)] if script.exists() else [sys.executable, "-m", module]


class Demo:
    def __init__(self, args):
        self.args = args
        self.out: Path = args.out.resolve()
        self.logs = self.out / "logs"
        self.children: list[Child] = []
        self.monitor: Monitor | None = None
        self.notify: list[NotifySocket] = []
        self.progress = Progress()
        self.scene_start: float | None = None

    # -- owner side: protect and export ---------------------------------------------------------
    def _run_tool(self, name: str, cmd: list[str], timeout: float) -> str:
        print(f"$ {' '.join(cmd[-6:] if cmd[0] == sys.executable else cmd)}".replace(str(self.out), "demo-out"),
              flush=True)
        child = self._start(name, cmd)
        try:
            child.proc.wait(timeout)
        except Exception:
            raise ChildFailed(f"{name} did not finish within {timeout:.0f} s") from None
        self.children.remove(child)
        text = child.log_path.read_text(errors="replace")
        if child.proc.returncode != 0:
            raise ChildFailed(f"{name} failed (status {child.proc.returncode}):\n{text[-3000:]}")
        return text

    def protect_and_export(self) -> tuple[Path, Path]:
        model = self.args.model.resolve()
        if not model.is_file():
            raise SystemExit(f"demo: model file not found: {model} (the shipped model is models/crowd_incident.onnx)")
        store = self.out / "store"
        sha = hashlib.sha256(model.read_bytes()).hexdigest()
        if self.args.fresh or not self._store_has(store, sha):
            text = self._run_tool("protect", tool("backend-decryptor", "backend_decryptor.cli") + [
                "protect", str(model), "--model-id", configs.MODEL_ID, "--store", str(store)], timeout=1800)
            print(text.rstrip(), flush=True)
        else:
            print(f"demo: {store} already holds {configs.MODEL_ID} protected from this {model.name} "
                  f"(--fresh to protect again under a new key)", flush=True)
        bundle = self.out / f"{configs.MODEL_ID}.bundle"
        text = self._run_tool("export", tool("backend-decryptor", "backend_decryptor.cli") + [
            "export", configs.MODEL_ID, "--out", str(bundle), "--store", str(store)], timeout=600)
        print(text.rstrip(), flush=True)
        return bundle, Path(str(bundle) + ".owner.pub")

    @staticmethod
    def _store_has(store: Path, sha: str) -> bool:
        if not (store / "index.sqlite").exists():
            return False
        from backend_decryptor.store import Store
        try:
            models = Store(store, create=False).models()
        except Exception:
            return False
        return any(m["model_id"] == configs.MODEL_ID and m["active"] and m["onnx_sha256"] == sha for m in models)

    # -- processes ----------------------------------------------------------------------------
    def _start(self, name: str, cmd: list[str], notify: NotifySocket | None = None, **kw) -> Child:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("NOTIFY_SOCKET", None)    # only the daemons we wait for talk to (our own) socket
        if notify is not None:
            env["NOTIFY_SOCKET"] = str(notify.path)
        child = Child(name, cmd, self.logs / f"{name}.log", env=env, cwd=REPO, **kw)
        self.children.append(child)
        return child

    def _notify_socket(self, name: str) -> NotifySocket:
        sock = NotifySocket(self.out / f".{name}.notify")
        self.notify.append(sock)
        return sock

    def gateway_key(self) -> tuple[Path, str]:
        """The gateway's result-signing key, made as an installer would (`edge-agent keygen`);
        its public half goes into the backend's checks.gateway_keys."""
        key = self.out / "keys" / f"{configs.GATEWAY_ID}.key"
        key.parent.mkdir(parents=True, exist_ok=True)
        if not key.exists():
            self._run_tool("keygen", tool("edge-agent", "edge_agent.cli") + [
                "keygen", "--out", str(key), "--gateway-id", configs.GATEWAY_ID], timeout=60)
        public = key.with_name(key.name + ".pub").read_text().strip()
        print(f"gateway {configs.GATEWAY_ID}: signing key {key} (public {public})")
        return key, public

    def run(self) -> int:
        args = self.args
        self.out.mkdir(parents=True, exist_ok=True)
        for stale in ("gateway", "backend", "logs", "demo.png", "observed.json", "truth.jsonl"):
            p = self.out / stale          # runtime state of an earlier run: start clean
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        t_start = time.monotonic()
        print("== 1. owner: protect the shipped model (every weight encrypted) and export the signed bundle")
        bundle, owner_pub = self.protect_and_export()
        t_protected = time.monotonic()

        print("\n== 2. a private MQTT broker and the RTSP camera on loopback ports")
        ports = configs.Ports(free_port(), free_port(), free_port(), free_port())
        self.children.append(start_mosquitto(self.logs / "mosquitto", ports.mqtt))
        self.monitor = Monitor(ports.mqtt, configs.PREFIX, configs.CAMERA_ID, on_alert=self._show_alert)
        feed = self._start("scene", [sys.executable, "-m", "demo.scene_feed", "--seconds", str(args.duration),
                                     "--truth", str(self.out / "truth.jsonl"), "--width", str(FEED_SIZE[0]),
                                     "--height", str(FEED_SIZE[1]), "--seed", str(args.seed),
                                     "--incident", args.incident, "--peak", str(args.peak),
                                     "--real-seconds", str(args.duration * args.real_share)],
                           stdout=subprocess.PIPE)
        camera = self._start("camera", [SYSTEM_PYTHON, str(REPO / "demo" / "camera_server.py"), "--port",
                                        str(ports.rtsp), "--width", str(FEED_SIZE[0]),
                                        "--height", str(FEED_SIZE[1])], stdin=feed.proc.stdout)
        feed.proc.stdout.close()          # the camera holds the pipe now; EOF reaches it if the feed dies
        wait_port(ports.rtsp, 20, camera)
        camera_url = f"rtsp://127.0.0.1:{ports.rtsp}/scene"
        print(f"broker 127.0.0.1:{ports.mqtt}, camera {camera_url}")

        signing_key, public_key = self.gateway_key()   # the gateway's install step, before anything runs

        print("\n== 3. the backend service and the gateway daemon")
        edge_yaml = configs.write_edge_config(self.out, bundle, owner_pub, signing_key, camera_url, ports,
                                              workers=args.workers, max_fps=args.max_fps)
        backend_yaml = configs.write_backend_config(self.out, self.out / "store", ports, public_key,
                                                    decrypt_workers=args.decrypt_workers)
        ns = self._notify_socket("backend")
        backend = self._start("backend", tool("backend-decryptor", "backend_decryptor.cli") +
                              ["run", "--config", str(backend_yaml)], notify=ns)
        ns.wait_ready(backend, 120)
        print(f"backend-decryptor run --config {backend_yaml}: ready")
        ns = self._notify_socket("gateway")
        gateway = self._start("gateway", tool("edge-agent", "edge_agent.cli") + ["run", "--config", str(edge_yaml)],
                              notify=ns)
        ns.wait_ready(gateway, 300)
        if not self.monitor.wait_camera_online(60, check=lambda: [c.check_alive() for c in self.children]):
            raise ChildFailed(f"the gateway did not get the camera stream within 60 s:\n{gateway.log_tail()}")
        print(f"edge-agent run --config {edge_yaml}: ready, camera online")
        t_ready = time.monotonic()

        print(f"\n== 4. the scene runs for {args.duration:.0f} s: frames are encrypted on the gateway, "
              f"results decrypted and judged in the backend")
        self.scene_start = time.time()
        os.kill(feed.proc.pid, signal.SIGUSR1)
        self._watch(ports, args.duration)
        self._drain(ports)
        self.progress.end()
        t_end = time.monotonic()
        note = self._summary(ports, t_protected - t_start, t_ready - t_protected, t_end - t_ready)
        self._stop_all()
        self._save_and_plot(note)
        return 0

    def _watch(self, ports: configs.Ports, duration: float) -> None:
        deadline = time.monotonic() + duration
        while time.monotonic() < deadline:
            for c in self.children:
                c.check_alive()
            self.progress.update(ports.gateway_metrics, ports.backend_metrics)
            elapsed = time.time() - self.scene_start
            self.progress.show(self.progress.line(elapsed, duration, self.monitor))
            time.sleep(1.0)

    def _drain(self, ports: configs.Ports, timeout: float = 20.0) -> None:
        """Stop the gateway, then give the backend time to decrypt what is still on its way."""
        gateway = next(c for c in self.children if c.name == "gateway")
        gateway.stop(grace=15)
        self.children.remove(gateway)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.progress.update(ports.gateway_metrics, ports.backend_metrics)
            done = self.progress.backend["backend_messages_processed_total"] + \
                self.progress.backend["backend_messages_rejected_total"]
            if done >= self.monitor.encrypted_results:   # every published result has been handled
                break
            time.sleep(0.5)
        time.sleep(0.5)                    # the last state/alert messages reach the monitor
        self.progress.show(self.progress.line(time.time() - self.scene_start, self.args.duration, self.monitor),
                           force=True)

    def _show_alert(self, alert: dict) -> None:
        if alert.get("event") == "updated":
            return          # a band change of an active crowd alert: shown in the progress line
        t = (alert.get("time") or 0) - (self.scene_start or 0)
        level = f" level {alert.get('level')}" if alert.get("type") == "crowd" else ""
        self.progress.message(f"ALERT  t={t:5.1f} s  {alert.get('type')} {alert.get('event')}{level}  "
                              f"camera {alert.get('camera')}  id {str(alert.get('id'))[:8]}")

    def _summary(self, ports, protect_s: float, start_s: float, run_s: float) -> str:
        g, b = self.progress.gateway, self.progress.backend
        crowd, incident = self.monitor.raised("crowd"), self.monitor.raised("incident")
        encrypted = max(g["edge_agent_results_total"], self.monitor.encrypted_results)
        note = (f"{encrypted:.0f} frames encrypted, {b['backend_messages_processed_total']:.0f} "
                f"results decrypted, {crowd} crowd and {incident} incident alert(s) raised")
        print(f"\n== done: {note}")
        skipped = self._skipped_frames()
        if skipped:
            print(f"   note: the renderer fell behind and skipped {skipped} scene frame(s) (machine busy)")
        print(f"   times: protect+export {protect_s:.0f} s, start-up {start_s:.0f} s, scene+drain {run_s:.0f} s")
        print(f"   alert history (owner side): backend-decryptor alerts --config {self.out / 'backend.yaml'} --since 1h")
        print(f"   logs: {self.logs}/")
        return note

    def _skipped_frames(self) -> int:
        try:
            lines = (self.out / "truth.jsonl").read_text().splitlines()[1:]
            return sum(1 for line in lines if line and not json.loads(line).get("shown", True))
        except (OSError, ValueError):
            return 0

    def _save_and_plot(self, note: str) -> None:
        from demo import plot
        obs = self.monitor.observed
        (self.out / "observed.json").write_text(json.dumps(
            {"states": obs.states, "alerts": obs.alerts, "note": note, "scene_start": self.scene_start}, indent=1))
        png = plot.draw_run(self.out, configs.RULES, note)
        print(f"   picture: {png}")

    def _stop_all(self) -> None:
        """Stop what was started, newest first: gateway, backend, camera, scene, broker."""
        if self.monitor is not None:
            self.monitor.close()
        order = {"gateway": 0, "backend": 1, "camera": 2, "scene": 3, "mosquitto": 4}
        hurry = False
        for child in sorted(self.children, key=lambda c: order.get(c.name, -1)):
            try:
                child.kill() if hurry else child.stop(grace=12)
            except KeyboardInterrupt:      # a second Ctrl-C: no more grace for anyone
                hurry = True
                child.kill()
        self.children.clear()
        for sock in self.notify:
            sock.close()
        self.notify.clear()


def _parse(argv):
    p = argparse.ArgumentParser(prog="demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=90, help="seconds the scene runs (default 90)")
    p.add_argument("--out", type=Path, default=REPO / "demo-out", help="output folder (default demo-out/)")
    p.add_argument("--model", type=Path, default=REPO / "models" / "crowd_incident.onnx", help="ONNX model")
    p.add_argument("--incident", choices=("dispersal", "fall"), default="dispersal", help="the scene's incident")
    p.add_argument("--real-share", type=float, default=0.5,
                   help="share of the scene that is real Mall footage before the rendered incident (default 0.5)")
    p.add_argument("--peak", type=int, default=40, help="people in view at the rendered crowd's peak (default 40; the "
                   "shipped model's count is calibrated to the real mall camera, not the rendered plaza: docs/demo.md)")
    p.add_argument("--seed", type=int, default=1,
                   help="seed of the rendered part of the scene (default 1)")
    p.add_argument("--max-fps", type=float, default=2.0, help="inferences per second the gateway takes at most")
    # One worker keeps up with --max-fps 2 for the shipped model (~0.3 s per encrypted inference)
    # and leaves the other core(s) to the camera, the capture thread and the backend; a starved
    # capture thread reads frames in bursts, which distorts the motion channel.
    p.add_argument("--workers", type=int, default=1, help="gateway worker processes (default 1)")
    p.add_argument("--decrypt-workers", type=int, default=1, help="backend decryption processes")
    p.add_argument("--fresh", action="store_true", help="protect the model again even if the store has it")
    args = p.parse_args(argv)
    if args.duration < 10:
        p.error("--duration must be at least 10 seconds")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)

    def on_term(signum, frame):
        raise KeyboardInterrupt          # SIGTERM: the same orderly stop as Ctrl-C
    signal.signal(signal.SIGTERM, on_term)
    demo = Demo(args)
    try:
        return demo.run()
    except KeyboardInterrupt:
        demo.progress.end()
        print("\ndemo: interrupted, stopping everything it started", flush=True)
        return 130
    except ChildFailed as exc:
        demo.progress.end()
        print(f"\ndemo: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        demo._stop_all()


if __name__ == "__main__":
    sys.exit(main())
