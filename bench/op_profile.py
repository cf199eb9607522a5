"""Per-operation counts and times of one encrypted inference (bench_engine.py --profile).

Wraps every public instance method of protected_nn.ckks.context.Ckks (rotate, multiply_no_relin,
relinearize, rescale, encode, add_inplace, ... - whatever the class defines when this runs, so a
new operation is counted without a change here) with a timer. Times are exclusive: a method that
calls another wrapped one (as a packed serialization may) is charged only its own part, so the
kinds add up to the time spent in Ckks; the rest of the inference (plan bookkeeping, numpy
layouts) is reported as "outside Ckks". CPU time (process_time) is the figure to read on a shared
machine; wall time is beside it."""
from __future__ import annotations

import functools
import inspect
import time

# Built once per model, not per inference: not what one inference costs.
NOT_PROFILED = {"from_public_bytes", "new_context", "ct_from_bytes"}


class OpProfile:
    def __init__(self, cls):
        self.cls = cls
        self.stats: dict[str, list] = {}          # kind -> [count, cpu_ns, wall_ns]
        self._stack: list[list[int]] = []         # per active call: [child cpu_ns, child wall_ns]
        self._originals: dict[str, object] = {}

    def _wrap(self, name, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            self._stack.append([0, 0])
            c0, w0 = time.process_time_ns(), time.perf_counter_ns()
            try:
                return fn(*args, **kwargs)
            finally:
                cpu, wall = time.process_time_ns() - c0, time.perf_counter_ns() - w0
                child_cpu, child_wall = self._stack.pop()
                entry = self.stats.setdefault(name, [0, 0, 0])
                entry[0] += 1
                entry[1] += cpu - child_cpu
                entry[2] += wall - child_wall
                if self._stack:                   # the caller's own time excludes this call
                    self._stack[-1][0] += cpu
                    self._stack[-1][1] += wall
        return timed

    def install(self) -> "OpProfile":
        for name, member in list(vars(self.cls).items()):
            if name.startswith("_") or name in NOT_PROFILED or not inspect.isfunction(member):
                continue                          # staticmethod/classmethod/property: not ops
            self._originals[name] = member
            setattr(self.cls, name, self._wrap(name, member))
        return self

    def uninstall(self) -> None:
        for name, member in self._originals.items():
            setattr(self.cls, name, member)
        self._originals.clear()

    def run(self, fn, *args):
        """fn(*args) with every operation counted; -> {kind: {count, cpu_ms, wall_ms}} with the
        inference's total and what was spent outside Ckks."""
        self.stats.clear()
        self.install()
        try:
            c0, w0 = time.process_time_ns(), time.perf_counter_ns()
            fn(*args)
            cpu, wall = time.process_time_ns() - c0, time.perf_counter_ns() - w0
        finally:
            self.uninstall()
        out = {kind: {"count": n, "cpu_ms": c / 1e6, "wall_ms": w / 1e6}
               for kind, (n, c, w) in sorted(self.stats.items(), key=lambda kv: -kv[1][1])}
        inside_cpu = sum(v[1] for v in self.stats.values())
        inside_wall = sum(v[2] for v in self.stats.values())
        out["outside Ckks"] = {"count": None, "cpu_ms": (cpu - inside_cpu) / 1e6,
                               "wall_ms": (wall - inside_wall) / 1e6}
        out["total"] = {"count": sum(v[0] for v in self.stats.values()), "cpu_ms": cpu / 1e6,
                        "wall_ms": wall / 1e6}
        return out


def render(profile: dict) -> list[str]:
    total = profile["total"]["cpu_ms"] or 1.0
    lines = ["| operation | count | CPU ms | ms per call | share | wall ms |",
             "|---|---:|---:|---:|---:|---:|"]
    for kind, v in profile.items():
        per = f"{v['cpu_ms'] / v['count']:.2f}" if v["count"] else ""
        lines.append(f"| {kind} | {'' if v['count'] is None else v['count']} | {v['cpu_ms']:.0f} | {per} | "
                     f"{100 * v['cpu_ms'] / total:.0f}% | {v['wall_ms']:.0f} |")
    return lines
