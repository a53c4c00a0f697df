// One outside verifier of sessiond's tokens, kept alive for a whole run so
// that its JWKS cache lives across a key rotation (tests/verifiers/run.sh).
//
// Usage: node verify.mjs jose|jsonwebtoken|supertokens BASE_URL
//   BASE_URL is sessiond's HTTP address (http://127.0.0.1:PORT); the JWKS is
//   BASE_URL/.well-known/jwks.json.
// Reads one JSON request a line on stdin: {"id", "token", "antiCsrfToken"?}
// and answers one JSON line on stdout each:
//   {"id", "ok": true, "alg", "kid", "sub"} or {"id", "ok": false, "error"}.
// The first line it writes is {"ready": true, "verifier", "version"}.
// It prints no token and no key.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import readline from "node:readline";

const require = createRequire(import.meta.url);
const [name, base] = process.argv.slice(2);
if (!name || !base) {
  console.error("usage: node verify.mjs jose|jsonwebtoken|supertokens BASE_URL");
  process.exit(2);
}
const jwksUri = `${base}/.well-known/jwks.json`;
// The installed version of a package (PATH under node_modules/).
const version = (path) =>
  JSON.parse(readFileSync(new URL(`./node_modules/${path}/package.json`, import.meta.url))).version;

function header(token) {
  return JSON.parse(Buffer.from(token.split(".")[0], "base64url").toString());
}

async function makeJose() {
  const { createRemoteJWKSet, jwtVerify } = await import("jose");
  // jose's documented use: one remote key set for the process, which caches
  // the JWKS and fetches it again when a token names a kid it lacks.
  const JWKS = createRemoteJWKSet(new URL(jwksUri));
  return {
    version: `jose ${version("jose")}`,
    async verify(token) {
      const { payload, protectedHeader } = await jwtVerify(token, JWKS);
      return { alg: protectedHeader.alg, kid: protectedHeader.kid, sub: payload.sub };
    },
  };
}

async function makeJsonwebtoken() {
  const JsonWebToken = require("jsonwebtoken");
  const jwksClient = require("jwks-rsa");
  // As SuperTokens' "Manually verify the JWT" page shows for other backends:
  // jwks-rsa's client with its default cache, a getKey callback, and
  // jsonwebtoken's verify with empty options. The one change: `key` is
  // undefined when getSigningKey fails, so it is not dereferenced then.
  const client = jwksClient({ jwksUri });
  function getKey(header, callback) {
    client.getSigningKey(header.kid, function (err, key) {
      const signingKey = key ? key.getPublicKey() : undefined;
      callback(err, signingKey);
    });
  }
  return {
    version: `jsonwebtoken ${version("jsonwebtoken")} + jwks-rsa ${version("jwks-rsa")}`,
    verify(token) {
      return new Promise((resolve, reject) => {
        JsonWebToken.verify(token, getKey, {}, function (err, decoded) {
          if (err) return reject(err);
          const h = header(token);
          resolve({ alg: h.alg, kid: h.kid, sub: decoded.sub });
        });
      });
    },
  };
}

async function makeSupertokens() {
  const supertokens = require("supertokens-node");
  const Session = require("supertokens-node/recipe/session");
  // sessiond stands in for the SuperTokens core: the SDK fetches
  // connectionURI + /.well-known/jwks.json and verifies locally. With
  // antiCsrf VIA_TOKEN, getSession also compares the anti-CSRF token given
  // with the one in the access token, as SuperTokens does for cookie sessions.
  supertokens.init({
    supertokens: { connectionURI: base },
    appInfo: {
      appName: "sessiond-verifiers",
      apiDomain: "http://127.0.0.1:3001",
      websiteDomain: "http://127.0.0.1:3000",
    },
    recipeList: [Session.init({ antiCsrf: "VIA_TOKEN" })],
    telemetry: false,
  });
  return {
    version: `supertokens-node ${version("supertokens-node")} (its jose ${version("supertokens-node/node_modules/jose")})`,
    async verify(token, antiCsrfToken) {
      const session = await Session.getSessionWithoutRequestResponse(token, antiCsrfToken, {
        checkDatabase: false,
      });
      const h = header(token);
      return { alg: h.alg, kid: h.kid, sub: session.getUserId() };
    },
  };
}

const makers = { jose: makeJose, jsonwebtoken: makeJsonwebtoken, supertokens: makeSupertokens };
if (!makers[name]) {
  console.error(`unknown verifier ${name}`);
  process.exit(2);
}

function describe(err) {
  const parts = [err?.type, err?.code, err?.name, err?.message].filter(Boolean);
  return [...new Set(parts)].join(": ").split("\n")[0].slice(0, 200) || String(err);
}

const verifier = await makers[name]();
const write = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
write({ ready: true, verifier: name, version: verifier.version });
// Requests are answered one at a time, in order.
const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
for await (const line of lines) {
  if (!line.trim()) continue;
  const req = JSON.parse(line);
  try {
    write({ id: req.id, ok: true, ...(await verifier.verify(req.token, req.antiCsrfToken)) });
  } catch (err) {
    write({ id: req.id, ok: false, error: describe(err) });
  }
}
