#!/usr/bin/env python3
"""Plots of a zkrender-bench run: python3 bench/plot.py RESULTS.json OUTDIR

latency.png: distribution of change-to-file latency (the latency scenario; the scale
scenario's single changes too, when present): histogram and CDF.
fleet.png: fan-out of one change to N agents: fraction of agents whose file holds the new
value, against time since the set (all changes of the run pooled), per fleet size.
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def cdf(values):
    v = sorted(values)
    n = len(v)
    return v, [(i + 1) / n for i in range(n)]


def pct(values, p):
    v = sorted(values)
    if not v:
        return float("nan")
    k = max(1, min(len(v), -(-p * len(v) // 100)))
    return v[int(k) - 1]


def main():
    results, out = sys.argv[1], sys.argv[2]
    with open(results) as f:
        data = json.load(f)
    meta = data["meta"]
    by = {s["scenario"]: s for s in data["scenarios"]}
    sub = f"{meta.get('cpus', '?')} CPUs, {meta.get('work_fs', '?')}, {'quick' if meta.get('quick') else 'full'} run"

    lat = by.get("latency", {}).get("samples", {}).get("latency_ms")
    if lat:
        fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
        a.hist(lat, bins=60, color="#3572b0")
        for p, style in ((50, "--"), (99, ":")):
            a.axvline(pct(lat, p), color="k", linestyle=style, label=f"p{p} = {pct(lat, p):.2f} ms")
        a.set_xlabel("set -> file holds the new bytes (ms)")
        a.set_ylabel("changes")
        a.set_title(f"latency: {len(lat)} sets, 20 ms apart")
        a.legend()
        x, y = cdf(lat)
        b.plot(x, y, label="latency scenario (1 znode, 1 file)")
        sc = by.get("scale", {}).get("samples", {}).get("single_change_ms")
        if sc:
            x, y = cdf(sc)
            b.plot(x, y, label="scale: single change among 10,000 znodes")
        b.axvline(1, color="g", linestyle="--", linewidth=0.8, label="target p50 1 ms")
        b.axvline(5, color="r", linestyle="--", linewidth=0.8, label="target p99 5 ms")
        b.set_xscale("log")
        b.set_xlabel("ms (log)")
        b.set_ylabel("fraction of changes")
        b.set_title("CDF")
        b.grid(True, which="both", alpha=0.3)
        b.legend(fontsize=8)
        fig.suptitle(f"zkrender change-to-file latency ({sub})")
        fig.tight_layout()
        fig.savefig(f"{out}/latency.png", dpi=110)
        plt.close(fig)

    fl = by.get("fleet", {}).get("samples", {}).get("per_agent_ms")
    if fl:
        fig, ax = plt.subplots(figsize=(7.5, 4.5))
        for n, vals in sorted(fl.items(), key=lambda kv: int(kv[0])):
            if not vals:
                continue
            x, y = cdf(vals)
            ax.plot(x, y, label=f"N = {n} agents (p50 {pct(vals, 50):.1f}, p99 {pct(vals, 99):.1f} ms)")
        ax.axvline(500, color="r", linestyle="--", linewidth=0.8, label="target p99 500 ms (N = 200)")
        ax.set_xscale("log")
        ax.set_xlabel("time since the set (ms, log)")
        ax.set_ylabel("fraction of agents whose file holds the value")
        ax.set_title(f"fleet fan-out on a 3-member ensemble ({sub})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(f"{out}/fleet.png", dpi=110)
        plt.close(fig)


if __name__ == "__main__":
    main()
