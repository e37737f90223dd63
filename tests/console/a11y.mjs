// Accessibility checks with axe-core (WCAG 2 A and AA: contrast, labels,
// names, ARIA), injected into the page. The console's CSP forbids injected
// script, so the check runs in a context that bypasses it (the other tests
// run under the CSP and assert it is never violated).
import { createRequire } from "node:module";

const axePath = createRequire(import.meta.url).resolve("axe-core/axe.min.js");

export async function axeContext(browser, width) {
  return browser.newContext({ viewport: { width, height: 900 }, bypassCSP: true });
}

// violations lists what axe finds on the page as it is now, one line each.
export async function violations(page) {
  await page.addScriptTag({ path: axePath });
  const result = await page.evaluate(() => window.axe.run(document, { runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"] } }));
  if (result.passes.length === 0) throw new Error("axe checked nothing");
  return result.violations.flatMap((v) => v.nodes.map((n) => `${v.id}: ${n.target.join(" ")} — ${n.failureSummary.split("\n").join(" ")}`));
}
