"""The sweep directory shared by every process working on one sweep: the run list and its order,
atomic claim files so no run is trained twice, the manifest of run states, and results.csv."""
from __future__ import annotations

import contextlib
import csv
import faulthandler
import fcntl
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

from jaxscale.config import NAME_RULE, SAFE_NAME, ConfigError, RunSpec
from jaxscale.files import create_once, replacing, write_atomic

RESULT_COLUMNS = [
    "run_id", "model", "d_model", "d_mlp", "n_layers", "n_params", "n_params_nonembed", "tokens", "flops",
    "train_loss", "eval_loss", "wall_s", "step_s_median", "tokens_per_s", "status", "repetition", "seed",
    "steps", "epochs", "compile_s", "eval_s", "failed_step", "reason",
    "energy_j", "power_mean_w", "power_peak_w", "duration_s", "sample_hz", "energy_source", "energy_reason",
    "steps_energy_j", "steps_s", "compile_energy_j", "eval_energy_j", "checkpoint_energy_j", "checkpoint_s",
    "energy_segments", "energy_processes",
    "vocab_size", "flops_per_token_matmul", "compute_tokens", "branched_at_step",
]
STALE_CLAIM_S = 600.0  # a claim not refreshed for this long belongs to a dead or hung worker
HEARTBEAT_S = 30.0
TORN_CLAIM_S = 60.0  # an unreadable claim this old will never be completed
# A worker's claims are refreshed by a thread, so a long compile, restore, evaluation or trunk keeps them; only
# while its main thread shows life (a step, a wait) within this time: a hung worker's runs go to another worker.
HUNG_S = 1800.0


class ClaimLost(RuntimeError):
    """Another worker took over a run this process was training: its claim had gone stale (the process hung
    for longer than HUNG_S, or its file system stalled). The run is that worker's now; this one stops writing."""


def run_path(out: Path, name: str) -> Path:
    """The only way a name from a config becomes a path: one safe component, so it stays inside `out`."""
    if not SAFE_NAME.fullmatch(name):
        raise ConfigError(f"{name!r} cannot name a directory inside {out}; allowed: {NAME_RULE}")
    return Path(out) / name


def _being_created(entry: Path) -> bool:
    """sweep.json half-written by a worker that started a moment before this one."""
    return entry.name.startswith(".sweep.json.") and entry.name.endswith(".tmp")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep_config(marker: Path) -> dict:
    try:
        return json.loads(marker.read_text())["config"]
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{marker} is damaged ({type(err).__name__}); it records which sweep this directory "
                          "holds: restore it from a backup, or choose another --out") from None


_UNSET = object()


def _differences(there: dict, here: dict, prefix: str = "") -> list[str]:
    """What differs between the sweep a directory holds and the one asked for: "train.lr 0.001 there, 0.01 now"."""
    out = []
    for key in sorted(set(there) | set(here), key=str):
        a, b = there.get(key, _UNSET), here.get(key, _UNSET)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key} {_shown(a)} there, {_shown(b)} now")
    return out


def _shown(value) -> str:
    text = "unset" if value is _UNSET else json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


