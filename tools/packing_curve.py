"""Aggregate updates/s of K packed runs on one machine, for each K: how many seeds to pack.

    python tools/packing_curve.py --gin gin/fast/dmc_mlr_fast.gin --gin gin/dmc/cartpole_swingup.gin \\
        --k 1,2,4,8 --seconds 60 --out curve/

For each K, K seeds (0 .. K-1) run at once with ``tools/pack_seeds.py``'s packing (own process,
own share of the cores, one sqlite store per K under ``OUT/k<K>/``) until they finish or
``--seconds`` pass (then they get SIGTERM and end KILLED: this measures speed, not results).
A run's rate is the median of its logged ``throughput/updates_per_s`` windows (the first window
holds compilation and warm-up; bind ``trainers.dmc.log_every`` so that a run logs several); the
aggregate is their sum. Writes ``OUT/packing_curve.csv`` (one row per K) and prints the K with
the highest aggregate. Runs that log no window count for nothing: give them enough time.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pack_seeds import aggregate_rate, run_packed  # noqa: E402

COLUMNS = ("k", "cpus_per_run", "runs", "runs_with_rate", "aggregate_updates_per_s", "per_run_updates_per_s",
           "speedup_vs_k1", "wall_s", "statuses")


def parse_ks(text: str) -> list[int]:
    try:
        ks = [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        ks = []
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError(f"--k {text!r}: expected comma-separated integers >= 1, e.g. 1,2,4,8")
    return ks


def measure(gin: Sequence[str], bind: Sequence[str], ks: Sequence[int], out: Path, seconds: float | None,
            cpus_per_run: int | None = None, grace_s: float = 120.0) -> list[dict]:
    """One row per K (see :data:`COLUMNS`), also written to ``out/packing_curve.csv``."""
    rows: list[dict] = []
    for k in ks:
        print(f"K = {k}: {k} runs at once" + (f" for at most {seconds:g} s" if seconds else ""), flush=True)
        start = time.monotonic()
        results = run_packed(gin, bind, list(range(k)), out / f"k{k}", cpus_per_run=cpus_per_run,
                             deadline_s=seconds, grace_s=grace_s, echo=lambda line: print("  " + line, flush=True))
        rates = [r.updates_per_s for r in results if r.updates_per_s is not None]
        total = aggregate_rate(results)
        base = rows[0]["aggregate_updates_per_s"] if rows and rows[0]["k"] == 1 else None
        rows.append({"k": k, "cpus_per_run": len(results[0].cpus), "runs": k, "runs_with_rate": len(rates),
                     "aggregate_updates_per_s": round(total, 3),
                     "per_run_updates_per_s": round(total / len(rates), 3) if rates else 0.0,
                     "speedup_vs_k1": round(total / base, 3) if base else ("" if k != 1 else 1.0),
                     "wall_s": round(time.monotonic() - start, 1),
                     "statuses": " ".join(sorted(r.status for r in results))})
        print(f"K = {k}: aggregate {total:.2f} updates/s ({len(rates)} runs with a rate)", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "packing_curve.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python tools/packing_curve.py", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[1:]))
    p.add_argument("--gin", action="append", required=True, metavar="FILE", help="gin file (repeat to compose)")
    p.add_argument("--bind", action="append", default=[], metavar="BINDING", help="gin binding passed to every run")
    p.add_argument("--k", type=parse_ks, default=[1, 2, 4, 8], help="run counts to measure (default 1,2,4,8)")
    p.add_argument("--seconds", type=float, default=None,
                   help="each K's runs get SIGTERM after this many seconds (default: they run to the end)")
    p.add_argument("--cpus-per-run", type=int, default=None, help="cores per run (default: cores // K)")
    p.add_argument("--grace-s", type=float, default=120.0, help="seconds after SIGTERM before a kill (default 120)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="holds k<K>/ and packing_curve.csv")
    args = p.parse_args(argv)
    from mlr_registry.errors import MLRError

    try:
        rows = measure(args.gin, args.bind, args.k, args.out, args.seconds, args.cpus_per_run, args.grace_s)
    except MLRError as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    print(f"{'K':>3}  {'cpus/run':>8}  {'aggregate updates/s':>19}  {'per run':>8}  {'speedup':>7}")
    for row in rows:
        print(f"{row['k']:>3}  {row['cpus_per_run']:>8}  {row['aggregate_updates_per_s']:>19.2f}  "
              f"{row['per_run_updates_per_s']:>8.2f}  {row['speedup_vs_k1']!s:>7}")
    best = max(rows, key=lambda r: r["aggregate_updates_per_s"])
    print(f"highest aggregate: K = {best['k']} ({best['aggregate_updates_per_s']:.2f} updates/s); "
          f"wrote {args.out / 'packing_curve.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
