// The limits of one level (a key, one member's keys together, or a
// workspace's) in one dialog, in any of its three modes: the enforced
// limits, the report-mode (shadow) ones that never deny, or a timed
// override that replaces enforced limits until a time and then reverts by
// itself. Choosing a mode fills the form with what that mode holds now.
import type { Key, Model, Override, Policy } from "./api";
import { buttons, openDialog } from "./dialog";
import { announce, field, h, replace, select } from "./dom";
import { FieldError, Fields, settingsFields } from "./keyform";

export type LevelMode = "enforced" | "report" | "override";

// LevelLimits is what a level holds now (a key's enforced limits come
// with the models it may use).
export interface LevelLimits {
  enforced?: Policy & Pick<Key, "allowedModels">;
  report?: Policy;
  override?: Override;
}

// LevelChange is what the dialog sets: one mode's limits (and, for a
// key's enforced limits, its allowed models).
export interface LevelChange {
  mode: LevelMode;
  policy: Policy;
  allowedModels: string[];
  override?: Override;
}

// LevelPatch is the update of a workspace or a member that sets one mode:
// the body and the update mask naming its field.
export interface LevelPatch {
  mask: "limits" | "report_limits" | "limit_override";
  body: { limits?: Policy; reportLimits?: Policy; limitOverride?: Override };
}

export function levelPatch(c: LevelChange): LevelPatch {
  if (c.mode === "enforced") return { mask: "limits", body: { limits: c.policy } };
  if (c.mode === "report") return { mask: "report_limits", body: { reportLimits: c.policy } };
  return { mask: "limit_override", body: { limitOverride: c.override } };
}

const modes: [LevelMode, string][] = [
  ["enforced", "Enforced: deny requests above the limits"],
  ["report", "Report only: count and report, never deny"],
  ["override", "Timed override: replace enforced limits until a time"],
];

// endOverride is the patch that ends a level's override now.
export const endOverride: LevelPatch = { mask: "limit_override", body: {} };

// openLevelLimits edits the limits of the level called name; save sends
// the change (a failure stays in the dialog, beside the field it names).
// A key's enforced limits also choose its allowed models (withAllowed).
export function openLevelLimits(name: string, now: LevelLimits, models: Model[], save: (c: LevelChange) => Promise<unknown>, done: () => void, withAllowed = false): void {
  const general = h("p", { class: "error", role: "alert" });
  const modeSel = select(modes, "enforced");
  const until = h("input", { type: "datetime-local", min: localInput(new Date()) });
  const reason = h("input", { type: "text", autocomplete: "off", maxlength: 256 });
  if (now.override?.expireTime) until.value = localInput(new Date(now.override.expireTime));
  reason.value = now.override?.reason ?? "";
  const overrideFields = h("div", { class: "grid2" },
    field("Until", until, "Your local time. At that moment the enforced limits are back, on every edge."),
    field("Reason (optional)", reason, "Kept in the audit log."));
  const slot = h("div", {});
  let fields = new Fields(general);
  let settings: ReturnType<typeof settingsFields>;
  const build = () => {
    const mode = modeSel.value as LevelMode;
    fields = new Fields(general);
    fields.add("expire_time", until);
    fields.add("reason", reason);
    const base = mode === "enforced" ? now.enforced : mode === "report" ? now.report : (now.override?.policy ?? now.enforced);
    settings = settingsFields(fields, models, base, withAllowed && mode === "enforced");
    overrideFields.hidden = mode !== "override";
    replace(slot, settings.el);
  };
  modeSel.addEventListener("change", build);
  build();

  const submit = h("button", { type: "submit", class: "primary" }, "Save limits");
  const form = h("form", { novalidate: true }, general,
    field("Mode", modeSel, "Report-mode limits are counted against the same usage and reported (Explain, the request log, the audit log) when they would deny."),
    overrideFields, slot,
    buttons(h("button", { type: "button", onclick: () => d.close() }, "Cancel"), submit));
  const d = openDialog(`Edit limits of ${name}`, form);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    fields.clear();
    let change: LevelChange;
    try {
      change = read(modeSel.value as LevelMode, settings.read(), until, reason);
    } catch (e) {
      if (e instanceof FieldError) fields.show(e.field, e.message)?.focus();
      return;
    }
    submit.disabled = true;
    try {
      await save(change);
      d.onClose(done);
      d.close();
      announce(`Limits of ${name} saved`);
    } catch (e) {
      submit.disabled = false;
      fields.fail(e, `save the limits of ${name}`)?.focus();
    }
  });
}

function read(mode: LevelMode, s: ReturnType<ReturnType<typeof settingsFields>["read"]>, until: HTMLInputElement, reason: HTMLInputElement): LevelChange {
  const p: Policy = {};
  if (s.globalLimits) p.globalLimits = s.globalLimits;
  if (s.modelLimits.length) p.modelLimits = s.modelLimits;
  if (s.tokenCap) p.tokenCap = s.tokenCap;
  if (s.budget) p.budget = s.budget;
  if (mode !== "override") return { mode, policy: p, allowedModels: s.allowedModels };
  const end = until.value ? new Date(until.value) : null;
  if (!end || Number.isNaN(end.getTime())) throw new FieldError("expire_time", "Choose when the override ends.");
  if (end.getTime() <= Date.now()) throw new FieldError("expire_time", "Choose a time in the future.");
  const o: Override = { policy: p, expireTime: end.toISOString() };
  if (reason.value.trim()) o.reason = reason.value.trim();
  return { mode, policy: p, allowedModels: [], override: o };
}

// localInput is a time as a datetime-local input holds it (local, to the
// minute).
function localInput(d: Date): string {
  return new Date(d.getTime() - d.getTimezoneOffset() * 60_000).toISOString().slice(0, 16);
}
