// The page's logic: a Connect client for sessiond.v1.UserSessionService over
// gRPC-Web, authenticated as the end user with `authorization: Bearer <token>`.
import type { JsonObject, JsonValue } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { Bucket, UserSessionService } from "./gen/sessiond/v1/user_session_pb";

function byId<T extends HTMLElement = HTMLElement>(id: string): T {
  const el = document.getElementById(id);
  if (!el) throw new Error(`#${id} is missing`);
  return el as T;
}

const serverInput = byId<HTMLInputElement>("server");
const tokenInput = byId<HTMLInputElement>("token");
const patchInput = byId<HTMLTextAreaElement>("patch");
const publicOut = byId("public");
const userOut = byId("user");
const privateOut = byId("private");
const privateError = byId("private-error");
const status = byId("status");

// ?server=...&token=... prefill the fields; the token is then dropped from the
// address bar so that it does not stay in the history.
const query = new URLSearchParams(location.search);
serverInput.value = query.get("server") ?? "";
tokenInput.value = query.get("token") ?? "";
if (query.has("token")) {
  query.delete("token");
  const rest = query.toString();
  history.replaceState(null, "", location.pathname + (rest ? `?${rest}` : ""));
}

function client(): Client<typeof UserSessionService> {
  const baseUrl = serverInput.value.trim().replace(/\/+$/, "");
  if (!baseUrl) throw new Error("enter the server URL, such as http://127.0.0.1:50051");
  // gRPC-Web (application/grpc-web+proto) over fetch: the server and the page
  // are on different origins, so the server must allow this page's origin
  // (sessiond --cors-origin).
  return createClient(UserSessionService, createGrpcWebTransport({ baseUrl }));
}

function callOptions() {
  return {
    headers: { authorization: `Bearer ${tokenInput.value.trim()}` },
    timeoutMs: 5000,
  };
}

// "PermissionDenied" -> "PERMISSION_DENIED", the gRPC spelling of a code.
function codeName(code: Code): string {
  return (Code[code] ?? `CODE_${code}`).replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

function describe(err: unknown): string {
  const e = ConnectError.from(err);
  return `${codeName(e.code)} (${e.code}): ${e.rawMessage}`;
}

function show(el: HTMLElement, value: JsonValue | undefined): void {
  el.textContent = JSON.stringify(value ?? {}, null, 2);
}

// Runs one call; #status says which, and whether it worked. data-seq counts
// finished calls so that a test can wait for the next one.
async function run(name: string, action: () => Promise<void>): Promise<void> {
  status.dataset.state = "busy";
  status.textContent = `${name}…`;
  try {
    await action();
    status.dataset.state = "ok";
    status.textContent = `${name}: OK`;
  } catch (err) {
    status.dataset.state = "error";
    status.textContent = `${name}: ${err instanceof ConnectError ? describe(err) : String(err)}`;
  } finally {
    status.dataset.seq = String(Number(status.dataset.seq ?? "0") + 1);
  }
}

function showUser(res: { userId: string; userIdentifier: string }): void {
  userOut.textContent = res.userIdentifier ? `${res.userId} (${res.userIdentifier})` : res.userId;
}

byId("read-public").addEventListener("click", () =>
  run("read public", async () => {
    const res = await client().getUserSession({ bucket: Bucket.PUBLIC }, callOptions());
    show(publicOut, res.public);
    showUser(res);
  }),
);

byId("update-public").addEventListener("click", () =>
  run("update public", async () => {
    const data: unknown = JSON.parse(patchInput.value);
    if (data === null || typeof data !== "object" || Array.isArray(data)) {
      throw new Error("the merge patch must be a JSON object");
    }
    // A google.protobuf.Struct field is a plain JsonObject in Protobuf-ES v2.
    const res = await client().updateUserSession(
      { bucket: Bucket.PUBLIC, data: data as JsonObject },
      callOptions(),
    );
    show(publicOut, res.public);
    showUser(res);
  }),
);

byId("read-private").addEventListener("click", () =>
  run("read private", async () => {
    privateOut.textContent = "";
    privateError.textContent = "";
    try {
      const res = await client().getUserSession({ bucket: Bucket.PRIVATE }, callOptions());
      show(privateOut, res.private);
    } catch (err) {
      privateError.textContent = describe(err);
      throw err;
    }
  }),
);
