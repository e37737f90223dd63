// Governance in the web console, in Chromium against keygate up (started
// by the Go test TestConsoleGovernance): limits on the workspace and its
// members set in the Limits page and checked at the edge, Explain limits
// with its live numbers, credits topped up and adjusted, a webhook added
// that receives a signed test alert, and imported (legacy) keys found for
// replacement. Controls are found by role and accessible name.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createHash, createHmac } from "node:crypto";
import { createServer } from "node:http";
import { axeContext, violations } from "./a11y.mjs";
import { api, edge, launch, must, newPage, pageErrors, rest, root, row as rowOf, shot as shotOf, until } from "./helpers.mjs";

let browser;
let page;

// The webhook receiver: every delivery, with its headers and body.
const deliveries = [];
let receiver;
let hookURL = "";

before(async () => {
  browser = await launch();
  page = await newPage(browser, 1280);
  receiver = createServer((req, res) => {
    let body = "";
    req.on("data", (c) => { body += c; });
    req.on("end", () => {
      deliveries.push({ headers: req.headers, body });
      res.writeHead(204).end();
    });
  });
  await new Promise((resolve) => receiver.listen(0, "127.0.0.1", resolve));
  hookURL = `http://127.0.0.1:${receiver.address().port}/hook`;
});

after(async () => {
  await browser?.close();
  receiver?.close();
});

const row = (name, p = page) => rowOf(p, name);
const shot = (name, p = page) => shotOf(p, name);
const secrets = {};

// chat sends one inference request through the edge: its status and the
// limit that denied it, if one did.
async function chat(secret) {
  const resp = await fetch(`${edge}/v1/chat/completions`, {
    method: "POST",
    headers: { Authorization: `Bearer ${secret}`, "Content-Type": "application/json" },
    body: JSON.stringify({ model: "mock-small", max_tokens: 16, messages: [{ role: "user", content: "hi" }] }),
  });
  await resp.text();
  return { status: resp.status, by: resp.headers.get("x-keygate-limited-by") ?? "" };
}

async function key(ws, name, owner) {
  const r = await must("POST", `/v1/workspaces/${ws}/keys`, root, { name, owner });
  secrets[name] = r.secret;
  return r.key.id;
}

async function signIn(p, credential) {
  await p.goto(`${api}/console/`);
  await p.getByLabel("Root token or admin key").fill(credential);
  await p.getByRole("button", { name: "Sign in" }).click();
  await p.getByRole("heading", { name: "API keys", level: 1 }).waitFor();
}

async function goTo(p, link, heading) {
  await p.getByRole("link", { name: link, exact: true }).click();
  await p.getByRole("heading", { name: heading }).first().waitFor();
  await p.getByText("Loading…").waitFor({ state: "detached" });
}

// describedBy is the text of what describes a control (its hint and error).
function describedBy(control) {
  return control.evaluate((el) => el.getAttribute("aria-describedby").split(" ").map((id) => document.getElementById(id).textContent).join(" "));
}

async function invalid(control, pattern) {
  await until("the field to be marked invalid", async () => (await control.getAttribute("aria-invalid")) === "true");
  assert.match(await describedBy(control), pattern);
}

// cells is the text of a table's row that has a cell of every given text
// (a page redraws after a change: this waits for the row that says so).
async function cells(region, ...texts) {
  let r = region.getByRole("row");
  for (const t of texts) r = r.filter({ has: region.page().getByRole("cell", { name: t, exact: true }) });
  await r.first().waitFor();
  return r.first().getByRole("cell").allTextContents();
}

