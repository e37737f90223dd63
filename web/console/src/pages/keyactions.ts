// What a row of the keys table does: the enable switch, and the Edit
// limits, Rotate, Expire and Delete dialogs. Each change reaches every edge
// within a second (the edges follow the keystore's change stream).
import { ApiError, call, explain, type Key } from "../api";
import { buttons, type Dialog, openDialog } from "../dialog";
import { announce, field, h, notice, select } from "../dom";
import { type LevelChange, openLevelLimits } from "../levelform";
import type { Page } from "../main";
import { showSecret } from "../secret";
import { models } from "./createkey";
import { openExplain } from "./explain";

function ref(p: Page, k: Key) {
  return { workspace: p.session.workspace, key: k.id ?? "" };
}

export function enableSwitch(p: Page, k: Key, refresh: () => void): HTMLElement {
  const on = k.enabled === true;
  const b = h("button", { type: "button", role: "switch", class: "switch", "aria-checked": String(on), "aria-label": `Enabled: ${k.name}`, id: `enable-${k.id}` });
  b.addEventListener("click", async () => {
    b.disabled = true;
    try {
      await call("patch", "/v1/workspaces/{workspace}/keys/{key}", { path: ref(p, k), query: { updateMask: "enabled", etag: k.etag }, body: { enabled: !on } });
      announce(`${k.name} ${on ? "disabled" : "enabled"}`);
      refresh();
    } catch (e) {
      b.disabled = false;
      failure(p, explain(e, on ? `disable ${k.name}` : `enable ${k.name}`));
    }
  });
  return b;
}

// failure shows an error above the table, where it is announced.
function failure(p: Page, message: string): void {
  p.main.querySelector(".notice.error")?.remove();
  p.main.querySelector("h1")?.after(notice("error", message));
}

export function keyActions(p: Page, k: Key, refresh: () => void): HTMLElement {
  const act = (label: string, verb: string, open: () => void, danger = false) =>
    h("button", { type: "button", class: danger ? "danger" : null, "aria-label": `${label} ${k.name}`, id: `${verb}-${k.id}`, onclick: open }, label);
  return h("div", { class: "row-actions" },
    act("Edit limits", "edit", () => editLimits(p, k, refresh)),
    k.limitOverride?.expireTime ? act("End override", "end-override", () => endOverride(p, k, refresh)) : null,
    k.kind !== "KEY_KIND_ADMIN" ? act("Explain limits", "explain", () => openExplain(p, k)) : null,
    // An imported secret has another system's format: it is replaced, not rotated.
    k.legacy ? null : act("Rotate", "rotate", () => rotate(p, k, refresh)),
    k.state !== "KEY_STATE_EXPIRED" ? act("Expire", "expire", () => expire(p, k, refresh), true) : null,
    act("Delete", "delete", () => remove(p, k, refresh), true),
  );
}

// confirmForm is a dialog body whose submit runs action; an error stays in
// the dialog, beside the buttons.
function confirmForm(d: () => Dialog, intro: (Node | string)[], submitLabel: string, doing: string, action: () => Promise<void>, danger = false): HTMLFormElement {
  const err = h("p", { class: "error", role: "alert" });
  const submit = h("button", { type: "submit", class: danger ? "danger primary" : "primary" }, submitLabel);
  const form = h("form", {}, ...intro, err, buttons(h("button", { type: "button", onclick: () => d().close() }, "Cancel"), submit));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    submit.disabled = true;
    err.textContent = "";
    try {
      await action();
    } catch (e) {
      submit.disabled = false;
      err.textContent = explain(e, doing);
    }
  });
  return form;
}

// editLimits sets the key's enforced limits and allowed models, its
// report-mode limits, or a timed override (levelform.ts).
async function editLimits(p: Page, k: Key, refresh: () => void): Promise<void> {
  const now = { enforced: k, report: k.reportLimits, override: k.limitOverride };
  openLevelLimits(k.name ?? "", now, await models(), (c) => call("patch", "/v1/workspaces/{workspace}/keys/{key}", {
    path: ref(p, k), query: { updateMask: keyMask(c), etag: k.etag }, body: keyPatch(c),
  }), refresh, true);
}

