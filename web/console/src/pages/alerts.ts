// Alerts: the workspace's webhooks (add, with the signing secret shown
// once; send a test; rotate the secret; delete) and the alerts raised when
// usage first crossed a threshold in a period, with how their delivery
// went. Thresholds are set on the Limits page.
import { call, explain, type Alert, type AlertDeliveryState, type Webhook } from "../api";
import { keyNames, listKeys } from "../data";
import { buttons, type Dialog, openDialog } from "../dialog";
import { announce, busy, field, h, notice, replace, table } from "../dom";
import { count, dateTime, dollars, levelNames } from "../format";
import { Fields } from "../keyform";
import type { Page } from "../main";
import { showSecret } from "../secret";
import { manager } from "../session";

export async function renderAlerts(p: Page): Promise<void> {
  const ws = p.session.workspace;
  const focusId = document.activeElement?.id ?? "";
  const [w, names] = await Promise.all([
    call("get", "/v1/workspaces/{workspace}", { path: { workspace: ws } }).then((r) => r.workspace ?? {}),
    listKeys(ws).then(keyNames, () => new Map<string, string>()),
  ]);
  const thresholds = w.alertThresholds ?? [];
  const intro = h("p", { class: "hint" }, thresholds.length
    ? `Alerts are raised the first time in a period that usage reaches ${thresholds.map((t) => `${t}%`).join(", ")} of a daily limit, token cap, budget or credits, at any level. Change the thresholds on the Limits page.`
    : "No alert thresholds are set, so no alert is raised. Set them on the Limits page.");
  if (!manager(p.session)) {
    replace(p.main, h("h1", {}, "Alerts"), intro, h("p", { class: "hint" }, "Owners and admins manage the workspace's webhooks and read its alerts."));
    return;
  }
  const result = h("div", { "aria-live": "polite" });
  const alerts = h("div", {});
  replace(p.main,
    h("h1", {}, "Alerts"),
    intro,
    h("h2", { id: "webhooks-h" }, "Webhooks"),
    result,
    await webhooks(p, result),
    h("h2", {}, "Recent alerts"),
    alerts,
  );
  await loadAlerts(ws, names, alerts, "");
  if (focusId) document.getElementById(focusId)?.focus();
  // Counts the renders, so that a test can wait for a redraw to land.
  p.main.dataset.renders = String(Number(p.main.dataset.renders ?? 0) + 1);
}

async function webhooks(p: Page, result: HTMLElement): Promise<HTMLElement> {
  const ws = p.session.workspace;
  let list: Webhook[];
  try {
    list = (await call("get", "/v1/workspaces/{workspace}/webhooks", { path: { workspace: ws } })).webhooks ?? [];
  } catch (e) {
    return notice("error", explain(e, "list the webhooks"));
  }
  const redraw = () => renderAlerts(p);
  const rows = list.map((wh) => {
    const url = wh.url ?? "";
    const ref = { workspace: ws, webhook: wh.id ?? "" };
    const test = h("button", { type: "button", id: `test-${wh.id}`, "aria-label": `Send test alert to ${url}` }, "Send test");
    test.addEventListener("click", () => busy(test, async () => {
      replace(result, h("p", { class: "hint" }, `Sending a test alert to ${url}…`));
      try {
        const r = await call("post", "/v1/workspaces/{workspace}/webhooks/{webhook}:test", { path: ref, body: {} });
        replace(result, r.delivered
          ? notice("info", `Test alert delivered to ${url} (HTTP ${r.statusCode}).`)
          : notice("warn", `The test alert was not delivered to ${url}: ${r.error || `HTTP ${r.statusCode}`}.`));
      } catch (e) {
        replace(result, notice("error", explain(e, `send a test alert to ${url}`)));
      }
    }));
    const rotate = h("button", { type: "button", id: `rotate-${wh.id}`, "aria-label": `Rotate secret of ${url}`, onclick: () => rotateSecret(ws, wh, redraw) }, "Rotate secret");
    const del = h("button", { type: "button", class: "danger", id: `delete-${wh.id}`, "aria-label": `Delete webhook ${url}`, onclick: () => remove(ws, wh, redraw) }, "Delete");
    return [h("code", {}, url), wh.description ?? "", dateTime(wh.createTime), dateTime(wh.secretTime), h("div", { class: "row-actions" }, test, rotate, del)];
  });
  return h("section", { "aria-labelledby": "webhooks-h" },
    rows.length ? table("Webhooks", ["URL", "Description", "Added", "Secret issued", "Actions"], rows) : h("p", { class: "empty" }, "No webhooks yet: alerts are recorded below but sent nowhere."),
    addWebhook(ws, redraw));
}

function addWebhook(ws: string, redraw: () => Promise<void>): HTMLElement {
  const general = h("p", { class: "error", role: "alert" });
  const fields = new Fields(general);
  // type=url for the keyboard it brings; the keystore judges the URL and
  // its 400 is shown beside the field (novalidate).
  const url = h("input", { type: "url", autocomplete: "off", spellcheck: "false", placeholder: "https://hooks.example.com/keygate" });
  const description = h("input", { type: "text", autocomplete: "off", maxlength: 256 });
  fields.add("url", url);
  fields.add("description", description);
  const submit = h("button", { type: "submit", class: "primary", id: "add-webhook" }, "Add webhook");
  const form = h("form", { class: "toolbar", novalidate: true },
    field("Webhook URL", url, "http or https; each alert is POSTed to it, signed with the webhook's secret."),
    field("Description (optional)", description), submit);
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    busy(submit, async () => {
      fields.clear();
      try {
        const r = await call("post", "/v1/workspaces/{workspace}/webhooks", { path: { workspace: ws }, body: { url: url.value.trim(), description: description.value.trim() } });
        const d = openDialog("Webhook added");
        d.onClose(redraw);
        showSecret(d, `webhook ${r.webhook?.url ?? url.value.trim()}`, r.secret ?? "", "Receivers check each delivery's webhook-signature header with it.");
      } catch (e) {
        fields.fail(e, "add the webhook")?.focus();
      }
    });
  });
  return h("section", { "aria-labelledby": "add-webhook-h" }, h("h3", { id: "add-webhook-h" }, "Add a webhook"), general, form);
}