test("the Limits page sets the workspace's limits and policy; the edge enforces them on all its keys together", async () => {
  await must("POST", "/v1/workspaces", root, { id: "gov", name: "Gov" });
  await must("PUT", "/v1/workspaces/gov/members/ada", root, { role: "ROLE_MEMBER" });
  await signIn(page, root);
  await goTo(page, "Limits", "Workspace limits");
  const wsTable = page.getByRole("region", { name: "Workspace limits" });
  assert.deepEqual(await cells(wsTable, "Enforced"), ["Enforced", "unlimited"]);

  await page.getByRole("button", { name: "Edit workspace limits" }).click();
  const dialog = page.getByRole("dialog", { name: "Edit limits of workspace gov" });
  const rpd = dialog.getByRole("textbox", { name: "Requests per day", exact: true });
  await rpd.fill("two");
  await dialog.getByRole("button", { name: "Save limits" }).click();
  await invalid(rpd, /whole number/);
  await rpd.fill("2");
  await shot("limits-dialog");
  await dialog.getByRole("button", { name: "Save limits" }).click();
  await dialog.waitFor({ state: "detached" });
  assert.deepEqual(await cells(wsTable, "Enforced", "2 rpd"), ["Enforced", "2 rpd"]);
  assert.equal((await must("GET", "/v1/workspaces/gov", root)).workspace.limits.globalLimits.rpd, "2");

  // The policy: a threshold the keystore refuses is said beside its field.
  const thresholds = page.getByRole("textbox", { name: "Alert thresholds (%)" });
  await thresholds.fill("0, 50");
  await page.getByRole("button", { name: "Save policy" }).click();
  await invalid(thresholds, /alert_thresholds/);
  await thresholds.fill("100, 50");
  await page.getByLabel("Who may change key limits").selectOption({ label: "Owners and admins only" });
  await page.getByRole("textbox", { name: "Request-log cap" }).fill("5000");
  await page.getByRole("button", { name: "Save policy" }).click();
  await until("the policy to be saved", async () => {
    const w = (await must("GET", "/v1/workspaces/gov", root)).workspace;
    return JSON.stringify([w.alertThresholds, w.limitEditors, w.requestLogCap]) === JSON.stringify([[50, 100], "LIMIT_EDITORS_ADMINS", "5000"]) || w;
  });
  await until("the form to show the saved thresholds", async () => (await page.getByRole("textbox", { name: "Alert thresholds (%)" }).inputValue()) === "50, 100");
  // The page redrew; the keyboard focus stayed on Save policy.
  await until("focus on Save policy", () => page.getByRole("button", { name: "Save policy" }).evaluate((el) => el === document.activeElement));

  // Two keys of two owners share the workspace's 2 requests a day. (They
  // are made after the limit, so each edge learns the limit with the key.)
  await key("gov", "root-key", "");
  await key("gov", "ada-key", "ada");
  assert.equal((await chat(secrets["root-key"])).status, 200);
  assert.equal((await chat(secrets["ada-key"])).status, 200);
  assert.deepEqual(await chat(secrets["root-key"]), { status: 429, by: "workspace/rpd" });
  assert.deepEqual(await chat(secrets["ada-key"]), { status: 429, by: "workspace/rpd" });
});

