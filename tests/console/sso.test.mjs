// Single sign-on in Chromium: keygate up configured with an OIDC issuer
// (a loopback test issuer that signs in alice@example.com at once), run by
// the Go test TestConsoleSingleSignOn. The console sends the browser to the
// issuer with PKCE, exchanges the code, and acts as alice with her role.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { api, launch, must, newPage, pageErrors, root, row, shot } from "./helpers.mjs";

let browser;
let page;

before(async () => {
  browser = await launch();
  page = await newPage(browser, 1280);
  await must("POST", "/v1/workspaces", root, { id: "sso", name: "SSO Co" });
  await must("PUT", "/v1/workspaces/sso/members/alice@example.com", root, { role: "ROLE_ADMIN" });
  await must("POST", "/v1/workspaces/sso/keys", root, { name: "alice-web", owner: "alice@example.com" });
  await must("POST", "/v1/workspaces/sso/keys", root, { name: "team-batch" });
  await must("POST", "/v1/workspaces", root, { id: "elsewhere", name: "Elsewhere" });
});

after(async () => {
  await browser?.close();
});

test("sign in with single sign-on and act as the member the issuer names", async () => {
  await page.goto(`${api}/console/`);
  const sso = page.getByRole("button", { name: "Sign in with single sign-on" });
  await sso.waitFor();
  await shot(page, "sign-in-sso");
  await sso.click();
  await page.getByRole("heading", { name: "API keys", level: 1 }).waitFor();
  await page.getByText("Signed in as alice@example.com (admin)").waitFor();
  // The code left the address bar; an admin sees every key of the workspace.
  assert.equal(new URL(page.url()).search, "");
  await row(page, "alice-web").waitFor();
  await row(page, "team-batch").waitFor();
  const options = await page.getByLabel("Workspace", { exact: true }).locator("option").allTextContents();
  assert.deepEqual(options, ["SSO Co (sso)"], "only the workspaces alice belongs to");
  // A reload keeps the tab signed in; signing out forgets the ID token.
  await page.reload();
  await row(page, "alice-web").waitFor();
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.getByRole("heading", { name: "Sign in to keygate" }).waitFor();
  assert.equal(await page.evaluate(() => sessionStorage.length), 0);
});

test("a return from the issuer that this tab did not start is refused", async () => {
  await page.goto(`${api}/console/?code=stolen&state=forged`);
  await page.getByText("this sign-in was not started here").waitFor();
  assert.equal(new URL(page.url()).search, "");
});

test("no script error or CSP violation", () => {
  assert.deepEqual(pageErrors, []);
});
