// The page's logic: a Connect client for sessiond.v1.UserSessionService over
// gRPC-Web, authenticated as the end user with `authorization: Bearer <token>`.
import type { JsonObject, JsonValue } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import type { SessionSummary } from "./gen/sessiond/v1/session_pb";
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
const devicesList = byId<HTMLUListElement>("devices");
const devicesResult = byId("devices-result");
const devicesError = byId("devices-error");
const revokeHandleInput = byId<HTMLInputElement>("revoke-handle");

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

// "Your devices": the caller's own sessions (ListMySessions), signing out one
// of them (RevokeMySession) or all but this one (RevokeMyOtherSessions). The
// server decides which sessions are the caller's from the access token alone.

// Stops paging after this many pages, so that a server that keeps answering
// with a next_page_token cannot keep the page busy forever.
const maxDevicePages = 20;

// Runs a devices call through run(), with its outcome in #devices-result and
// its refusal, if any, in #devices-error.
function devicesCall(name: string, action: () => Promise<void>): Promise<void> {
  return run(name, async () => {
    devicesResult.textContent = "";
    devicesError.textContent = "";
    try {
      await action();
    } catch (err) {
      devicesError.textContent = err instanceof ConnectError ? describe(err) : String(err);
      throw err;
    }
  });
}

function deviceName(s: SessionSummary): string {
  return s.device?.label || s.device?.userAgent || "Unnamed device";
}

function timeElement(ts: Timestamp | undefined): HTMLElement {
  if (!ts) {
    const unknown = document.createElement("span");
    unknown.textContent = "unknown";
    return unknown;
  }
  const date = timestampDate(ts);
  const time = document.createElement("time");
  time.dateTime = date.toISOString();
  time.textContent = date.toLocaleString();
  return time;
}

// One <li> per session. Labels and user agents come from whoever created the
// session, so they only ever go in as text, never as HTML.
function deviceRow(s: SessionSummary): HTMLLIElement {
  const li = document.createElement("li");
  li.dataset.handle = s.sessionHandle;
  li.dataset.current = String(s.current);
  if (s.current) li.setAttribute("aria-current", "true");

  const name = document.createElement("strong");
  name.className = "device-label";
  name.textContent = deviceName(s);
  li.append(name);
  if (s.current) {
    const mark = document.createElement("span");
    mark.className = "this-device";
    mark.textContent = " (this device)";
    li.append(mark);
  }

  const details = document.createElement("dl");
  const field = (key: string, term: string, value: string | HTMLElement) => {
    const dt = document.createElement("dt");
    dt.textContent = term;
    const dd = document.createElement("dd");
    dd.dataset.field = key;
    dd.append(value);
    details.append(dt, dd);
  };
  field("user-agent", "User agent", s.device?.userAgent || "unknown");
  field("ip-address", "IP address", s.device?.ipAddress || "unknown");
  field("created", "Signed in", timeElement(s.timeCreated));
  field("last-active", "Last active", timeElement(s.lastActiveTime));
  li.append(details);

  if (!s.current) {
    const signOut = document.createElement("button");
    signOut.type = "button";
    signOut.dataset.action = "sign-out";
    signOut.textContent = "Sign out";
    signOut.setAttribute("aria-label", `Sign out ${deviceName(s)}`);
    li.append(signOut);
  }
  return li;
}

// Lists the caller's sessions in #devices; returns how many, for #devices-result.
async function refreshDevices(): Promise<string> {
  const sessions: SessionSummary[] = [];
  let pageToken = "";
  let pages = 0;
  do {
    const res = await client().listMySessions({ pageToken }, callOptions());
    sessions.push(...res.sessions);
    pageToken = res.nextPageToken;
    pages += 1;
  } while (pageToken && pages < maxDevicePages);
  devicesList.replaceChildren(...sessions.map(deviceRow));
  const count = `${sessions.length} session${sessions.length === 1 ? "" : "s"}`;
  return pageToken ? `${count} shown; there are more.` : `${count}.`;
}

// Says what a call did, then lists the sessions again and adds their count.
async function reportAndRefresh(outcome: string): Promise<void> {
  devicesResult.textContent = outcome;
  devicesResult.textContent = `${outcome} ${await refreshDevices()}`;
}

// Signs out one session, then lists the sessions again.
async function revokeDevice(handle: string, name: string): Promise<void> {
  const res = await client().revokeMySession({ sessionHandle: handle }, callOptions());
  await reportAndRefresh(res.revoked ? `Signed out ${name}.` : `${name} was already signed out.`);
}

byId("list-devices").addEventListener("click", () =>
  devicesCall("list devices", async () => {
    devicesResult.textContent = await refreshDevices();
  }),
);

devicesList.addEventListener("click", (event) => {
  const target = event.target;
  if (!(target instanceof HTMLButtonElement) || target.dataset.action !== "sign-out") return;
  const row = target.closest("li");
  const handle = row?.dataset.handle;
  if (!row || !handle) return;
  const name = row.querySelector(".device-label")?.textContent ?? handle;
  target.disabled = true;
  void devicesCall("sign out device", () => revokeDevice(handle, name)).finally(() => {
    target.disabled = false;
  });
});

byId("revoke-by-handle").addEventListener("click", () =>
  devicesCall("sign out session by handle", async () => {
    const handle = revokeHandleInput.value.trim();
    if (!handle) throw new Error("enter a session handle");
    await revokeDevice(handle, `session ${handle}`);
  }),
);

byId("revoke-others").addEventListener("click", () =>
  devicesCall("sign out everywhere else", async () => {
    const res = await client().revokeMyOtherSessions({}, callOptions());
    const n = res.sessionHandlesRevoked.length;
    await reportAndRefresh(`Signed out ${n} other session${n === 1 ? "" : "s"}.`);
  }),
);
