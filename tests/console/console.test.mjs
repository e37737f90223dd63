// The web console in Chromium against keygate up (started by the Go test
// TestConsoleInChromium, which passes its addresses). Every control is found
// by its role and accessible name, as a screen-reader user finds it; every
// change a person makes is checked where it matters, at the edge.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { axeContext, violations } from "./a11y.mjs";
import { api, edge, launch, must, newPage, pageErrors, root, row as rowOf, shot as shotOf, until } from "./helpers.mjs";

let browser;
let page;

before(async () => {
  browser = await launch();
  page = await newPage(browser, 1280);
});

after(async () => {
  await browser?.close();
});

// chat sends one inference request through the edge; its HTTP status.
async function chat(secret, model = "mock-small") {
  const resp = await fetch(`${edge}/v1/chat/completions`, {
    method: "POST",
    headers: { Authorization: `Bearer ${secret}`, "Content-Type": "application/json" },
    body: JSON.stringify({ model, messages: [{ role: "user", content: "hi" }] }),
  });
  await resp.text();
  return resp.status;
}

async function edgeAnswers(secret, status) {
  await until(`the edge to answer ${status}`, async () => (await chat(secret)) === status || (await chat(secret)));
}

// Fixtures made over REST, once the first test has created workspace
// acme in the console: a member (bob) with an admin key of his own and one
// key of his, and a second workspace with its own owner and admin key.
const fixtures = {};
async function seed() {
  await must("PUT", "/v1/workspaces/acme/members/bob", root, { role: "ROLE_MEMBER" });
  fixtures.bobAdmin = (await must("POST", "/v1/workspaces/acme/keys", root, { name: "bob-console", kind: "KEY_KIND_ADMIN", owner: "bob" })).secret;
  await must("POST", "/v1/workspaces/acme/keys", root, { name: "bob-batch", owner: "bob" });
  await must("POST", "/v1/workspaces/acme/keys", root, {
    name: "ops-internal", globalLimits: { rpm: 60, tpd: 100000 }, budget: { amountUsd: "5.00", resetPeriod: "RESET_PERIOD_MONTHLY" },
  });
  await must("POST", "/v1/workspaces", root, { id: "other", name: "Other Co" });
  await must("PUT", "/v1/workspaces/other/members/carol", root, { role: "ROLE_OWNER" });
  fixtures.carolAdmin = (await must("POST", "/v1/workspaces/other/keys", root, { name: "carol-console", kind: "KEY_KIND_ADMIN", owner: "carol" })).secret;
  await must("POST", "/v1/workspaces/other/keys", root, { name: "other-web", owner: "carol" });
}

async function signIn(p, credential) {
  await p.goto(`${api}/console/`);
  await p.getByRole("heading", { name: "Sign in to keygate" }).waitFor();
  await p.getByLabel("Root token or admin key").fill(credential);
  await p.getByRole("button", { name: "Sign in" }).click();
  await p.getByRole("heading", { name: "API keys", level: 1 }).waitFor();
}

const row = (name, p = page) => rowOf(p, name);
const shot = (name, p = page) => shotOf(p, name);

let secret = "";

async function keyId(name) {
  const keys = (await must("GET", "/v1/workspaces/acme/keys", root)).keys ?? [];
  return keys.find((k) => k.name === name)?.id;
}

test("a fresh keygate: the root token signs in and creates the first workspace", async () => {
  await page.goto(`${api}/console/`);
  await shot("sign-in");
  await page.getByLabel("Root token or admin key").fill("kgr_wrong");
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("alert").filter({ hasText: "not accepted" }).waitFor();
  await signIn(page, root);
  await page.getByText("No workspace yet. Create one on the Workspaces page.").waitFor();
  await page.getByRole("link", { name: "Workspaces" }).click();
  await page.getByLabel("Workspace ID").fill("acme");
  await page.getByLabel("Name", { exact: true }).fill("Acme");
  await page.getByRole("button", { name: "Create workspace" }).click();
  await page.getByRole("heading", { name: "Members of acme" }).waitFor();
  await seed();
  await page.getByRole("link", { name: "API keys" }).click();
  await row("ops-internal").waitFor();
  assert.equal(await page.getByText("3 of 10 keys").count(), 1);
  // The credential lives in sessionStorage only, never in localStorage or a cookie.
  assert.equal(await page.evaluate(() => localStorage.length), 0);
  assert.deepEqual(await page.context().cookies(), []);
});

