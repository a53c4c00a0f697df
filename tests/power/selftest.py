#!/usr/bin/env python3
"""Checks lossyfs's loss model on a real mount: each case writes through the
mount, cuts the power, and looks at what the backing directory kept.

    python3 tests/power/selftest.py    (root, /dev/fuse, mfusepy)

Prints one line per case and "N passed, N failed"; exits 1 on a failure.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MOUNT_TIMEOUT_S = 20.0


class Mount:
    """lossyfs over `backing` on `mnt`, for one case."""

    def __init__(self, backing: str, mnt: str, log_path: str):
        self.mnt = mnt
        self.log = open(log_path, "ab")
        dev = os.stat(mnt).st_dev
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "lossyfs.py"), backing, mnt],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + MOUNT_TIMEOUT_S
        while os.stat(mnt).st_dev == dev:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"lossyfs did not mount (see {log_path})")
            time.sleep(0.01)

    def cut(self) -> None:
        self._end(signal.SIGUSR1)

    def stop(self) -> None:
        self._end(signal.SIGTERM)

    def _end(self, sig) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        if os.path.ismount(self.mnt):
            subprocess.run(["umount", "-l", self.mnt], check=False)
        self.log.close()


def fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: str, data: bytes, sync: bool = False, datasync: bool = False) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        if datasync:
            os.fdatasync(fd)
        elif sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


# Each case is a generator: it acts on the mount `m`, yields "cut" or "stop",
# and then checks the backing directory `b`.


def case_unsynced_write_lost(m, b):
    write_file(f"{m}/f", b"synced")
    fsync_path(m)
    yield "cut"
    assert read(f"{b}/f") == b"", "a name made durable by the directory sync keeps no unsynced data"


def case_fsync_keeps_data_and_name(m, b):
    write_file(f"{m}/f", b"kept", sync=True)
    yield "cut"
    assert read(f"{b}/f") == b"kept"


def case_fdatasync_keeps_data(m, b):
    write_file(f"{m}/f", b"kept", datasync=True)
    yield "cut"
    assert read(f"{b}/f") == b"kept"


def case_create_without_any_sync_lost(m, b):
    write_file(f"{m}/f", b"x")
    yield "cut"
    assert read(f"{b}/f") is None


def case_pwrite_after_sync_lost(m, b):
    write_file(f"{m}/f", b"A" * 8192, sync=True)
    fd = os.open(f"{m}/f", os.O_WRONLY)
    os.pwrite(fd, b"B" * 100, 4000)
    os.close(fd)
    with open(f"{m}/f", "rb") as f:
        assert f.read()[4000:4100] == b"B" * 100, "the live view shows the write"
    yield "cut"
    assert read(f"{b}/f") == b"A" * 8192


def case_preallocated_zeros_then_frames(m, b):
    fd = os.open(f"{m}/seg", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, bytes(1 << 20))
    os.fsync(fd)
    os.pwrite(fd, b"frame-1", 0)
    os.fdatasync(fd)
    os.pwrite(fd, b"frame-2", 7)  # never synced
    os.close(fd)
    yield "cut"
    data = read(f"{b}/seg")
    assert data is not None and len(data) == 1 << 20
    assert data[:14] == b"frame-1" + bytes(7)


def case_sync_file_range_is_not_durable(m, b):
    write_file(f"{m}/f", b"old", sync=True)
    fd = os.open(f"{m}/f", os.O_WRONLY)
    os.pwrite(fd, b"new", 0)
    libc = __import__("ctypes").CDLL(None, use_errno=True)
    # SYNC_FILE_RANGE_WAIT_BEFORE | WRITE | WAIT_AFTER, as sled does
    assert libc.sync_file_range(fd, __import__("ctypes").c_int64(0), __import__("ctypes").c_int64(3), 7) == 0
    os.close(fd)
    yield "cut"
    assert read(f"{b}/f") == b"old"


def case_rename_needs_dir_fsync(m, b):
    write_file(f"{m}/a.tmp", b"v2", sync=True)
    os.rename(f"{m}/a.tmp", f"{m}/a")
    yield "cut"
    assert read(f"{b}/a") is None and read(f"{b}/a.tmp") == b"v2"


def case_rename_with_dir_fsync(m, b):
    write_file(f"{m}/a.tmp", b"v2", sync=True)
    os.rename(f"{m}/a.tmp", f"{m}/a")
    fsync_path(m)
    yield "cut"
    assert read(f"{b}/a") == b"v2" and read(f"{b}/a.tmp") is None


def case_unlink_needs_dir_fsync(m, b):
    write_file(f"{m}/f", b"x", sync=True)
    yield "cut"
    os.unlink(f"{m}/f")
    yield "cut"
    assert read(f"{b}/f") == b"x", "an unlink without a directory sync is undone"


def case_unlink_with_dir_fsync(m, b):
    write_file(f"{m}/f", b"x", sync=True)
    yield "cut"
    os.unlink(f"{m}/f")
    fsync_path(m)
    yield "cut"
    assert read(f"{b}/f") is None


def case_file_in_new_dir_needs_the_dir(m, b):
    os.mkdir(f"{m}/d")
    write_file(f"{m}/d/f", b"x", sync=True)  # its name in d is durable, d's name in / is not
    yield "cut"
    assert not os.path.exists(f"{b}/d")


def case_new_dir_fsynced_itself(m, b):
    os.mkdir(f"{m}/d")
    write_file(f"{m}/d/f", b"x", sync=True)
    fsync_path(f"{m}/d")  # as the log does: the directory's own fsync keeps its name
    yield "cut"
    assert read(f"{b}/d/f") == b"x"


def case_truncate_needs_fsync(m, b):
    write_file(f"{m}/f", b"0123456789", sync=True)
    os.truncate(f"{m}/f", 4)
    yield "cut"
    assert read(f"{b}/f") == b"0123456789"
    os.truncate(f"{m}/f", 4)
    fsync_path(f"{m}/f")
    yield "cut"
    assert read(f"{b}/f") == b"0123"


def case_only_the_last_fsync_counts(m, b):
    fd = os.open(f"{m}/f", os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd, b"one")
    os.fsync(fd)
    os.pwrite(fd, b"two", 0)
    os.fsync(fd)
    os.pwrite(fd, b"three", 0)
    os.close(fd)
    yield "cut"
    assert read(f"{b}/f") == b"two"


def case_flock_is_exclusive_on_the_mount(m, b):
    write_file(f"{m}/lock", b"", sync=True)
    fd1 = os.open(f"{m}/lock", os.O_WRONLY)
    fcntl.flock(fd1, fcntl.LOCK_EX | fcntl.LOCK_NB)
    code = ("import fcntl,os,sys\nfd=os.open(sys.argv[1],os.O_WRONLY)\n"
            "try:\n fcntl.flock(fd,fcntl.LOCK_EX|fcntl.LOCK_NB)\nexcept BlockingIOError:\n sys.exit(3)\n")
    other = subprocess.run([sys.executable, "-c", code, f"{m}/lock"], timeout=30)
    assert other.returncode == 3, "a second process took the flock"
    os.close(fd1)
    other = subprocess.run([sys.executable, "-c", code, f"{m}/lock"], timeout=30)
    assert other.returncode == 0, "the flock was not released"
    yield "cut"


def case_listing_and_clean_unmount_keeps_all(m, b):
    os.mkdir(f"{m}/d")
    write_file(f"{m}/d/f", b"x")
    assert sorted(os.listdir(f"{m}/d")) == ["f"]
    yield "stop"
    assert read(f"{b}/d/f") == b"x", "a clean unmount syncs everything"


def case_unlinked_open_file(m, b):
    fd = os.open(f"{m}/f", os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd, b"abc")
    os.fsync(fd)
    os.unlink(f"{m}/f")
    os.pwrite(fd, b"xyz", 0)
    assert os.pread(fd, 3, 0) == b"xyz"
    os.fsync(fd)  # the unlink is not durable: the old name holds the data
    os.close(fd)
    yield "cut"
    assert read(f"{b}/f") == b"xyz"


CASES = [v for k, v in sorted(globals().items()) if k.startswith("case_")]


def run_case(fn, work: str) -> str | None:
    """Runs one case: at each "cut" (power cut) or "stop" (clean unmount)
    it yields, the mount ends that way and a new one starts over the same
    backing directory before the case goes on (the backing directory does
    not change while mounted)."""
    backing = os.path.join(work, "backing")
    mnt = os.path.join(work, "mnt")
    for p in (backing, mnt):
        os.makedirs(p, exist_ok=True)
    log_path = os.path.join(work, "lossyfs.log")
    mount = Mount(backing, mnt, log_path)
    try:
        for what in fn(mnt, backing):
            mount.cut() if what == "cut" else mount.stop()
            mount = None
            mount = Mount(backing, mnt, log_path)
        return None
    except AssertionError as e:
        return str(e) or "assertion failed"
    finally:
        if mount is not None:
            mount.stop()


def main() -> int:
    if os.geteuid() != 0:
        print("lossyfs self-test: needs root (it mounts FUSE file systems)")
        return 2
    passed = failed = 0
    for fn in CASES:
        work = tempfile.mkdtemp(prefix="lossyfs-selftest-")
        try:
            error = run_case(fn, work)
        except Exception as e:  # a mount that failed, an OSError on the mount
            error = f"{type(e).__name__}: {e}"
        finally:
            mnt = os.path.join(work, "mnt")
            if os.path.ismount(mnt):
                subprocess.run(["umount", "-l", mnt], check=False)
        name = fn.__name__[len("case_"):].replace("_", " ")
        if error is None:
            passed += 1
            print(f"ok    {name}")
            shutil.rmtree(work, ignore_errors=True)
        else:
            failed += 1
            print(f"FAIL  {name}: {error} (kept {work})")
    print(f"lossyfs: {passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
