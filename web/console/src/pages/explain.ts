// Explain limits: every limit on a key at every level (the key, its
// owner's keys together, the workspace's), enforced or in report mode,
// with its live window: used, reserved by requests in flight, remaining,
// and when it resets; and whether a request of a chosen model and size
// would be admitted now, or which limit would deny it. It reads the
// limiter's live state and charges nothing.
import { call, explain, type Explained, type Key, type LimitState } from "../api";
import { buttons, openDialog } from "../dialog";
import { announce, busy, field, h, notice, replace, select, setFieldError, table } from "../dom";
import { dateTime, kindLabels, levelNames, limitedBy, mode, quantity, windowName } from "../format";
import { FieldError, count } from "../keyform";
import type { Page } from "../main";
import { models } from "./createkey";

export async function openExplain(p: Page, k: Key): Promise<void> {
  const catalog = await models();
  const model = select([["", "None (global limits only)"], ...catalog.map((m): [string, string] => [m.id ?? "", m.id ?? ""])]);
  const tokens = h("input", { type: "text", inputmode: "numeric", autocomplete: "off", value: "1" });
  // The verdict is announced; the table is there to read.
  const out = h("div", {});
  const submit = h("button", { type: "submit", class: "primary" }, "Explain");
  const form = h("form", { class: "toolbar", novalidate: true },
    field("Model", model), field("Estimated tokens", tokens, "Prompt and output tokens the request would reserve."), submit);
  const d = openDialog(`Explain limits of ${k.name}`, form, out,
    buttons(h("button", { type: "button", onclick: () => d.close() }, "Close")));
  d.el.classList.add("wide");
  const run = () => busy(submit, async () => {
    setFieldError(tokens, "");
    let n: number | undefined;
    try {
      n = count(tokens, "estimated_tokens");
    } catch (e) {
      if (e instanceof FieldError) {
        setFieldError(tokens, e.message);
        tokens.focus();
      }
      return;
    }
    try {
      const r = await call("get", "/v1/workspaces/{workspace}/keys/{key}:explain", {
        path: { workspace: p.session.workspace, key: k.id ?? "" },
        query: { model: model.value, estimatedTokens: n ? String(n) : "" },
      });
      replace(out, ...result(k, model.value, n ?? 1, r));
      announce(verdict(model.value, n ?? 1, r));
    } catch (e) {
      replace(out, notice("error", explain(e, `explain the limits of ${k.name}`)));
    }
  });
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    run();
  });
  await run();
}

// verdict says in words what would happen to the request now.
function verdict(model: string, tokens: number, r: Explained): string {
  const req = `A request${model ? ` for ${model}` : ""} of ${tokens.toLocaleString()} ${tokens === 1 ? "token" : "tokens"}`;
  if (r.wouldAdmit) return `${req} would be admitted now.`;
  const by = limitedBy(r.deniedLevel, r.deniedBy, r.deniedModel);
  return `${req} would be denied now by the ${levelNames[r.deniedLevel ?? "LIMIT_LEVEL_UNSPECIFIED"]}'s ${kindLabels[r.deniedBy ?? "LIMIT_KIND_UNSPECIFIED"]}${r.deniedModel ? ` for ${r.deniedModel}` : ""} (${by}).`;
}

function result(k: Key, model: string, tokens: number, r: Explained): (Node | string)[] {
  const reported = (r.reported ?? []).map((x) => limitedBy(x.level, x.kind, x.model));
  const rows = (r.limits ?? []).map((s: LimitState) => [
    levelNames[s.level ?? "LIMIT_LEVEL_UNSPECIFIED"],
    `${kindLabels[s.kind ?? "LIMIT_KIND_UNSPECIFIED"]}${s.model ? ` (${s.model})` : ""}`,
    mode(s.mode), windowName(s.window),
    quantity(s, s.limit), quantity(s, s.used), quantity(s, s.reserved), quantity(s, s.remaining),
    // A rolling window with nothing in it has no reset time.
    s.resetTime ? dateTime(s.resetTime) : s.window === "never" ? "never" : "—",
  ]);
  return [
    h("p", { class: `notice ${r.wouldAdmit ? "" : "warn"}`, id: "explain-verdict" }, verdict(model, tokens, r)),
    r.estimatedCostUsd ? h("p", { class: "hint" }, `Estimated cost: $${r.estimatedCostUsd} (at the model's dearest token price).`) : null,
    reported.length ? h("p", { class: "hint" }, `Report-mode limits that would deny it (counted, never denying): ${reported.join(", ")}.`) : null,
    rows.length
      ? table(`Limits of ${k.name}`, ["Level", "Limit", "Mode", "Window", "Allowed", "Used", "Reserved", "Remaining", "Resets"], rows, [4, 5, 6, 7])
      : h("p", { class: "empty" }, "No limit applies to this key at any level."),
  ].filter((x): x is HTMLElement => x !== null);
}
