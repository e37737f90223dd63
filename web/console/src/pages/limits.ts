// Limits above the key: the workspace's (all its keys together) and each
// member's (all the keys they own), each enforced, in report mode or under
// a timed override; and the workspace's policy: who may change a key's
// limits, the alert thresholds and the request-log cap. Owners and admins
// change them; everyone else reads them.
import { call, explain, type LimitEditors, type Member, type Model, type Override, type Workspace } from "../api";
import { listModels } from "../data";
import { announce, busy, field, h, notice, replace, select, table } from "../dom";
import { count, dateTime, policy } from "../format";
import { count as countField, FieldError, Fields } from "../keyform";
import { endOverride, type LevelChange, type LevelLimits, type LevelPatch, levelPatch, openLevelLimits } from "../levelform";
import type { Page } from "../main";
import { manager, roleName } from "../session";

// focus is the id of the control to focus once drawn; by default the
// successor of the one focused now (a dialog that saved returns focus to
// its opener, which this render replaces).
export async function renderLimits(p: Page, focus?: string): Promise<void> {
  const ws = p.session.workspace;
  const focusId = focus ?? document.activeElement?.id ?? "";
  const [w, members, models] = await Promise.all([
    call("get", "/v1/workspaces/{workspace}", { path: { workspace: ws } }).then((r) => r.workspace ?? {}),
    call("get", "/v1/workspaces/{workspace}/members", { path: { workspace: ws } }).then((r) => r.members ?? [], (e: unknown) => e),
    listModels().catch(() => []),
  ]);
  const c: Ctx = { p, ws, models, err: h("div", { "aria-live": "polite" }), redraw: (f?: string) => renderLimits(p, f) };
  replace(p.main,
    h("h1", {}, "Limits"),
    h("p", { class: "hint" }, "A request is admitted only if its key, its key's owner (member) and the workspace all admit it, and is then counted at every level. Keys' own limits are on the API keys page."),
    c.err,
    workspaceSection(c, w),
    memberSection(c, members),
    policySection(c, w),
  );
  if (focusId) document.getElementById(focusId)?.focus();
}

interface Ctx {
  p: Page;
  ws: string;
  models: Model[];
  err: HTMLElement;
  redraw(focus?: string): Promise<void>;
}

// overrideText reads "1,000 tpd until 3 Dec 2026, 11:00:00 (launch)".
function overrideText(o?: Override): string {
  if (!o?.expireTime) return "none";
  return `${policy(o.policy)} until ${dateTime(o.expireTime)}${o.reason ? ` (${o.reason})` : ""}`;
}

function workspaceSection(c: Ctx, w: Workspace): HTMLElement {
  const now: LevelLimits = { enforced: w.limits, report: w.reportLimits, override: w.limitOverride };
  const patch = (u: LevelPatch) => call("patch", "/v1/workspaces/{workspace}", { path: { workspace: c.ws }, query: { updateMask: u.mask, etag: w.etag }, body: u.body });
  const save = (ch: LevelChange) => patch(levelPatch(ch));
  const rows = [
    ["Enforced", policy(w.limits)],
    ["Report only", policy(w.reportLimits)],
    ["Timed override", overrideText(w.limitOverride)],
  ];
  const actions = manager(c.p.session)
    ? h("div", { class: "toolbar" },
      h("button", { type: "button", class: "primary", id: "edit-workspace-limits", onclick: () => openLevelLimits(`workspace ${c.ws}`, now, c.models, save, () => c.redraw()) }, "Edit workspace limits"),
      w.limitOverride?.expireTime ? endButton(c, "edit-workspace-limits", `workspace ${c.ws}`, () => patch(endOverride)) : null)
    : h("p", { class: "hint" }, "Owners and admins change the workspace's limits.");
  return h("section", { "aria-labelledby": "ws-limits-h" },
    h("h2", { id: "ws-limits-h" }, "Workspace limits"),
    h("p", { class: "hint" }, `Every key of ${c.ws}, together.`),
    table("Workspace limits", ["Mode", "Limits"], rows),
    actions);
}

// endButton ends the override of a level (called what) now; the button
// leaves with it, so focus goes to the level's Edit button (editId).
function endButton(c: Ctx, editId: string, what: string, end: () => Promise<unknown>): HTMLElement {
  const b = h("button", { type: "button", "aria-label": `End override of ${what}` }, "End override");
  b.addEventListener("click", () => busy(b, async () => {
    try {
      await end();
      announce(`Override of ${what} ended`);
      await c.redraw(editId);
    } catch (e) {
      replace(c.err, notice("error", explain(e, `end the override of ${what}`)));
    }
  }));
  return b;
}

