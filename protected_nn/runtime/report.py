"""The plan report `protect` prints: what was encrypted, which CKKS parameters were chosen (and
that they are 128-bit secure), per-layer costs, sizes, speed and measured exactness."""
from __future__ import annotations

from protected_nn.ckks.context import key_member_widths, normalize_step
from protected_nn.ckks.params import HE_STANDARD_128, CkksParams
from protected_nn.compiler.layout import CostModel
from protected_nn.runtime.plan_sections import PlanDoc


def estimate_latency(layer_stats: list[dict], doc: PlanDoc) -> tuple[list[dict], float]:
    """Per-layer rows with the cost model's milliseconds, and the total (input encryption too)."""
    cost = CostModel(doc.ckks.n, doc.ckks.depth)
    est_ms = 0.0
    rows = []
    for s in layer_stats:
        lvl = s["level"] - 1
        ms = (s["rotations"] * cost.rot(lvl) + s["relins"] * cost.relin(lvl)
              + s["products"] * cost.mul(lvl))
        est_ms += ms
        rows.append(s | {"est_ms": round(ms, 1)})
    est_ms += cost.encrypt() * (1 if doc.plain_input else doc.input.num_cts)
    return rows, est_ms


def worker_memory(params: CkksParams, weight_levels, key_widths) -> dict:
    """Bytes a gateway worker holds once the bundle is loaded: every weight ciphertext expanded at
    its level (2 polynomials x primes left x N x 8 bytes) and the key-switching keys. A Galois
    key kept for ciphertexts of at most m data primes (`key_widths`, one per key: the bundle's
    trimmed width, all data primes if untrimmed) holds m digits of 2 polynomials over m primes
    and the special one once the gateway has released the rest; the relinearization key is
    whole. The bundle bytes come on top while it loads."""
    n = params.n
    data_primes = len(params.qi_sizes) - 1
    weights = sum(2 * (data_primes - int(level)) * n * 8 for level in weight_levels)

    def key(m: int) -> int:
        return m * 2 * (m + 1) * n * 8

    keys = key(data_primes) + sum(key(int(m)) for m in key_widths)
    return {"weight_ciphertexts": weights, "keys": keys, "total": weights + keys}


def galois_key_widths(doc: PlanDoc, rotation_keys) -> list[int]:
    """Per Galois key of the plan, the data primes the bundle keeps it for (ckks/compact.py)."""
    params = doc.ckks.params
    steps = sorted({normalize_step(k, params.slots) for k in doc.rotation_steps} - {0})
    stored = key_member_widths(params.n, steps, b"", rotation_keys)
    return [stored.get(k, len(params.qi_sizes) - 1) for k in steps]


def build_report(graph, plan, doc: PlanDoc, artifacts, fidelity: dict, timings: dict,
                 tolerance: float) -> dict:
    """`plan`: the compiler's (weights and per-layer stats); `doc`: its document, typed."""
    params = doc.ckks.params
    n_weights = sum(1 for w in doc.weights if w.kind == "weight")
    n_bias = sum(1 for w in doc.weights if w.kind == "bias")
    sizes = {k: len(v) for k, v in artifacts.as_members().items()}
    rows, est_ms = estimate_latency(plan.layer_stats, doc)
    data = {
        "ckks": {"ring_dimension": params.n, "slots": params.slots, "qi_bits": list(params.qi_sizes),
                 "scale_bits": params.scale_bits, "log_q": params.log_q,
                 "max_log_q_128": HE_STANDARD_128[params.n], "security": "128-bit (HE standard, checked)",
                 "depth": params.depth},
        "encrypted": {"weight_ciphertexts": n_weights, "bias_ciphertexts": n_bias,
                      "trained_parameters_in_clear": 0,
                      "public_constants": [s["layer"] for s in plan.layer_stats if "fit_range" in s]},
        "rotation_steps": list(doc.rotation_steps),
        "input_ciphertexts": doc.input.num_cts,
        "layers": rows,
        "sizes_bytes": sizes | {"bundle_total": sum(sizes.values())},
        "worker_memory_bytes": worker_memory(params, [w.level for w in doc.weights],
                                             galois_key_widths(doc, artifacts.rotation_keys)),
        "estimated_latency_ms": round(est_ms, 1),
        "fidelity": fidelity | {"tolerance": tolerance},
        "timings": timings,
        "warnings": list(graph.warnings),
    }
    return {"data": data, "text": render(data)}


