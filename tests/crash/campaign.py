#!/usr/bin/env python3
"""Crash campaign: SIGKILL a sessiond release binary again and again, on one
data directory, and check after every restart that no acknowledged write was
lost.

    python3 tests/crash/campaign.py --binary path/to/sessiond [--kills N]
        [--seed S] [--json FILE] [--writers 16] [--max-load SECONDS]

One data directory is kept for the whole campaign, so the damage of each
kill (log segments to replay, half-written snapshots, dangling index
entries) is what the next start opens, as in production. Each iteration is
one of:

- load:      start, check the model, run the writers, SIGKILL at a random
             moment under load;
- early:     start, SIGKILL within milliseconds (before or just after the
             server reports SERVING);
- replay:    two kills in a row during recovery: start, SIGKILL while the
             log left by the previous load kill is replayed (before
             SERVING), start again and SIGKILL again;
- snapshot:  the same, but each kill waits for sled's `snap.*.generating`
             file (sled writes a snapshot while it opens a store whose log
             has grown) and lands while it exists. The directory is watched
             with inotify and polled every ms; after a bounded wait, or once
             the server is ready, it kills anyway. A hit is a kill after
             which the half-written file is still there.

Writers (16 threads) do acknowledged writes: CreateNewSession,
RefreshSession, UpdateSessionDataInDatabase, RevokeSession,
MergeIntoAccessTokenPayload and UserSessionService.UpdateUserSession (as a
backend: no API key is configured and the server listens on loopback).

The model. Each writer thread owns its sessions and its bucket keys: no other
thread writes them, so the writes to one key are sequential and the model
knows exactly which value the server acknowledged last. When the server is
killed, each writer has at most one call in flight; that call's outcome is
unknown (the server may have made it durable and died before answering, or
not), so the model records it as *pending*: at the next check either the old
or the new state is accepted, and the model then adopts what the server
shows. Every other difference between the model and the server is a loss.

Exit status: 0 when nothing was lost, no store was unopenable and no live
server failed a write; 1 otherwise (the data directory, server logs and the
seed are then kept aside, and their place printed).

Tokens are never printed: only session handles, user ids and counts.
"""

from __future__ import annotations

import argparse
import collections
import glob
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
from dataclasses import dataclass, field

import grpc
from google.protobuf import json_format, struct_pb2

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Bounds. Every wait in the campaign has one.
CALL_TIMEOUT_S = 15.0  # one RPC
JOIN_TIMEOUT_S = 40.0  # writers to notice a dead server
MAX_OPS_PER_WRITER = 20_000  # per load phase
MAX_LIVE_SESSIONS = 6  # per writer: the model stays bounded
PAYLOAD_SLOTS = 4  # payload keys k0..k3 per session
BUCKET_SLOTS = 4  # bucket keys w<w>-k0..k3 per writer
BUCKET_USERS = 4  # writers share these users' buckets (disjoint keys)
LOGS_KEPT = 12  # server logs of the last starts, for the evidence

# Writer operations and their weights.
OPS = [
    ("create", 10),
    ("refresh", 20),
    ("data", 18),
    ("merge", 18),
    ("revoke", 6),
    ("bucket", 28),
]

# Kinds of acknowledged write (for the counts) and of state check.
WRITE_KINDS = ["create", "refresh", "data", "merge", "revoke", "bucket"]

# The health check's request and SERVING answer, encoded by hand
# (grpc.health.v1.HealthCheckRequest{} and HealthCheckResponse{status: 1}).
HEALTH_SERVING = b"\x08\x01"


def log(msg: str) -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------
# Stubs


def load_stubs(out: str):
    """Generates the Python stubs of proto/ into `out` and imports them."""
    import grpc_tools
    from grpc_tools import protoc

    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    os.makedirs(out, exist_ok=True)
    protos = sorted(glob.glob(os.path.join(ROOT, "proto", "sessiond", "v1", "*.proto")))
    rc = protoc.main(
        [
            "protoc",
            f"-I{os.path.join(ROOT, 'proto')}",
            f"-I{include}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            *protos,
        ]
    )
    if rc != 0:
        raise SystemExit(f"protoc failed ({rc})")
    sys.path.insert(0, out)
    global session_pb2, session_pb2_grpc, user_session_pb2, user_session_pb2_grpc
    from sessiond.v1 import session_pb2, session_pb2_grpc  # noqa: E402
    from sessiond.v1 import user_session_pb2, user_session_pb2_grpc  # noqa: E402


def struct(d: dict) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(d)
    return s


def as_dict(s) -> dict:
    return json_format.MessageToDict(s) if s is not None else {}


# --------------------------------------------------------------------------
# The server


class Unopenable(Exception):
    """The store did not open: the server exited, or never reached SERVING."""


