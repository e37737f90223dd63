// The API keys page: the table of keys with their state, limits and today's
// use, filters, the count against the workspace's cap, and the Create
// dialog. Row actions live in keyactions.ts.
import { call, type Key, type UsageRow, type Workspace } from "../api";
import { announce, field, h, replace, select, table, uid } from "../dom";
import { count, date, dateTime, kind, keyLimits, num, policy, state, today } from "../format";
import type { Page } from "../main";
import { manager } from "../session";
import { keyActions, enableSwitch } from "./keyactions";
import { openCreateKey } from "./createkey";
import { listKeys } from "../data";

// Filters survive re-rendering after an action.
let filterState = "";
let filterName = "";
let filterLegacy = false;

export async function renderKeys(p: Page): Promise<void> {
  const ws = p.session.workspace;
  // A dialog or switch that changed a key returns focus to its control,
  // which this render replaces: focus its successor (same id) instead.
  const focusId = document.activeElement?.id ?? "";
  const [wsResp, keys, usage] = await Promise.all([
    call("get", "/v1/workspaces/{workspace}", { path: { workspace: ws } }),
    listKeys(ws),
    todayUsage(ws),
  ]);
  const workspace = wsResp.workspace ?? {};
  const region = h("div", {});
  const redraw = () => replace(region, keyTable(p, keys, usage));
  const refresh = () => renderKeys(p);

  const search = h("input", { type: "search", value: filterName, autocomplete: "off" });
  search.addEventListener("input", () => { filterName = search.value; redraw(); });
  const status = select([["", "All"], ["active", "Active"], ["disabled", "Disabled"], ["expired", "Expired"]], filterState);
  status.addEventListener("change", () => { filterState = status.value; redraw(); });
  const legacy = h("input", { type: "checkbox", id: "legacy-filter", checked: filterLegacy });
  legacy.addEventListener("change", () => { filterLegacy = legacy.checked; redraw(); });

  replace(p.main,
    h("h1", {}, "API keys"),
    h("div", { class: "toolbar" },
      field("Search by name", search),
      field("Status", status),
      h("div", { class: "field check" }, h("span", { "aria-hidden": "true" }, "\u00a0"), h("label", {}, legacy, "Legacy keys")),
      h("span", { class: "grow" }),
      createButton(p, workspace, refresh),
    ),
    region,
  );
  redraw();
  if (focusId) document.getElementById(focusId)?.focus();
}

// createButton says "7 of 10 keys" beside the button; at the cap the
// button stays focusable but explains why it cannot create.
function createButton(p: Page, w: Workspace, refresh: () => void): HTMLElement {
  const used = num(w.keyCount);
  const max = num(w.maxKeys);
  const full = max > 0 && used >= max;
  const countId = uid("count");
  const explainId = uid("cap");
  const button = h("button", { type: "button", class: "primary", id: "create-key", "aria-describedby": full ? `${countId} ${explainId}` : countId, "aria-disabled": full ? "true" : null }, "Create API key");
  const why = h("span", { class: "hint", id: explainId }, full ? "The workspace is at its cap: delete a key, or ask the root operator to raise the cap." : "");
  button.addEventListener("click", () => {
    if (full) {
      announce(why.textContent ?? "");
      return;
    }
    openCreateKey(p, refresh);
  });
  return h("div", { class: "field" }, h("span", { class: "count", id: countId }, `${used} of ${max} keys`), button, why);
}

async function todayUsage(ws: string): Promise<Map<string, UsageRow>> {
  const day = today();
  try {
    const r = await call("get", "/v1/workspaces/{workspace}/usage", { path: { workspace: ws }, query: { groupBy: "GROUP_BY_KEY", startDate: day, endDate: day } });
    return new Map((r.rows ?? []).map((row) => [row.group ?? "", row]));
  } catch {
    return new Map(); // usage is a nicety on this page; the keys still show
  }
}

function keyTable(p: Page, keys: Key[], usage: Map<string, UsageRow>): HTMLElement {
  const q = filterName.trim().toLowerCase();
  const shown = keys.filter((k) => (!filterState || state(k) === filterState) && (!q || (k.name ?? "").toLowerCase().includes(q)) && (!filterLegacy || k.legacy));
  const summary = h("p", { class: "hint", role: "status" }, shown.length === keys.length ? `${keys.length} keys shown.` : `${shown.length} of ${keys.length} keys match the filters.`);
  const replaceHint = filterLegacy && shown.length
    ? h("p", { class: "notice" }, "Legacy keys were imported from another gateway and keep its secret format; they cannot be rotated. Replace each: create a keygate key with the same limits, move the application to it, then delete the legacy key.")
    : null;
  if (shown.length === 0) return h("div", {}, summary, h("p", { class: "empty" }, keys.length ? "No key matches the filters." : manager(p.session) ? "No keys yet. Create one with Create API key." : "You have no keys yet. Create one with Create API key."));
  const refresh = () => renderKeys(p);
  const rows = shown.map((k) => [
    h("strong", {}, k.name ?? ""),
    k.owner ?? "",
    k.creator ?? "",
    date(k.createTime),
    k.expireTime ? date(k.expireTime) : "never",
    h("span", { class: `badge ${state(k)}` }, state(k)),
    // An imported key's secret has its old system's format.
    k.legacy ? h("span", {}, h("code", {}, k.partialKey ?? ""), " ", h("span", { class: "badge legacy" }, "legacy")) : h("code", {}, k.partialKey ?? ""),
    kind(k),
    limitsCell(k),
    k.kind === "KEY_KIND_ADMIN" ? "— (no inference)" : todayCell(k, usage.get(k.id ?? "")),
    ...(locked(p, k) ? [k.enabled ? "on" : "off", h("span", { class: "hint" }, "Owners and admins manage admin keys")] : [enableSwitch(p, k, refresh), keyActions(p, k, refresh)]),
  ]);
  return h("div", {}, summary, replaceHint, table("API keys", ["Name", "Owner", "Creator", "Created", "Expires", "Status", "Key", "Kind", "Limits", "Today", "Enabled", "Actions"], rows));
}

// limitsCell is the key's enforced limits, then its report-mode ones and
// its timed override when it has them.
function limitsCell(k: Key): HTMLElement {
  const report = policy(k.reportLimits);
  return h("span", { class: "wraps" }, keyLimits(k),
    report !== "unlimited" ? [h("br"), h("span", {}, `report only: ${report}`)] : null,
    k.limitOverride?.expireTime ? [h("br"), h("span", {}, `override until ${dateTime(k.limitOverride.expireTime)}: ${policy(k.limitOverride.policy)}`)] : null);
}

// locked: a member sees their admin keys (made for them by an owner) but
// may not change them.
function locked(p: Page, k: Key): boolean {
  return !manager(p.session) && k.kind === "KEY_KIND_ADMIN";
}

// todayCell shows requests and tokens today against the daily limits.
function todayCell(k: Key, u: UsageRow | undefined): HTMLElement {
  const req = num(u?.requests);
  const tok = num(u?.promptTokens) + num(u?.completionTokens);
  const rpd = num(k.globalLimits?.rpd);
  const tpd = num(k.globalLimits?.tpd);
  return h("span", {}, `${count(req)}${rpd ? ` / ${count(rpd)}` : ""} requests`, h("br"), `${count(tok)}${tpd ? ` / ${count(tpd)}` : ""} tokens`);
}
