// The fields of a key's settings, shared by the Create dialog and the Edit
// limits dialog: global and per-model limits, token cap, budget and allowed
// models. Each control is registered under the request field it sets
// (global_limits.rpm …), so a 400 naming that field shows beside it.
import { ApiError, type Budget, explain, type Key, type Limits, type Model, type ModelLimits, type Policy, type ResetPeriod, type TokenCap } from "./api";
import { h, field, select, setFieldError, uid } from "./dom";
import { type LimitName, limitLabels, limitNames, num, periods } from "./format";

export interface Settings {
  globalLimits?: Limits;
  modelLimits: ModelLimits[];
  tokenCap?: TokenCap;
  budget?: Budget;
  allowedModels: string[];
}

export class Fields {
  private controls = new Map<string, HTMLElement>();
  private general: HTMLElement;

  constructor(general: HTMLElement) {
    this.general = general;
  }

  add(name: string, control: HTMLElement): void {
    this.controls.set(name, control);
  }

  // show puts a message beside the control its field names (the longest
  // registered prefix), or in the form's general slot. A field a level's
  // update names in full ("patch.limits.global_limits.rpd") finds the
  // control registered under its tail ("global_limits.rpd").
  show(fieldName: string, message: string): HTMLElement | null {
    this.clear();
    let c: HTMLElement | undefined;
    for (let tail = fieldName; tail && !c; tail = tail.includes(".") ? tail.slice(tail.indexOf(".") + 1) : "") {
      let name = tail;
      while (name && !this.controls.has(name)) name = name.includes(".") ? name.slice(0, name.lastIndexOf(".")) : "";
      c = name ? this.controls.get(name) : undefined;
    }
    if (!c) {
      this.general.textContent = message;
      return null;
    }
    setFieldError(c, message);
    return c;
  }

  clear(): void {
    this.general.textContent = "";
    for (const c of this.controls.values()) setFieldError(c, "");
  }

  // fail shows why a call failed: a 400 beside the field it names, a name
  // already taken beside the name, anything else in words at the top. It
  // returns the control to focus.
  fail(e: unknown, doing: string): HTMLElement | null {
    if (e instanceof ApiError && e.field) return this.show(e.field, e.message);
    const taken = e instanceof ApiError && e.code === "ALREADY_EXISTS";
    return this.show(taken ? "name" : "", explain(e, doing));
  }
}

// FieldError is a value the person must fix, found before sending.
export class FieldError extends Error {
  constructor(readonly field: string, message: string) {
    super(message);
  }
}

export function count(input: HTMLInputElement, name: string): number | undefined {
  const v = input.value.trim();
  if (v === "") return undefined;
  if (!/^\d+$/.test(v)) throw new FieldError(name, "Enter a whole number, 0 or more (empty means unlimited).");
  return Number(v);
}

function limitInputs(fields: Fields, prefix: string, values: Limits | undefined, labelSuffix = ""): { el: HTMLElement; read(): Limits | undefined } {
  const inputs = {} as Record<LimitName, HTMLInputElement>;
  const el = h("div", { class: "grid4" });
  for (const n of limitNames) {
    const input = h("input", { type: "text", inputmode: "numeric", autocomplete: "off", value: num(values?.[n]) > 0 ? String(values?.[n]) : "", placeholder: "unlimited" });
    inputs[n] = input;
    fields.add(`${prefix}.${n}`, input);
    el.append(field(limitLabels[n] + labelSuffix, input));
  }
  return {
    el,
    read() {
      const out: Limits = {};
      for (const n of limitNames) {
        const v = count(inputs[n], `${prefix}.${n}`);
        if (v) out[n] = String(v);
      }
      return Object.keys(out).length ? out : undefined;
    },
  };
}