test("member limits in report mode, and a timed override that ends on request", async () => {
  const members = page.getByRole("region", { name: "Member limits" });
  await page.getByRole("button", { name: "Edit limits of ada" }).click();
  let dialog = page.getByRole("dialog", { name: "Edit limits of ada" });
  await dialog.getByLabel("Mode").selectOption({ label: "Report only: count and report, never deny" });
  await dialog.getByRole("textbox", { name: "Requests per minute", exact: true }).fill("100");
  await dialog.getByRole("button", { name: "Save limits" }).click();
  await dialog.waitFor({ state: "detached" });
  const ada = await cells(members, "ada", "100 rpm");
  assert.deepEqual(ada.slice(2, 5), ["unlimited", "100 rpm", "none"], "enforced, report only, override");
  const m = (await must("GET", "/v1/workspaces/gov/members", root)).members.find((x) => x.member === "ada");
  assert.equal(m.reportLimits.globalLimits.rpm, "100");
  assert.equal(m.limits?.globalLimits?.rpm, undefined);

  // A timed override needs its end.
  await page.getByRole("button", { name: "Edit workspace limits" }).click();
  dialog = page.getByRole("dialog", { name: "Edit limits of workspace gov" });
  await dialog.getByLabel("Mode").selectOption({ label: "Timed override: replace enforced limits until a time" });
  const tpd = dialog.getByRole("textbox", { name: "Tokens per day", exact: true });
  await tpd.fill("1000");
  await dialog.getByRole("button", { name: "Save limits" }).click();
  const untilBox = dialog.getByLabel("Until");
  await invalid(untilBox, /Choose when the override ends/);
  const later = await page.evaluate(() => {
    const d = new Date(Date.now() + 2 * 3600_000);
    return new Date(d.getTime() - d.getTimezoneOffset() * 60_000).toISOString().slice(0, 16);
  });
  await untilBox.fill(later);
  await dialog.getByLabel("Reason (optional)").fill("launch day");
  await dialog.getByRole("button", { name: "Save limits" }).click();
  await dialog.waitFor({ state: "detached" });
  const wsTable = page.getByRole("region", { name: "Workspace limits" });
  await wsTable.getByText("(launch day)").waitFor();
  const override = await cells(wsTable, "Timed override");
  // The form starts from the enforced limits: the override shows all in force.
  assert.match(override[1], /^2 rpd · 1,000 tpd until .* \(launch day\)$/);
  const o = (await must("GET", "/v1/workspaces/gov", root)).workspace.limitOverride;
  assert.equal(o.policy.globalLimits.tpd, "1000");
  assert.ok(Math.abs(Date.parse(o.expireTime) - Date.now() - 2 * 3600_000) < 120_000, o.expireTime);
  await shot("limits");

  await page.getByRole("button", { name: "End override of workspace gov" }).click();
  await cells(wsTable, "Timed override", "none");
  assert.ok(!(await must("GET", "/v1/workspaces/gov", root)).workspace.limitOverride?.expireTime, "no override");
  assert.deepEqual(await cells(wsTable, "Enforced"), ["Enforced", "2 rpd"]);
});

test("Explain limits shows every limit at every level, live, and which one would deny", async () => {
  await goTo(page, "API keys", "API keys");
  await page.getByRole("button", { name: "Explain limits ada-key" }).click();
  const dialog = page.getByRole("dialog", { name: "Explain limits of ada-key" });
  const limits = dialog.getByRole("region", { name: "Limits of ada-key" });
  await limits.waitFor();
  await dialog.getByLabel("Model").selectOption("mock-small");
  await dialog.getByRole("textbox", { name: "Estimated tokens" }).fill("10");
  await dialog.getByRole("button", { name: "Explain", exact: true }).click();
  await dialog.getByText("A request for mock-small of 10 tokens would be denied now by the workspace's requests per day (workspace/rpd).").waitFor();
  // Level, Limit, Mode, Window, Allowed, Used, Reserved, Remaining, Resets.
  const rpd = await cells(limits, "workspace", "requests per day");
  assert.deepEqual(rpd.slice(0, 8), ["workspace", "requests per day", "enforced", "day (UTC)", "2", "2", "0", "0"]);
  assert.notEqual(rpd[8], "never");
  // ada's report-mode rpm is counted too, at the member level.
  const rpm = await cells(limits, "member", "requests per minute");
  assert.deepEqual([rpm[2], rpm[3], rpm[4]], ["report", "rolling minute", "100"]);
  await shot("explain");
  await dialog.getByRole("button", { name: "Close" }).click();
  await dialog.waitFor({ state: "detached" });
});

