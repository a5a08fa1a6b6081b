"""Markdown tables from the experiments' JSON results (RUNS/results.md)."""
from __future__ import annotations

import json
from pathlib import Path

from .metrics import first_move

SURFACE = [("distinct_1", "rel", 0.10), ("distinct_2", "rel", 0.10), ("mean_len", "rel", 0.10),
           ("rep_rate", "abs", 0.05), ("self_rep", "abs", 0.05)]


def step_seconds(runs: Path) -> dict:
    out = {}
    for p in sorted(Path(runs).rglob("*.done.json")):
        j = json.loads(p.read_text())
        out[j["step"]] = j.get("seconds")
    return out


def _f(x, nd=3):
    return "" if x is None else f"{x:.{nd}f}"


def alert_gen(rows, tap):
    """First generation with an alert other than low_confidence/info."""
    for r in rows:
        al = [a for a in r["taps"][tap]["report"]["alerts"]
              if a["rule"] != "low_confidence" and a["severity"] in ("warning", "critical")]
        if al:
            return r["generation"]
    return None


def significant_gen(rows, tap):
    for r in rows:
        rep = r["taps"][tap]["report"]
        if r["generation"] > 0 and abs(rep["track2_drift"]) > rep["drift_halfwidth"]:
            return r["generation"]
    return None


def surface_move(rows, key, kind, thr):
    vals = [r["surface"][key] for r in rows]
    if kind == "rel":
        return first_move(vals, rel=thr)
    for k, v in enumerate(vals):
        if k and abs(v - vals[0]) >= thr:
            return k
    return None


