// Prepaid credits: the balance the workspace's requests are drawn from
// (granted − spent), every top-up and adjustment newest first, and, for
// owners, the form that records one. Each entry carries an idempotency id
// chosen when the form is shown, so a double click or a retry after a lost
// answer records it once.
import { ApiError, call, type CreditEntry, type CreditEntryKind, type Credits, explain } from "../api";
import { announce, busy, field, h, notice, replace, select, table } from "../dom";
import { dateTime, dollars } from "../format";
import { FieldError, Fields } from "../keyform";
import type { Page } from "../main";
import { manager } from "../session";

export async function renderCredits(p: Page): Promise<void> {
  const ws = p.session.workspace;
  const credits = await call("get", "/v1/workspaces/{workspace}/credits", { path: { workspace: ws } });
  const history = h("div", {});
  replace(p.main,
    h("h1", {}, "Credits"),
    balance(credits),
    owner(p) ? entryForm(p) : h("p", { class: "hint" }, "Owners record top-ups and adjustments."),
    h("h2", {}, "History"),
    history,
  );
  await loadHistory(p, history, "");
}

// owner: the keystore lets owners (and the root token) move credits.
function owner(p: Page): boolean {
  return p.session.root || p.session.role === "ROLE_OWNER";
}

function card(label: string, value: string): HTMLElement {
  return h("div", { class: "card", role: "group", "aria-label": label }, h("div", {}, label), h("div", { class: "big" }, value));
}

function balance(c: Credits): HTMLElement {
  return h("section", { "aria-labelledby": "balance-h" },
    h("h2", { id: "balance-h", class: "visually-hidden" }, "Balance"),
    h("div", { class: "cards" },
      card("Balance", dollars(c.balanceUsd)),
      card("Granted", dollars(c.grantedUsd)),
      card("Spent", dollars(c.spentUsd))),
    c.enabled
      ? h("p", { class: "hint" }, "Every request's cost is drawn from the balance. A request whose estimate the balance cannot cover is refused with 402 insufficient_credits.")
      : h("p", { class: "hint" }, "This workspace holds no credits: its requests are limited by their limits and budgets only. The first top-up turns credits on; from then on every request's cost is drawn from the balance."));
}

const kinds: [CreditEntryKind, string][] = [["CREDIT_ENTRY_KIND_TOP_UP", "Top up"], ["CREDIT_ENTRY_KIND_ADJUSTMENT", "Adjustment"]];

function entryForm(p: Page): HTMLElement {
  const general = h("p", { class: "error", role: "alert" });
  const fields = new Fields(general);
  const kind = select(kinds);
  const amount = h("input", { type: "text", inputmode: "decimal", autocomplete: "off", placeholder: "25.00" });
  const note = h("input", { type: "text", autocomplete: "off", maxlength: 512 });
  fields.add("kind", kind);
  fields.add("amount_usd", amount);
  fields.add("note", note);
  const submit = h("button", { type: "submit", class: "primary", id: "add-credits" }, "Top up");
  kind.addEventListener("change", () => { submit.textContent = kind.value === "CREDIT_ENTRY_KIND_TOP_UP" ? "Top up" : "Adjust"; });
  // One id per entry the person means: kept across retries of this one,
  // renewed once it is recorded.
  let id = entryId();
  const form = h("form", { class: "toolbar", novalidate: true },
    field("Kind", kind),
    field("Amount (USD)", amount, "A top-up adds money; an adjustment corrects the balance and may be negative, e.g. -2.50."),
    field("Note (optional)", note, "e.g. the invoice number"),
    submit);
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    busy(submit, async () => {
      fields.clear();
      let entry: CreditEntry;
      try {
        entry = read(id, kind, amount, note);
      } catch (e) {
        if (e instanceof FieldError) fields.show(e.field, e.message)?.focus();
        return;
      }
      try {
        const r = await call("post", "/v1/workspaces/{workspace}/credits/entries", { path: { workspace: p.session.workspace }, body: entry });
        id = entryId();
        const what = `${kind.value === "CREDIT_ENTRY_KIND_TOP_UP" ? "Top-up" : "Adjustment"} of ${dollars(r.entry?.amountUsd ?? entry.amountUsd)}`;
        announce(r.replayed ? `${what} was already recorded` : `${what} recorded`);
        await renderCredits(p);
        document.getElementById("add-credits")?.focus();
      } catch (e) {
        // The id stays: if the entry was recorded and only the answer was
        // lost, sending again records nothing more.
        fields.fail(e, "record the credits")?.focus();
      }
    });
  });
  return h("section", { "aria-labelledby": "add-credits-h" }, h("h2", { id: "add-credits-h" }, "Top up or adjust"), general, form);
}