class Sweep:
    """`writer`: this process writes the shared files (process 0 of a multi-host job; the others
    only read). `claiming`: runs are taken through claim files; a multi-host job trains every run
    on all its processes together, so its processes must not compete for runs (split sweeps over
    several jobs with --worker instead)."""

    def __init__(self, out: Path, raw: dict, runs: list[RunSpec], writer: bool = True, claiming: bool = True):
        self.out, self.runs, self.writer, self.claiming = Path(out), runs, writer, claiming
        self.claims = self.out / "claims"
        self._held: dict[str, str] = {}  # run_id -> the claim file's text as this process wrote it
        self._lost: set[str] = set()
        self._alive_at = time.monotonic()  # the main thread's last sign of life
        self._keeper: threading.Thread | None = None
        self._lock = threading.Lock()
        if not writer:
            return
        try:
            self._open(raw, runs)
        except OSError as err:
            raise ConfigError(f"--out {self.out}: cannot write there ({err.strerror or err}); "
                              "choose a writable directory") from None

    def _open(self, raw: dict, runs: list[RunSpec]) -> None:
        marker = self.out / "sweep.json"
        if self.out.exists() and not self.out.is_dir():
            raise ConfigError(f"--out {self.out}: exists and is not a directory; choose another --out")
        other_results = ConfigError(f"output directory {self.out} already holds other results; "
                                    "choose another --out or remove it")
        if not marker.is_file():
            # a worker of this sweep creates sweep.json before anything else: look again after listing
            if (self.out.exists() and not all(_being_created(entry) for entry in self.out.iterdir())
                    and not marker.is_file()):
                raise other_results
            self.out.mkdir(parents=True, exist_ok=True)
            order = runs[0].config.sweep if runs else None
            create_once(marker, json.dumps({"config": raw, "order": order.order if order else "sequential",
                                            "order_seed": order.seed if order else 0,
                                            "runs": [r.run_id for r in runs]}, indent=2))
        if (recorded := _sweep_config(marker)) != raw:  # also where a worker of another sweep created it just before
            differences = _differences(recorded, json.loads(json.dumps(raw)))
            raise ConfigError(f"output directory {self.out} already holds other results (its sweep differs: "
                              f"{'; '.join(differences[:3]) + ('; ...' if len(differences) > 3 else '')}); "
                              "choose another --out or remove it")
        self.claims.mkdir(exist_ok=True)
        for left in self.claims.glob(".*.stale.*"):  # renamed away by an older version that kept them
            with contextlib.suppress(FileNotFoundError):
                left.unlink()

    # --- run states --------------------------------------------------------------------------
    def run_dir(self, run_id: str) -> Path:
        return run_path(self.out, run_id)

    def summary_path(self, run_id: str) -> Path:
        return self.run_dir(run_id) / "summary.json"

    def summary(self, run_id: str) -> dict | None:
        """The run's summary, or None; a damaged one is moved aside (the run is then trained again)."""
        path = self.summary_path(run_id)
        try:
            summary = json.loads(path.read_text())
            if summary.get("status") in ("ok", "failed"):
                return summary
            problem = f"status {summary.get('status')!r} is not ok or failed"
        except FileNotFoundError:
            return None
        except (OSError, ValueError, AttributeError) as err:  # AttributeError: valid JSON, but not an object
            problem = f"{type(err).__name__}: {str(err)[:100]}"
        aside = path.with_name("summary.damaged.json")
        if self.writer:
            with contextlib.suppress(FileNotFoundError):
                path.replace(aside)
        moved = f"moved to {aside.name}, " if self.writer else ""
        print(f"warning: {path} is damaged ({problem}); {moved}run {run_id} will be trained again", file=sys.stderr)
        return None

    def state(self, run_id: str) -> str:
        summary = self.summary(run_id)
        if summary is not None:
            return summary["status"]  # ok | failed
        claim = self.claims / f"{run_id}.claim"
        if claim.is_file() and not self._stale(claim):
            return "running"
        return "interrupted" if (self.run_dir(run_id) / "checkpoints").is_dir() else "pending"

    def pending(self, share: list[RunSpec] | None = None) -> list[RunSpec]:
        """The runs of `share` (default: all) still to train."""
        runs = self.runs if share is None else share
        return [r for r in runs if self.state(r.run_id) in ("pending", "interrupted")]

    # --- claims ------------------------------------------------------------------------------
    def _stale(self, claim: Path) -> bool:
        try:
            age = time.time() - claim.stat().st_mtime
            owner = json.loads(claim.read_text())
        except OSError:
            return False  # just removed: not ours to take
        except ValueError:  # being written, or its writer was killed between creating and filling it
            return age > TORN_CLAIM_S
        if not isinstance(owner, dict):
            return age > TORN_CLAIM_S
        if owner.get("host") == socket.gethostname() and not _pid_alive(owner.get("pid", -1)):
            return True  # died here: no need to wait (a live pid may be hung, or another process's reused pid)
        return age > STALE_CLAIM_S

    def claim_owner(self, run_id: str) -> dict | None:
        """Who holds the run's claim (host, pid, since) and its heartbeat's age in seconds, or None."""
        claim = self.claims / f"{run_id}.claim"
        try:
            owner = json.loads(claim.read_text())
            age = time.time() - claim.stat().st_mtime
        except (OSError, ValueError):
            return None
        return {**owner, "heartbeat_s_ago": age} if isinstance(owner, dict) else None

    def claim(self, run_id: str) -> bool:
        """Atomically take a run: O_EXCL creation decides between racing workers; a stale claim
        is first renamed away (only one racer's rename succeeds)."""
        if not self.claiming:
            return True
        path = self.claims / f"{run_id}.claim"
        if path.exists() and self._stale(path):
            aside = path.with_name(f".{run_id}.stale.{os.getpid()}")
            with contextlib.suppress(FileNotFoundError):
                path.rename(aside)  # only the racer whose rename succeeded goes on
                if not self._stale(aside):  # another racer's fresh claim replaced the stale one after our look
                    with contextlib.suppress(FileExistsError):
                        os.link(aside, path)  # put it back (the same file: its worker goes on refreshing it)
                aside.unlink()
        if self.summary_path(run_id).is_file():
            return False
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False
        text = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()})
        with os.fdopen(fd, "w") as f:
            f.write(text)
        self._hold(run_id, text)
        if self.summary_path(run_id).is_file():  # finished by another worker between our checks
            self.release(run_id)
            return False
        return True

    def heartbeat(self, run_id: str) -> None:
        """The main thread is alive (called every step and while waiting); raises ClaimLost where another
        worker has taken the run over. No file is touched here: the keeper thread refreshes the claims."""
        self._alive_at = time.monotonic()
        if run_id in self._lost:
            raise ClaimLost(f"run {run_id}: its claim was taken over by another worker (this one had not refreshed "
                            f"it for {STALE_CLAIM_S:.0f} s) or removed; the run is theirs now: this worker stops "
                            "writing it")

    def release(self, run_id: str) -> None:
        """Give the run's claim back, if it is still this process's (never delete a claim another took over)."""
        with self._lock:
            mine = self._held.pop(run_id, None)
            self._lost.discard(run_id)
        if mine is not None and self._still_holds(run_id, mine):
            with contextlib.suppress(FileNotFoundError):
                (self.claims / f"{run_id}.claim").unlink()

    def _still_holds(self, run_id: str, mine: str) -> bool:
        """The claim file still says what this process wrote (not taken over, not removed)."""
        try:
            return (self.claims / f"{run_id}.claim").read_text() == mine
        except FileNotFoundError:
            return False

    def _hold(self, run_id: str, text: str) -> None:
        with self._lock:
            self._held[run_id] = text
            self._alive_at = time.monotonic()
            if self._keeper is None or not self._keeper.is_alive():
                self._keeper = threading.Thread(target=self._keep_claims, name="jaxscale-claims", daemon=True)
                self._keeper.start()

    def _keep_claims(self) -> None:
        """Every HEARTBEAT_S while claims are held: touch each claim still ours (unless the main thread has hung),
        and mark lost the ones another worker has taken over or whose file is gone."""
        told_hung = False
        while True:
            time.sleep(HEARTBEAT_S)
            with self._lock:
                held = dict(self._held)
                if not held:
                    self._keeper = None
                    return
            hung = time.monotonic() - self._alive_at > HUNG_S
            if hung and not told_hung:
                print(f"warning: no step or wait here for {HUNG_S / 60:.0f} min: this worker looks hung, so its claims "
                      f"on {', '.join(held)} are no longer refreshed (another worker takes them over after "
                      f"{STALE_CLAIM_S / 60:.0f} min). Where each thread is:", file=sys.stderr, flush=True)
                faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
            told_hung = hung
            for run_id, mine in held.items():
                if not self._still_holds(run_id, mine):
                    with self._lock:
                        if run_id in self._held:
                            self._lost.add(run_id)
                elif not hung:
                    with contextlib.suppress(FileNotFoundError):
                        os.utime(self.claims / f"{run_id}.claim")

    # --- shared files ------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self):
        with open(self.out / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def summaries(self) -> list[dict]:
        return [s for r in self.runs if (s := self.summary(r.run_id)) is not None]

    def update(self) -> list[dict]:
        """Rewrite manifest.json and results.csv from what is on disk (under a lock: many workers)."""
        if not self.writer:
            return self.summaries()
        with self._locked():
            states = [{"run_id": r.run_id, "state": self.state(r.run_id)} for r in self.runs]
            write_atomic(self.out / "manifest.json", json.dumps({"runs": states}, indent=2))
            summaries = self.summaries()
            with replacing(self.out / "results.csv") as tmp, open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=RESULT_COLUMNS, extrasaction="ignore")
                writer.writeheader()
                for s in summaries:
                    writer.writerow({k: "" if s.get(k) is None else s.get(k) for k in RESULT_COLUMNS})
        return summaries