test("credits: a top-up recorded once however often it is clicked, an adjustment, and spend drawn from them", async () => {
  await must("POST", "/v1/workspaces", root, { id: "paid", name: "Paid" });
  await key("paid", "paid-key", "");
  // The session listed the workspaces at sign-in: a reload lists paid.
  await page.reload();
  await page.getByRole("heading", { name: "API keys", level: 1 }).waitFor();
  await page.getByLabel("Workspace", { exact: true }).selectOption("paid");
  await row("paid-key").waitFor();
  await goTo(page, "Credits", "History");
  const card = (name) => page.getByRole("group", { name });
  assert.equal(await card("Balance").textContent(), "Balance$0.00");
  await page.getByText("This workspace holds no credits").waitFor();

  const amount = page.getByRole("textbox", { name: "Amount (USD)" });
  await amount.fill("-5");
  await page.getByRole("button", { name: "Top up" }).click();
  await invalid(amount, /A top-up adds money/);
  await amount.fill("5.00");
  await page.getByRole("textbox", { name: "Note (optional)" }).fill("invoice 1");
  await page.getByRole("button", { name: "Top up" }).dblclick();
  await until("the balance to show the top-up", async () => (await card("Balance").textContent()) === "Balance$5.00");
  const history = page.getByRole("region", { name: "Credit history" });
  assert.deepEqual((await cells(history, "invoice 1")).slice(1, 4), ["top-up", "$5.00", "invoice 1"]);
  let entries = (await must("GET", "/v1/workspaces/paid/credits/entries", root)).entries;
  assert.equal(entries.length, 1, "a double click records one entry");

  await page.getByLabel("Kind").selectOption({ label: "Adjustment" });
  await page.getByRole("textbox", { name: "Amount (USD)" }).fill("-1.50");
  await page.getByRole("textbox", { name: "Note (optional)" }).fill("goodwill correction");
  await page.getByRole("button", { name: "Adjust" }).click();
  await until("the balance to show the adjustment", async () => (await card("Balance").textContent()) === "Balance$3.50");
  entries = (await must("GET", "/v1/workspaces/paid/credits/entries", root)).entries;
  assert.equal(entries.length, 2);
  // Newest first.
  const first = history.getByRole("row").nth(1);
  assert.match(await first.textContent(), /adjustment-\$1\.50goodwill correction/);
  assert.equal(await card("Granted").textContent(), "Granted$3.50");

  // A request is drawn from the credits.
  assert.equal((await chat(secrets["paid-key"])).status, 200);
  await until("the ledger to draw the request from the credits", async () => {
    const c = await must("GET", "/v1/workspaces/paid/credits", root);
    return (c.spentUsd && Number(c.spentUsd) > 0) || c;
  });
  await page.reload();
  await page.getByRole("heading", { name: "History" }).waitFor();
  assert.notEqual(await card("Spent").textContent(), "Spent$0.00");
  assert.notEqual(await card("Balance").textContent(), "Balance$3.50");
  await shot("credits");
});

test("a key's timed override, set and ended from the keys page, holds at the edge", async () => {
  await goTo(page, "API keys", "API keys");
  await page.getByRole("button", { name: "Edit limits paid-key" }).click();
  const dialog = page.getByRole("dialog", { name: "Edit limits of paid-key" });
  await dialog.getByLabel("Mode").selectOption({ label: "Timed override: replace enforced limits until a time" });
  // The allowed models are the enforced limits' alone.
  assert.equal(await dialog.getByRole("group", { name: "Allowed models" }).count(), 0);
  await dialog.getByRole("textbox", { name: "Requests per minute", exact: true }).fill("1");
  await dialog.getByLabel("Until").fill(await page.evaluate(() => {
    const d = new Date(Date.now() + 3600_000);
    return new Date(d.getTime() - d.getTimezoneOffset() * 60_000).toISOString().slice(0, 16);
  }));
  await dialog.getByRole("button", { name: "Save limits" }).click();
  await dialog.waitFor({ state: "detached" });
  await row("paid-key").getByText(/^override until .*: 1 rpm$/).waitFor();
  // paid-key made a request in the credits test a moment ago.
  await until("the override to deny", async () => {
    const r = await chat(secrets["paid-key"]);
    return (r.status === 429 && r.by === "key/rpm") || r;
  });
  await page.getByRole("button", { name: "End override paid-key" }).click();
  const end = page.getByRole("dialog", { name: "End the override of paid-key" });
  await end.getByRole("button", { name: "End override" }).click();
  await end.waitFor({ state: "detached" });
  await row("paid-key").getByText(/^override until/).waitFor({ state: "detached" });
  assert.ok(!(await must("GET", `/v1/workspaces/paid/keys/${(await must("GET", "/v1/workspaces/paid/keys", root)).keys[0].id}`, root)).key.limitOverride?.expireTime);
  assert.equal((await chat(secrets["paid-key"])).status, 200);
});

