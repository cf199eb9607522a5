"""The demo's picture: the crowd as the owner sees it (the band the backend publishes) against the
ground truth (the annotated count of the real frames, the renderer's count of the rendered scene), the incident state against the true incident, and every alert event marked.

    python -m demo.plot demo-out            # redraw demo-out/demo.png from the saved run

Inputs: `truth.jsonl` (scene_feed.py, the renderer's labels) and `observed.json` (run_demo.py:
the state and alert messages as received from the broker), plus the demo's alert rules for the
band limits. The truth never went through the encrypted pipeline; it is only drawn for comparison.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")          # no display needed
import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402

ALERT_STYLE = {  # (type, event) -> colour, line style; "updated" (a band change) shows in the band itself
    ("crowd", "raised"): ("tab:orange", "-"),
    ("crowd", "cleared"): ("tab:green", "--"), ("incident", "raised"): ("tab:red", "-"),
    ("incident", "cleared"): ("tab:gray", "--"),
}


def read_truth(path: Path) -> tuple[dict, list[dict]]:
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not lines or "start" not in lines[0]:
        raise ValueError(f"{path}: no scene header (did the scene start?)")
    return lines[0], lines[1:]


def band_limits(rules_path: Path) -> tuple[dict[str, tuple[float, float]], float]:
    """label -> (low, high) from the rules' crowd.levels; and the crowd threshold."""
    crowd = (yaml.safe_load(rules_path.read_text()) or {}).get("crowd", {})
    levels = sorted((crowd.get("levels") or {}).items(), key=lambda kv: kv[1])
    limits = {}
    for i, (label, low) in enumerate(levels):
        high = levels[i + 1][1] if i + 1 < len(levels) else low + 10   # open top band ("30+"): drawn 10 high
        limits[label] = (float(low), float(high))
    return limits, float(crowd.get("threshold", 20))


def draw(out_png: Path, header: dict, truth: list[dict], states: list[dict], alerts: list[dict],
         rules_path: Path, title_note: str = "") -> Path:
    start = header["start"]
    limits, threshold = band_limits(rules_path)
    fig, (ax, ax_inc) = plt.subplots(2, 1, figsize=(13, 6.5), sharex=True,
                                     gridspec_kw={"height_ratios": [3, 1]})
    tt = [r["t"] - start for r in truth]
    real_end = float(header.get("real_seconds") or 0.0)
    if real_end > 0:
        for axis in (ax, ax_inc):
            axis.axvspan(0, real_end, color="tab:green", alpha=0.07, lw=0)
        ax.text(real_end / 2, 1.0, "real footage (Mall frames 641-800, never trained on)", transform=ax.get_xaxis_transform(),
                ha="center", va="bottom", fontsize=8, color="tab:green")
        ax.text(real_end + (tt[-1] - real_end) / 2 if tt else real_end, 1.0, "rendered scene",
                transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=8, color="gray")
    ax.plot(tt, [r["count"] for r in truth], color="black", lw=1.4,
            label="people in view: ground truth (annotated heads / rendered)")

    states = sorted((s for s in states if s.get("time") is not None), key=lambda s: s["time"])
    banded = [(s["time"] - start, limits[lab]) for s in states
              if (lab := (s.get("crowd") or {}).get("level")) in limits]
    if banded:
        xs = [x for x, _ in banded]
        ax.fill_between(xs, [lo for _, (lo, _) in banded], [hi for _, (_, hi) in banded], step="post",
                        color="tab:blue", alpha=0.3, lw=0,
                        label="decrypted estimate, as the band the backend publishes")
        ax.plot(xs, [0.25] * len(xs), "|", color="tab:blue", ms=6,
                label="one decrypted result (capture time)")
    ax.axhline(threshold, color="tab:orange", lw=0.8, ls="--", label=f"crowd alert threshold ({threshold:g})")

    inc_truth = [1.0 if r["incident"] else 0.0 for r in truth]
    ax_inc.fill_between(tt, 0, inc_truth, step="post", color="tab:red", alpha=0.25, lw=0,
                        label="incident (ground truth)")
    if states:
        ax_inc.step([s["time"] - start for s in states],
                    [1.0 if (s.get("incident") or {}).get("active") else 0.0 for s in states],
                    where="post", color="tab:red", lw=1.5, label="incident alert active (backend state)")

    ymax = max([r["count"] for r in truth] + [h for _, h in limits.values() if h < 1e9] + [threshold]) + 3
    for a in sorted(alerts, key=lambda a: a.get("time") or 0):
        style = ALERT_STYLE.get((a.get("type"), a.get("event")))
        if style is None or a.get("time") is None:
            continue
        x = a["time"] - start
        for axis in (ax, ax_inc):
            axis.axvline(x, color=style[0], ls=style[1], lw=1.2)
        ax.annotate(f"{a['type']} {a['event']}" + (f" ({a['level']})" if a["type"] == "crowd" else ""),
                    (x, ymax), xytext=(3, -4), textcoords="offset points", rotation=90,
                    va="top", ha="left", fontsize=8, color=style[0])

    ax.set_ylim(0, ymax)
    ax.set_ylabel("people")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, framealpha=0.9)
    ax.grid(alpha=0.3)
    ax_inc.set_ylim(-0.05, 1.15)
    ax_inc.set_yticks([0, 1], ["no", "yes"])
    ax_inc.set_ylabel("incident")
    ax_inc.set_xlabel("seconds since the scene started")
    ax_inc.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, framealpha=0.9)
    ax_inc.grid(alpha=0.3)
    scenario = header.get("scenario", {})
    scene = (f"{real_end:.0f} s real mall footage, then " if real_end > 0 else "") + \
        f"a rendered crowd to {scenario.get('peak_count', '?')}, then {scenario.get('kind', '?')}"
    fig.suptitle(f"fhe-edge demo: encrypted CNN on the gateway, alerts from the backend ({scene})"
                 + (f"\n{title_note}" if title_note else ""), fontsize=10)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def draw_run(out_dir: Path, rules_path: Path, title_note: str = "") -> Path:
    header, truth = read_truth(out_dir / "truth.jsonl")
    observed = json.loads((out_dir / "observed.json").read_text())
    return draw(out_dir / "demo.png", header, truth, observed["states"], observed["alerts"], rules_path,
                title_note or observed.get("note", ""))


def main(argv: list[str] | None = None) -> int:
    from demo.configs import RULES
    parser = argparse.ArgumentParser(description="redraw demo.png from a finished demo run")
    parser.add_argument("out_dir", nargs="?", default="demo-out", type=Path)
    parser.add_argument("--rules", type=Path, default=RULES)
    args = parser.parse_args(argv)
    print(draw_run(args.out_dir, args.rules))
    return 0


if __name__ == "__main__":
    sys.exit(main())