test("create a key: the secret is shown once, copied, then gone", async () => {
  await page.getByRole("button", { name: "Create API key" }).click();
  const dialog = page.getByRole("dialog", { name: "Create API key" });
  // A name the keystore refuses: its 400 is shown beside the field.
  const name = dialog.getByLabel("Name", { exact: true });
  await name.fill("team/web");
  await dialog.getByRole("button", { name: "Create key" }).click();
  await until("the name to be marked invalid", async () => (await name.getAttribute("aria-invalid")) === "true");
  const described = await name.evaluate((el) => el.getAttribute("aria-describedby").split(" ").map((id) => document.getElementById(id).textContent).join(" "));
  assert.match(described, /^name: /);
  await name.fill("web");
  await shot("create-key-dialog");
  await dialog.getByRole("button", { name: "Create key" }).click();
  const box = dialog.getByRole("textbox", { name: "Secret of web" });
  await box.waitFor();
  secret = await box.inputValue();
  assert.match(secret, /^kg_/);
  await dialog.getByText("will not be shown again").waitFor();
  await dialog.getByRole("button", { name: "Copy" }).click();
  await dialog.getByText("Copied to the clipboard.").waitFor();
  assert.equal(await page.evaluate(() => navigator.clipboard.readText()), secret);
  await dialog.getByRole("button", { name: "Done" }).click();
  await dialog.waitFor({ state: "detached" });
  await row("web").waitFor();
  assert.ok(!(await page.content()).includes(secret), "the secret left the page");
  assert.equal(await chat(secret), 200);
});

test("Escape closes a dialog and focus returns to the button that opened it", async () => {
  const open = page.getByRole("button", { name: "Create API key" });
  await open.focus();
  await page.keyboard.press("Enter");
  const dialog = page.getByRole("dialog", { name: "Create API key" });
  await dialog.waitFor();
  assert.ok(await dialog.getByLabel("Name", { exact: true }).evaluate((el) => el === document.activeElement), "focus starts in the dialog");
  // Tab from the last control wraps to the first, inside the dialog.
  await dialog.getByRole("button", { name: "Create key" }).focus();
  await page.keyboard.press("Tab");
  assert.ok(await dialog.evaluate((el) => el.contains(document.activeElement)), "focus stays in the dialog");
  await page.keyboard.press("Escape");
  await dialog.waitFor({ state: "detached" });
  await until("focus back on Create API key", () => open.evaluate((el) => el === document.activeElement));
});

test("disable a key and the edge refuses it; enable it and the edge serves it", async () => {
  const toggle = page.getByRole("switch", { name: "Enabled: web" });
  assert.equal(await toggle.getAttribute("aria-checked"), "true");
  await toggle.click();
  await until("the switch to be off", async () => (await toggle.getAttribute("aria-checked")) === "false");
  await row("web").getByText("disabled", { exact: true }).waitFor();
  await edgeAnswers(secret, 401);
  // From the keyboard this time: Space toggles a focused switch.
  await page.getByRole("switch", { name: "Enabled: web" }).focus();
  await page.keyboard.press("Space");
  await until("the switch to be on", async () => (await toggle.getAttribute("aria-checked")) === "true");
  await edgeAnswers(secret, 200);
});

