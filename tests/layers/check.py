#!/usr/bin/env python3
"""Checks that sessiond's modules depend on each other in one direction.

Reads every `crate::` path in `src/` (in `use` items and in code), maps each
file to its top-level module, and checks each dependency against LAYERS:
a module may use modules of a lower layer, never of its own layer's
siblings unless they are listed together in ALLOWED_SIBLINGS, and never of
a higher one. Also reports cycles between top-level modules, files over
MAX_LINES lines that do not say at their top why they must be one file, and
request field names of `proto/` (the wire's names, which only `api/` may
speak) in string literals of the modules below `pb`.

Problems not yet mended are listed in `known.txt` beside this script: the
check fails on any problem not listed there, and on any listed problem that
is gone (so the list only shrinks). The goal is an empty list.

Usage: python3 tests/layers/check.py [--graph]
"""

import re
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"

# Lowest first. A module may depend on modules of lower layers only.
LAYERS = [
    ["ids", "clock", "text", "reload", "secret"],  # ground floor: identifiers, time, small utilities
    ["input"],  # checks on what callers hand in, shared by every layer
    ["store"],  # storage, behind its trait
    ["metrics"],  # counters every layer above reports to
    ["token", "claims"],  # keys and tokens; claim values and validators
    ["error"],  # the domain error wrapping the layers below
    ["buckets"],  # per-user buckets, whose records sessions also write
    ["session", "jwt", "backup"],  # the rules
    ["pb"],  # generated protobuf code: for the edge only
    ["api"],  # gRPC services and conversions
    ["http", "tls", "connections"],  # the port: HTTP routes, TLS, connections
    ["config"],  # settings for every layer, resolved from above
    ["logging"],  # log set-up, from the configuration
    ["server", "cli"],  # wiring, the operator's client
]

# Files that are not modules of the library.
IGNORED = {"lib.rs", "main.rs", "bin"}

# A file may be longer than this only if its first lines say why.
MAX_LINES = 600
LONG_FILE_REASON = re.compile(r"^//!.*\bone file\b", re.I | re.M)

# Field names of the protobuf messages: `api/` maps domain errors to them;
# below `pb` a literal naming one (`"user_id"`, `"session_handles[3]"`,
# `"payload.sub"`) means the domain is speaking the wire's language.
PROTO = ROOT / "proto"
PROTO_FIELD = re.compile(
    r"^\s*(?:repeated\s+|optional\s+)?(?:map<[^>]+>|[\w.]+)\s+(\w+)\s*=\s*\d+", re.M
)
STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')
# Literals that share a field's spelling but are not the wire's: `Debug`
# output names Rust fields.
NOT_WIRE = re.compile(r"\.field\(\s*$")
# Files that own a format of their own whose keys happen to match field
# names: the backup file's JSON lines.
OWN_FORMAT = {"backup.rs"}

CRATE_PATH = re.compile(r"\bcrate::([a-z_][a-z0-9_]*)")
USE_GROUP = re.compile(r"\buse crate::\{([^;]*)\}", re.S)


def module_of(path: Path) -> str:
    rel = path.relative_to(SRC)
    head = rel.parts[0]
    return head[:-3] if head.endswith(".rs") else head


def dependencies(text: str) -> set:
    # Comments are not dependencies (doc links name modules too).
    code = "\n".join(line.split("//", 1)[0] for line in text.splitlines())
    found = set(CRATE_PATH.findall(code))
    for group in USE_GROUP.findall(code):
        for item in group.split(","):
            name = item.strip().split("::", 1)[0].strip()
            if re.fullmatch(r"[a-z_][a-z0-9_]*", name):
                found.add(name)
    return found


def proto_fields() -> set:
    fields = set()
    for path in PROTO.rglob("*.proto"):
        fields.update(PROTO_FIELD.findall(path.read_text()))
    return fields


def wire_names(text: str, fields: set) -> list:
    """(line, literal) of field names in the non-test code of `text`."""
    found = []
    lines = text.splitlines()
    for number, line in enumerate(lines, 1):
        following = lines[number] if number < len(lines) else ""
        if line.startswith("#[cfg(test)]") and following.rstrip().endswith("{"):
            break  # unit tests sit at the end and may speak the wire's names
        code = line.split("//", 1)[0]
        for match in STRING.finditer(code):
            literal = match.group(1)
            head, _, rest = (re.split(r"([\[.{])", literal, maxsplit=1) + ["", ""])[:3]
            if head not in fields or NOT_WIRE.search(code[: match.start()]):
                continue
            if "_" in head or rest:
                found.append((number, literal))
    return found


def main() -> int:
    rank = {m: i for i, layer in enumerate(LAYERS) for m in layer}
    fields = proto_fields()
    edges = defaultdict(lambda: defaultdict(list))
    problems = []
    for path in sorted(SRC.rglob("*.rs")):
        rel = path.relative_to(SRC)
        if rel.parts[0] in IGNORED:
            continue
        text = path.read_text()
        lines = text.count("\n")
        if lines > MAX_LINES and not LONG_FILE_REASON.search("\n".join(text.splitlines()[:40])):
            problems.append(f"{rel}: over {MAX_LINES} lines, without saying why")
        module = module_of(path)
        if module not in rank:
            problems.append(f"{rel}: module `{module}` is in no layer of tests/layers/check.py")
            continue
        if rank[module] < rank["pb"] and str(rel) not in OWN_FORMAT:
            for number, literal in wire_names(text, fields):
                problems.append(f"{rel}:{number}: the wire's field name \"{literal}\" below api/")
        for dep in dependencies(text):
            if dep == module or dep not in rank:
                continue
            edges[module][dep].append(str(rel))
            if rank[dep] >= rank[module]:
                where = "its own layer" if rank[dep] == rank[module] else "a higher layer"
                problems.append(f"{rel}: `{module}` uses `{dep}`, which is in {where}")

    # Cycles between top-level modules (each has an edge to its own or a
    # higher layer, so each is already a problem above; shown with --graph).
    seen, stack, cycles = set(), [], []

    def visit(node):
        if node in stack:
            cycles.append(stack[stack.index(node):] + [node])
            return
        if node in seen:
            return
        seen.add(node)
        stack.append(node)
        for nxt in sorted(edges[node]):
            visit(nxt)
        stack.pop()

    for node in sorted(edges):
        visit(node)

    if "--graph" in sys.argv:
        for module in sorted(edges, key=lambda m: (-rank.get(m, 99), m)):
            print(f"{module} -> {', '.join(sorted(edges[module]))}")
        for cycle in cycles:
            print("cycle: " + " -> ".join(cycle))

    known_file = Path(__file__).with_name("known.txt")
    known = {
        line.strip()
        for line in known_file.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    found = set(problems)
    new = sorted(found - known)
    mended = sorted(known - found)
    for p in new:
        print(f"new: {p}")
    for p in mended:
        print(f"mended (remove it from {known_file.name}): {p}")
    print(f"layers: {len(found)} known problem(s) left, {len(new)} new, {len(mended)} mended")
    return 1 if new or mended else 0


if __name__ == "__main__":
    sys.exit(main())