// settingsFields builds the settings part of a key form, filled from key
// (when editing), with per-model choices from the model catalog. A level's
// form (a member, a workspace) is the same without the allowed models.
export function settingsFields(fields: Fields, models: Model[], key?: Policy & Pick<Key, "allowedModels">, withAllowed = true): { el: HTMLElement; read(): Settings } {
  const global = limitInputs(fields, "global_limits", key?.globalLimits);

  // Per-model limits: one row per model, added and removed at will.
  const rows: { model: HTMLSelectElement; limits: ReturnType<typeof limitInputs>; el: HTMLElement }[] = [];
  const list = h("div", {});
  const addRow = (ml?: ModelLimits) => {
    const n = rows.length + 1;
    const model = select(models.map((m) => [m.id ?? "", m.id ?? ""]), ml?.model ?? models[0]?.id ?? "");
    const limits = limitInputs(fields, `model_limits`, ml?.limits, ` (model limit ${n})`);
    const legendId = uid("ml");
    const row = { model, limits, el: h("fieldset", { "aria-labelledby": legendId }) };
    const remove = h("button", { type: "button", class: "link", onclick: () => {
      rows.splice(rows.indexOf(row), 1);
      row.el.remove();
      addButton.focus();
    } }, `Remove model limit ${n}`);
    row.el.append(h("legend", { id: legendId }, `Model limit ${n}`), field("Model", model), limits.el, remove);
    rows.push(row);
    list.append(row.el);
  };
  const addButton = h("button", { type: "button", onclick: () => { addRow(); rows[rows.length - 1].model.focus(); } }, "Add a per-model limit");
  if (models.length === 0) addButton.disabled = true;
  for (const ml of key?.modelLimits ?? []) addRow(ml);

  const capTokens = h("input", { type: "text", inputmode: "numeric", autocomplete: "off", placeholder: "none", value: num(key?.tokenCap?.tokens) > 0 ? String(key?.tokenCap?.tokens) : "" });
  const capPeriod = select(periods, key?.tokenCap?.resetPeriod ?? "RESET_PERIOD_MONTHLY");
  fields.add("token_cap", capTokens);
  const budgetAmount = h("input", { type: "text", inputmode: "decimal", autocomplete: "off", placeholder: "none", value: key?.budget?.amountUsd && num(key.budget.amountUsd) > 0 ? key.budget.amountUsd : "" });
  const budgetPeriod = select(periods, key?.budget?.resetPeriod ?? "RESET_PERIOD_MONTHLY");
  fields.add("budget", budgetAmount);

  const allowed = new Set(key?.allowedModels ?? []);
  const checks = models.map((m) => h("input", { type: "checkbox", value: m.id ?? "", checked: allowed.has(m.id ?? "") }));
  const checksEl = h("div", { class: "checks", id: uid("allowed") }, checks.map((c) => h("label", {}, c, c.value)));
  if (withAllowed) fields.add("allowed_models", checksEl);

  const el = h("div", {},
    h("fieldset", {}, h("legend", {}, "Global limits"), h("p", { class: "hint" }, "Empty means unlimited. Minutes are rolling; days reset at 00:00 UTC."), global.el),
    h("fieldset", {}, h("legend", {}, "Per-model limits"), h("p", { class: "hint" }, "Apply on top of the global limits, to requests for one model."), list, addButton),
    h("fieldset", {}, h("legend", {}, "Token cap and budget"),
      h("div", { class: "grid2" }, field("Token cap (tokens)", capTokens), field("Token cap resets", capPeriod),
        field("Budget (USD)", budgetAmount, "e.g. 5.00"), field("Budget resets", budgetPeriod))),
    withAllowed ? h("fieldset", {}, h("legend", {}, "Allowed models"), h("p", { class: "hint" }, "None ticked means every model."), checksEl,
      h("span", { class: "error", id: `${checksEl.id}-error` })) : null,
  );
  return {
    el,
    read() {
      const tokens = count(capTokens, "token_cap");
      const amount = budgetAmount.value.trim();
      if (amount && !/^\d+(\.\d{1,6})?$/.test(amount)) throw new FieldError("budget", "Enter an amount in US dollars, such as 5.00 (at most 6 decimals).");
      return {
        globalLimits: global.read(),
        modelLimits: rows.map((r) => ({ model: r.model.value, limits: r.limits.read() ?? {} })),
        tokenCap: tokens ? { tokens: String(tokens), resetPeriod: capPeriod.value as ResetPeriod } : undefined,
        budget: amount && num(amount) > 0 ? { amountUsd: amount, resetPeriod: budgetPeriod.value as ResetPeriod } : undefined,
        allowedModels: checks.filter((c) => c.checked).map((c) => c.value),
      };
    },
  };
}
