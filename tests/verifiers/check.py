"""Mints tokens on running sessiond servers and has outside verifiers check
them through each server's JWKS (driven by tests/verifiers/run.sh).

Usage: check.py [--matrix] --api-key KEY --pythonpath DIR LABEL=ADDR...
  LABEL is `default` (a server started without --signing-algorithm) or the
  algorithm the server was started with; ADDR is its host:port.
  --pythonpath is the folder PyJWT was installed into (pip --target).

For every server, each verifier (one long-lived process per server, so its
JWKS cache is its own) must:
  1. verify a CreateNewSession access token, the RefreshSession one, and
     (JWT libraries only) a CreateJwt token from the static key;
  2. reject each of them with the payload changed (`sub`) under the same
     signature;
  3. after RotateSigningKey and the publication delay, verify an access
     token signed by the new key (a kid it has not seen: it must fetch the
     JWKS again itself) and reject it tampered;
  4. (JWT libraries only) reject a CreateJwt token that expired during
     the wait.
The publication delay is waited out once for all servers together.

Prints each check, then a table of algorithm x verifier. Exit status:
0 when every result is as expected (see EXPECTED_FAILURES; a `default`
server must pass everything), 1 otherwise, or always 0 with --matrix once
the table is printed; 2 when the servers could not be driven at all.
Prints key ids and algorithms, never a token or a key.
"""

import argparse
import base64
import datetime as dt
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))

VERIFIERS = [
    # (id, column title, command before the base URL, checks session tokens only)
    ("jose", "Node jose", ["node", os.path.join(HERE, "verify.mjs"), "jose"], False),
    (
        "jsonwebtoken",
        "Node jsonwebtoken + jwks-rsa",
        ["node", os.path.join(HERE, "verify.mjs"), "jsonwebtoken"],
        False,
    ),
    ("pyjwt", "Python PyJWT", [sys.executable, os.path.join(HERE, "verify_pyjwt.py")], False),
    (
        "supertokens",
        "supertokens-node getSession",
        ["node", os.path.join(HERE, "verify.mjs"), "supertokens"],
        True,
    ),
]

# Known incompatibilities, checked both ways: such a cell must fail (so this
# list and the README's table stay true), every other cell must pass.
EXPECTED_FAILURES = {
    # jsonwebtoken 9 has no EdDSA: for an Ed25519 key it allows only the
    # RS/PS/ES algorithms and answers "invalid algorithm".
    ("EdDSA", "jsonwebtoken"),
}

TIMEOUT = 30  # seconds for any single step: a call, a verifier's answer
PUBLICATION_DELAY_BOUND = 120  # seconds a rotated-in key may take to sign


class Broken(Exception):
    """The servers or the verifiers could not be driven: no result at all."""


def b64url_json(part: str) -> dict:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def header(token: str) -> dict:
    return b64url_json(token.split(".")[0])


def tampered(token: str) -> str:
    """The token with `sub` changed in its payload, under the same signature."""
    head, payload, signature = token.split(".")
    claims = b64url_json(payload)
    claims["sub"] = "intruder"
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{head}.{body}.{signature}"


