#!/usr/bin/env python3
"""Plots of a zkrender-bench run: python3 bench/plot.py RESULTS.json OUTDIR

latency.png: distribution of change-to-file latency (the latency scenario; the scale
scenario's single changes too, when present): histogram and CDF.
fleet.png: fan-out of one change to N agents: fraction of agents whose file holds the new
value, against time since the set (all changes of the run pooled), per fleet size.
fleet500.png: convergence over time of the fleet500 scenario (3 voters + 2 observers):
fraction of the agents' files holding each change against time since its set, with the time
`zkrender fleet` first showed every agent current; and, after the whole ensemble was
restarted, the fraction holding the value set after the restart against time since that set.
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

    f5 = by.get("fleet500")
    if f5 and f5.get("samples", {}).get("per_change_ms"):
        fleet500(f5, sub, out)


def fleet500(f5, sub, out):
    smp = f5["samples"]
    n = f5["agents"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.6))
    pooled = []
    for i, curve in enumerate(smp["per_change_ms"]):
        if not curve:
            continue
        pooled += curve
        x = sorted(curve)
        y = [(k + 1) / n for k in range(len(x))]
        a.step(x, y, where="post", color="#3572b0", alpha=0.35, linewidth=0.8,
               label="each change" if i == 0 else None)
    if pooled:
        x, y = cdf(pooled)
        a.plot(x, y, color="#3572b0", linewidth=2,
               label=f"all changes (p50 {pct(pooled, 50):.0f}, p99 {pct(pooled, 99):.0f} ms)")
    fl = [v for v in smp.get("fleet_all_current_ms", []) if v == v]
    for i, v in enumerate(fl):
        a.axvline(v, color="#e08000", linewidth=0.8, alpha=0.7,
                  label=f"`zkrender fleet`: all current (p50 {pct(fl, 50):.0f} ms)" if i == 0 else None)
    a.axvline(300, color="r", linestyle="--", linewidth=0.8, label="target p99 300 ms")
    if fl:
        a.axvline(2000, color="#e08000", linestyle="--", linewidth=0.8, label="target fleet 2 s")
    a.set_xlabel("time since the set (ms)")
    a.set_ylabel(f"fraction of the {n} files holding the value")
    a.set_title(f"{len(smp['per_change_ms'])} changes, {n} agents on 2 observers")
    a.grid(True, alpha=0.3)
    a.legend(fontsize=7, loc="lower right")

    rc = smp.get("restart_files_ms") or []
    if rc:
        rs = f5.get("restart", {})
        x = sorted(rc)
        y = [(k + 1) / n for k in range(len(x))]
        b.step([0] + x, [0] + y, where="post", color="#3572b0", linewidth=2,
                label=f"files holding it (all in {x[-1]:.0f} ms)")
        rep = rs.get("reports_ms_from_set")
        if rep and rep == rep:
            b.axvline(rep, color="#e08000", linewidth=1,
                      label=f"`zkrender fleet`: all {n} back and current ({rep:.0f} ms)")
        b.set_xlabel("time since the first set after the restart (ms)")
        b.set_ylabel("fraction of files")
        b.set_title(f"after `scripts/zk ctl restart all` (serving again in {smp['restart_all_ms'] / 1000:.1f} s)")
        b.grid(True, alpha=0.3)
        b.legend(fontsize=7, loc="lower right")
    report = "report on" if f5.get("report") else "report off"
    fig.suptitle(f"fleet500: convergence over time ({report}; {sub})")
    fig.tight_layout()
    fig.savefig(f"{out}/fleet500.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
