"""Where a sweep stands, read from its directory while workers train it (or after they died): every run's state,
who holds each claim and how fresh its heartbeat is, how far a run got. Reads only; safe beside running workers.

    python tools/sweep_status.py SWEEP_DIR [--json]

States are jaxscale's own (jaxscale.sweep): ok and failed (a summary.json), running (a live claim), interrupted
(checkpoints, no live claim: the next worker resumes it), pending. A claim whose owner died is "stale": the next
worker to reach the run takes it over (at once on the same host, after STALE_CLAIM_S from another host).
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from jaxscale.sweep import STALE_CLAIM_S, Sweep


def run_status(sweep: Sweep, run_id: str) -> dict:
    summary = sweep.summary(run_id)
    state = summary["status"] if summary else sweep.state(run_id)
    row = {"run_id": run_id, "state": state}
    if summary:
        row.update({k: summary.get(k) for k in ("eval_loss", "wall_s", "failed_step", "reason")
                    if summary.get(k) is not None})
    if owner := sweep.claim_owner(run_id):
        row["claim"] = {"host": owner.get("host"), "pid": owner.get("pid"),
                        "heartbeat_s_ago": round(owner["heartbeat_s_ago"], 1),
                        "stale": state in ("pending", "interrupted")}
    run_dir = sweep.run_dir(run_id)
    steps = [int(p.name) for p in (run_dir / "checkpoints").glob("*") if p.name.isdigit()]
    if steps:
        row["checkpoint_step"] = max(steps)
    try:
        *_, last = (run_dir / "metrics.jsonl").read_text().splitlines() or [""]
        row["logged_step"] = json.loads(last)["step"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return row


def detail(row: dict) -> str:
    parts = []
    if row["state"] == "ok":
        parts.append(f"eval_loss {row.get('eval_loss', float('nan')):.4f}, {row.get('wall_s', 0):.1f} s")
    if row["state"] == "failed":
        parts.append(f"at step {row.get('failed_step', '?')}: {str(row.get('reason', ''))[:80]}")
    if "logged_step" in row and row["state"] not in ("ok", "failed"):
        parts.append(f"step {row['logged_step']} logged")
    if "checkpoint_step" in row and row["state"] not in ("ok", "failed"):
        parts.append(f"checkpoint at step {row['checkpoint_step']}")
    if claim := row.get("claim"):
        stale = " STALE: the next worker takes it over" if claim["stale"] else ""
        parts.append(f"claim {claim['host']} pid {claim['pid']}, heartbeat {claim['heartbeat_s_ago']:.0f} s ago{stale}")
    return "; ".join(parts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/sweep_status.py", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--json", action="store_true", help="one JSON object: {'runs': [...], 'counts': {...}}")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `| head` ends the listing quietly
    marker = args.sweep_dir / "sweep.json"
    sweep = Sweep(args.sweep_dir, {}, [], writer=False)  # reads only: moves nothing, writes nothing
    try:
        run_ids = json.loads(marker.read_text())["runs"]
        rows = [run_status(sweep, run_id) for run_id in run_ids]
    except (OSError, ValueError, KeyError, TypeError) as err:  # ConfigError too: a run id that is no safe name
        print(f"error: {marker}: not a jaxscale sweep directory ({type(err).__name__}); "
              "give the --out of python -m jaxscale.train", file=sys.stderr)
        return 2
    counts = {s: n for s in ("ok", "failed", "running", "interrupted", "pending")
              if (n := sum(r["state"] == s for r in rows))}
    if args.json:
        print(json.dumps({"runs": rows, "counts": counts}, indent=2))
        return 0
    print(f"{args.sweep_dir}: {len(rows)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    width = max((len(r["run_id"]) for r in rows), default=6)
    for row in rows:
        print(f"{row['run_id']:<{width}}  {row['state']:<11}  {detail(row)}".rstrip())
    if any(r.get("claim", {}).get("stale") for r in rows):
        print(f"stale claims: their owner died (same host) or sent no heartbeat for {STALE_CLAIM_S:.0f} s (another host)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