// confirmDialog is a dialog whose submit runs action; an error stays in it.
function confirmDialog(title: string, text: string, label: string, doing: string, action: (d: Dialog) => Promise<void>, danger = false): void {
  const err = h("p", { class: "error", role: "alert" });
  const submit = h("button", { type: "submit", class: danger ? "danger primary" : "primary" }, label);
  const form = h("form", {}, h("p", {}, text), err, buttons(h("button", { type: "button", onclick: () => d.close() }, "Cancel"), submit));
  const d = openDialog(title, form);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    submit.disabled = true;
    try {
      await action(d);
    } catch (e) {
      submit.disabled = false;
      err.textContent = explain(e, doing);
    }
  });
}

function rotateSecret(ws: string, wh: Webhook, redraw: () => Promise<void>): void {
  const url = wh.url ?? "";
  confirmDialog(`Rotate secret of ${url}`, "A new signing secret is issued and shown once; deliveries are signed with it from now on, so give it to the receiver at once.",
    "Rotate secret", `rotate the secret of ${url}`, async (d) => {
      const r = await call("post", "/v1/workspaces/{workspace}/webhooks/{webhook}:rotateSecret", { path: { workspace: ws, webhook: wh.id ?? "" }, body: {} });
      d.onClose(redraw);
      showSecret(d, `webhook ${url}`, r.secret ?? "", "Receivers check each delivery's webhook-signature header with it.");
    });
}

function remove(ws: string, wh: Webhook, redraw: () => Promise<void>): void {
  const url = wh.url ?? "";
  confirmDialog(`Delete webhook ${url}`, `Alerts are no longer sent to ${url}. Alerts already queued for it are dropped.`,
    "Delete webhook", `delete the webhook ${url}`, async (d) => {
      await call("delete", "/v1/workspaces/{workspace}/webhooks/{webhook}", { path: { workspace: ws, webhook: wh.id ?? "" } });
      d.onClose(redraw);
      d.close();
      announce(`Webhook ${url} deleted`);
    }, true);
}

const deliveryNames: Record<AlertDeliveryState, string> = {
  ALERT_DELIVERY_STATE_UNSPECIFIED: "—",
  ALERT_DELIVERY_STATE_PENDING: "pending",
  ALERT_DELIVERY_STATE_DELIVERED: "delivered",
  ALERT_DELIVERY_STATE_FAILED: "failed",
  ALERT_DELIVERY_STATE_NO_WEBHOOK: "no webhook",
};

// amount reads an alert's used or limit value: dollars for budgets and
// credits (exact decimals), a count for the rest.
function amount(a: Alert, v?: string): string {
  return a.limit === "budget" || a.limit === "credits" ? dollars(v) : count(v);
}

async function loadAlerts(ws: string, names: Map<string, string>, out: HTMLElement, pageToken: string): Promise<void> {
  let resp;
  try {
    resp = await call("get", "/v1/workspaces/{workspace}/alerts", { path: { workspace: ws }, query: { pageSize: 50, pageToken } });
  } catch (e) {
    replace(out, notice("error", explain(e, "list the alerts")));
    return;
  }
  const rows = (resp.alerts ?? []).map((a) => {
    const level = levelNames[a.level ?? "LIMIT_LEVEL_UNSPECIFIED"];
    const id = a.level === "LIMIT_LEVEL_KEY" ? (names.get(a.levelId ?? "") ?? a.levelId) : a.levelId;
    const state = deliveryNames[a.deliveryState ?? "ALERT_DELIVERY_STATE_UNSPECIFIED"];
    return [dateTime(a.time), `${level} ${id ?? ""}`.trim(), `${a.limit ?? ""}${a.model ? `:${a.model}` : ""}`, `${a.thresholdPercent ?? 0}%`,
      amount(a, a.used), amount(a, a.limitValue), a.period ?? "", a.resetTime ? dateTime(a.resetTime) : "never",
      h("span", { class: `badge delivery-${state.replace(/\s/g, "-")}` }, a.test ? `${state} (test)` : state), count(a.attempts)];
  });
  const more = resp.nextPageToken
    ? h("button", { type: "button", onclick: () => { more?.remove(); loadAlerts(ws, names, out, resp.nextPageToken ?? ""); } }, "Load more")
    : null;
  const part = rows.length
    ? table(pageToken ? "Alerts, more" : "Alerts", ["Time", "Level", "Limit", "Threshold", "Used", "Limit value", "Period", "Resets", "Delivery", "Attempts"], rows, [3, 4, 5, 9])
    : h("p", { class: "empty" }, pageToken ? "No more alerts." : "No alerts yet.");
  if (pageToken) out.append(part, more ?? "");
  else replace(out, part, more);
}