class Server:
    """One start of the binary on the campaign's data directory."""

    def __init__(self, binary: str, data_dir: str, log_path: str):
        self.data_dir = data_dir
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.t0 = time.monotonic()
        # A session of its own: a Ctrl-C in the terminal reaches the campaign,
        # which then kills this process itself.
        self.proc = subprocess.Popen(
            [
                binary,
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                data_dir,
                # The longest grace: a refresh whose answer the kill lost
                # leaves the token we hold as the session's previous one, which
                # must still rotate when the check presents it after the restart.
                "--refresh-grace-period",
                "300s",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.addr: str | None = None
        self.channel: grpc.Channel | None = None

    def log_text(self) -> str:
        try:
            with open(self.log_path, "r", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def ready_addr(self) -> str | None:
        """The address of the ready line ("... ready, listening on ADDR"), once logged."""
        if self.addr is None:
            for line in self.log_text().splitlines():
                if "ready, listening on " in line:
                    self.addr = line.split("ready, listening on ", 1)[1].split()[0]
                    break
        return self.addr

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_serving(self, timeout_s: float) -> float:
        """Waits for SERVING (the ready line, then a health check); returns the
        time from spawn. Raises Unopenable when the server exits first or
        does not get there in time."""
        deadline = self.t0 + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise Unopenable(f"the server exited with status {self.proc.returncode} before SERVING")
            if self.ready_addr():
                if self.channel is None:
                    self.channel = grpc.insecure_channel(self.addr)
                try:
                    answer = self.channel.unary_unary("/grpc.health.v1.Health/Check")(b"", timeout=2.0)
                    if answer == HEALTH_SERVING:
                        return time.monotonic() - self.t0
                except grpc.RpcError:
                    pass
            time.sleep(0.002)
        raise Unopenable(f"no SERVING within {timeout_s:.0f} s")

    def kill(self, close: bool = True) -> None:
        """SIGKILL this start's process (and only it), and reap it. With
        `close=False` the channel stays open, so that writers still calling
        see the kill (UNAVAILABLE) rather than a closed channel; close it
        once they are done."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        try:
            self.proc.wait(timeout=30)
        finally:
            if close:
                self.close()

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM: the clean stop. Returns the exit status."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return -signal.SIGKILL
        finally:
            self.close()

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if not self._log.closed:
            self._log.close()


def generating_files(data_dir: str) -> list[str]:
    try:
        return [n for n in os.listdir(data_dir) if n.startswith("snap.") and n.endswith(".generating")]
    except OSError:
        return []


def model_report(s, runtime: float, failure, event: str) -> dict:
    """The report fields both campaigns share: what the model checked and
    found, from the campaign's stats `s`; `event` is "kill" or "cut"."""
    startups = s.startups or [0.0]
    return {
        "acknowledged_writes_checked": {k: s.checked[k] for k in WRITE_KINDS},
        "acknowledged_writes_checked_total": sum(s.checked.values()),
        "state_checks": dict(sorted(s.state_checks.items())),
        "check_runs": s.checks_runs,
        f"in_flight_at_{event}": {
            "total": sum(s.uncertain.values()),
            "by_kind": dict(sorted(s.uncertain.items())),
            "landed": dict(sorted(s.uncertain_landed.items())),
            "not_landed": dict(sorted(s.uncertain_not_landed.items())),
        },
        "lost": len(s.losses),
        "losses": s.losses[:100],
        "unopenable": s.unopenable,
        "errors_from_a_live_server": s.unexpected_errors[:100],
        "startup_s": {
            "starts_measured": len(s.startups),
            "median": round(statistics.median(startups), 3),
            "slowest": round(max(startups), 3),
        },
        "runtime_s": round(runtime, 1),
        "failure": failure,
    }


def print_model_report(r: dict, event: str) -> None:
    """Prints the fields of [model_report]."""
    checked = ", ".join(f"{kind} {n}" for kind, n in r["acknowledged_writes_checked"].items())
    log(f"acknowledged writes checked: {r['acknowledged_writes_checked_total']} ({checked})")
    log("state checks: " + ", ".join(f"{kind} {n}" for kind, n in r["state_checks"].items()))
    f = r[f"in_flight_at_{event}"]
    log(f"in flight at a {event} (either outcome accepted): {f['total']}; landed {f['landed']}, "
        f"not landed {f['not_landed']}")
    st = r["startup_s"]
    log(f"start-up to SERVING: median {st['median']:.2f} s, slowest {st['slowest']:.2f} s "
        f"({st['starts_measured']} starts)")
    log(f"lost: {r['lost']}")
    log(f"unopenable: {r['unopenable']}")
    log(f"errors from a live server: {len(r['errors_from_a_live_server'])}")
    for e in r["errors_from_a_live_server"][:10]:
        log(f"  {json.dumps(e, sort_keys=True)}")
    if r["failure"]:
        log(f"FAILED: {r['failure']}")


def dir_bytes(path: str) -> int:
    total = 0
    for base, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(base, name))
            except OSError:
                pass
    return total


class CreateWatch:
    """Tells at once when a file is created in a directory (Linux inotify,
    through ctypes), so that a kill can land while sled writes a snapshot:
    the `.generating` file lives for a millisecond or two (a small write and
    an fsync), often less than one period of a 1 ms directory poll. Where
    inotify is not available, `wait` falls back to that poll."""

    IN_CREATE = 0x100
    IN_NONBLOCK = os.O_NONBLOCK
    IN_CLOEXEC = os.O_CLOEXEC

    def __init__(self, directory: str):
        self.directory = directory
        self.fd = -1
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.inotify_init1(self.IN_NONBLOCK | self.IN_CLOEXEC)
            if fd >= 0 and libc.inotify_add_watch(fd, os.fsencode(directory), self.IN_CREATE) >= 0:
                self.fd = fd
            elif fd >= 0:
                os.close(fd)
        except (OSError, AttributeError):
            self.fd = -1

    def created(self, timeout_s: float) -> list[str]:
        """Names created since the last call, waiting at most `timeout_s`;
        the directory's current `.generating` files when inotify is off."""
        if self.fd < 0:
            time.sleep(timeout_s)
            return generating_files(self.directory)
        import select

        ready, _, _ = select.select([self.fd], [], [], timeout_s)
        names: list[str] = []
        if ready:
            try:
                buf = os.read(self.fd, 64 * 1024)
            except BlockingIOError:
                return names
            # struct inotify_event { int wd; u32 mask, cookie, len; char name[len]; }
            i = 0
            while i + 16 <= len(buf):
                length = int.from_bytes(buf[i + 12 : i + 16], "little")
                names.append(buf[i + 16 : i + 16 + length].split(b"\0", 1)[0].decode(errors="replace"))
                i += 16 + length
        return names

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# --------------------------------------------------------------------------
# The model


@dataclass
class Sess:
    """What the server acknowledged about one session."""

    handle: str
    user: str
    refresh: str  # the last acknowledged refresh token (never printed)
    anti_csrf: str  # its anti-CSRF token, or "" when the session has none
    data: dict  # the last acknowledged UpdateSessionDataInDatabase (or create's)
    payload: dict  # k0..k3 -> last acknowledged merged value; None: deleted
    revoked: bool = False  # RevokeSession acknowledged: must be gone
    # The write in flight when the server was killed, whose outcome is
    # unknown: ("data", new), ("merge", key, value), ("refresh",), ("revoke",).
    pending: tuple | None = None


@dataclass
class WriterModel:
    """Everything one writer thread wrote. Only its thread changes it while
    the server runs; only the checker between runs."""

    w: int
    user: str
    bucket_user: str
    sessions: dict = field(default_factory=dict)  # handle -> Sess
    # (bucket name, key) -> last acknowledged value (None: deleted) in
    # bucket_user's buckets; the keys are this writer's alone.
    buckets: dict = field(default_factory=dict)
    # An in-flight UpdateUserSession: (bucket name, key, value).
    bucket_pending: tuple | None = None
    # CreateNewSession calls in flight at a kill: their handles are unknown,
    # so sessions of `user` that the model does not know are accepted up to
    # this many (and then revoked).
    pending_creates: int = 0
    # Acknowledged writes since the last check, by kind.
    acked: collections.Counter = field(default_factory=collections.Counter)
    seq: int = 0  # distinct values for every write

    def next_value(self) -> int:
        self.seq += 1
        return self.seq


class Stats:
    def __init__(self):
        self.lock = threading.Lock()  # for the writers' updates
        self.kills = collections.Counter()
        self.early_before_serving = 0
        self.snapshot_attempts = 0
        self.snapshot_hits = 0  # kills that landed while a .generating file existed
        self.generating_left = 0  # kills after which a .generating file remained
        self.checked = collections.Counter()  # acknowledged writes covered by a check
        self.state_checks = collections.Counter()  # comparisons made, by kind
        self.uncertain = collections.Counter()  # in-flight writes at kills, by kind
        self.uncertain_landed = collections.Counter()
        self.uncertain_not_landed = collections.Counter()
        self.losses: list[dict] = []
        self.unexpected_errors: list[dict] = []
        self.unopenable = 0
        self.starts_on_partial_snapshot = 0  # starts that found a .generating file
        self.snapshots_removed = 0  # by --without-snapshots
        self.startups: list[float] = []
        self.checks_runs = 0


# --------------------------------------------------------------------------
# Writers


class Writer(threading.Thread):
    """Writes to its own sessions and bucket keys until a call fails (the
    kill), `stop` is set, or its op budget is spent."""

    def __init__(self, m: WriterModel, channel, rng: random.Random, killed: threading.Event, stats: Stats):
        super().__init__(daemon=True, name=f"writer-{m.w}")
        self.m = m
        self.rng = rng
        self.killed = killed
        self.stats = stats
        self.sessions = session_pb2_grpc.SessionServiceStub(channel)
        self.buckets = user_session_pb2_grpc.UserSessionServiceStub(channel)
        self.stop = threading.Event()
        self.inflight: tuple = ("none",)  # the call being made, for on_error

    def run(self) -> None:
        names = [n for n, _ in OPS]
        weights = [w for _, w in OPS]
        for _ in range(MAX_OPS_PER_WRITER):
            if self.stop.is_set():
                return
            op = self.rng.choices(names, weights)[0]
            try:
                self.step(op)
            except grpc.RpcError as e:
                self.on_error(e)
                return

    def live(self) -> list[Sess]:
        return [s for s in self.m.sessions.values() if not s.revoked]

    def step(self, op: str) -> None:
        m, rng = self.m, self.rng
        live = self.live()
        if op == "create" and len(live) >= MAX_LIVE_SESSIONS:
            op = "revoke"
        if op in ("refresh", "data", "merge", "revoke") and not live:
            op = "create"
        if op == "create":
            value = m.next_value()
            anti = rng.random() < 0.5
            data = {"w": m.w, "seq": value}
            payload = {"k0": value}
            # Pending until answered: a failure leaves an unknown handle.
            self.inflight = ("create",)
            r = self.sessions.CreateNewSession(
                session_pb2.CreateNewSessionRequest(
                    user_id=m.user,
                    access_token_payload=struct(payload),
                    session_data_in_database=struct(data),
                    disable_anti_csrf=not anti,
                ),
                timeout=CALL_TIMEOUT_S,
            )
            handle = r.session.session_handle
            m.sessions[handle] = Sess(
                handle=handle,
                user=m.user,
                refresh=r.refresh_token.token,
                anti_csrf=r.anti_csrf_token if r.HasField("anti_csrf_token") else "",
                data=data,
                payload={"k0": value},
            )
            m.acked["create"] += 1
            return
        if op == "bucket":
            bucket = rng.choice(["BUCKET_PUBLIC", "BUCKET_PRIVATE"])
            key = f"w{m.w}-k{rng.randrange(BUCKET_SLOTS)}"
            value = None if rng.random() < 0.1 else m.next_value()
            self.inflight = ("bucket", bucket, key, value)
            r = self.buckets.UpdateUserSession(
                user_session_pb2.UpdateUserSessionRequest(
                    bucket=user_session_pb2.Bucket.Value(bucket),
                    user_id=m.bucket_user,
                    data=struct({key: value}),
                ),
                timeout=CALL_TIMEOUT_S,
            )
            m.buckets[(bucket, key)] = value
            m.acked["bucket"] += 1
            # The answer is the merged bucket: our key must be in it already.
            seen = as_dict(r.public if bucket == "BUCKET_PUBLIC" else r.private).get(key)
            if seen != value:
                self.failed("bucket", f"the answer shows {key}={seen!r} after merging {value!r}")
            return
        s = rng.choice(live)
        if op == "refresh":
            self.inflight = ("refresh", s)
            r = self.sessions.RefreshSession(
                session_pb2.RefreshSessionRequest(refresh_token=s.refresh, anti_csrf_token=s.anti_csrf),
                timeout=CALL_TIMEOUT_S,
            )
            s.refresh = r.refresh_token.token
            s.anti_csrf = r.anti_csrf_token if r.HasField("anti_csrf_token") else ""
        elif op == "data":
            new = {"w": m.w, "seq": m.next_value()}
            self.inflight = ("data", s, new)
            self.sessions.UpdateSessionDataInDatabase(
                session_pb2.UpdateSessionDataInDatabaseRequest(session_handle=s.handle, new_session_data=struct(new)),
                timeout=CALL_TIMEOUT_S,
            )
            s.data = new
        elif op == "merge":
            key = f"k{rng.randrange(PAYLOAD_SLOTS)}"
            value = None if rng.random() < 0.1 else m.next_value()
            self.inflight = ("merge", s, key, value)
            self.sessions.MergeIntoAccessTokenPayload(
                session_pb2.MergeIntoAccessTokenPayloadRequest(
                    session_handle=s.handle, access_token_payload_update=struct({key: value})
                ),
                timeout=CALL_TIMEOUT_S,
            )
            s.payload[key] = value
        elif op == "revoke":
            self.inflight = ("revoke", s)
            r = self.sessions.RevokeSession(
                session_pb2.RevokeSessionRequest(session_handle=s.handle), timeout=CALL_TIMEOUT_S
            )
            if not r.revoked:
                self.failed("revoke", f"{s.handle}: revoked=false for a live session")
            s.revoked = True
        m.acked[op] += 1

    def failed(self, op: str, error: str) -> None:
        with self.stats.lock:
            self.stats.unexpected_errors.append({"writer": self.m.w, "op": op, "error": error})

    def on_error(self, e: grpc.RpcError) -> None:
        """The call in flight failed: its outcome is unknown. Record it as
        pending in the model (either outcome is accepted at the next check)."""
        kind = self.inflight[0]
        if not self.killed.is_set():
            # The server was not killed yet: a live server failed a write.
            self.failed(kind, f"{e.code().name}: {e.details()}")
        with self.stats.lock:
            self.stats.uncertain[kind] += 1
        if kind == "create":
            self.m.pending_creates += 1
        elif kind == "bucket":
            self.m.bucket_pending = self.inflight[1:]
        else:
            s: Sess = self.inflight[1]
            s.pending = (kind, *self.inflight[2:])


# --------------------------------------------------------------------------
# The check after a restart


class Checker:
    """Compares every writer's model with what the restarted server shows,
    then makes the model follow the server where an in-flight write's
    outcome was unknown."""

    def __init__(self, channel, stats: Stats, iteration: int):
        self.sessions = session_pb2_grpc.SessionServiceStub(channel)
        self.buckets = user_session_pb2_grpc.UserSessionServiceStub(channel)
        self.stats = stats
        self.iteration = iteration

    def lost(self, kind: str, m: WriterModel, what: str, **extra) -> None:
        entry = {"iteration": self.iteration, "kind": kind, "writer": m.w, "what": what, **extra}
        self.stats.losses.append(entry)
        log(f"  LOST [{kind}] writer {m.w}: {what} {json.dumps(extra, sort_keys=True)}")

    def resolved(self, kind: str, landed: bool | None) -> None:
        if landed is True:
            self.stats.uncertain_landed[kind] += 1
        elif landed is False:
            self.stats.uncertain_not_landed[kind] += 1

    def check_writer(self, m: WriterModel) -> None:
        # The writes acknowledged since the last check are what this check
        # covers; the check's own writes (refreshes, revokes) are covered by
        # the next one.
        covered = m.acked.copy()
        m.acked.clear()
        known = set(m.sessions)
        listed = set(
            self.sessions.GetAllSessionHandlesForUser(
                session_pb2.GetAllSessionHandlesForUserRequest(user_id=m.user), timeout=CALL_TIMEOUT_S
            ).session_handles
        )
        for s in list(m.sessions.values()):
            self.check_session(m, s, listed)
        # Sessions of this writer's user that the model does not know: only
        # creates whose answer the kill lost may have made them. Any other is
        # a session that should not exist (say, one whose revoke was checked
        # at an earlier start and which came back since).
        unknown = sorted(listed - known)
        self.stats.state_checks["unknown sessions"] += 1
        if len(unknown) > m.pending_creates:
            self.lost(
                "unknown",
                m,
                "sessions that no acknowledged or in-flight create made",
                unknown=len(unknown),
                pending_creates=m.pending_creates,
            )
        for _ in range(min(len(unknown), m.pending_creates)):
            self.resolved("create", True)
        for _ in range(max(0, m.pending_creates - len(unknown))):
            self.resolved("create", False)
        m.pending_creates = 0
        # Revoke them (an acknowledged write the next check verifies).
        for handle in unknown:
            r = self.sessions.RevokeSession(
                session_pb2.RevokeSessionRequest(session_handle=handle), timeout=CALL_TIMEOUT_S
            )
            m.sessions[handle] = Sess(handle, m.user, "", "", {}, {}, revoked=True)
            m.acked["revoke"] += int(r.revoked)
        self.check_buckets(m)
        self.stats.checked.update(covered)

    def check_session(self, m: WriterModel, s: Sess, listed: set) -> None:
        pending, s.pending = s.pending, None
        try:
            info = self.sessions.GetSessionInformation(
                session_pb2.GetSessionInformationRequest(session_handle=s.handle), timeout=CALL_TIMEOUT_S
            )
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND:
                raise
            info = None

        if s.revoked:
            self.stats.state_checks["revoked gone"] += 1
            if info is not None or s.handle in listed:
                self.lost("revoke", m, "an acknowledged revoke is undone", handle=s.handle, listed=s.handle in listed)
            del m.sessions[s.handle]  # verified (or reported): pruned
            return
        if info is None:
            if pending and pending[0] == "revoke":
                self.resolved("revoke", True)  # the revoke landed
            else:
                self.stats.state_checks["session exists"] += 1
                self.lost("create", m, "an acknowledged session is gone", handle=s.handle)
            del m.sessions[s.handle]
            return
        if pending and pending[0] == "revoke":
            self.resolved("revoke", False)  # it did not land: the session lives on

        self.stats.state_checks["session exists"] += 1
        self.stats.state_checks["listed for its user"] += 1
        if s.handle not in listed:
            self.lost("create", m, "a live session is missing from its user's list", handle=s.handle)

        # Session data: the last acknowledged overwrite, or the in-flight one.
        seen = as_dict(info.session_data_in_database)
        self.stats.state_checks["data"] += 1
        if pending and pending[0] == "data" and seen == pending[1]:
            s.data = pending[1]
            self.resolved("data", True)
        elif seen != s.data:
            self.lost("data", m, "session data differs", handle=s.handle, expected=s.data, seen=seen)
            s.data = seen
        elif pending and pending[0] == "data":
            self.resolved("data", False)

        # Payload: every key's last acknowledged merge (None: deleted).
        payload = as_dict(info.custom_claims_in_access_token_payload)
        for key, value in sorted(s.payload.items()):
            if pending and pending[0] == "merge" and pending[1] == key:
                continue
            self.stats.state_checks["payload key"] += 1
            if payload.get(key) != value:
                self.lost(
                    "merge", m, "payload key differs", handle=s.handle, key=key, expected=value, seen=payload.get(key)
                )
                s.payload[key] = payload.get(key)
        if pending and pending[0] == "merge":
            _, key, value = pending
            self.stats.state_checks["payload key"] += 1
            old = s.payload.get(key)
            if payload.get(key) == value:
                # Landed, unless the in-flight value equals the old one
                # (a delete of a deleted key): then nobody can tell.
                s.payload[key] = value
                self.resolved("merge", True if value != old else None)
            elif payload.get(key) == old:
                self.resolved("merge", False)
            else:
                self.lost(
                    "merge",
                    m,
                    "payload key is neither the acknowledged nor the in-flight value",
                    handle=s.handle,
                    key=key,
                    expected=[s.payload.get(key), value],
                    seen=payload.get(key),
                )
                s.payload[key] = payload.get(key)

        # The last acknowledged refresh token still refreshes. After an
        # in-flight refresh it is either still current (the refresh did not
        # land) or now the previous one, inside the grace period: both rotate.
        self.stats.state_checks["refresh"] += 1
        try:
            r = self.sessions.RefreshSession(
                session_pb2.RefreshSessionRequest(refresh_token=s.refresh, anti_csrf_token=s.anti_csrf),
                timeout=CALL_TIMEOUT_S,
            )
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNAUTHENTICATED:
                raise
            self.lost(
                "refresh",
                m,
                "the last acknowledged refresh token no longer refreshes",
                handle=s.handle,
                status=e.code().name,
                in_flight_refresh=bool(pending and pending[0] == "refresh"),
            )
            # The session may have been revoked for theft: forget it.
            del m.sessions[s.handle]
            return
        s.refresh = r.refresh_token.token
        s.anti_csrf = r.anti_csrf_token if r.HasField("anti_csrf_token") else ""
        m.acked["refresh"] += 1
        if pending and pending[0] == "refresh":
            self.resolved("refresh", None)  # both outcomes look the same

    def check_buckets(self, m: WriterModel) -> None:
        if not m.buckets and not m.bucket_pending:
            return
        r = self.buckets.GetUserSession(
            user_session_pb2.GetUserSessionRequest(user_id=m.bucket_user), timeout=CALL_TIMEOUT_S
        )
        seen_buckets = {"BUCKET_PUBLIC": as_dict(r.public), "BUCKET_PRIVATE": as_dict(r.private)}
        pending, m.bucket_pending = m.bucket_pending, None
        for (bucket, key), value in sorted(m.buckets.items()):
            if pending and pending[:2] == (bucket, key):
                continue
            self.stats.state_checks["bucket key"] += 1
            seen = seen_buckets[bucket].get(key)
            if seen != value:
                self.lost("bucket", m, "bucket key differs", user=m.bucket_user, bucket=bucket, key=key,
                          expected=value, seen=seen)
                m.buckets[(bucket, key)] = seen
        if pending:
            bucket, key, value = pending
            self.stats.state_checks["bucket key"] += 1
            seen = seen_buckets[bucket].get(key)
            old = m.buckets.get((bucket, key))
            if seen == value:
                m.buckets[(bucket, key)] = value
                self.resolved("bucket", True if value != old else None)
            elif seen == old:
                self.resolved("bucket", False)
            else:
                self.lost("bucket", m, "bucket key is neither the acknowledged nor the in-flight value",
                          user=m.bucket_user, bucket=bucket, key=key, expected=[old, value], seen=seen)
                m.buckets[(bucket, key)] = seen


# --------------------------------------------------------------------------
# The campaign


def schedule(rng: random.Random, kills: int) -> list[str]:
    """Iteration kinds, in blocks of 5 load, 1 early, 1 replay and 1
    snapshot iterations (11 kills), shuffled within each block; the two
    double-kill kinds always follow a load kill, so there is a log to
    replay. Cut when the kill count is reached."""
    out: list[str] = []
    count = 0
    while count < kills:
        units = [["load"], ["load"], ["load"], ["early"], ["load", "replay"], ["load", "snapshot"]]
        rng.shuffle(units)
        for unit in units:
            for kind in unit:
                if count >= kills:
                    return out
                out.append(kind)
                count += 2 if kind in ("replay", "snapshot") else 1
    return out


class Campaign:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.stats = Stats()
        self.work = tempfile.mkdtemp(prefix="crash-campaign-")
        self.data_dir = os.path.join(self.work, "data")
        self.logs_dir = os.path.join(self.work, "logs")
        os.makedirs(self.logs_dir)
        self.starts = 0
        self.server: Server | None = None
        self.writers = [
            WriterModel(w=w, user=f"crash-w{w}", bucket_user=f"crash-b{w % BUCKET_USERS}")
            for w in range(args.writers)
        ]
        self.iteration = 0
        self.failed_reason: str | None = None

    # -- starts and kills ---------------------------------------------------

    def spawn(self) -> Server:
        self.starts += 1
        if self.args.without_snapshots:
            # Recovery from sled's log alone, as after a quarantine, or a
            # power loss that lost the rename of the snapshot sled wrote.
            for name in os.listdir(self.data_dir) if os.path.isdir(self.data_dir) else []:
                if name.startswith("snap."):
                    os.remove(os.path.join(self.data_dir, name))
                    self.stats.snapshots_removed += 1
        if generating_files(self.data_dir):
            self.stats.starts_on_partial_snapshot += 1
        path = os.path.join(self.logs_dir, f"start-{self.starts:05d}.log")
        old = os.path.join(self.logs_dir, f"start-{self.starts - LOGS_KEPT:05d}.log")
        if os.path.exists(old):
            os.remove(old)
        self.server = Server(self.args.binary, self.data_dir, path)
        return self.server

    def kill(self, kind: str, close: bool = True) -> None:
        self.server.kill(close)
        self.stats.kills[kind] += 1
        if generating_files(self.data_dir):
            self.stats.generating_left += 1
        self.server = None

    def start_serving(self) -> Server:
        """A start that must reach SERVING; an unopenable store ends the campaign."""
        server = self.spawn()
        try:
            took = server.wait_serving(self.args.start_timeout)
        except Unopenable as e:
            self.stats.unopenable += 1
            server.kill()
            self.server = None
            raise Unopenable(f"start {self.starts}: {e}") from None
        self.stats.startups.append(took)
        # sled writes snapshots only while it opens, and sessiond removes the
        # half-written ones first: none may be left once the store serves.
        self.stats.state_checks["no partial snapshot once serving"] += 1
        left = generating_files(self.data_dir)
        if left:
            self.stats.unexpected_errors.append({"op": "start", "error": f"partial snapshots left: {left}"})
        return server

    def typical_startup(self) -> float:
        """The median of the last 15 measured start-ups (not the first, which
        also generates the signing keys)."""
        recent = self.stats.startups[1:][-15:]
        return statistics.median(recent) if recent else 0.1

    # -- iterations ---------------------------------------------------------

    def check(self, server: Server) -> int:
        before = sum(self.stats.state_checks.values())
        checker = Checker(server.channel, self.stats, self.iteration)
        for m in self.writers:
            checker.check_writer(m)
        self.stats.checks_runs += 1
        return sum(self.stats.state_checks.values()) - before

    def load_iteration(self) -> str:
        server = self.start_serving()
        checks = self.check(server)
        killed = threading.Event()
        writers = [
            Writer(m, server.channel, random.Random(self.rng.getrandbits(64)), killed, self.stats)
            for m in self.writers
        ]
        acked_before = sum(sum(m.acked.values()) for m in self.writers)
        for t in writers:
            t.start()
        time.sleep(self.rng.uniform(0.05, self.args.max_load))
        killed.set()
        self.kill("load", close=False)
        for t in writers:
            t.stop.set()
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        for t in writers:
            t.join(max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                raise RuntimeError(f"{t.name} still running {JOIN_TIMEOUT_S:.0f} s after the kill")
        server.close()
        acked = sum(sum(m.acked.values()) for m in self.writers) - acked_before
        in_flight = sum(
            1
            for m in self.writers
            if m.bucket_pending or m.pending_creates or any(s.pending for s in m.sessions.values())
        )
        return f"started {self.stats.startups[-1]:.2f}s, {checks} checks, {acked} writes acked, {in_flight} in flight at the kill"

    def early_iteration(self) -> str:
        """SIGKILL within milliseconds of the spawn: before SERVING, or just after."""
        server = self.spawn()
        delay = self.rng.uniform(0.0, 1.5 * self.typical_startup())
        time.sleep(delay)
        serving = server.ready_addr() is not None
        if not server.alive():
            self.stats.unopenable += 1
            raise Unopenable(f"start {self.starts}: the server exited with status {server.proc.returncode}")
        self.kill("early")
        self.stats.early_before_serving += int(not serving)
        return f"killed {delay * 1000:.0f} ms after spawn ({'after' if serving else 'before'} SERVING)"

    def recovery_kill(self, kind: str) -> str:
        """One start killed during recovery: after a random part of the usual
        start-up time (`replay`), or as soon as a snapshot file is being
        written (`snapshot`, polled every ms; bounded by --snapshot-wait-ms,
        and over once the server is ready, since sled writes snapshots only
        while it opens)."""
        if kind == "replay":
            server = self.spawn()
            delay = self.rng.uniform(0.0, 0.9 * self.typical_startup())
            time.sleep(delay)
            note = f"{delay * 1000:.0f} ms"
            if not server.alive():
                self.stats.unopenable += 1
                raise Unopenable(f"start {self.starts}: the server exited with status {server.proc.returncode}")
            serving = server.ready_addr() is not None
            self.kill(kind)
            return note + (" (after SERVING)" if serving else "")

        # `snapshot`: watch the directory from before the spawn; once a
        # `.generating` file appears, kill at once (half the time) or after
        # up to 0.5 ms (spun, not slept: sleeping oversleeps), so that kills
        # land at different points of the write and its fsync. The window is
        # short (often under a millisecond), so later kills miss it more often.
        self.stats.snapshot_attempts += 1
        os.makedirs(self.data_dir, exist_ok=True)
        watch = CreateWatch(self.data_dir)
        try:
            server = self.spawn()
            deadline = server.t0 + self.args.snapshot_wait_ms / 1000.0
            seen = False
            while time.monotonic() < deadline and server.alive():
                created = watch.created(0.001)
                if any(n.startswith("snap.") and n.endswith(".generating") for n in created) or generating_files(
                    self.data_dir
                ):
                    seen = True
                    delay = 0.0 if self.rng.random() < 0.5 else self.rng.uniform(0.0, 0.0005)
                    until = time.monotonic() + delay
                    while time.monotonic() < until:
                        pass
                    os.kill(server.proc.pid, signal.SIGKILL)  # reaped by self.kill below
                    break
                if server.ready_addr() is not None:
                    break  # sled writes snapshots only while it opens: missed
        finally:
            watch.close()
        if not seen and not server.alive():
            self.stats.unopenable += 1
            raise Unopenable(f"start {self.starts}: the server exited with status {server.proc.returncode}")
        serving = server.ready_addr() is not None
        at_ms = (time.monotonic() - server.t0) * 1000
        self.kill(kind)
        # A hit: the kill left the snapshot file half-written (it was not
        # yet renamed to its final name when the process died).
        hit = bool(generating_files(self.data_dir))
        self.stats.snapshot_hits += int(hit)
        if hit:
            what = "on a .generating file"
        elif seen:
            what = "just after the snapshot was renamed"
        else:
            what = "no .generating file seen"
        return f"{at_ms:.0f} ms, {what}" + (" (after SERVING)" if serving else "")

    def double_iteration(self, kind: str) -> str:
        first = self.recovery_kill(kind)
        second = self.recovery_kill(kind)
        return f"killed twice during recovery: {first}; {second}"

    # -- the whole run ------------------------------------------------------

    def run(self) -> int:
        t_start = time.monotonic()
        kinds = schedule(self.rng, self.args.kills)
        log(
            f"crash campaign: seed {self.args.seed}, {self.args.kills} kills in {len(kinds)} iterations, "
            f"{self.args.writers} writers, one data directory"
        )
        try:
            for i, kind in enumerate(kinds, 1):
                self.iteration = i
                if kind == "load":
                    note = self.load_iteration()
                elif kind == "early":
                    note = self.early_iteration()
                else:
                    note = self.double_iteration(kind)
                lost = f", LOST so far {len(self.stats.losses)}" if self.stats.losses else ""
                log(f"[{i:4d}/{len(kinds)}] {kind:8s} {note}{lost}")
                if self.stats.losses and self.args.stop_on_loss:
                    break
            # The last start checks what the last kill left, then stops cleanly.
            self.iteration = len(kinds) + 1
            server = self.start_serving()
            checks = self.check(server)
            status = server.stop()
            self.server = None
            log(f"[final] started {self.stats.startups[-1]:.2f}s, {checks} checks, clean stop (status {status})")
            if status != 0:
                self.stats.unexpected_errors.append({"op": "SIGTERM", "error": f"exit status {status}"})
        except Unopenable as e:
            self.failed_reason = f"unopenable store: {e}"
        except (grpc.RpcError, RuntimeError) as e:
            detail = f"{e.code().name}: {e.details()}" if isinstance(e, grpc.RpcError) else str(e)
            self.failed_reason = f"iteration {self.iteration}: {detail}"
        finally:
            if self.server is not None:
                self.server.kill()
                self.server = None
        runtime = time.monotonic() - t_start
        report = self.report(runtime)
        self.print_report(report)
        if self.args.json:
            with open(self.args.json, "w") as f:
                json.dump(report, f, indent=2, sort_keys=True)
                f.write("\n")
        ok = report["passed"]
        if not ok:
            self.keep_evidence(report)
        return 0 if ok else 1

    def report(self, runtime: float) -> dict:
        s = self.stats
        return {
            "seed": self.args.seed,
            "writers": self.args.writers,
            "kills": {"total": sum(s.kills.values()), **{k: s.kills[k] for k in ("load", "early", "replay", "snapshot")}},
            "early_kills_before_serving": s.early_before_serving,
            "snapshot_kills": {
                "attempts": s.snapshot_attempts,
                "hit_generating_file": s.snapshot_hits,
            },
            "kills_leaving_a_generating_file": s.generating_left,
            "starts_on_a_partial_snapshot": s.starts_on_partial_snapshot,
            "snapshots_removed_before_starts": s.snapshots_removed,
            "snapshot_quarantines": len(os.listdir(os.path.join(self.data_dir, "quarantine")))
            if os.path.isdir(os.path.join(self.data_dir, "quarantine"))
            else 0,
            "data_dir_bytes_at_end": dir_bytes(self.data_dir),
            "model_sessions_at_end": sum(len(m.sessions) for m in self.writers),
            "campaign_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            **model_report(s, runtime, self.failed_reason, "kill"),
            "passed": not s.losses and not s.unopenable and not s.unexpected_errors and self.failed_reason is None,
        }

    def print_report(self, r: dict) -> None:
        k = r["kills"]
        log("")
        log("== crash campaign report")
        log(f"seed {r['seed']}, run time {r['runtime_s']:.0f} s")
        log(
            f"kills: {k['total']} (under load {k['load']}, early {k['early']} of which "
            f"{r['early_kills_before_serving']} before SERVING, during log replay {k['replay']}, "
            f"at snapshot writing {k['snapshot']} of which {r['snapshot_kills']['hit_generating_file']} "
            f"on a .generating file); {r['kills_leaving_a_generating_file']} left a .generating file behind"
        )
        log(
            f"starts that found a half-written snapshot to remove: {r['starts_on_a_partial_snapshot']}; "
            f"snapshot quarantines: {r['snapshot_quarantines']}"
            + (f"; snapshots removed before starts (--without-snapshots): {r['snapshots_removed_before_starts']}"
               if self.args.without_snapshots else "")
        )
        log(
            f"at the end: data directory {r['data_dir_bytes_at_end'] / 2**20:.1f} MiB, "
            f"{r['model_sessions_at_end']} sessions in the model, campaign peak RSS {r['campaign_peak_rss_mib']} MiB"
        )
        print_model_report(r, "kill")
        log("crash campaign: " + ("passed" if r["passed"] else "FAILED"))

    def keep_evidence(self, report: dict) -> None:
        """Copies the data directory, the last servers' logs and the report
        (with the seed) aside, and prints the newest log."""
        target = self.args.evidence or tempfile.mkdtemp(prefix="crash-campaign-evidence-")
        os.makedirs(target, exist_ok=True)
        if os.path.isdir(self.data_dir):
            shutil.copytree(self.data_dir, os.path.join(target, "data"), dirs_exist_ok=True)
        shutil.copytree(self.logs_dir, os.path.join(target, "logs"), dirs_exist_ok=True)
        with open(os.path.join(target, "report.json"), "w") as f:
            json.dump(report, f, indent=2, sort_keys=True)
        logs = sorted(os.listdir(self.logs_dir))
        if logs:
            log(f"== the last server log ({logs[-1]})")
            with open(os.path.join(self.logs_dir, logs[-1]), errors="replace") as f:
                sys.stdout.write(f.read()[-20_000:])
        log(f"evidence kept in {target} (data directory, server logs, report with the seed)")

    def cleanup(self) -> None:
        if self.server is not None:
            self.server.kill()
            self.server = None
        shutil.rmtree(self.work, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--binary", required=True, help="the sessiond release binary")
    p.add_argument("--kills", type=int, default=30, help="SIGKILLs in the campaign (default 30)")
    p.add_argument("--seed", type=int, default=None, help="schedule and operation seed (default: random, printed)")
    p.add_argument("--json", help="also write the report to this file")
    p.add_argument("--writers", type=int, default=16, help="concurrent writer threads (default 16)")
    p.add_argument("--max-load", type=float, default=2.0, help="longest load phase before a load kill, s (default 2)")
    p.add_argument("--start-timeout", type=float, default=120.0,
                   help="a start that is not SERVING after this many seconds is an unopenable store (default 120)")
    p.add_argument("--snapshot-wait-ms", type=float, default=3000.0,
                   help="how long a snapshot kill waits for a .generating file (default 3000)")
    p.add_argument("--evidence", help="where to keep the evidence of a failure (default: a new temporary directory)")
    p.add_argument("--stop-on-loss", action="store_true", help="stop at the first iteration that lost a write")
    p.add_argument("--without-snapshots", action="store_true",
                   help="remove sled's snapshots before every start, so that it recovers from its log alone")
    args = p.parse_args()
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 32)
    if args.kills < 1 or args.writers < 1:
        p.error("--kills and --writers must be at least 1")
    if not (os.path.isfile(args.binary) and os.access(args.binary, os.X_OK)):
        p.error(f"not an executable: {args.binary}")
    args.binary = os.path.abspath(args.binary)

    campaign = Campaign(args)

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    try:
        load_stubs(os.path.join(campaign.work, "stubs"))
        return campaign.run()
    except KeyboardInterrupt:
        log("interrupted: the server is killed and the work directory removed")
        return 130
    finally:
        campaign.cleanup()


if __name__ == "__main__":
    sys.exit(main())
