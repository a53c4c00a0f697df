// Drives examples/browser in Debian's Chromium (headless, via playwright-core)
// against a running sessiond. Run by tests/browser/run.sh, which sets:
//   PAGE_URL      the built page, such as http://127.0.0.1:PAGEPORT/
//   SERVER_URL    sessiond, such as http://127.0.0.1:SERVERPORT (another origin)
//   ACCESS_TOKEN  an access token of user "browser-user" (ann@example.com)
//   SECRET        a value seeded in that user's private bucket
//   GRPC_ADDR     sessiond's address for grpcurl (the backend's view)
//   PAGE_HANDLE   the session handle of ACCESS_TOKEN
//   LAPTOP_HANDLE, PHONE_HANDLE  two more sessions of "browser-user", with
//                 devices labelled "Laptop" and "Phone"
//   OTHER_USER_HANDLE  a session of another user in the same tenant
//   OTHER_PAGE_URL (optional) the same page from an origin sessiond does not
//                 allow, such as http://localhost:PAGEPORT/
//   SCREENSHOT    (optional) where to save a PNG of the page at the end
// Prints one line per check; exits non-zero on the first failure.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { randomUUID } from "node:crypto";
import { promisify } from "node:util";
import { chromium } from "playwright-core";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const pageUrl = env("PAGE_URL");
const serverUrl = env("SERVER_URL").replace(/\/+$/, "");
const token = env("ACCESS_TOKEN");
const secret = env("SECRET");
const grpcAddr = env("GRPC_ADDR");
const pageHandle = env("PAGE_HANDLE");
const laptopHandle = env("LAPTOP_HANDLE");
const phoneHandle = env("PHONE_HANDLE");
const otherUserHandle = env("OTHER_USER_HANDLE");
const otherPageUrl = process.env.OTHER_PAGE_URL;
const screenshot = process.env.SCREENSHOT;

// Every wait below is bounded; this is the last resort.
setTimeout(() => {
  console.error("FAIL: check.mjs took longer than 90 s");
  process.exit(2);
}, 90_000).unref();

// One call as the backend (plaintext gRPC, no CORS, no bearer token): the
// gRPC code (0 for OK) and the answer, or with -format-error the status.
async function grpcurl(method, body) {
  const args = ["-plaintext", "-format-error", "-max-time", "10", "-d", JSON.stringify(body)];
  try {
    const { stdout } = await promisify(execFile)("grpcurl", [...args, grpcAddr, method], {
      timeout: 15_000,
    });
    return { code: 0, body: JSON.parse(stdout) };
  } catch (err) {
    // grpcurl exits with 64 + the gRPC code, the status as JSON on stderr.
    if (typeof err.code === "number" && err.code > 64) {
      const status = JSON.parse(err.stderr);
      assert.equal(status.code, err.code - 64, err.stderr);
      return { code: status.code, body: status };
    }
    throw err;
  }
}
const NOT_FOUND = 5;

let passed = 0;
async function check(name, fn) {
  try {
    await fn();
  } catch (err) {
    err.checkName = name;
    throw err;
  }
  passed += 1;
  console.log(`ok ${passed} - ${name}`);
}

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
  ],
  timeout: 30_000,
});
console.log(`browser: Chromium ${browser.version()}`);

const pageErrors = [];
const consoleErrors = [];
const grpcResponses = []; // { url, status, headers, body } of calls to sessiond

async function openPage(context, url) {
  const page = await context.newPage();
  page.setDefaultTimeout(5_000);
  page.setDefaultNavigationTimeout(10_000);
  page.on("pageerror", (err) => pageErrors.push(String(err)));
  page.on("console", (msg) => {
    if (msg.type() === "error") consoleErrors.push(msg.text());
  });
  page.on("response", (response) => {
    if (!response.url().startsWith(`${serverUrl}/`)) return;
    const entry = { url: response.url(), status: response.status(), headers: {}, body: null };
    grpcResponses.push(entry);
    entry.done = (async () => {
      entry.headers = await response.allHeaders();
      entry.requestHeaders = await response.request().allHeaders();
      entry.body = await response.body().catch(() => Buffer.alloc(0));
    })();
  });
  const query = new URLSearchParams({ server: serverUrl, token });
  await page.goto(`${url}?${query}`);
  return page;
}

