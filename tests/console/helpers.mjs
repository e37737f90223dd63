// What the console's browser tests share: the stack's addresses (from the
// Go test that started it), Chromium, REST calls, waiting on conditions,
// locating rows, screenshots.
import assert from "node:assert/strict";
import { mkdir } from "node:fs/promises";
import { chromium } from "playwright-core";

export const api = process.env.KEYGATE_URL;
export const edge = process.env.KEYGATE_EDGE_URL;
export const root = process.env.KEYGATE_ROOT_TOKEN;
const shots = process.env.KEYGATE_SCREENSHOTS;
assert.ok(api && edge && root && shots && process.env.CHROMIUM, "run through go test -run TestConsole ./cmd/keygate");

// Script errors and CSP violations seen on any page; the console has none.
export const pageErrors = [];

export async function launch() {
  await mkdir(shots, { recursive: true });
  // --no-sandbox: CI runs as root, where Chromium's sandbox cannot start.
  return chromium.launch({ executablePath: process.env.CHROMIUM, args: ["--no-sandbox"] });
}

export async function newPage(browser, width) {
  const context = await browser.newContext({ viewport: { width, height: 900 } });
  await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: api });
  const p = await context.newPage();
  p.setDefaultTimeout(10000);
  // (A refused call is not an error: tests send wrong credentials.)
  p.on("console", (m) => { if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) pageErrors.push(m.text()); });
  p.on("pageerror", (e) => pageErrors.push(String(e)));
  return p;
}

export async function rest(method, path, token, body) {
  const resp = await fetch(api + path, {
    method,
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await resp.text();
  return { status: resp.status, body: text ? JSON.parse(text) : {} };
}

export async function must(method, path, token, body) {
  const r = await rest(method, path, token, body);
  assert.equal(r.status, 200, `${method} ${path}: ${JSON.stringify(r.body)}`);
  return r.body;
}

// until waits for a condition, checking it again and again up to a bound
// (changes reach every edge within a second; the bound is generous).
export async function until(what, check, timeoutMs = 15000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = await check();
    if (last === true) return;
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what} (last: ${JSON.stringify(last)})`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export async function shot(p, name) {
  await p.screenshot({ path: `${shots}/${name}.png`, fullPage: true });
}

// row is the keys table's row of the key with this name (only in that
// table: other pages name keys too).
export function row(p, name) {
  return p.getByRole("region", { name: "API keys" }).getByRole("row").filter({ has: p.getByRole("cell", { name, exact: true }) });
}