// keyMask names every setting of the mode, so what the form leaves empty
// is cleared, not kept.
function keyMask(c: LevelChange): string {
  if (c.mode === "enforced") return "globalLimits,modelLimits,tokenCap,budget,allowedModels";
  return c.mode === "report" ? "report_limits" : "limit_override";
}

function keyPatch(c: LevelChange): Key {
  if (c.mode === "enforced") return { ...c.policy, allowedModels: c.allowedModels };
  return c.mode === "report" ? { reportLimits: c.policy } : { limitOverride: c.override };
}

// endOverride ends the key's timed override now.
function endOverride(p: Page, k: Key, refresh: () => void): void {
  const d: Dialog = openDialog(`End the override of ${k.name}`, confirmForm(() => d,
    [h("p", {}, `${k.name}'s own enforced limits apply again at once, on every edge.`)],
    "End override", `end the override of ${k.name}`, async () => {
      await call("patch", "/v1/workspaces/{workspace}/keys/{key}", { path: ref(p, k), query: { updateMask: "limit_override", etag: k.etag }, body: {} });
      d.onClose(refresh);
      d.close();
      announce(`Override of ${k.name} ended`);
    }));
}

const graces: [string, string][] = [["0", "At once"], ["3600", "In 1 hour"], ["86400", "In 24 hours"], ["604800", "In 7 days"]];

function rotate(p: Page, k: Key, refresh: () => void): void {
  const grace = select(graces, "3600");
  const d: Dialog = openDialog(`Rotate ${k.name}`, confirmForm(() => d,
    [h("p", {}, "Rotating issues a new secret, shown once. Applications using the old secret need the new one before the old one stops working."),
      field("The old secret stops working", grace)],
    "Rotate key", `rotate ${k.name}`, async () => {
      const secs = Number(grace.value);
      const body = secs > 0 ? { graceExpireTime: new Date(Date.now() + secs * 1000).toISOString() } : {};
      const resp = await call("post", "/v1/workspaces/{workspace}/keys/{key}:rotate", { path: ref(p, k), body });
      d.onClose(refresh);
      showSecret(d, k.name ?? "", resp.secret ?? "");
    }));
}

function expire(p: Page, k: Key, refresh: () => void): void {
  const d: Dialog = openDialog(`Expire ${k.name}`, confirmForm(() => d,
    [h("p", {}, `${k.name} stops working at once, at every edge. Its record stays, for the audit log and usage. This cannot be undone.`)],
    "Expire key", `expire ${k.name}`, async () => {
      await call("post", "/v1/workspaces/{workspace}/keys/{key}:expire", { path: ref(p, k), body: {} });
      d.onClose(refresh);
      d.close();
      announce(`${k.name} expired`);
    }, true));
}

function remove(p: Page, k: Key, refresh: () => void): void {
  const typed = h("input", { type: "text", autocomplete: "off", spellcheck: "false" });
  const form = confirmForm(() => d,
    [h("p", {}, `${k.name} will be deleted for good: it stops working at once and its record is removed. To keep the record, expire it instead.`),
      field(`Type ${k.name} to confirm`, typed)],
    "Delete key", `delete ${k.name}`, async () => {
      if (typed.value !== k.name) throw new ApiError(400, "", `type the key's name, ${k.name}, to confirm`);
      await call("delete", "/v1/workspaces/{workspace}/keys/{key}", { path: ref(p, k), query: { etag: k.etag } });
      d.onClose(refresh);
      d.close();
      announce(`${k.name} deleted`);
    }, true);
  const submit = form.querySelector<HTMLButtonElement>("button[type=submit]");
  if (submit) submit.disabled = true;
  typed.addEventListener("input", () => { if (submit) submit.disabled = typed.value !== k.name; });
  const d: Dialog = openDialog(`Delete ${k.name}`, form);
}