function read(id: string, kind: HTMLSelectElement, amount: HTMLInputElement, note: HTMLInputElement): CreditEntry {
  const v = amount.value.trim();
  const topUp = kind.value === "CREDIT_ENTRY_KIND_TOP_UP";
  if (!/^-?\d+(\.\d{1,6})?$/.test(v)) throw new FieldError("amount_usd", "Enter an amount in US dollars, such as 25.00 (at most 6 decimals).");
  if (topUp && (v.startsWith("-") || !/[1-9]/.test(v))) throw new FieldError("amount_usd", "A top-up adds money: enter an amount above 0, or choose Adjustment.");
  const e: CreditEntry = { id, kind: kind.value as CreditEntryKind, amountUsd: v };
  if (note.value.trim()) e.note = note.value.trim();
  return e;
}

// entryId is a fresh idempotency id. crypto.randomUUID needs a secure
// context (HTTPS or localhost); a console on plain HTTP elsewhere builds a
// version 4 UUID from getRandomValues, which works everywhere.
function entryId(): string {
  if (typeof crypto.randomUUID === "function") return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const x = [...b].map((n) => n.toString(16).padStart(2, "0")).join("");
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20)}`;
}

const kindNames: Record<CreditEntryKind, string> = {
  CREDIT_ENTRY_KIND_UNSPECIFIED: "—",
  CREDIT_ENTRY_KIND_TOP_UP: "top-up",
  CREDIT_ENTRY_KIND_ADJUSTMENT: "adjustment",
};

// loadHistory shows one page of entries, newest first; "Load more" adds
// the next. Members may not read it: they are told so.
async function loadHistory(p: Page, out: HTMLElement, pageToken: string): Promise<void> {
  let resp;
  try {
    resp = await call("get", "/v1/workspaces/{workspace}/credits/entries", { path: { workspace: p.session.workspace }, query: { pageSize: 50, pageToken } });
  } catch (e) {
    replace(out, e instanceof ApiError && e.status === 403 && !manager(p.session)
      ? h("p", { class: "hint" }, "Owners and admins read the credit history.")
      : notice("error", explain(e, "load the credit history")));
    return;
  }
  const entries = [...(resp.entries ?? [])].sort((a, b) => (b.createTime ?? "").localeCompare(a.createTime ?? ""));
  const rows = entries.map((e) => [dateTime(e.createTime), kindNames[e.kind ?? "CREDIT_ENTRY_KIND_UNSPECIFIED"], dollars(e.amountUsd), e.note ?? "", e.actor ?? "", h("code", {}, e.id ?? "")]);
  const more = resp.nextPageToken
    ? h("button", { type: "button", onclick: () => { more?.remove(); loadHistory(p, out, resp.nextPageToken ?? ""); } }, "Load more")
    : null;
  const part = rows.length
    ? table(pageToken ? "Credit history, more" : "Credit history", ["Time", "Kind", "Amount", "Note", "By", "Entry id"], rows, [2])
    : h("p", { class: "empty" }, pageToken ? "No more entries." : "No entries yet.");
  if (pageToken) out.append(part, more ?? "");
  else replace(out, part, more);
}