function memberSection(c: Ctx, members: Member[] | unknown): HTMLElement {
  const section = h("section", { "aria-labelledby": "member-limits-h" },
    h("h2", { id: "member-limits-h" }, "Member limits"),
    h("p", { class: "hint" }, "Every key one member owns, together, whatever each key allows."));
  if (!Array.isArray(members)) {
    section.append(notice("error", explain(members, "list the members")));
    return section;
  }
  if (members.length === 0) {
    section.append(h("p", { class: "empty" }, "No members yet. Add them on the Workspaces page."));
    return section;
  }
  const edit = manager(c.p.session);
  const rows = members.map((m) => {
    const who = m.member ?? "";
    const cells = [h("strong", {}, who), roleName(m.role), policy(m.limits), policy(m.reportLimits), overrideText(m.limitOverride)];
    if (!edit) return cells;
    const patch = (u: LevelPatch) => call("patch", "/v1/workspaces/{workspace}/members/{member}", { path: { workspace: c.ws, member: who }, query: { updateMask: u.mask }, body: u.body });
    const save = (ch: LevelChange) => patch(levelPatch(ch));
    const now: LevelLimits = { enforced: m.limits, report: m.reportLimits, override: m.limitOverride };
    const id = `member-${encodeURIComponent(who).replace(/[^A-Za-z0-9_-]/g, "_")}`;
    return [...cells, h("div", { class: "row-actions" },
      h("button", { type: "button", id: `edit-${id}`, "aria-label": `Edit limits of ${who}`, onclick: () => openLevelLimits(who, now, c.models, save, () => c.redraw()) }, "Edit limits"),
      m.limitOverride?.expireTime ? endButton(c, `edit-${id}`, who, () => patch(endOverride)) : null)];
  });
  const head = ["Member", "Role", "Enforced", "Report only", "Timed override"];
  section.append(table("Member limits", edit ? [...head, "Actions"] : head, rows));
  if (!edit) section.append(h("p", { class: "hint" }, "Owners and admins change members' limits."));
  return section;
}

const editors: [LimitEditors, string][] = [
  ["LIMIT_EDITORS_KEY_OWNERS", "Key owners: owners, admins, and members for their own keys"],
  ["LIMIT_EDITORS_ADMINS", "Owners and admins only"],
];

function policySection(c: Ctx, w: Workspace): HTMLElement {
  const section = h("section", { "aria-labelledby": "policy-h" }, h("h2", { id: "policy-h" }, "Policy"));
  const editorsNow = w.limitEditors === "LIMIT_EDITORS_ADMINS" ? "LIMIT_EDITORS_ADMINS" : "LIMIT_EDITORS_KEY_OWNERS";
  const thresholds = (w.alertThresholds ?? []).join(", ");
  const logCap = Number(w.requestLogCap ?? 0);
  if (!manager(c.p.session)) {
    section.append(table("Policy", ["Setting", "Value"], [
      ["Who may change key limits", editors.find(([v]) => v === editorsNow)?.[1] ?? ""],
      ["Alert thresholds", thresholds ? `${thresholds} %` : "none"],
      ["Request-log cap", logCap > 0 ? `${count(logCap)} records` : "the global cap"],
    ]), h("p", { class: "hint" }, "Owners and admins change these."));
    return section;
  }
  const general = h("p", { class: "error", role: "alert" });
  const fields = new Fields(general);
  const who = select(editors, editorsNow);
  const alerts = h("input", { type: "text", autocomplete: "off", value: thresholds, placeholder: "50, 80, 100" });
  const cap = h("input", { type: "text", inputmode: "numeric", autocomplete: "off", value: logCap > 0 ? String(logCap) : "", placeholder: "the global cap" });
  fields.add("limit_editors", who);
  fields.add("alert_thresholds", alerts);
  fields.add("request_log_cap", cap);
  const submit = h("button", { type: "submit", class: "primary", id: "save-policy" }, "Save policy");
  const form = h("form", { novalidate: true }, general,
    h("div", { class: "grid2" },
      field("Who may change key limits", who, "Limits, budgets, report limits and overrides of standard keys."),
      field("Alert thresholds (%)", alerts, "Percentages of any daily limit, token cap, budget or credits, at any level. The first crossing in a period raises an alert (see Alerts). Empty: no alerts."),
      field("Request-log cap", cap, "Most request-log records kept for this workspace. Empty: the global cap.")),
    h("div", { class: "dialog-buttons" }, submit));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    busy(submit, async () => {
      fields.clear();
      let body: Workspace;
      try {
        body = { limitEditors: who.value as LimitEditors, alertThresholds: percentages(alerts.value), requestLogCap: String(countField(cap, "request_log_cap") ?? 0) };
      } catch (e) {
        if (e instanceof FieldError) fields.show(e.field, e.message)?.focus();
        return;
      }
      try {
        await call("patch", "/v1/workspaces/{workspace}", { path: { workspace: c.ws }, query: { updateMask: "limit_editors,alert_thresholds,request_log_cap", etag: w.etag }, body });
        announce("Policy saved");
        await c.redraw("save-policy");
      } catch (e) {
        fields.fail(e, "save the policy")?.focus();
      }
    });
  });
  section.append(form);
  return section;
}

// percentages reads "80, 50 100" as [50, 80, 100]: the order and repeats
// people type do not matter; the keystore judges the range.
function percentages(text: string): number[] {
  const parts = text.split(/[\s,;]+/).filter(Boolean);
  if (parts.some((t) => !/^\d+$/.test(t))) throw new FieldError("alert_thresholds", "Enter whole percentages separated by commas, such as 50, 80, 100.");
  return [...new Set(parts.map(Number))].sort((a, b) => a - b);
}
