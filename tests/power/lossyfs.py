#!/usr/bin/env python3
"""lossyfs: a FUSE file system that loses, at a "power cut", everything that
was not synced.

    python3 tests/power/lossyfs.py BACKING MOUNTPOINT [--scratch DIR]

It mounts MOUNTPOINT as a pass-through view of the directory BACKING, and
keeps two states of every file and directory: the *live* one, which every
program on the mount sees, and the *durable* one, which is what a disk would
hold after a power loss. Only a sync moves live state into the durable one:

- File data (write, truncate, fallocate): durable for a file once the file is
  fsynced or fdatasynced (any descriptor of it). `sync_file_range` never
  reaches a FUSE file system (it starts write-back, it asks for no
  durability) and `close` is not a sync: data they covered is lost.
- Names (create, mkdir, symlink, unlink, rmdir, rename): every directory
  keeps an ordered list of the changes to its entries that are not durable
  yet. An fsync of the directory makes its whole list durable. An fsync of
  a file or directory whose own creation is still listed in its parent makes
  that list durable up to and including the creation (a created file that
  is fsynced keeps its name, as ext4 and XFS do; POSIX does not promise it).
  A rename between two directories is one change, listed in both, durable
  as a whole once either list reaches it. Nothing else makes a name durable:
  a file fsynced in a directory whose own creation never became durable is
  unreachable after a cut, so it is lost with the directory.
- Attributes (mode, owner, times) are not modelled: always durable.

On SIGUSR1 ("power cut") it stops answering (every further call fails with
EIO), writes the durable state into BACKING (which then holds exactly that:
what was synced), prints one line of counts of what it dropped, detaches the
mount and exits. On SIGTERM or SIGINT it unmounts cleanly, as an unmount
does: everything is synced first, BACKING gets the live state. Mounting BACKING
again starts from what it holds.

Disks for experiments: --slow-fsync REGEX=MS (syncs of matching files take
MS ms), --hold-fsync REGEX (after SIGUSR2, syncs of matching files stall
until the next SIGUSR2 or the cut) and --lie-about-fsync REGEX (syncs of
matching files succeed and keep nothing).

Locks: no `flock` or `lock` operation is implemented, so the kernel keeps
flock and POSIX locks itself, local to this mount: they exclude each other
between processes on the mount as on any local file system; a cut drops
them with the mount.

Needs root (or fusermount3), /dev/fuse, libfuse3 and the `mfusepy` package
(ctypes bindings: no compiler needed). Hard links, device nodes and extended
attributes are refused.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import errno
import json
import re
import os
import shutil
import signal
import stat
import sys
import threading
import time

import mfusepy

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
COPY_CHUNK = 1 << 20

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def now_ns() -> int:
    return time.time_ns()


class Ranges:
    """A set of byte ranges [start, end), merged."""

    def __init__(self):
        self.items: list[list[int]] = []

    def add(self, start: int, end: int) -> None:
        if end <= start:
            return
        out, placed = [], False
        for s, e in self.items:
            if e < start or s > end:
                if s > end and not placed:
                    out.append([start, end])
                    placed = True
                out.append([s, e])
            else:
                start, end = min(s, start), max(e, end)
        if not placed:
            out.append([start, end])
        out.sort()
        self.items = out

    def total(self) -> int:
        return sum(e - s for s, e in self.items)

    def clear(self) -> None:
        self.items = []


class Op:
    """One change to directory entries, not yet durable. `steps` are
    (directory node, name, node or None) assignments applied in order."""

    __slots__ = ("kind", "steps", "durable")

    def __init__(self, kind: str, steps: list):
        self.kind = kind
        self.steps = steps
        self.durable = False


class Node:
    __slots__ = (
        "ino", "kind", "mode", "uid", "gid", "atime", "mtime", "ctime",
        "nlink", "opens", "live_fd", "dirty", "has_durable", "durable_size",
        "entries", "durable_entries", "pending", "created_by", "target", "parent", "name",
    )

    def __init__(self, ino: int, kind: str, mode: int):
        self.ino = ino
        self.kind = kind  # "f", "d" or "l"
        self.mode = mode
        self.uid = os.getuid()
        self.gid = os.getgid()
        self.atime = self.mtime = self.ctime = now_ns()
        self.nlink = 0  # live names
        self.opens = 0
        self.live_fd = -1
        self.dirty = Ranges()  # file bytes whose live value may differ from the durable one
        self.has_durable = False  # a durable image file exists
        self.durable_size = 0
        self.entries: dict[str, Node] = {}  # live directory entries
        self.durable_entries: dict[str, Node] = {}  # durable directory entries
        self.pending: list[Op] = []  # changes to this directory's entries not durable yet
        self.created_by: tuple | None = None  # (parent, Op) while the creation is not durable
        self.target = ""  # symlink target
        self.parent: Node | None = None  # the live directory it was last linked into, and its name there
        self.name = ""


class LossyFS(mfusepy.Operations):
    use_ns = True

    def __init__(self, backing: str, scratch: str):
        self.backing = os.path.abspath(backing)
        self.scratch = os.path.abspath(scratch)
        self.mutex = threading.RLock()
        self.frozen = False
        self.next_ino = 1
        self.fhs: dict[int, Node] = {}
        self.next_fh = 1
        self.initialized = False
        self.capture_seq = 0
        self.slow_locks: dict[int, threading.Lock] = {}
        self.lie: re.Pattern | None = None
        self.slow: list[tuple[re.Pattern, float]] = []
        self.hold: re.Pattern | None = None
        self.holding = threading.Event()
        self.counts = {"fsync": 0, "ignored_fsync": 0, "fdatasync": 0, "fsyncdir": 0, "writes": 0, "bytes_written": 0}
        shutil.rmtree(self.scratch, ignore_errors=True)
        os.makedirs(os.path.join(self.scratch, "live"))
        os.makedirs(os.path.join(self.scratch, "durable"))
        self.root = self._load_dir(self.backing, os.stat(self.backing).st_mode)
        self.root.nlink = 1

    # -- scratch files ----------------------------------------------------

    def _live(self, n: Node) -> str:
        return os.path.join(self.scratch, "live", str(n.ino))

    def _durable(self, n: Node) -> str:
        return os.path.join(self.scratch, "durable", str(n.ino))

    def _new_node(self, kind: str, mode: int) -> Node:
        n = Node(self.next_ino, kind, mode)
        self.next_ino += 1
        if kind == "f":
            n.live_fd = os.open(self._live(n), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        return n

    def _load_dir(self, path: str, mode: int) -> Node:
        """What BACKING holds is durable: both states start from it."""
        d = self._new_node("d", mode)
        for entry in sorted(os.scandir(path), key=lambda e: e.name):
            st = entry.stat(follow_symlinks=False)
            if entry.is_symlink():
                n = self._new_node("l", st.st_mode)
                n.target = os.readlink(entry.path)
            elif entry.is_dir(follow_symlinks=False):
                n = self._load_dir(entry.path, st.st_mode)
            elif entry.is_file(follow_symlinks=False):
                n = self._new_node("f", st.st_mode)
                shutil.copyfile(entry.path, self._durable(n))
                with open(entry.path, "rb") as src:
                    while chunk := src.read(COPY_CHUNK):
                        os.write(n.live_fd, chunk)
                n.has_durable = True
                n.durable_size = st.st_size
            else:
                continue  # sockets, fifos, devices: not kept
            n.atime, n.mtime, n.ctime = st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns
            n.nlink = 1
            n.parent, n.name = d, entry.name
            d.entries[entry.name] = n
            d.durable_entries[entry.name] = n
        return d

    # -- lookups ------------------------------------------------------------

    def _check(self) -> None:
        if self.frozen:
            raise mfusepy.FuseOSError(errno.EIO)

    def _resolve(self, path: str) -> Node:
        n = self.root
        for part in path.split("/"):
            if not part:
                continue
            if n.kind != "d":
                raise mfusepy.FuseOSError(errno.ENOTDIR)
            n = n.entries.get(part)
            if n is None:
                raise mfusepy.FuseOSError(errno.ENOENT)
        return n

    def _parent(self, path: str) -> tuple[Node, str]:
        head, name = os.path.split(path.rstrip("/"))
        d = self._resolve(head or "/")
        if d.kind != "d":
            raise mfusepy.FuseOSError(errno.ENOTDIR)
        return d, name

    def _node(self, path: str | None, fh: int | None) -> Node:
        if fh and fh in self.fhs:
            return self.fhs[fh]
        if path is None:
            raise mfusepy.FuseOSError(errno.EBADF)
        return self._resolve(path)

    # -- durability -----------------------------------------------------------

    def _apply(self, op: Op) -> None:
        if op.durable:
            return
        op.durable = True
        for d, name, n in op.steps:
            if n is None:
                d.durable_entries.pop(name, None)
            else:
                d.durable_entries[name] = n
        for d, _, n in op.steps:
            if n is not None and n.created_by and n.created_by[1] is op:
                n.created_by = None
        for d, _, _ in op.steps:
            d.pending = [o for o in d.pending if not o.durable]

    def _sync_dir_list(self, d: Node, upto: Op | None = None) -> None:
        """Makes `d`'s listed changes durable, all of them or up to `upto`."""
        for op in list(d.pending):
            self._apply(op)
            if op is upto:
                break

    def _sync_creation(self, n: Node) -> None:
        if n.created_by:
            parent, op = n.created_by
            self._sync_dir_list(parent, op)

    def _sync_data(self, n: Node) -> None:
        if n.kind != "f":
            return
        size = os.fstat(n.live_fd).st_size
        if n.dirty.items or not n.has_durable or n.durable_size != size:
            fd = os.open(self._durable(n), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                for s, e in n.dirty.items:
                    e = min(e, size)
                    at = s
                    while at < e:
                        chunk = os.pread(n.live_fd, min(COPY_CHUNK, e - at), at)
                        if not chunk:
                            break
                        os.pwrite(fd, chunk, at)
                        at += len(chunk)
                os.ftruncate(fd, size)
            finally:
                os.close(fd)
            n.has_durable = True
            n.durable_size = size
            n.dirty.clear()

    def _sync_everything(self) -> None:
        def walk(d: Node, seen: set):
            if d.ino in seen:
                return
            seen.add(d.ino)
            for n in list(d.entries.values()):
                if n.kind == "d":
                    walk(n, seen)
                else:
                    self._sync_data(n)
            self._sync_dir_list(d)

        for n in list(self.fhs.values()):
            self._sync_data(n)
        walk(self.root, set())

    def _dropped(self) -> dict:
        """What a cut now would lose: unsynced bytes and files, listed changes."""
        files, data, ops = 0, 0, {}
        stack, seen = [self.root], set()
        nodes = list(self.fhs.values())
        while stack:
            d = stack.pop()
            if d.ino in seen:
                continue
            seen.add(d.ino)
            for op in d.pending:
                ops[op.kind] = ops.get(op.kind, 0) + 1
            for n in d.entries.values():
                (stack if n.kind == "d" else nodes).append(n)
        counted = set()
        for n in nodes:
            if n.kind != "f" or n.ino in counted:
                continue
            counted.add(n.ino)
            size = os.fstat(n.live_fd).st_size
            lost = n.dirty.total()
            if lost or n.durable_size != size:
                files += 1
                data += lost
        return {"files_with_unsynced_data": files, "unsynced_bytes": data, "unsynced_name_changes": ops}

    def persist(self) -> dict:
        """Replaces BACKING's contents with the durable state."""
        for name in os.listdir(self.backing):
            p = os.path.join(self.backing, name)
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p)
            else:
                os.unlink(p)
        placed: set[int] = set()
        counts = {"files": 0, "dirs": 0, "bytes": 0}

        def write(d: Node, path: str, depth: int):
            for name, n in sorted(d.durable_entries.items()):
                p = os.path.join(path, name)
                if n.kind == "d":
                    if depth > 64 or n.ino in placed:
                        continue  # a cycle through renamed directories: not durable
                    placed.add(n.ino)
                    os.mkdir(p, stat.S_IMODE(n.mode))
                    counts["dirs"] += 1
                    write(n, p, depth + 1)
                elif n.kind == "l":
                    os.symlink(n.target, p)
                else:
                    if n.has_durable:
                        shutil.copyfile(self._durable(n), p)
                        counts["bytes"] += n.durable_size
                    else:
                        open(p, "wb").close()  # a durable name, never synced data
                    os.chmod(p, stat.S_IMODE(n.mode))
                    os.utime(p, ns=(n.atime, n.mtime))
                    counts["files"] += 1

        write(self.root, self.backing, 0)
        return counts

    # -- FUSE operations --------------------------------------------------------

    def init_with_config(self, conn_info, config_3):
        self.initialized = True
        if conn_info is not None:
            conn_info.max_write = 1 << 20  # as the kernel allows (128 KiB without max_pages)
        if config_3 is not None:
            config_3.nullpath_ok = 1
            config_3.hard_remove = 1
            config_3.use_ino = 1

    def _attrs(self, n: Node) -> dict:
        kind = {"f": stat.S_IFREG, "d": stat.S_IFDIR, "l": stat.S_IFLNK}[n.kind]
        if n.kind == "f":
            size = os.fstat(n.live_fd).st_size
        elif n.kind == "l":
            size = len(n.target)
        else:
            size = 4096
        return {
            "st_mode": kind | stat.S_IMODE(n.mode),
            "st_ino": n.ino,
            "st_nlink": max(n.nlink, 1 if n.kind != "d" else 2),
            "st_uid": n.uid,
            "st_gid": n.gid,
            "st_size": size,
            "st_blocks": (size + 511) // 512,
            "st_blksize": 4096,
            "st_atime": n.atime,
            "st_mtime": n.mtime,
            "st_ctime": n.ctime,
        }

    def getattr(self, path, fh=None):
        with self.mutex:
            self._check()
            return self._attrs(self._node(path, fh))

    def access(self, path, amode):
        with self.mutex:
            self._check()
            self._resolve(path)
            return 0

    def statfs(self, path):
        with self.mutex:
            self._check()
            st = os.statvfs(self.backing)
            return {k: getattr(st, k) for k in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail",
                                                "f_files", "f_ffree", "f_favail", "f_namemax")}

    def readdir(self, path, fh):
        with self.mutex:
            self._check()
            d = self._node(path, fh)
            if d.kind != "d":
                raise mfusepy.FuseOSError(errno.ENOTDIR)
            # With use_ino every entry needs its number: readdir(3) skips
            # entries whose number is 0.
            kind = {"f": stat.S_IFREG, "d": stat.S_IFDIR, "l": stat.S_IFLNK}
            out = [(".", {"st_mode": stat.S_IFDIR, "st_ino": d.ino}, 0),
                   ("..", {"st_mode": stat.S_IFDIR, "st_ino": 1}, 0)]
            for name, n in sorted(d.entries.items()):
                out.append((name, {"st_mode": kind[n.kind], "st_ino": n.ino}, 0))
            return out

    def opendir(self, path):
        with self.mutex:
            self._check()
            return self._open_handle(self._resolve(path))

    def releasedir(self, path, fh):
        with self.mutex:
            self._release_handle(fh)
            return 0

    def readlink(self, path):
        with self.mutex:
            self._check()
            n = self._resolve(path)
            if n.kind != "l":
                raise mfusepy.FuseOSError(errno.EINVAL)
            return n.target

    def _open_handle(self, n: Node) -> int:
        fh = self.next_fh
        self.next_fh += 1
        self.fhs[fh] = n
        n.opens += 1
        return fh

    def _release_handle(self, fh: int) -> None:
        n = self.fhs.pop(fh, None)
        if n is not None:
            n.opens -= 1

    def _link_new(self, path: str, kind: str, mode: int) -> Node:
        d, name = self._parent(path)
        if name in d.entries:
            raise mfusepy.FuseOSError(errno.EEXIST)
        n = self._new_node(kind, mode)
        n.nlink = 1
        n.parent, n.name = d, name
        d.entries[name] = n
        d.mtime = d.ctime = now_ns()
        op = Op({"f": "create", "d": "mkdir", "l": "symlink"}[kind], [(d, name, n)])
        d.pending.append(op)
        n.created_by = (d, op)
        return n

    def create(self, path, mode, flags=0):
        with self.mutex:
            self._check()
            try:
                n = self._resolve(path)
            except mfusepy.FuseOSError:
                n = self._link_new(path, "f", mode)
            else:
                if flags & os.O_EXCL:
                    raise mfusepy.FuseOSError(errno.EEXIST)
                if flags & os.O_TRUNC:
                    self._truncate(n, 0)
            return self._open_handle(n)

    def open(self, path, flags):
        with self.mutex:
            self._check()
            n = self._resolve(path)
            if n.kind == "d":
                raise mfusepy.FuseOSError(errno.EISDIR)
            if flags & os.O_TRUNC:
                self._truncate(n, 0)
            return self._open_handle(n)

    def release(self, path, fh):
        with self.mutex:
            self._release_handle(fh)
            return 0

    def flush(self, path, fh):
        return 0  # close(2) is not a sync

    def read(self, path, size, offset, fh):
        with self.mutex:
            self._check()
            n = self._node(path, fh)
            if n.kind != "f":
                raise mfusepy.FuseOSError(errno.EISDIR)
            return os.pread(n.live_fd, size, offset)

    def write(self, path, data, offset, fh):
        with self.mutex:
            self._check()
            n = self._node(path, fh)
            written = os.pwrite(n.live_fd, data, offset)
            n.dirty.add(offset, offset + written)
            n.mtime = n.ctime = now_ns()
            self.counts["writes"] += 1
            self.counts["bytes_written"] += written
            return written

    def _truncate(self, n: Node, length: int) -> None:
        if n.kind != "f":
            raise mfusepy.FuseOSError(errno.EISDIR)
        old = os.fstat(n.live_fd).st_size
        os.ftruncate(n.live_fd, length)
        n.dirty.add(min(old, length), max(old, length))
        n.mtime = n.ctime = now_ns()

    def truncate(self, path, length, fh=None):
        with self.mutex:
            self._check()
            self._truncate(self._node(path, fh), length)
            return 0

    def fallocate(self, path, mode, offset, size, fh):
        with self.mutex:
            self._check()
            n = self._node(path, fh)
            if n.kind != "f":
                raise mfusepy.FuseOSError(errno.EISDIR)
            old = os.fstat(n.live_fd).st_size
            if _libc.fallocate(n.live_fd, mode, offset, size) != 0:
                raise mfusepy.FuseOSError(ctypes.get_errno())
            new = os.fstat(n.live_fd).st_size
            if mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE):
                n.dirty.add(offset, offset + size)
            n.dirty.add(min(old, new), max(old, new))
            return 0

    def fsync(self, path, datasync, fh):
        with self.mutex:
            self._check()
            n = self._node(path, fh)
            where = self._path_of(n)
            if self.lie is not None and self.lie.search(where):
                self.counts["ignored_fsync"] += 1
                return 0  # --lie-about-fsync: answers success, makes nothing durable
            delay = next((ms for pattern, ms in self.slow if pattern.search(where)), 0.0)
            held = self.hold is not None and self.holding.is_set() and self.hold.search(where)
            if not delay and not held:
                self._sync_data(n)
                self._sync_creation(n)
                self.counts["fdatasync" if datasync else "fsync"] += 1
                return 0
            slow = self.slow_locks.setdefault(n.ino, threading.Lock())
        # --slow-fsync: a disk that takes `delay` ms to make durable what was
        # written before the call. What was written is taken at the start and
        # made durable when the call returns (unless the power is cut first).
        # One slow sync of a file at a time, so that they land in order.
        with slow:
            with self.mutex:
                self._check()
                image = self._capture(n)
            time.sleep(delay / 1000.0)
            if held:
                # --hold-fsync: not durable until SIGUSR2 releases it, or ever
                # if the power is cut first.
                self.counts["held_fsync"] = self.counts.get("held_fsync", 0) + 1
                while self.holding.is_set() and not self.frozen:
                    time.sleep(0.005)
            with self.mutex:
                self._check()
                self._apply_capture(n, image)
                self._sync_creation(n)
                self.counts["slow_fsync"] = self.counts.get("slow_fsync", 0) + 1
                return 0

    def _capture(self, n: Node) -> tuple:
        if n.kind != "f":
            return (None, [], 0)
        size = os.fstat(n.live_fd).st_size
        chunks = []
        for s, e in n.dirty.items:
            e = min(e, size)
            if e > s:
                chunks.append((s, os.pread(n.live_fd, e - s, s)))
        n.dirty.clear()
        self.capture_seq += 1
        return (self.capture_seq, chunks, size)

    def _apply_capture(self, n: Node, image: tuple) -> None:
        seq, chunks, size = image
        if seq is None:
            return
        fd = os.open(self._durable(n), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            for at, data in chunks:
                os.pwrite(fd, data, at)
            os.ftruncate(fd, size)
        finally:
            os.close(fd)
        n.has_durable = True
        n.durable_size = size

    def fsyncdir(self, path, datasync, fh):
        with self.mutex:
            self._check()
            d = self._node(path, fh)
            self._sync_dir_list(d)
            self._sync_creation(d)
            self.counts["fsyncdir"] += 1
            return 0

    def mkdir(self, path, mode):
        with self.mutex:
            self._check()
            self._link_new(path, "d", mode)
            return 0

    def symlink(self, target, source):
        with self.mutex:
            self._check()
            n = self._link_new(target, "l", 0o777)
            n.target = source
            return 0

    def _unlink_name(self, d: Node, name: str, kind: str) -> Node:
        n = d.entries.pop(name)
        n.nlink -= 1
        d.mtime = d.ctime = now_ns()
        d.pending.append(Op(kind, [(d, name, None)]))
        return n

    def unlink(self, path):
        with self.mutex:
            self._check()
            d, name = self._parent(path)
            n = d.entries.get(name)
            if n is None:
                raise mfusepy.FuseOSError(errno.ENOENT)
            if n.kind == "d":
                raise mfusepy.FuseOSError(errno.EISDIR)
            self._unlink_name(d, name, "unlink")
            return 0

    def rmdir(self, path):
        with self.mutex:
            self._check()
            d, name = self._parent(path)
            n = d.entries.get(name)
            if n is None:
                raise mfusepy.FuseOSError(errno.ENOENT)
            if n.kind != "d":
                raise mfusepy.FuseOSError(errno.ENOTDIR)
            if n.entries:
                raise mfusepy.FuseOSError(errno.ENOTEMPTY)
            self._unlink_name(d, name, "rmdir")
            return 0

    def rename(self, old, new, flags=0):
        with self.mutex:
            self._check()
            if flags & RENAME_EXCHANGE:
                raise mfusepy.FuseOSError(errno.EINVAL)
            a, n1 = self._parent(old)
            b, n2 = self._parent(new)
            n = a.entries.get(n1)
            if n is None:
                raise mfusepy.FuseOSError(errno.ENOENT)
            replaced = b.entries.get(n2)
            if replaced is n:
                return 0
            if replaced is not None:
                if flags & RENAME_NOREPLACE:
                    raise mfusepy.FuseOSError(errno.EEXIST)
                if replaced.kind == "d" and n.kind != "d":
                    raise mfusepy.FuseOSError(errno.EISDIR)
                if n.kind == "d" and replaced.kind != "d":
                    raise mfusepy.FuseOSError(errno.ENOTDIR)
                if replaced.kind == "d" and replaced.entries:
                    raise mfusepy.FuseOSError(errno.ENOTEMPTY)
            if n.kind == "d":  # not into itself
                probe = b
                for _ in range(1000):
                    if probe is n:
                        raise mfusepy.FuseOSError(errno.EINVAL)
                    probe = next((p for p in self._parents_of(probe)), None)
                    if probe is None:
                        break
            del a.entries[n1]
            if replaced is not None:
                replaced.nlink -= 1
            b.entries[n2] = n
            n.parent, n.name = b, n2
            t = now_ns()
            a.mtime = a.ctime = b.mtime = b.ctime = n.ctime = t
            op = Op("rename", [(a, n1, None), (b, n2, n)])
            a.pending.append(op)
            if b is not a:
                b.pending.append(op)
            return 0

    def _path_of(self, n: Node) -> str:
        """The live path a node was last linked under (for --lie-about-fsync)."""
        parts = []
        while n.parent is not None and len(parts) < 256:
            parts.append(n.name)
            n = n.parent
        return "/" + "/".join(reversed(parts))

    def _parents_of(self, target: Node):
        stack = [self.root]
        while stack:
            d = stack.pop()
            for n in d.entries.values():
                if n is target:
                    yield d
                    return
                if n.kind == "d":
                    stack.append(n)

    def link(self, target, source):
        raise mfusepy.FuseOSError(errno.EPERM)

    def mknod(self, path, mode, dev):
        raise mfusepy.FuseOSError(errno.EPERM)

    def chmod(self, path, mode):
        with self.mutex:
            self._check()
            n = self._resolve(path)
            n.mode = (n.mode & ~0o7777) | (mode & 0o7777)
            n.ctime = now_ns()
            return 0

    def chown(self, path, uid, gid):
        with self.mutex:
            self._check()
            n = self._resolve(path)
            if uid != -1:
                n.uid = uid
            if gid != -1:
                n.gid = gid
            return 0

    def utimens(self, path, times=None):
        with self.mutex:
            self._check()
            n = self._resolve(path)
            t = now_ns()
            n.atime, n.mtime = times if times else (t, t)
            return 0

    # -- the cut ---------------------------------------------------------------

    def power_cut(self) -> dict:
        with self.mutex:
            self.frozen = True
            dropped = self._dropped()
            written = self.persist()
        return {"event": "power cut", "dropped": dropped, "backing": written, "counts": self.counts}

    def clean_unmount(self) -> dict:
        with self.mutex:
            self.frozen = True
            self._sync_everything()
            written = self.persist()
        return {"event": "clean unmount", "backing": written, "counts": self.counts}


class LossyFUSE(mfusepy.FUSE):
    """mfusepy's libfuse3 glue drops the handle of truncate and the flags of
    rename: pass them on."""

    def truncate_fuse_3(self, path, length, fip):
        fh = fip.contents.fh if fip else None
        return self.operations.truncate(None if path is None else path.decode(self.encoding, self.errors), length, fh)

    def rename_fuse_3(self, old, new, flags):
        return self.operations.rename(old.decode(self.encoding, self.errors), new.decode(self.encoding, self.errors), flags)


def detach(mountpoint: str) -> None:
    MNT_DETACH = 2
    if _libc.umount2(os.fsencode(mountpoint), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):
            print(f"lossyfs: umount {mountpoint}: {os.strerror(err)}", file=sys.stderr, flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("backing", help="directory that holds the durable state")
    p.add_argument("mountpoint")
    p.add_argument("--scratch", help="work directory for live and durable images (default: BACKING.lossyfs)")
    p.add_argument("--debug", action="store_true", help="libfuse debug output")
    p.add_argument("--slow-fsync", metavar="REGEX=MS", action="append", default=[],
                   help="a slow disk: fsync and fdatasync of files whose path matches REGEX take MS "
                        "milliseconds, and make durable what was written before the call (repeatable)")
    p.add_argument("--hold-fsync", metavar="REGEX",
                   help="a disk that stalls: after SIGUSR2, fsync and fdatasync of files whose path matches "
                        "REGEX do not return (nor make anything durable) until the next SIGUSR2 or the cut")
    p.add_argument("--lie-about-fsync", metavar="REGEX",
                   help="a broken disk, for checking the checkers: fsync and fdatasync of files whose path "
                        "(from the mount's root) matches REGEX succeed and make nothing durable")
    args = p.parse_args()
    backing = os.path.abspath(args.backing)
    scratch = os.path.abspath(args.scratch or backing.rstrip("/") + ".lossyfs")
    fs = LossyFS(backing, scratch)
    if args.lie_about_fsync:
        fs.lie = re.compile(args.lie_about_fsync)
    if args.hold_fsync:
        fs.hold = re.compile(args.hold_fsync)
    for spec in args.slow_fsync:
        pattern, _, ms = spec.rpartition("=")
        fs.slow.append((re.compile(pattern), float(ms)))

    # SIGUSR1 (cut) is taken by one thread; every other thread, libfuse's
    # included, blocks it.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGUSR2})
    done = threading.Event()
    outcome: dict = {}

    def on_cut():
        while True:
            sig = signal.sigwait({signal.SIGUSR1, signal.SIGUSR2})
            if sig == signal.SIGUSR1:
                break
            if fs.holding.is_set():  # SIGUSR2: toggle --hold-fsync
                fs.holding.clear()
            else:
                fs.holding.set()
            print(f"lossyfs: holding fsyncs: {fs.holding.is_set()}", flush=True)
        if done.is_set():
            return
        result = fs.power_cut()
        outcome.update(result)
        print("lossyfs: " + json.dumps(result, sort_keys=True), flush=True)
        detach(args.mountpoint)
        # The loop ends once the detached mount is released; should a
        # process still hold a file open, end anyway.
        if not done.wait(5.0):
            shutil.rmtree(scratch, ignore_errors=True)
            os._exit(0)

    threading.Thread(target=on_cut, name="lossyfs-cut", daemon=True).start()
    print(f"lossyfs: mounting {backing} on {args.mountpoint} (pid {os.getpid()})", flush=True)
    try:
        LossyFUSE(fs, args.mountpoint, foreground=True, debug=args.debug, fsname="lossyfs",
                  subtype="lossyfs")
    except RuntimeError as e:
        # libfuse's loop reports the signal that ended it as an error.
        if not fs.initialized:
            print(f"lossyfs: the mount failed ({e})", file=sys.stderr, flush=True)
            return 1
    finally:
        done.set()
        if not outcome and fs.initialized:
            result = fs.clean_unmount()
            print("lossyfs: " + json.dumps(result, sort_keys=True), flush=True)
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