test("edit limits and the edge applies them", async () => {
  await page.getByRole("button", { name: "Edit limits web" }).click();
  const dialog = page.getByRole("dialog", { name: "Edit limits of web" });
  await dialog.getByRole("textbox", { name: "Requests per minute", exact: true }).fill("x");
  await dialog.getByRole("button", { name: "Save limits" }).click();
  await dialog.getByText("Enter a whole number").waitFor();
  await dialog.getByRole("textbox", { name: "Requests per minute", exact: true }).fill("1");
  await dialog.getByRole("button", { name: "Save limits" }).click();
  await dialog.waitFor({ state: "detached" });
  await row("web").getByText("1 rpm").waitFor();
  // The key made requests this minute: with 1 rpm the next is refused.
  await edgeAnswers(secret, 429);
  await page.getByRole("button", { name: "Edit limits web" }).click();
  await dialog.getByRole("textbox", { name: "Requests per minute", exact: true }).fill("");
  await dialog.getByRole("button", { name: "Save limits" }).click();
  await dialog.waitFor({ state: "detached" });
  await row("web").getByText("unlimited").waitFor();
  await edgeAnswers(secret, 200);

  // A per-model limit picked from the catalog, and a budget.
  await page.getByRole("button", { name: "Edit limits web" }).click();
  await dialog.getByRole("button", { name: "Add a per-model limit" }).click();
  await dialog.getByRole("group", { name: "Model limit 1" }).getByLabel("Model", { exact: true }).selectOption("mock-large");
  await dialog.getByRole("textbox", { name: "Requests per minute (model limit 1)" }).fill("1");
  await dialog.getByLabel("Budget (USD)").fill("5.00");
  await dialog.getByRole("button", { name: "Save limits" }).click();
  await dialog.waitFor({ state: "detached" });
  await row("web").getByText("mock-large: 1 rpm; $5.00 monthly").waitFor();
  await until("mock-large to allow one request a minute", async () => (await chat(secret, "mock-large")) === 429);
  assert.equal(await chat(secret), 200, "mock-small is not limited");
});

test("a request made through the edge appears in usage and in the request log", async () => {
  const usage = `/v1/workspaces/acme/keys/${await keyId("web")}/usage`;
  let today = 0;
  await until("the ledger to count the key's requests", async () => {
    today = Number((await must("GET", usage, root)).requestsToday ?? 0);
    return today > 0;
  });
  await page.getByRole("link", { name: "Usage" }).click();
  await page.getByRole("heading", { name: "Usage", level: 1 }).waitFor();
  await page.getByRole("heading", { name: "By key" }).waitFor();
  await page.getByRole("img", { name: /^Requests per day/ }).waitFor();
  await shot("usage-workspace");
  await page.getByLabel("Key", { exact: true }).selectOption({ label: "web" });
  await page.getByRole("heading", { name: /^Today .* for web$/ }).waitFor();
  // Requests still being counted may have landed since: at least as many.
  const card = await page.getByRole("group", { name: "Requests today" }).textContent();
  assert.ok(Number(/Requests today(\d+)/.exec(card)?.[1]) >= today, card);
  await page.getByRole("region", { name: "Usage per model today" }).getByRole("cell", { name: "mock-small" }).waitFor();
  await shot("usage-key");

  await page.getByRole("link", { name: "Request log" }).click();
  await page.getByRole("heading", { name: "Request log", level: 1 }).waitFor();
  await page.getByLabel("Member (key owner)").waitFor();
  await page.getByLabel("Key", { exact: true }).selectOption({ label: "web" });
  const log = page.getByRole("region", { name: "Request log" });
  await log.getByRole("row").filter({ hasText: "mock-small" }).first().waitFor();
  await page.getByLabel("Model").selectOption({ label: "mock-large" });
  await until("only mock-large requests", async () =>
    (await log.getByRole("row").filter({ hasText: "mock-small" }).count()) === 0 &&
    (await log.getByRole("row").filter({ hasText: "mock-large" }).count()) > 0);
  await page.getByLabel("Model").selectOption({ label: "All models" });
  await log.getByRole("row").filter({ hasText: "mock-small" }).first().waitFor();
  // By member, the key's owner: web is root's, so bob has none of these.
  await page.getByLabel("Member (key owner)").fill("bob");
  await page.getByRole("button", { name: "Apply filters" }).click();
  await page.getByText("No request matches the filters.").waitFor();
  await page.getByLabel("Member (key owner)").fill("root");
  await page.getByRole("button", { name: "Apply filters" }).click();
  await log.getByRole("row").filter({ hasText: "mock-small" }).first().waitFor();
  await shot("request-log");

  await page.getByRole("link", { name: "Audit log" }).click();
  const audit = page.getByRole("region", { name: "Audit log" });
  await audit.getByRole("row").filter({ hasText: "key.create" }).filter({ hasText: "web" }).first().waitFor();
  assert.ok(!(await page.content()).includes(secret), "no secret in the audit log");
  await shot("audit-log");
  await page.getByRole("link", { name: "API keys" }).click();
  await row("web").waitFor();
  await shot("keys");
});