// Clicks a button (by id, or any selector) and waits for the page to finish
// that call: #status's data-seq counts finished calls.
async function act(page, button) {
  const before = Number(await page.getAttribute("#status", "data-seq"));
  await page.click(/^[\w-]+$/.test(button) ? `#${button}` : button);
  await page.waitForFunction(
    (n) => Number(document.getElementById("status").dataset.seq) > n,
    before,
  );
  return {
    state: await page.getAttribute("#status", "data-state"),
    text: (await page.textContent("#status")) ?? "",
  };
}

const text = async (page, selector) => ((await page.textContent(selector)) ?? "").trim();
const json = async (page, selector) => JSON.parse(await text(page, selector));

// The rows of #devices as the page shows them.
const devices = (page) =>
  page.$$eval("#devices li[data-handle]", (rows) =>
    rows.map((li) => {
      const field = (name) => li.querySelector(`[data-field="${name}"]`);
      return {
        handle: li.dataset.handle,
        current: li.dataset.current === "true",
        label: li.querySelector(".device-label")?.textContent ?? "",
        text: li.innerText,
        userAgent: field("user-agent")?.textContent ?? "",
        ipAddress: field("ip-address")?.textContent ?? "",
        created: field("created")?.querySelector("time")?.dateTime ?? "",
        lastActive: field("last-active")?.textContent ?? "",
        signOut: li.querySelector('button[data-action="sign-out"]') !== null,
      };
    }),
  );
const row = (handle) => `#devices li[data-handle="${handle}"]`;
const handles = (rows) => rows.map((r) => r.handle).sort();