def ablation_md(ab: dict) -> str:
    L = [f"Corpus: n = {ab['n']} MiniLM embeddings (m = {ab['m']}); exact "
         f"S = log det(G/n + 1e-6 I) = {ab['exact_S']:.3f}.", "",
         "| n_A | n_A/m | f | mean half-width | half·√n_A | half·√(n_A/(1-f)) | RMSE(track2 − S) | "
         "mean \\|raw − S\\| | covered | Track I [lower, upper] | seal compute s (daemon) | send + seal s (client) |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in ab["summary"]:
        L.append(f"| {s['n_a']} | {s['n_a_over_m']} | {s['f']:.3f} | {s['mean_half']:.3f} | "
                 f"{s['half_x_sqrt_na']:.1f} | {s['half_x_sqrt_na_over_1mf']:.1f} | {s['rmse']:.3f} | "
                 f"{s['mean_abs_raw_error']:.3f} | {s['coverage']} | "
                 f"[{s['track1_lower']:.1f}, {s['track1_upper']:.1f}] | "
                 f"{s['mean_compute_seconds']:.4f} | {s['mean_client_seconds']:.3f} |")
    L += ["", "Stability (same corpus and encoder, sketch seed 2 against seed 1 as the baseline "
          "job; 'pairs' counts seeds 2..8 against seed 1):", "",
          "| n_A | track2 (seed 1) | track2 (seed 2) | drift seed2 − seed1 | drift half-width | "
          "within | pairs within |", "|---|---|---|---|---|---|---|"]
    for s in ab["summary"]:
        L.append(f"| {s['n_a']} | {s['seed1_track2']:.3f} | {s['seed2_track2']:.3f} | "
                 f"{s['seed2_minus_seed1']:+.3f} | {s['drift_half']:.3f} | "
                 f"{'yes' if s['stable'] else 'no'} | {s['pairs_within']} |")
    return "\n".join(L)


def recursive_md(res: dict) -> str:
    rows = res["rows"]
    L = []
    taps = ["minilm", "model_gen", "model_probe"]
    for s in ("s1", "s2"):
        for tap in taps:
            if not rows.get(s):
                continue
            r0 = rows[s][0]["taps"][tap]
            m = r0["report"]["m"]
            L += [f"#### {s.upper()}, tap `{tap}` (job `{s}-{ {'minilm': 'minilm', 'model_gen': 'model', 'model_probe': 'probe'}[tap]}`, m = {m}, n_A = {r0['report']['n_a']}, n = {int(r0['report']['n'])})", "",
                  "| gen | Track I upper | Track II ± half | exact S | T1 drift/m | T2 drift | "
                  "T2 drift/m | exact drift | drift half | divergence/m | alerts |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
            S0 = r0["exact_S"]
            for r in rows[s]:
                t = r["taps"][tap]
                p = t["report"]
                al = ", ".join(f"{a['rule']}:{a['severity']}" for a in p["alerts"]
                               if a["rule"] != "low_confidence") or "—"
                L.append(f"| {r['generation']} | {p['track1_upper']:.2f} | {p['track2']:.2f} ± "
                         f"{p['track2_ci_halfwidth']:.2f} | {t['exact_S']:.2f} | "
                         f"{p['per_dim']['track1_drift']:+.4f} | {p['track2_drift']:+.2f} | "
                         f"{p['per_dim']['track2_drift']:+.3f} | {t['exact_S'] - S0:+.2f} | "
                         f"{p['drift_halfwidth']:.2f} | {p['per_dim']['divergence']:+.3f} | {al} |")
            inside = sum(abs(r["taps"][tap]["report"]["track2"] - r["taps"][tap]["exact_S"])
                         <= r["taps"][tap]["report"]["track2_ci_halfwidth"] for r in rows[s])
            dins = sum(abs(r["taps"][tap]["report"]["track2_drift"] - (r["taps"][tap]["exact_S"] - S0))
                       <= r["taps"][tap]["report"]["drift_halfwidth"] for r in rows[s])
            L += ["", f"Exact S inside Track II ± half: {inside}/{len(rows[s])} generations; "
                  f"exact drift inside Track II drift ± drift half: {dins}/{len(rows[s])}.", ""]
    L += ["#### Surface metrics of the generated text", "",
          "| setting | gen | distinct-1 | distinct-2 | rep rate (dup texts) | self-rep | mean len (tokens) | copy rate | held-out loss |",
          "|---|---|---|---|---|---|---|---|---|"]
    for s in ("s1", "s2"):
        for r in rows.get(s, []):
            u = r["surface"]
            hl = r.get("heldout_loss")
            L.append(f"| {s.upper()} | {r['generation']} | {u['distinct_1']:.4f} | {u['distinct_2']:.4f} | "
                     f"{u['rep_rate']:.4f} | {u['self_rep']:.4f} | {u['mean_len']:.2f} | "
                     f"{u.get('copy_rate', 0):.4f} | {_f(hl)} |")
    L += ["", "#### Which moves first", "",
          "First generation (0 = baseline) at which: a daemon alert (warning/critical, "
          "low_confidence excluded) fires; the Track II drift is significant "
          "(|drift| > drift half-width); each surface metric has moved (distinct-n and length: "
          "≥ 10 % relative; rep rate and self-rep: ≥ 0.05 absolute). '—' = never.", "",
          "| setting | alert minilm | alert model_gen | alert model_probe | signif. minilm | "
          "signif. model_gen | signif. model_probe | " + " | ".join(k for k, _, _ in SURFACE) + " |",
          "|---" * (7 + len(SURFACE)) + "|"]
    for s in ("s1", "s2"):
        rs = rows.get(s, [])
        if not rs:
            continue
        cells = [alert_gen(rs, t) for t in taps] + [significant_gen(rs, t) for t in taps]
        cells += [surface_move(rs, k, kind, thr) for k, kind, thr in SURFACE]
        L.append(f"| {s.upper()} | " + " | ".join("—" if c is None else str(c) for c in cells) + " |")
    return "\n".join(L)


def write(runs: Path) -> Path:
    runs = Path(runs)
    parts = ["# SIGMA validation: measured results", ""]
    mj = runs / "machine.json"
    if mj.exists():
        parts += ["Machine: `" + json.dumps(json.loads(mj.read_text())) + "`", ""]
    ab = runs / "ablation.json"
    if ab.exists():
        parts += ["## Experiments 1 and 2: stability and n_A ablation", "",
                  ablation_md(json.loads(ab.read_text())), ""]
    rec = runs / "recursive" / "results.json"
    if rec.exists():
        res = json.loads(rec.read_text())
        # held-out loss of each generation's model, from the training steps
        steps = step_seconds(runs)  # noqa: F841 (timings are in timing.json)
        for s, rs in res["rows"].items():
            for r in rs:
                k = r["generation"]
                d = "gen0" if k == 0 else ("gen1" if k == 1 else f"{s}/gen{k}")
                p = runs / "recursive" / "steps" / f"{d.replace('/', '__')}__train.done.json"
                if p.exists():
                    r["heldout_loss"] = json.loads(p.read_text())["result"].get("heldout_loss")
        parts += ["## Experiments 3 and 4: recursive training, S1 vs S2", "",
                  "Config: `" + json.dumps(res["config"]) + "`", "", recursive_md(res), ""]
    out = runs / "results.md"
    out.write_text("\n".join(parts))
    return out