// rotate rotates web in the console and returns the new secret, shown once.
async function rotate(grace) {
  await page.getByRole("button", { name: "Rotate web" }).click();
  const dialog = page.getByRole("dialog", { name: "Rotate web" });
  await dialog.getByLabel("The old secret stops working").selectOption({ label: grace });
  await dialog.getByRole("button", { name: "Rotate key" }).click();
  const box = dialog.getByRole("textbox", { name: "Secret of web" });
  await box.waitFor();
  const fresh = await box.inputValue();
  await dialog.getByRole("button", { name: "Done" }).click();
  await dialog.waitFor({ state: "detached" });
  return fresh;
}

test("rotate with a grace period: both secrets work until it ends", async () => {
  const fresh = await rotate("In 1 hour");
  assert.notEqual(fresh, secret);
  await edgeAnswers(fresh, 200);
  assert.equal(await chat(secret), 200, "the old secret works during the grace period");
  secret = fresh;
});

test("rotate at once: the old secret stops at once", async () => {
  const fresh = await rotate("At once");
  await edgeAnswers(secret, 401);
  await edgeAnswers(fresh, 200);
  secret = fresh;
});

test("expire now: the record stays, the edge refuses the key", async () => {
  await page.getByRole("button", { name: "Expire web" }).click();
  const dialog = page.getByRole("dialog", { name: "Expire web" });
  await dialog.getByRole("button", { name: "Expire key" }).click();
  await dialog.waitFor({ state: "detached" });
  await row("web").getByText("expired", { exact: true }).waitFor();
  await edgeAnswers(secret, 401);
});

test("delete after typing the key's name", async () => {
  await page.getByRole("button", { name: "Delete web" }).click();
  const dialog = page.getByRole("dialog", { name: "Delete web" });
  const confirm = dialog.getByRole("button", { name: "Delete key" });
  assert.ok(await confirm.isDisabled(), "nothing to delete before the name is typed");
  await dialog.getByLabel("Type web to confirm").fill("web");
  await confirm.click();
  await dialog.waitFor({ state: "detached" });
  await row("web").waitFor({ state: "detached" });
  assert.equal(await page.getByText("3 of 10 keys").count(), 1);
});

test("filter by status and search by name", async () => {
  await page.getByLabel("Search by name").fill("bob");
  await row("bob-batch").waitFor();
  assert.equal(await row("ops-internal").count(), 0);
  await page.getByLabel("Search by name").fill("");
  await page.getByLabel("Status").selectOption({ label: "Expired" });
  await page.getByText("No key matches the filters.").waitFor();
  await page.getByLabel("Status").selectOption({ label: "All" });
  await row("ops-internal").waitFor();
});