let page;
let failure;
try {
  const context = await browser.newContext();
  page = await openPage(context, pageUrl);

  await check("the page and sessiond are on different origins", async () => {
    const pageOrigin = await page.evaluate(() => location.origin);
    assert.notEqual(pageOrigin, new URL(serverUrl).origin);
    console.log(`   page ${pageOrigin}, server ${new URL(serverUrl).origin}`);
  });

  await check("?server= and ?token= fill the fields; the token leaves the address bar", async () => {
    assert.equal(await page.inputValue("#server"), serverUrl);
    assert.equal(await page.inputValue("#token"), token);
    assert.ok(!page.url().includes(token), `token still in ${page.url()}`);
  });

  await check("read public bucket: {} for a new user", async () => {
    const r = await act(page, "read-public");
    assert.equal(r.state, "ok", r.text);
    assert.deepEqual(await json(page, "#public"), {});
    assert.equal(await text(page, "#user"), "browser-user (ann@example.com)");
  });

  await check('merge {"theme":"dark","prefs":{"lang":"en"}}', async () => {
    await page.fill("#patch", '{"theme":"dark","prefs":{"lang":"en"}}');
    const r = await act(page, "update-public");
    assert.equal(r.state, "ok", r.text);
    assert.deepEqual(await json(page, "#public"), { theme: "dark", prefs: { lang: "en" } });
  });

  await check('merge {"prefs":{"size":"L"}} -> the merged bucket is shown', async () => {
    await page.fill("#patch", '{"prefs":{"size":"L"}}');
    const r = await act(page, "update-public");
    assert.equal(r.state, "ok", r.text);
    assert.deepEqual(await json(page, "#public"), {
      theme: "dark",
      prefs: { lang: "en", size: "L" },
    });
  });

  await check("read public bucket again: the merge was stored", async () => {
    await page.evaluate(() => {
      document.getElementById("public").textContent = "";
    });
    const r = await act(page, "read-public");
    assert.equal(r.state, "ok", r.text);
    assert.deepEqual(await json(page, "#public"), {
      theme: "dark",
      prefs: { lang: "en", size: "L" },
    });
  });

  await check("read private bucket: PERMISSION_DENIED (7) is shown", async () => {
    const r = await act(page, "read-private");
    assert.equal(r.state, "error", r.text);
    const shown = await text(page, "#private-error");
    assert.match(shown, /^PERMISSION_DENIED \(7\): \S/, shown);
    assert.equal(await text(page, "#private"), "");
    console.log(`   #private-error: ${shown}`);
  });

  await check("a patch that is not a JSON object is refused in the page", async () => {
    await page.fill("#patch", "[1, 2]");
    const r = await act(page, "update-public");
    assert.equal(r.state, "error", r.text);
    assert.match(r.text, /must be a JSON object/);
  });

  await check("a bad access token: UNAUTHENTICATED (16)", async () => {
    await page.fill("#token", "not-a-token");
    const r = await act(page, "read-public");
    assert.equal(r.state, "error", r.text);
    assert.match(r.text, /UNAUTHENTICATED \(16\)/);
    console.log(`   #status: ${r.text}`);
    await page.fill("#token", token);
  });

  await check("list devices: this user's 3 sessions, this one marked current", async () => {
    const r = await act(page, "list-devices");
    assert.equal(r.state, "ok", r.text);
    const rows = await devices(page);
    assert.deepEqual(handles(rows), [pageHandle, laptopHandle, phoneHandle].sort());
    assert.deepEqual(
      rows.filter((d) => d.current).map((d) => d.handle),
      [pageHandle],
    );
    const byHandle = Object.fromEntries(rows.map((d) => [d.handle, d]));
    assert.equal(byHandle[pageHandle].label, "This browser");
    assert.match(byHandle[pageHandle].text, /\(this device\)/);
    assert.equal(byHandle[laptopHandle].label, "Laptop");
    assert.equal(byHandle[laptopHandle].ipAddress, "203.0.113.7");
    assert.match(byHandle[laptopHandle].userAgent, /Firefox/);
    assert.equal(byHandle[phoneHandle].label, "Phone");
    assert.equal(byHandle[phoneHandle].ipAddress, "2001:db8::17");
    for (const d of rows) {
      assert.equal(d.signOut, !d.current, `sign-out button on ${d.label}`);
      assert.ok(
        Math.abs(Date.parse(d.created) - Date.now()) < 10 * 60_000,
        `${d.label} created at "${d.created}"`,
      );
      assert.ok(await page.locator(`${row(d.handle)} .device-label`).isVisible(), d.label);
    }
    assert.equal(await text(page, "#devices-result"), "3 sessions.");
    console.log(`   ${rows.map((d) => `${d.label}${d.current ? " (current)" : ""}`).join(", ")}`);
    console.log(`   last active: ${rows.map((d) => d.lastActive).join(", ")}`);
  });

  await check("sign out the Laptop: 2 left, and the backend no longer finds it", async () => {
    const r = await act(page, `${row(laptopHandle)} button[data-action="sign-out"]`);
    assert.equal(r.state, "ok", r.text);
    assert.deepEqual(handles(await devices(page)), [pageHandle, phoneHandle].sort());
    assert.equal(await text(page, "#devices-result"), "Signed out Laptop. 2 sessions.");
    const info = await grpcurl("sessiond.v1.SessionService/GetSessionInformation", {
      sessionHandle: laptopHandle,
    });
    assert.equal(info.code, NOT_FOUND, JSON.stringify(info.body));
  });

  await check("sign out another user's session: PERMISSION_DENIED (7), nothing revoked", async () => {
    await page.fill("#revoke-handle", otherUserHandle);
    const r = await act(page, "revoke-by-handle");
    assert.equal(r.state, "error", r.text);
    assert.match(r.text, /PERMISSION_DENIED \(7\)/);
    const shown = await text(page, "#devices-error");
    assert.match(shown, /^PERMISSION_DENIED \(7\): \S/, shown);
    console.log(`   #devices-error: ${shown}`);
    const info = await grpcurl("sessiond.v1.SessionService/GetSessionInformation", {
      sessionHandle: otherUserHandle,
    });
    assert.equal(info.code, 0, JSON.stringify(info.body));
    assert.equal(info.body.userId, "other-user");
    assert.equal((await devices(page)).length, 2);
  });

  await check("sign out a handle that does not exist: PERMISSION_DENIED (7) too", async () => {
    await page.fill("#revoke-handle", randomUUID());
    const r = await act(page, "revoke-by-handle");
    assert.equal(r.state, "error", r.text);
    assert.match(await text(page, "#devices-error"), /^PERMISSION_DENIED \(7\): \S/);
    await page.fill("#revoke-handle", "");
  });

  await check("sign out everywhere else: only this device is left, and it still works", async () => {
    const r = await act(page, "revoke-others");
    assert.equal(r.state, "ok", r.text);
    const rows = await devices(page);
    assert.deepEqual(
      rows.map((d) => [d.handle, d.current]),
      [[pageHandle, true]],
    );
    assert.equal(await text(page, "#devices-result"), "Signed out 1 other session. 1 session.");
    const phone = await grpcurl("sessiond.v1.SessionService/GetSessionInformation", {
      sessionHandle: phoneHandle,
    });
    assert.equal(phone.code, NOT_FOUND, JSON.stringify(phone.body));
    const other = await grpcurl("sessiond.v1.SessionService/GetSessionInformation", {
      sessionHandle: otherUserHandle,
    });
    assert.equal(other.code, 0, `another user's session: ${JSON.stringify(other.body)}`);
    const mine = await grpcurl("sessiond.v1.SessionService/GetSession", {
      accessToken: token,
      checkDatabase: true,
    });
    assert.equal(mine.code, 0, JSON.stringify(mine.body));
    assert.equal(mine.body.session.sessionHandle, pageHandle);
  });

  await check("the private bucket's secret never reaches the page", async () => {
    await Promise.all(grpcResponses.map((e) => e.done));
    assert.ok(grpcResponses.length >= 6, `only ${grpcResponses.length} calls seen`);
    assert.ok(!(await page.content()).includes(secret), "secret in the DOM");
    for (const e of grpcResponses) {
      assert.ok(!e.body.includes(secret), `secret in the body of ${e.url}`);
      assert.ok(!JSON.stringify(e.headers).includes(secret), `secret in headers of ${e.url}`);
    }
  });

  await check("the calls were gRPC-Web with the page's Origin and a bearer token", async () => {
    const pageOrigin = new URL(pageUrl).origin;
    for (const e of grpcResponses) {
      assert.equal(e.status, 200, `${e.url}: HTTP ${e.status}`);
      assert.match(e.headers["content-type"] ?? "", /^application\/grpc-web\+proto/);
      assert.equal(e.headers["access-control-allow-origin"], pageOrigin);
      assert.equal(e.requestHeaders.origin, pageOrigin);
      assert.match(e.requestHeaders.authorization ?? "", /^Bearer /);
    }
    // Errors come back "trailers-only": grpc-status in the HTTP headers and
    // an empty body; successes end with a trailer frame in the body.
    const denied = grpcResponses.find((e) => e.headers["grpc-status"] === "7");
    assert.ok(denied, "no response with grpc-status 7 in its headers");
    console.log(
      `   PERMISSION_DENIED: HTTP ${denied.status}, grpc-status in headers, body ${denied.body.length} bytes`,
    );
  });

  await check("no uncaught errors and no console errors in the page", async () => {
    assert.deepEqual(pageErrors, []);
    assert.deepEqual(consoleErrors, []);
  });

  if (otherPageUrl) {
    await check("from an origin sessiond does not allow, CORS blocks the call", async () => {
      const other = await openPage(await browser.newContext(), otherPageUrl);
      const r = await act(other, "read-public");
      assert.equal(r.state, "error", r.text);
      assert.equal(await text(other, "#public"), "");
      assert.ok(
        consoleErrors.some((m) => m.includes("CORS")),
        `no CORS error in the console: ${JSON.stringify(consoleErrors)}`,
      );
      console.log(`   #status: ${r.text}`);
      await other.close();
    });
  }
} catch (err) {
  failure = err;
} finally {
  if (screenshot && page) await page.screenshot({ path: screenshot, fullPage: true }).catch(() => {});
  if (failure && page) {
    console.error(`   #status: ${await page.textContent("#status").catch(() => "?")}`);
  }
  await browser.close();
}

if (failure) {
  console.error(`FAIL: ${failure.checkName ?? "setup"}: ${failure.message}`);
  if (pageErrors.length) console.error(`   page errors: ${pageErrors.join(" | ")}`);
  if (consoleErrors.length) console.error(`   console errors: ${consoleErrors.join(" | ")}`);
  process.exit(1);
}
console.log(`browser: ${passed} passed, 0 failed`);
