#!/usr/bin/env python3
"""Power-loss campaign: run a sessiond release binary on lossyfs (a FUSE file
system that keeps only what was synced), cut the power again and again, and
check after every restart that no acknowledged write was lost.

    python3 tests/power/campaign.py --binary path/to/sessiond [--cuts N]
        [--seed S] [--json FILE] [--writers 16] [--max-load SECONDS]

A cut is: SIGKILL the server, then tell lossyfs to drop everything that was
not synced (file data not fsynced or fdatasynced, directory entries whose
directory was not fsynced; see lossyfs.py), write what was into the backing
directory and unmount. The next iteration mounts the same backing directory
again, so each start opens exactly what the disk would hold after a power
loss. One backing directory is kept for the whole campaign.

Iterations:

- load:     mount, start, check the model, run the writers, cut at a random
            moment under load;
- early:    mount, start, cut 0 to 1.5 times the usual start-up time after
            the spawn (during log replay, which the previous cut left, or
            just after SERVING);
- snapshot: mount, start, cut as soon as sled's `snap.*.generating` file
            appears (sled writes a snapshot while it opens a store whose log
            has grown), or once the server is ready.

The writers, the model and the checks are the crash campaign's
(tests/crash/campaign.py): each writer owns its keys, so the model knows the
last acknowledged value of each; a write in flight at the cut may land or
not; anything else that differs is a loss.

`--sanity` checks the checker: lossyfs then lies about the write-ahead log's
syncs (fdatasync of `wal/*.log` succeeds and makes nothing durable), the
campaign runs as usual, and it passes only if losses were reported.

Exit status: 0 when nothing was lost, every store opened and no live server
failed a write (with --sanity: when losses were found); 1 otherwise, with the
backing directory as the failing start found it, the logs and the seed kept.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import os
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

# The crash campaign's server, writers, model and checker.
_spec = importlib.util.spec_from_file_location("crash_campaign", os.path.join(ROOT, "tests", "crash", "campaign.py"))
crash = importlib.util.module_from_spec(_spec)
sys.modules["crash_campaign"] = crash
_spec.loader.exec_module(crash)

import grpc  # noqa: E402  (after the crash campaign's imports succeeded)

MOUNT_TIMEOUT_S = 30.0
UNMOUNT_TIMEOUT_S = 60.0
JOIN_TIMEOUT_S = crash.JOIN_TIMEOUT_S
LOGS_KEPT = 12
INPUTS_KEPT = 3  # backing directories as the last starts found them
KINDS = ["load", "early", "snapshot"]
# What --sanity makes lossyfs lie about: the write-ahead log's segments.
SANITY_LIE = r"/wal/[0-9]+\.log$"
# What --hold-sled-fsync stalls: sled's own file.
HOLD_SLED = r"/data/db$"


def log(msg: str) -> None:
    print(msg, flush=True)


class Mount:
    """One lossyfs mount of the campaign's backing directory."""

    def __init__(self, backing: str, mnt: str, log_path: str, lie: str | None, slow: list[str],
                 hold: str | None = None):
        self.mnt = mnt
        self.log_path = log_path
        self._log = open(log_path, "wb")
        dev = os.stat(mnt).st_dev
        cmd = [sys.executable, os.path.join(HERE, "lossyfs.py"), backing, mnt]
        if lie:
            cmd += ["--lie-about-fsync", lie]
        for spec in slow:
            cmd += ["--slow-fsync", spec]
        if hold:
            cmd += ["--hold-fsync", hold]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + MOUNT_TIMEOUT_S
        while os.stat(mnt).st_dev == dev:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.end(signal.SIGTERM)
                raise RuntimeError(f"lossyfs did not mount within {MOUNT_TIMEOUT_S:.0f} s: {self.tail()}")
            time.sleep(0.01)

    def tail(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    def end(self, sig: int) -> dict:
        """SIGUSR1: power cut; SIGTERM: clean unmount. Returns lossyfs's
        report of it (what it dropped)."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=UNMOUNT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        if os.path.ismount(self.mnt):
            subprocess.run(["umount", "-l", self.mnt], check=False)
        if not self._log.closed:
            self._log.close()
        report = {}
        for line in self.tail().splitlines():
            if line.startswith("lossyfs: {"):
                report = json.loads(line[len("lossyfs: "):])
        return report


def schedule(rng: random.Random, cuts: int) -> list[str]:
    """Blocks of 4 load, 1 early and 1 snapshot cut, shuffled, an early or
    snapshot cut always right after a load cut (so there is a log to replay)."""
    out: list[str] = []
    while len(out) < cuts:
        units = [["load"], ["load"], ["load", "early"], ["load", "snapshot"]]
        rng.shuffle(units)
        for unit in units:
            out.extend(unit)
    return out[:cuts]


class PowerCampaign:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.stats = crash.Stats()
        self.work = args.work or tempfile.mkdtemp(prefix="power-campaign-")
        os.makedirs(self.work, exist_ok=True)
        self.backing = os.path.join(self.work, "backing")
        self.mnt = os.path.join(self.work, "mnt")
        self.data_dir = os.path.join(self.mnt, "data")
        self.logs_dir = os.path.join(self.work, "logs")
        for p in (self.backing, self.mnt, self.logs_dir):
            os.makedirs(p, exist_ok=True)
        self.mount: Mount | None = None
        self.server: crash.Server | None = None
        self.starts = 0
        self.mounts = 0
        self.writers = [
            crash.WriterModel(w=w, user=f"power-w{w}", bucket_user=f"power-b{w % crash.BUCKET_USERS}")
            for w in range(args.writers)
        ]
        self.iteration = 0
        self.failed_reason: str | None = None
        self.cuts = collections.Counter()
        self.cuts_before_serving = 0
        self.snapshot_hits = 0
        self.dropped = collections.Counter()  # what the cuts dropped, summed
        self.dropped_names = collections.Counter()
        self.cuts_dropping_data = 0
        self.fs_counts = collections.Counter()
        self.evidence_ready: str | None = None
        self.held_cuts = 0

    # -- mounts, starts, cuts --------------------------------------------------

    def do_mount(self) -> None:
        self.mounts += 1
        path = os.path.join(self.logs_dir, f"lossyfs-{self.mounts:05d}.log")
        old = os.path.join(self.logs_dir, f"lossyfs-{self.mounts - LOGS_KEPT:05d}.log")
        if os.path.exists(old):
            os.remove(old)
        self.mount = Mount(self.backing, self.mnt, path, SANITY_LIE if self.args.sanity else None,
                           self.args.slow_fsync, HOLD_SLED if self.args.hold_sled_fsync else None)

    def prepare(self) -> None:
        """The data directory, made durable as an installer would (mkdir and
        an fsync of its parent), unless --server-creates-data-dir."""
        if self.args.server_creates_data_dir:
            return
        self.do_mount()
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        for p in (self.data_dir, self.mnt):
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self.mount.end(signal.SIGUSR1)
        self.mount = None
        if not os.path.isdir(os.path.join(self.backing, "data")):
            raise RuntimeError("lossyfs lost a data directory whose creation was synced")

    def spawn(self) -> crash.Server:
        self.starts += 1
        if crash.generating_files(self.data_dir):
            self.stats.starts_on_partial_snapshot += 1
        path = os.path.join(self.logs_dir, f"start-{self.starts:05d}.log")
        old = os.path.join(self.logs_dir, f"start-{self.starts - LOGS_KEPT:05d}.log")
        if os.path.exists(old):
            os.remove(old)
        # The backing directory is what this start opens: keep a copy, so
        # that a failing start can be reproduced from it.
        self.keep_input()
        self.server = crash.Server(self.args.binary, self.data_dir, path)
        return self.server

    def keep_input(self) -> None:
        """Copies the backing directory, as this start will open it, aside;
        the inputs of the last three starts are kept."""
        inputs = os.path.join(self.work, "inputs")
        os.makedirs(inputs, exist_ok=True)
        target = os.path.join(inputs, f"start-{self.starts:05d}")
        shutil.copytree(self.backing, target, symlinks=True)
        for old in sorted(os.listdir(inputs))[:-INPUTS_KEPT]:
            shutil.rmtree(os.path.join(inputs, old), ignore_errors=True)
        self.evidence_ready = inputs

    def cut(self, kind: str, close: bool = True) -> None:
        """SIGKILL the server, then the power: drop what was not synced. The
        process is reaped after the cut: one killed inside a FUSE call waits
        for its answer, which a stalled sync (--hold-sled-fsync) gives only
        once the power is cut."""
        if self.server is not None and self.server.alive():
            os.kill(self.server.proc.pid, signal.SIGKILL)
        report = self.mount.end(signal.SIGUSR1)
        self.mount = None
        if self.server is not None:
            self.server.kill(close)
            if close:
                self.server = None
        self.cuts[kind] += 1
        if report.get("event") != "power cut":
            raise RuntimeError(f"lossyfs did not report the cut: {report}")
        dropped = report.get("dropped", {})
        self.dropped["unsynced_bytes"] += dropped.get("unsynced_bytes", 0)
        self.dropped["files_with_unsynced_data"] += dropped.get("files_with_unsynced_data", 0)
        self.dropped_names.update(dropped.get("unsynced_name_changes", {}))
        self.cuts_dropping_data += int(dropped.get("unsynced_bytes", 0) > 0 or bool(dropped.get("unsynced_name_changes")))
        self.fs_counts.update(report.get("counts", {}))

    def start_serving(self) -> crash.Server:
        server = self.spawn()
        try:
            took = server.wait_serving(self.args.start_timeout)
        except crash.Unopenable as e:
            self.stats.unopenable += 1
            raise crash.Unopenable(f"start {self.starts}: {e}") from None
        self.stats.startups.append(took)
        return server

    def typical_startup(self) -> float:
        recent = self.stats.startups[1:][-15:]
        return statistics.median(recent) if recent else 0.3

    def check(self, server: crash.Server) -> int:
        before = sum(self.stats.state_checks.values())
        checker = crash.Checker(server.channel, self.stats, self.iteration)
        for m in self.writers:
            checker.check_writer(m)
        self.stats.checks_runs += 1
        return sum(self.stats.state_checks.values()) - before

    # -- iterations ------------------------------------------------------------

    def load_iteration(self) -> str:
        self.do_mount()
        server = self.start_serving()
        checks = self.check(server)
        killed = threading.Event()
        writers = [
            crash.Writer(m, server.channel, random.Random(self.rng.getrandbits(64)), killed, self.stats)
            for m in self.writers
        ]
        acked_before = sum(sum(m.acked.values()) for m in self.writers)
        for t in writers:
            t.start()
        time.sleep(self.rng.uniform(0.05, self.args.max_load))
        held = ""
        if self.args.hold_sled_fsync:
            held = self.hold_sled_fsync()
        killed.set()
        self.cut("load", close=False)
        for t in writers:
            t.stop.set()
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        for t in writers:
            t.join(max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                raise RuntimeError(f"{t.name} still running {JOIN_TIMEOUT_S:.0f} s after the cut")
        server.close()
        self.server = None
        acked = sum(sum(m.acked.values()) for m in self.writers) - acked_before
        in_flight = sum(
            1 for m in self.writers
            if m.bucket_pending or m.pending_creates or any(s.pending for s in m.sessions.values())
        )
        return (f"started {self.stats.startups[-1]:.2f}s, {checks} checks, {acked} writes acked, "
                f"{in_flight} in flight at the cut{held}")

    def wal_segments(self) -> int:
        try:
            return max((int(n[:-4]) for n in os.listdir(os.path.join(self.data_dir, "wal")) if n.endswith(".log")),
                       default=0)
        except (OSError, ValueError):
            return 0

    def hold_sled_fsync(self) -> str:
        """--hold-sled-fsync: from now on sled's fsyncs of its file stall
        (a disk that is slow for that file), while the log's syncs go on;
        cut once the log has moved to two more segments (each move deletes
        the segments a checkpoint flushed into sled), or after 10 s."""
        os.kill(self.mount.proc.pid, signal.SIGUSR2)
        start = self.wal_segments()
        deadline = time.monotonic() + 10.0
        while self.wal_segments() < start + 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(self.rng.uniform(0.0, 0.3))
        self.held_cuts += 1
        return f", sled's fsync held over {self.wal_segments() - start} log rotations"

    def early_iteration(self) -> str:
        self.do_mount()
        server = self.spawn()
        delay = self.rng.uniform(0.0, 1.5 * self.typical_startup())
        time.sleep(delay)
        serving = server.ready_addr() is not None
        if not server.alive():
            self.stats.unopenable += 1
            raise crash.Unopenable(f"start {self.starts}: the server exited with status {server.proc.returncode}")
        self.cut("early")
        self.cuts_before_serving += int(not serving)
        return f"cut {delay * 1000:.0f} ms after spawn ({'after' if serving else 'before'} SERVING)"

    def snapshot_iteration(self) -> str:
        self.do_mount()
        watch = crash.CreateWatch(self.data_dir)
        try:
            server = self.spawn()
            deadline = server.t0 + self.args.snapshot_wait_ms / 1000.0
            seen = False
            while time.monotonic() < deadline and server.alive():
                created = watch.created(0.001)
                if any(n.startswith("snap.") and n.endswith(".generating") for n in created) or \
                        crash.generating_files(self.data_dir):
                    seen = True
                    os.kill(server.proc.pid, signal.SIGKILL)  # reaped by the cut
                    break
                if server.ready_addr() is not None:
                    break
        finally:
            watch.close()
        if not seen and not server.alive():
            self.stats.unopenable += 1
            raise crash.Unopenable(f"start {self.starts}: the server exited with status {server.proc.returncode}")
        at_ms = (time.monotonic() - server.t0) * 1000
        serving = server.ready_addr() is not None
        self.cut("snapshot")
        hit = bool(crash.generating_files(os.path.join(self.backing, "data")))
        self.snapshot_hits += int(seen)
        what = "while a .generating file existed" if seen else "no .generating file seen"
        if seen:
            what += ", which the cut left behind" if hit else ", which the cut did not keep"
        return f"cut {at_ms:.0f} ms after spawn, {what}" + (" (after SERVING)" if serving else "")

    # -- the run -----------------------------------------------------------------

    def run(self) -> int:
        t_start = time.monotonic()
        kinds = schedule(self.rng, self.args.cuts)
        log(
            f"power campaign: seed {self.args.seed}, {len(kinds)} cuts, {self.args.writers} writers, "
            f"one backing directory{', SANITY: lossyfs ignores the log syncs' if self.args.sanity else ''}"
        )
        try:
            self.prepare()
            for i, kind in enumerate(kinds, 1):
                self.iteration = i
                note = {"load": self.load_iteration, "early": self.early_iteration,
                        "snapshot": self.snapshot_iteration}[kind]()
                lost = f", LOST so far {len(self.stats.losses)}" if self.stats.losses else ""
                log(f"[{i:4d}/{len(kinds)}] {kind:8s} {note}{lost}")
                if self.stats.losses and self.args.stop_on_loss:
                    break
            self.iteration = len(kinds) + 1
            self.do_mount()
            server = self.start_serving()
            checks = self.check(server)
            status = server.stop()
            self.server = None
            self.mount.end(signal.SIGTERM)
            self.mount = None
            log(f"[final] started {self.stats.startups[-1]:.2f}s, {checks} checks, clean stop (status {status})")
            if status != 0:
                self.stats.unexpected_errors.append({"op": "SIGTERM", "error": f"exit status {status}"})
        except crash.Unopenable as e:
            self.failed_reason = f"unopenable store: {e}"
        except (grpc.RpcError, RuntimeError, subprocess.TimeoutExpired) as e:
            detail = f"{e.code().name}: {e.details()}" if isinstance(e, grpc.RpcError) else str(e)
            self.failed_reason = f"iteration {self.iteration}: {detail}"
        report = self.report(time.monotonic() - t_start)
        self.print_report(report)
        if self.args.json:
            with open(self.args.json, "w") as f:
                json.dump(report, f, indent=2, sort_keys=True)
                f.write("\n")
        if not report["passed"]:
            self.keep_evidence(report)
        return 0 if report["passed"] else 1

    def report(self, runtime: float) -> dict:
        s = self.stats
        found_loss = bool(s.losses)
        clean = not s.losses and not s.unopenable and not s.unexpected_errors and self.failed_reason is None
        if self.args.sanity:
            # The checker must see what a disk that ignores the log's syncs
            # loses; nothing else may go wrong.
            passed = found_loss and not s.unopenable and self.failed_reason is None
        else:
            passed = clean
        return {
            "seed": self.args.seed,
            "writers": self.args.writers,
            "sanity": self.args.sanity,
            "server_creates_data_dir": self.args.server_creates_data_dir,
            "slow_fsync": self.args.slow_fsync,
            "hold_sled_fsync": self.args.hold_sled_fsync,
            "cuts": {"total": sum(self.cuts.values()), **{k: self.cuts[k] for k in KINDS}},
            "early_cuts_before_serving": self.cuts_before_serving,
            "snapshot_cuts_on_a_generating_file": self.snapshot_hits,
            "starts_on_a_partial_snapshot": s.starts_on_partial_snapshot,
            "dropped_at_cuts": {
                "cuts_that_dropped_something": self.cuts_dropping_data,
                "unsynced_bytes": self.dropped["unsynced_bytes"],
                "files_with_unsynced_data": self.dropped["files_with_unsynced_data"],
                "unsynced_name_changes": dict(sorted(self.dropped_names.items())),
            },
            "file_system_calls": dict(sorted(self.fs_counts.items())),
            "backing_bytes_at_end": crash.dir_bytes(self.backing),
            "campaign_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            **crash.model_report(s, runtime, self.failed_reason, "cut"),
            "passed": passed,
        }

    def print_report(self, r: dict) -> None:
        c = r["cuts"]
        d = r["dropped_at_cuts"]
        log("")
        log("== power-loss campaign report" + (" (SANITY: the log's syncs were ignored)" if r["sanity"] else ""))
        log(f"seed {r['seed']}, run time {r['runtime_s']:.0f} s")
        log(f"cuts: {c['total']} (under load {c['load']}, early {c['early']} of which "
            f"{r['early_cuts_before_serving']} before SERVING, at snapshot writing {c['snapshot']} of which "
            f"{r['snapshot_cuts_on_a_generating_file']} while a .generating file existed)")
        log(f"dropped by the cuts: {d['unsynced_bytes']} unsynced bytes in {d['files_with_unsynced_data']} files, "
            f"name changes {d['unsynced_name_changes']}; {d['cuts_that_dropped_something']} cuts dropped something")
        log("file system calls: " + ", ".join(f"{k} {v}" for k, v in r["file_system_calls"].items()))
        crash.print_model_report(r, "cut")
        if r["sanity"]:
            log("sanity: " + ("the checker reported the losses of a disk that ignores syncs: passed"
                              if r["passed"] else "the checker did NOT see the losses: FAILED"))
        else:
            log("power campaign: " + ("passed" if r["passed"] else "FAILED"))

    def keep_evidence(self, report: dict) -> None:
        """The backing directory as the failing start found it, the current
        one, the last logs and the report with the seed."""
        target = self.args.evidence or tempfile.mkdtemp(prefix="power-campaign-evidence-")
        os.makedirs(target, exist_ok=True)
        self.stop_all()
        if self.evidence_ready and os.path.isdir(self.evidence_ready):
            # inputs/start-N: what start N opened (the server log of the same number).
            shutil.copytree(self.evidence_ready, os.path.join(target, "inputs"), symlinks=True, dirs_exist_ok=True)
        shutil.copytree(self.backing, os.path.join(target, "backing-at-end"), symlinks=True, dirs_exist_ok=True)
        shutil.copytree(self.logs_dir, os.path.join(target, "logs"), dirs_exist_ok=True)
        with open(os.path.join(target, "report.json"), "w") as f:
            json.dump(report, f, indent=2, sort_keys=True)
        logs = sorted(n for n in os.listdir(self.logs_dir) if n.startswith("start-"))
        if logs and not report["sanity"]:
            log(f"== the last server log ({logs[-1]})")
            with open(os.path.join(self.logs_dir, logs[-1]), errors="replace") as f:
                sys.stdout.write(f.read()[-20_000:])
        log(f"evidence kept in {target} (backing directories, server and lossyfs logs, report with the seed)")

    def stop_all(self) -> None:
        """Kills the server and cuts the power: nothing is left running or
        mounted, whatever fails on the way."""
        server, mount = self.server, self.mount
        self.server = self.mount = None
        if server is not None and server.alive():
            os.kill(server.proc.pid, signal.SIGKILL)
        if mount is not None:
            try:
                mount.end(signal.SIGUSR1)
            except Exception as e:  # noqa: BLE001 - cleaning up whatever happened
                log(f"cleanup: lossyfs: {e}")
                if mount.proc.poll() is None:
                    os.kill(mount.proc.pid, signal.SIGKILL)
        if os.path.ismount(self.mnt):
            subprocess.run(["umount", "-l", self.mnt], check=False)
        if server is not None:
            try:
                server.kill()
            except subprocess.TimeoutExpired:
                log(f"cleanup: the server (pid {server.proc.pid}) did not exit within 30 s of SIGKILL")

    def cleanup(self) -> None:
        self.stop_all()
        if not self.args.keep_work:
            shutil.rmtree(self.work, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--binary", required=True, help="the sessiond release binary")
    p.add_argument("--cuts", type=int, default=10, help="power cuts in the campaign (default 10)")
    p.add_argument("--seed", type=int, default=None, help="schedule and operation seed (default: random, printed)")
    p.add_argument("--json", help="also write the report to this file")
    p.add_argument("--writers", type=int, default=16, help="concurrent writer threads (default 16)")
    p.add_argument("--max-load", type=float, default=2.0, help="longest load phase before a cut, s (default 2)")
    p.add_argument("--start-timeout", type=float, default=120.0,
                   help="a start not SERVING after this many seconds is an unopenable store (default 120)")
    p.add_argument("--snapshot-wait-ms", type=float, default=3000.0,
                   help="how long a snapshot cut waits for a .generating file (default 3000)")
    p.add_argument("--sanity", action="store_true",
                   help="lossyfs ignores the log's syncs; pass only if the checker reports losses")
    p.add_argument("--slow-fsync", metavar="REGEX=MS", action="append", default=[],
                   help="a slow disk: fsyncs of files whose path (from the mount's root) matches REGEX take MS "
                        "ms (lossyfs --slow-fsync; repeatable)")
    p.add_argument("--hold-sled-fsync", action="store_true",
                   help="before each load cut, stall sled's fsyncs of its file until the log has rotated twice "
                        "(lossyfs --hold-fsync): does the log outlive what sled has not synced?")
    p.add_argument("--server-creates-data-dir", action="store_true",
                   help="do not prepare the data directory durably: the server's first start creates it")
    p.add_argument("--work", help="work directory (default: a new temporary one, removed at the end)")
    p.add_argument("--keep-work", action="store_true", help="do not remove the work directory")
    p.add_argument("--evidence", help="where to keep the evidence of a failure (default: a new temporary directory)")
    p.add_argument("--stop-on-loss", action="store_true", help="stop at the first iteration that lost a write")
    args = p.parse_args()
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 32)
    if args.cuts < 1 or args.writers < 1:
        p.error("--cuts and --writers must be at least 1")
    if not (os.path.isfile(args.binary) and os.access(args.binary, os.X_OK)):
        p.error(f"not an executable: {args.binary}")
    if os.geteuid() != 0:
        p.error("needs root: it mounts FUSE file systems")
    args.binary = os.path.abspath(args.binary)

    campaign = PowerCampaign(args)

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    try:
        crash.load_stubs(os.path.join(campaign.work, "stubs"))
        return campaign.run()
    except KeyboardInterrupt:
        log("interrupted: the server is killed, the power cut and the work directory removed")
        return 130
    finally:
        campaign.cleanup()


if __name__ == "__main__":
    sys.exit(main())