// verified: the delivery carries the signature of its body under this
// secret (docs/alerts.md: HMAC-SHA256 keyed by the secret as issued).
function verified(d, secret) {
  const mac = createHmac("sha256", secret).update(`${d.headers["webhook-id"]}.${d.headers["webhook-timestamp"]}.${d.body}`).digest("base64");
  return d.headers["webhook-signature"] === `v1,${mac}`;
}

async function sendTest(secret) {
  const before = deliveries.length;
  await page.getByRole("button", { name: `Send test alert to ${hookURL}` }).click();
  await page.getByText(`Test alert delivered to ${hookURL} (HTTP 204).`).waitFor();
  assert.equal(deliveries.length, before + 1);
  const d = deliveries.at(-1);
  assert.equal(JSON.parse(d.body).test, true, d.body);
  assert.ok(verified(d, secret), "signed with the secret the console showed");
}

async function shownSecret(dialog, label) {
  const box = dialog.getByRole("textbox", { name: label });
  await box.waitFor();
  const secret = await box.inputValue();
  await dialog.getByRole("button", { name: "Done" }).click();
  await dialog.waitFor({ state: "detached" });
  return secret;
}

test("alerts: the workspace's crossings are listed; a webhook added in the console receives a signed test alert", async () => {
  await page.getByLabel("Workspace", { exact: true }).selectOption("gov");
  await row("root-key").waitFor();
  await goTo(page, "Alerts", "Recent alerts");
  await page.getByText(/reaches 50%, 100% of a daily limit/).waitFor();
  // gov's two requests crossed 50% and 100% of its rpd, with no webhook yet.
  await until("both crossings to be listed, with no webhook to send them to", async () => {
    const n = await page.getByRole("region", { name: "Alerts" }).getByRole("row").filter({ hasText: "workspace gov" }).filter({ hasText: "no webhook" }).count();
    if (n >= 2) return true;
    await page.reload();
    await page.getByRole("heading", { name: "Recent alerts" }).waitFor();
    return n;
  });
  const alerts = page.getByRole("region", { name: "Alerts" });
  for (const pct of ["50%", "100%"]) {
    const a = await cells(alerts, "workspace gov", pct);
    assert.deepEqual([a[2], a[3], a[5], a[6], a[8]], ["rpd", pct, "2", "day", "no webhook"]);
  }

  const url = page.getByRole("textbox", { name: "Webhook URL" });
  await url.fill("ftp://hooks.example.com/x");
  await page.getByRole("button", { name: "Add webhook" }).click();
  await invalid(url, /http/);
  await url.fill(hookURL);
  await page.getByRole("button", { name: "Add webhook" }).click();
  let dialog = page.getByRole("dialog", { name: "Webhook added" });
  await dialog.getByText("will not be shown again").waitFor();
  const secret = await shownSecret(dialog, `Secret of webhook ${hookURL}`);
  assert.match(secret, /^whsec_/);
  assert.ok(!(await page.content()).includes(secret), "the secret left the page");
  await page.getByRole("region", { name: "Webhooks" }).getByRole("cell", { name: hookURL, exact: true }).waitFor();
  await sendTest(secret);
  await shot("alerts");

  const renders = await page.locator("main").getAttribute("data-renders");
  await page.getByRole("button", { name: `Rotate secret of ${hookURL}` }).click();
  dialog = page.getByRole("dialog", { name: `Rotate secret of ${hookURL}` });
  await dialog.getByRole("button", { name: "Rotate secret" }).click();
  const rotated = await shownSecret(dialog, `Secret of webhook ${hookURL}`);
  // Closing the dialog redraws the page: test once the new one is there.
  await page.locator(`main:not([data-renders="${renders}"])`).waitFor();
  assert.notEqual(rotated, secret);
  await sendTest(rotated);

  await page.getByRole("button", { name: `Delete webhook ${hookURL}` }).click();
  dialog = page.getByRole("dialog", { name: `Delete webhook ${hookURL}` });
  await dialog.getByRole("button", { name: "Delete webhook" }).click();
  await dialog.waitFor({ state: "detached" });
  await page.getByText("No webhooks yet").waitFor();
});