test("workspaces: root creates one; its owner adds a member, changes the role, removes them", async () => {
  await page.getByRole("link", { name: "Workspaces" }).click();
  await page.getByRole("heading", { name: "Members of acme" }).waitFor();
  await page.getByRole("region", { name: "Members of acme" }).getByRole("cell", { name: "bob", exact: true }).waitFor();
  await shot("workspaces");
  await page.getByLabel("Workspace ID").fill("beta");
  await page.getByLabel("Name", { exact: true }).fill("Beta");
  await page.getByRole("button", { name: "Create workspace" }).click();
  await page.getByRole("heading", { name: "Members of beta" }).waitFor();
  assert.equal(await page.getByLabel("Workspace", { exact: true }).inputValue(), "beta");
  await page.getByLabel("Member", { exact: true }).fill("dave@example.com");
  await page.getByRole("button", { name: "Add member" }).click();
  const role = page.getByRole("combobox", { name: "Role of dave@example.com" });
  await role.waitFor();
  assert.equal(await role.inputValue(), "ROLE_MEMBER");
  await role.selectOption({ label: "admin" });
  await until("dave to be an admin", async () => {
    const m = (await must("GET", "/v1/workspaces/beta/members", root)).members ?? [];
    return m.some((x) => x.member === "dave@example.com" && x.role === "ROLE_ADMIN");
  });
  await page.getByRole("button", { name: "Remove dave@example.com" }).click();
  await page.getByRole("combobox", { name: "Role of dave@example.com" }).waitFor({ state: "detached" });
  await page.getByLabel("Workspace", { exact: true }).selectOption("acme");
  await page.getByRole("heading", { name: "Members of acme" }).waitFor();
  await page.getByRole("link", { name: "API keys" }).click();
  await row("ops-internal").waitFor();
});

test("at the key cap, Create API key explains itself", async () => {
  await page.getByRole("link", { name: "Workspaces" }).click();
  await page.getByRole("spinbutton", { name: "Key cap of Acme" }).fill("3");
  await page.getByRole("row").filter({ hasText: "acme" }).getByRole("button", { name: "Save cap" }).click();
  await until("the cap to be 3", async () => (await must("GET", "/v1/workspaces/acme", root)).workspace?.maxKeys === 3);
  await page.getByRole("link", { name: "API keys" }).click();
  await page.getByText("3 of 3 keys").waitFor();
  const create = page.getByRole("button", { name: "Create API key" });
  assert.equal(await create.getAttribute("aria-disabled"), "true");
  assert.match(await create.evaluate((el) => el.getAttribute("aria-describedby").split(" ").map((id) => document.getElementById(id).textContent).join(" ")), /at its cap/);
  // Still focusable (aria-disabled, not disabled), so the reason is found.
  await create.focus();
  await page.keyboard.press("Enter");
  assert.equal(await page.getByRole("dialog").count(), 0, "no dialog at the cap");
  await shot("keys-at-cap");
  await must("PATCH", "/v1/workspaces/acme?updateMask=max_keys", root, { maxKeys: 10 });
  await page.reload();
  await page.getByText("3 of 10 keys").waitFor();
});

test("models: the root token reprices a model", async () => {
  await page.getByRole("link", { name: "Models" }).click();
  const input = page.getByRole("textbox", { name: "Input price of mock-large, USD per million tokens" });
  await input.fill("3.00");
  await page.getByRole("button", { name: "Save prices of mock-large" }).click();
  await until("the new price", async () => (await must("GET", "/v1/models/mock-large", root)).model?.inputPricePerMillionUsd === "3.00");
  await shot("models");
  await page.getByRole("link", { name: "API keys" }).click();
  await row("ops-internal").waitFor();
});

