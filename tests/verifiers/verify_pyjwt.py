"""PyJWT's PyJWKClient as an outside verifier of sessiond's tokens, kept alive
for a whole run so that its JWKS cache lives across a key rotation
(tests/verifiers/run.sh).

Usage: python3 verify_pyjwt.py BASE_URL
Same line protocol as verify.mjs: one JSON request a line on stdin
({"id", "token"}), one JSON answer a line on stdout ({"id", "ok": true,
"alg", "kid", "sub"} or {"id", "ok": false, "error"}), after a first
{"ready": true, "verifier", "version"} line. It prints no token and no key.
"""

import json
import sys

import cryptography
import jwt
from jwt import PyJWKClient


def main() -> None:
    base = sys.argv[1]
    # PyJWT's documented use: one client for the process; it caches the
    # JWKS (cache_jwk_set, 300 s) and fetches it again for an unknown kid.
    client = PyJWKClient(f"{base}/.well-known/jwks.json")

    def verify(token: str) -> dict:
        signing_key = client.get_signing_key_from_jwt(token)
        # The algorithm comes from the key set, never from the token header.
        claims = jwt.decode(token, signing_key.key, algorithms=[signing_key.algorithm_name])
        header = jwt.get_unverified_header(token)
        return {"alg": header["alg"], "kid": header["kid"], "sub": claims["sub"]}

    def write(obj: dict) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    write(
        {
            "ready": True,
            "verifier": "pyjwt",
            "version": f"PyJWT {jwt.__version__} (cryptography {cryptography.__version__})",
        }
    )
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        try:
            write({"id": req["id"], "ok": True, **verify(req["token"])})
        except Exception as err:  # every failure is an answer, not a crash
            message = f"{type(err).__name__}: {err}".splitlines()[0][:200]
            write({"id": req["id"], "ok": False, "error": message})


if __name__ == "__main__":
    main()