test("legacy keys carry a badge, and a filter lists them for replacement", async () => {
  const old = "sk-legacy-0123456789abcdefghijklmnopqrstuv";
  await must("POST", "/v1/workspaces/gov/keys:import", root, { keys: [{
    name: "from-old-gateway", secretSha256: createHash("sha256").update(old).digest("hex"), partialKey: "stuv" }] });
  await goTo(page, "API keys", "API keys");
  await row("from-old-gateway").getByText("legacy", { exact: true }).waitFor();
  assert.equal(await row("root-key").getByText("legacy", { exact: true }).count(), 0);
  await page.getByRole("checkbox", { name: "Legacy keys" }).check();
  await page.getByText("1 of 3 keys match the filters.").waitFor();
  assert.equal(await row("root-key").count(), 0);
  await page.getByText(/Replace each: create a keygate key/).waitFor();
  // An imported secret is replaced, never rotated.
  assert.equal(await page.getByRole("button", { name: "Rotate from-old-gateway" }).count(), 0);
  await shot("keys-legacy");
  await page.getByRole("checkbox", { name: "Legacy keys" }).uncheck();
  await row("root-key").waitFor();
});

test("a member reads the limits, credits and alerts but changes none of them", async () => {
  const ada = (await must("POST", "/v1/workspaces/gov/keys", root, { name: "ada-console", kind: "KEY_KIND_ADMIN", owner: "ada" })).secret;
  const p = await newPage(browser, 390);
  await signIn(p, ada);
  await goTo(p, "Limits", "Workspace limits");
  await p.getByText("Owners and admins change the workspace's limits.").waitFor();
  assert.equal(await p.getByRole("button", { name: /^Edit/ }).count(), 0);
  await p.getByRole("region", { name: "Policy" }).getByRole("cell", { name: "50, 100 %" }).waitFor();
  await shot("limits-member-390px", p);
  await goTo(p, "Credits", "History");
  await p.getByText("Owners record top-ups and adjustments.").waitFor();
  await p.getByRole("link", { name: "Alerts", exact: true }).click();
  await p.getByText("Owners and admins manage the workspace's webhooks and read its alerts.").waitFor();
  assert.equal(await p.getByRole("alert").count(), 0, await p.getByRole("main").textContent());
  await p.context().close();
});

test("axe finds no WCAG 2.1 A or AA violation on the governance pages and dialogs, at 1280 and 390 pixels", async () => {
  const found = [];
  for (const width of [1280, 390]) {
    const ctx = await axeContext(browser, width);
    const p = await ctx.newPage();
    p.setDefaultTimeout(10000);
    const check = async (what) => found.push(...(await violations(p)).map((v) => `${width}px ${what}: ${v}`));
    await signIn(p, root);
    await p.getByLabel("Workspace", { exact: true }).selectOption("gov");
    await row("root-key", p).waitFor();
    await p.getByRole("button", { name: "Explain limits root-key" }).click();
    await p.getByRole("dialog", { name: "Explain limits of root-key" }).getByRole("region", { name: "Limits of root-key" }).waitFor();
    await check("Explain limits dialog");
    await p.keyboard.press("Escape");
    await p.getByRole("dialog").waitFor({ state: "detached" });
    await goTo(p, "Limits", "Workspace limits");
    await check("Limits");
    await p.getByRole("button", { name: "Edit limits of ada" }).click();
    await p.getByRole("dialog", { name: "Edit limits of ada" }).getByLabel("Mode").selectOption({ label: "Timed override: replace enforced limits until a time" });
    await check("member limits dialog");
    await p.keyboard.press("Escape");
    await p.getByRole("dialog").waitFor({ state: "detached" });
    await goTo(p, "Alerts", "Recent alerts");
    await check("Alerts");
    await p.getByLabel("Workspace", { exact: true }).selectOption("paid");
    // The switch reloads the shell: navigate once the new one is there.
    await p.locator('main[data-workspace="paid"]').waitFor();
    await p.getByRole("heading", { name: "Recent alerts" }).waitFor();
    await goTo(p, "Credits", "History");
    await check("Credits");
    await ctx.close();
  }
  assert.deepEqual(found, []);
});

test("no script error or CSP violation on any page", () => {
  assert.deepEqual(pageErrors, []);
});