test("a member sees only their own keys", async () => {
  const p = await newPage(browser, 1280);
  await signIn(p, fixtures.bobAdmin);
  await row("bob-batch", p).waitFor();
  await row("bob-console", p).waitFor();
  assert.equal(await row("ops-internal", p).count(), 0);
  await p.getByText("Signed in as bob (member, own keys only)").waitFor();
  // His admin key is shown but not his to change; his standard key is.
  assert.equal(await p.getByRole("switch", { name: "Enabled: bob-console" }).count(), 0);
  await p.getByRole("switch", { name: "Enabled: bob-batch" }).waitFor();
  await shot("keys-member", p);
  // The catalog is read-only for anyone but the root token.
  await p.getByRole("link", { name: "Models" }).click();
  await p.getByText("Only the root token edits models and providers.").waitFor();
  assert.equal(await p.getByRole("button", { name: /^Save prices/ }).count(), 0);
  // Usage and the request log answer a member too (for their own keys).
  await p.getByRole("link", { name: "Usage" }).click();
  await p.getByRole("heading", { name: "By key" }).waitFor();
  await p.getByRole("link", { name: "Request log" }).click();
  await p.getByRole("heading", { name: "Request log", level: 1 }).waitFor();
  await p.getByText("No request matches the filters.").waitFor();
  assert.equal(await p.getByRole("alert").count(), 0, await p.getByRole("main").textContent());
  // Members see their workspace's members but do not manage them.
  await p.getByRole("link", { name: "Workspaces" }).click();
  await p.getByText("Owners add and remove members and change roles.").waitFor();
  await p.context().close();
});

test("an admin key of another workspace sees nothing of this one", async () => {
  const p = await newPage(browser, 390);
  await signIn(p, fixtures.carolAdmin);
  await row("other-web", p).waitFor();
  assert.equal(await row("ops-internal", p).count(), 0);
  assert.equal(await row("bob-batch", p).count(), 0);
  const options = await p.getByLabel("Workspace").locator("option").allTextContents();
  assert.deepEqual(options, ["Other Co (other)"]);
  await shot("keys-390px", p);
  await p.getByRole("button", { name: "Create API key" }).click();
  const dialog = p.getByRole("dialog", { name: "Create API key" });
  // A name already taken in this workspace is said beside the name.
  await dialog.getByLabel("Name", { exact: true }).fill("other-web");
  await dialog.getByRole("button", { name: "Create key" }).click();
  await until("the name to be marked taken", async () => (await dialog.getByLabel("Name", { exact: true }).getAttribute("aria-invalid")) === "true");
  await shot("create-key-dialog-390px", p);
  await p.keyboard.press("Escape");
  await dialog.waitFor({ state: "detached" });
  await p.context().close();
});

test("sign out forgets the credential", async () => {
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.getByRole("heading", { name: "Sign in to keygate" }).waitFor();
  assert.equal(await page.evaluate(() => sessionStorage.length), 0);
  await page.reload();
  await page.getByRole("heading", { name: "Sign in to keygate" }).waitFor();
});

test("axe finds no WCAG 2.1 A or AA violation on any page, at 1280 and 390 pixels", async () => {
  const found = [];
  for (const width of [1280, 390]) {
    const ctx = await axeContext(browser, width);
    const p = await ctx.newPage();
    p.setDefaultTimeout(10000);
    const check = async (what) => found.push(...(await violations(p)).map((v) => `${width}px ${what}: ${v}`));
    await p.goto(`${api}/console/`);
    await check("sign-in");
    await signIn(p, root);
    await row("ops-internal", p).waitFor();
    await check("API keys");
    await p.getByRole("button", { name: "Create API key" }).click();
    await p.getByRole("dialog", { name: "Create API key" }).getByRole("button", { name: "Add a per-model limit" }).click();
    await check("Create API key dialog");
    await p.keyboard.press("Escape");
    await p.getByRole("dialog").waitFor({ state: "detached" });
    for (const [link, ready] of [["Usage", "By key"], ["Request log", "Request log"], ["Audit log", "Audit log"], ["Workspaces", "Members of acme"], ["Models", "Providers"]]) {
      await p.getByRole("link", { name: link }).click();
      await p.getByRole("heading", { name: ready }).first().waitFor();
      await p.getByText("Loading…").waitFor({ state: "detached" });
      await check(link);
    }
    await ctx.close();
  }
  assert.deepEqual(found, []);
});

test("no script error or CSP violation on any page", () => {
  assert.deepEqual(pageErrors, []);
});