def render(d: dict) -> str:
    c = d["ckks"]
    out = ["Protected model plan", "=" * 20,
           f"CKKS: N={c['ring_dimension']} ({c['slots']} slots), primes {c['qi_bits']} bits, "
           f"scale 2^{c['scale_bits']}, log2 Q = {c['log_q']} <= {c['max_log_q_128']} -> {c['security']}",
           f"Encrypted: {d['encrypted']['weight_ciphertexts']} weight + "
           f"{d['encrypted']['bias_ciphertexts']} bias ciphertexts hold every trained parameter "
           f"(weights, biases, folded BatchNorm); trained parameters in clear: 0",
           f"Public approximation constants (in clear): "
           f"{', '.join(d['encrypted']['public_constants']) or 'none'}",
           f"Input: {d['input_ciphertexts']} ciphertext(s) per frame; rotation keys for "
           f"{len(d['rotation_steps'])} steps {d['rotation_steps']}", "",
           f"{'layer':<22}{'op':<28}{'in->out':>11}{'level':>6}{'ct*ct':>7}{'rot':>5}{'relin':>6}"
           f"{'est ms':>8}{'floor':>7}{'cts':>5}"]
    for r in d["layers"]:
        shape = f"{r['shape'][1]}->{r['shape'][0]}" if r.get("shape") else ""
        floor = f"{r['floor_products']:.1f}" if "floor_products" in r else ""
        out.append(f"{r['layer'][:21]:<22}{r['op'][:27]:<28}{shape:>11}{r['level']:>6}{r['products']:>7}"
                   f"{r['rotations']:>5}{r['relins']:>6}{r['est_ms']:>8}{floor:>7}{r.get('out_cts', ''):>5}")
        if "fit_range" in r:
            out.append(f"{'':<22}  fitted on [{r['fit_range'][0]:.3g}, {r['fit_range'][1]:.3g}], "
                       f"max fit error {r['fit_max_error']:.2e}")
    tot = lambda k: sum(r[k] for r in d["layers"])  # noqa: E731
    out.append(f"{'total':<67}{tot('products'):>7}{tot('rotations'):>5}{tot('relins'):>6}"
               f"{d['estimated_latency_ms']:>8}")
    s = d["sizes_bytes"]
    f = d["fidelity"]
    out += ["", f"Sizes: bundle {s['bundle_total'] / 1e6:.1f} MB (encrypted params "
                f"{s['params'] / 1e6:.1f} MB, rotation keys {s['rotation_keys'] / 1e6:.1f} MB, relin key "
                f"{s['relin_key'] / 1e6:.1f} MB, public key {s['public_key'] / 1e6:.2f} MB); "
                f"one result {f['result_bytes'] / 1e3:.1f} KB",
            f"Worker memory: {d['worker_memory_bytes']['total'] / 1e6:.0f} MB once loaded (weight "
            f"ciphertexts {d['worker_memory_bytes']['weight_ciphertexts'] / 1e6:.0f} MB, keys "
            f"{d['worker_memory_bytes']['keys'] / 1e6:.0f} MB), plus the bundle while it loads; "
            f"'floor' = (weights x positions) / slots, 'cts' = ciphertexts the layer writes",
            f"Latency: estimated {d['estimated_latency_ms']:.0f} ms, measured {f['latency_s'] * 1e3:.0f} ms "
            f"per inference (encrypt + evaluate + serialize, this machine, one core)",
            f"Fidelity: max |encrypted - onnxruntime| = {f['max_abs_error']:.2e} over {f['samples']} "
            f"calibration input(s) = {f['max_rel_error']:.2e} of the output range "
            f"(tolerance {f['tolerance']:g}) -> {'OK' if f['max_rel_error'] <= f['tolerance'] else 'ABOVE TOLERANCE'}"]
    for w in d["warnings"]:
        out.append(f"warning: {w}")
    return "\n".join(out)