def parse_time(text: str) -> float:
    """RFC 3339 from grpcurl (up to nanoseconds, `Z`) to a Unix time."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z", text)
    if not m:
        raise Broken(f"unexpected timestamp {text!r}")
    whole = dt.datetime.fromisoformat(m.group(1)).replace(tzinfo=dt.timezone.utc)
    return whole.timestamp() + float("0." + (m.group(2) or "0"))


class Server:
    def __init__(self, label: str, addr: str, api_key: str):
        self.label, self.addr, self.api_key = label, addr, api_key
        self.base = f"http://{addr}"

    def call(self, method: str, body: dict) -> dict:
        service = "JwtService" if method in ("CreateJwt", "RotateSigningKey") else "SessionService"
        out = subprocess.run(
            ["grpcurl", "-plaintext", "-max-time", str(TIMEOUT), "-H", f"x-api-key: {self.api_key}",
             "-d", json.dumps(body), self.addr, f"sessiond.v1.{service}/{method}"],
            capture_output=True, text=True, timeout=TIMEOUT + 5,
        )
        if out.returncode != 0:
            raise Broken(f"{self.label}: {method} failed: {out.stderr.strip()[:300]}")
        return json.loads(out.stdout)

    def jwks_kids(self) -> dict:
        with urllib.request.urlopen(f"{self.base}/.well-known/jwks.json", timeout=TIMEOUT) as r:
            return {k["kid"]: k["alg"] for k in json.load(r)["keys"]}


class Verifier:
    """One verifier process; requests are answered in order."""

    def __init__(self, vid: str, argv: list, base: str, env: dict):
        self.vid = vid
        self.proc = subprocess.Popen(
            argv + [base], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
            env=env,
        )
        self.lines: "queue.Queue[str]" = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.version = self._next()["version"]
        self.seq = 0

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put("")

    def _next(self) -> dict:
        try:
            line = self.lines.get(timeout=TIMEOUT)
        except queue.Empty:
            raise Broken(f"{self.vid}: no answer within {TIMEOUT}s")
        if not line:
            raise Broken(f"{self.vid}: exited ({self.proc.poll()})")
        return json.loads(line)

    def send(self, token: str, anti_csrf) -> str:
        self.seq += 1
        req = {"id": str(self.seq), "token": token}
        if anti_csrf is not None:
            req["antiCsrfToken"] = anti_csrf
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return req["id"]

    def receive(self, rid: str) -> dict:
        answer = self._next()
        if answer.get("id") != rid:
            raise Broken(f"{self.vid}: answer {answer.get('id')} for request {rid}")
        return answer

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Run:
    def __init__(self, servers, pythonpath):
        self.servers = servers
        self.results = {}  # (label, vid) -> list of (check, ok, detail)
        self.passed = self.failed = 0
        self.verifiers = {}
        env = dict(os.environ, PYTHONPATH=pythonpath)
        for s in servers:
            for vid, _title, argv, _sessions_only in VERIFIERS:
                self.verifiers[(s.label, vid)] = Verifier(vid, argv, s.base, env)
        self.alg = {}  # label -> the algorithm its rotating key uses

    def record(self, label, vid, check, ok, detail):
        self.results.setdefault((label, vid), []).append((check, ok, detail))
        if ok:
            self.passed += 1
        else:
            self.failed += 1
        print(f"  {label:8} {vid:13} {check}: {'ok' if ok else 'FAIL'}{'' if ok else ' - ' + detail}",
              flush=True)

    def check_all(self, server, name, token, anti_csrf, sub, sessions_ok=True):
        """Every verifier of the server verifies TOKEN and rejects it tampered;
        all verifiers are asked at once, and answer in parallel."""
        h = header(token)
        kid, alg = h["kid"], h["alg"]
        bad = tampered(token)
        pending = []
        for vid, _t, _a, sessions_only in VERIFIERS:
            if sessions_only and not sessions_ok:
                continue
            v = self.verifiers[(server.label, vid)]
            pending.append((vid, v, v.send(token, anti_csrf), v.send(bad, anti_csrf)))
        for vid, v, good_id, bad_id in pending:
            good, rejected = v.receive(good_id), v.receive(bad_id)
            label = f"{name} ({alg}, kid {kid})"
            if not good["ok"]:
                self.record(server.label, vid, f"verifies {label}", False, good["error"])
            elif (good["kid"], good["alg"], good["sub"]) != (kid, alg, sub):
                self.record(server.label, vid, f"verifies {label}", False,
                            f"verified as kid {good['kid']} alg {good['alg']} sub {good['sub']}")
            else:
                self.record(server.label, vid, f"verifies {label}", True, "")
            self.record(server.label, vid, f"rejects {name} with a changed sub", not rejected["ok"],
                        "accepted a token whose payload was changed")

    def check_expired(self, server, name, token):
        pending = []
        for vid, _t, _a, sessions_only in VERIFIERS:
            if sessions_only:
                continue
            v = self.verifiers[(server.label, vid)]
            pending.append((vid, v, v.send(token, None)))
        for vid, v, rid in pending:
            answer = v.receive(rid)
            self.record(server.label, vid, f"rejects {name}", not answer["ok"],
                        "accepted an expired token")

    def before_rotation(self, s):
        user = f"verifier-{s.label}"
        created = s.call("CreateNewSession", {"userId": user, "accessTokenPayload": {"role": "reader"}})
        access, anti = created["accessToken"]["token"], created.get("antiCsrfToken")
        h = header(access)
        self.alg[s.label] = h["alg"]
        if s.label != "default" and h["alg"] != s.label:
            raise Broken(f"{s.label}: the server signs with {h['alg']}")
        published = s.jwks_kids()
        if published.get(h["kid"]) != h["alg"]:
            raise Broken(f"{s.label}: kid {h['kid']} is not published as {h['alg']}: {published}")
        print(f"== {s.label}: signs with {h['alg']}, kid {h['kid']}; JWKS {sorted(published)}",
              flush=True)
        self.check_all(s, "a CreateNewSession access token", access, anti, user)

        refreshed = s.call("RefreshSession", {"refreshToken": created["refreshToken"]["token"],
                                              "antiCsrfToken": anti})
        self.check_all(s, "a RefreshSession access token", refreshed["accessToken"]["token"],
                       refreshed.get("antiCsrfToken"), user)

        jwt = s.call("CreateJwt", {"payload": {"sub": "jwt-user", "scope": "read"},
                                   "validity": "600s", "useStaticSigningKey": True})["jwt"]
        if not header(jwt)["kid"].startswith("s-"):
            raise Broken(f"{s.label}: CreateJwt did not use the static key")
        self.check_all(s, "a CreateJwt token (static key)", jwt, None, "jwt-user", sessions_ok=False)
        # Checked after the rotation wait, by when it has expired.
        s.short_jwt = s.call("CreateJwt", {"payload": {"sub": "jwt-user"}, "validity": "1s",
                                           "useStaticSigningKey": True})["jwt"]
        s.old_kid = h["kid"]
        s.refresh = refreshed["refreshToken"]["token"]
        s.anti = refreshed.get("antiCsrfToken")
        s.user = user

    def rotate(self, s):
        rotated = s.call("RotateSigningKey", {})
        s.new_kid, s.signs_from = rotated["kid"], parse_time(rotated["signsFrom"])
        if s.new_kid == s.old_kid:
            raise Broken(f"{s.label}: RotateSigningKey returned the old kid")
        if s.new_kid not in s.jwks_kids():
            raise Broken(f"{s.label}: the new key {s.new_kid} is not published at once")
        now_kid = header(s.call("CreateJwt", {"payload": {}, "validity": "60s",
                                              "useStaticSigningKey": False})["jwt"])["kid"]
        if now_kid != s.old_kid:
            raise Broken(f"{s.label}: {now_kid} signs before its publication delay")
        print(f"== {s.label}: rotated; {s.new_kid} published, signs in "
              f"{s.signs_from - time.time():.0f}s", flush=True)

    def wait_for_new_keys(self):
        deadline = time.time() + PUBLICATION_DELAY_BOUND
        latest = max(s.signs_from for s in self.servers)
        if latest > deadline:
            raise Broken(f"publication delay over {PUBLICATION_DELAY_BOUND}s")
        print(f"== waiting {max(0, latest - time.time()):.0f}s for the new keys to sign", flush=True)
        time.sleep(max(0.0, latest - time.time()))
        for s in self.servers:
            while True:
                probe = s.call("CreateJwt", {"payload": {}, "validity": "60s",
                                             "useStaticSigningKey": False})["jwt"]
                if header(probe)["kid"] == s.new_kid:
                    break
                if time.time() > deadline:
                    raise Broken(f"{s.label}: {s.new_kid} never started signing")
                time.sleep(0.5)

    def after_rotation(self, s):
        refreshed = s.call("RefreshSession", {"refreshToken": s.refresh, "antiCsrfToken": s.anti})
        token = refreshed["accessToken"]["token"]
        kid = header(token)["kid"]
        if kid != s.new_kid or kid == s.old_kid:
            raise Broken(f"{s.label}: the access token after rotation has kid {kid}")
        print(f"== {s.label}: after rotation, kid {s.old_kid} -> {kid}", flush=True)
        self.check_all(s, "an access token of the rotated-in key", token,
                       refreshed.get("antiCsrfToken"), s.user)
        self.check_expired(s, "a CreateJwt token that expired", s.short_jwt)

    def close(self):
        for v in self.verifiers.values():
            v.close()


def cell_failure(results):
    failures = [f"{check}: {detail}" for check, ok, detail in results if not ok]
    return failures[0] if failures else None


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--matrix", action="store_true")
    ap.add_argument("--api-key", required=True)
    ap.add_argument("--pythonpath", required=True)
    ap.add_argument("servers", nargs="+")
    args = ap.parse_args()
    servers = [Server(*spec.split("=", 1), args.api_key) for spec in args.servers]

    run = Run(servers, args.pythonpath)
    try:
        versions = {vid: run.verifiers[(servers[0].label, vid)].version for vid, *_ in VERIFIERS}
        print("== verifiers: " + "; ".join(versions.values()), flush=True)
        for s in servers:
            run.before_rotation(s)
        for s in servers:
            run.rotate(s)
        run.wait_for_new_keys()
        for s in servers:
            run.after_rotation(s)
    except Broken as err:
        print(f"FAIL: {err}")
        return 2
    finally:
        run.close()

    unexpected = []
    print("\n| algorithm | " + " | ".join(title for _, title, *_ in VERIFIERS) + " |")
    print("|---|" + "---|" * len(VERIFIERS))
    notes = []
    for s in servers:
        alg = run.alg[s.label]
        row_label = f"{alg} (default)" if s.label == "default" else alg
        cells = []
        for vid, title, *_ in VERIFIERS:
            failure = cell_failure(run.results[(s.label, vid)])
            expected_fail = s.label != "default" and (alg, vid) in EXPECTED_FAILURES
            if failure is None:
                cells.append("pass")
                if expected_fail:
                    unexpected.append(f"{alg} x {title} passes: update EXPECTED_FAILURES and the README")
            else:
                notes.append(f"{alg} x {title}: {failure}")
                cells.append(f"FAIL [{len(notes)}]" + (" (known)" if expected_fail else ""))
                if not expected_fail:
                    unexpected.append(f"{alg} x {title} fails: {failure}")
        print(f"| {row_label} | " + " | ".join(cells) + " |")
    for i, note in enumerate(notes, 1):
        print(f"[{i}] {note}")
    print()
    for line in unexpected:
        print(("note: " if args.matrix else "FAIL: ") + line)
    print(f"verifiers: {run.passed} passed, {run.failed} failed")
    return 0 if args.matrix or not unexpected else 1


if __name__ == "__main__":
    sys.exit(main())
