"""Two workers on one sweep, the second started late: sweep wall time with and without `--help-others`.

    python benchmarks/help_others.py --delay 90 [--out-dir /tmp/help_others] [key=value ...]

Each condition starts worker 0/2, waits `--delay` seconds, starts worker 1/2 (each pinned to its own core where
`taskset` exists), and waits for both; the sweep directory is new each time, the token cache is shared (warmed
first). Prints one line per condition, then a last JSON line with every figure. Defaults: the tiny grid on
../shared's enwiki sample with GPT-2's vocabulary and budgets up to 2e5 tokens (42 runs).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DEFAULTS = [f"data.path={SHARED / 'data/enwiki-sample'}", f"tokenizer.path={SHARED / 'tokenizers/gpt2/tokenizer.json'}",
            "train.tokens=[5e3,1e4,3e4,5e4,1e5,2e5]"]


def worker(index: int, out: Path, overrides: list[str], help_others: bool) -> tuple[subprocess.Popen, float]:
    command = [sys.executable, "-m", "jaxscale.train", "--config", str(ROOT / "configs/tiny_grid.toml"),
               "--out", str(out), "--quiet", "--worker", f"{index}/2", *overrides]
    if help_others:
        command.append("--help-others")
    if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        command = ["taskset", "-c", str(index), *command]
    log = open(out.parent / f"{out.name}.worker{index}.log", "w")
    return subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT), time.monotonic()


def trained_runs(log: Path) -> int:
    """Runs this worker trained: its one line per run ("run i/n ID  ok ...")."""
    return sum(line.startswith("run ") for line in log.read_text().splitlines())


def condition(name: str, out_dir: Path, delay: float, overrides: list[str], help_others: bool) -> dict:
    out = out_dir / name
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    first, t0 = worker(0, out, overrides, help_others)
    time.sleep(delay)
    second, t1 = worker(1, out, overrides, help_others)
    ends = {}
    while len(ends) < 2:
        for i, proc in enumerate((first, second)):
            if i not in ends and proc.poll() is not None:
                if proc.returncode:
                    raise SystemExit(f"{name}: worker {i} exited {proc.returncode}; see {out}.worker{i}.log")
                ends[i] = time.monotonic()
        time.sleep(0.2)
    result = {"condition": name, "help_others": help_others, "delay_s": delay,
              "wall_s": round(max(ends.values()) - t0, 1),
              "worker0_s": round(ends[0] - t0, 1), "worker1_s": round(ends[1] - t1, 1),
              "worker0_runs": trained_runs(out.parent / f"{name}.worker0.log"),
              "worker1_runs": trained_runs(out.parent / f"{name}.worker1.log")}
    print(f"{name}: sweep {result['wall_s']:.0f} s; worker 0 {result['worker0_s']:.0f} s, {result['worker0_runs']} runs; "
          f"worker 1 (started {delay:.0f} s later) {result['worker1_s']:.0f} s, {result['worker1_runs']} runs",
          flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", type=float, default=90.0, help="seconds between the two workers' starts")
    parser.add_argument("--out-dir", type=Path, default=Path("/tmp/help_others"))
    parser.add_argument("overrides", nargs="*", help="key=value for configs/tiny_grid.toml (replace the defaults)")
    args = parser.parse_args()
    overrides = args.overrides or DEFAULTS
    os.environ.setdefault("JAXSCALE_CACHE", str(args.out_dir / "cache"))
    # Warm the token cache (both conditions would otherwise differ by one tokenisation).
    subprocess.run([sys.executable, "-c", "import sys; from jaxscale.config import load_raw; "
                    "from jaxscale.precheck import check_sweep; check_sweep(load_raw(sys.argv[1], sys.argv[2:]))",
                    str(ROOT / "configs/tiny_grid.toml"), *overrides], cwd=ROOT, check=True)
    results = [condition(name, args.out_dir, args.delay, overrides, help_others)
               for name, help_others in (("alone", False), ("help_others", True))]
    print(json.dumps({"results": results}))


if __name__ == "__main__":
    main()
