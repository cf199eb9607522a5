"""Which rotations get a Galois key of their own, beyond the shared power-of-two steps."""
from __future__ import annotations

MAX_DIRECT_STEPS = 4      # Galois keys added for long chains (each is megabytes of bundle)


def direct_long_chains(steps, rot_steps, slots, layer_stats) -> None:
    """Rotations are chains of shared power-of-two steps (few Galois keys); a rotation whose chain
    is long (7 steps for 239) gets a key of its own when that saves at least 2 rotations per
    inference - at most MAX_DIRECT_STEPS of them, the largest savings first."""
    chains = []                                  # (layer, chain list, edited in place)
    for st in steps:
        if st["op"] == "mlinear":
            cs = [b[2] for b in st["babies"]] + [g["shift"] for o in st["outs"] for g in o["giants"]]
        elif st["op"] == "linear":
            cs = [b[2] for b in st["babies"]] + [g["shift"] for g in st["giants"]]
        else:
            continue
        chains += [(st["out"], c) for c in cs]
    saving: dict[int, int] = {}
    for _, c in chains:
        if len(c) > 2:
            d = sum(c) % slots
            saving[d] = saving.get(d, 0) + len(c) - 1
    direct = sorted((d for d, v in saving.items() if v >= 2), key=lambda d: -saving[d])
    direct = set(direct[:MAX_DIRECT_STEPS])
    saved: dict[str, int] = {}
    for layer, c in chains:
        if len(c) > 2 and sum(c) % slots in direct:
            saved[layer] = saved.get(layer, 0) + len(c) - 1
            c[:] = [sum(c) % slots]
    for stat in layer_stats:
        stat["rotations"] -= saved.get(stat["layer"], 0)
    rot_steps.update(direct)
