// A few DOM helpers: the console builds its pages with these instead of a
// framework. Text always goes in as text (never HTML), so nothing an API
// returns can inject markup.

type Attrs = Record<string, string | number | boolean | EventListener | undefined | null>;
export type Child = Node | string | number | null | undefined | false | Child[];

// h creates an element: attributes whose name starts with "on" are event
// listeners, booleans toggle the attribute, the rest are set as attributes
// (so "for", "aria-*" and "role" work as written in HTML).
export function h<K extends keyof HTMLElementTagNameMap>(tag: K, attrs: Attrs = {}, ...children: Child[]): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
    } else if (name === "value" && "value" in el) {
      (el as HTMLInputElement).value = String(value);
    } else {
      el.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

export function append(parent: Node, children: Child[]): void {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(parent, c);
    else parent.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

// replace swaps an element's children for new ones.
export function replace(parent: Element, ...children: Child[]): void {
  parent.replaceChildren();
  append(parent, children);
}

let ids = 0;
// uid gives an id for label/description wiring.
export function uid(prefix: string): string {
  ids++;
  return `${prefix}-${ids}`;
}

// announce says something to screen readers through the live region.
export function announce(text: string): void {
  const region = document.getElementById("status");
  if (!region) return;
  region.textContent = "";
  // A fresh text node after a tick makes repeated messages be read again.
  window.setTimeout(() => { region.textContent = text; }, 30);
}

// field puts a control under its visible label, with an optional hint and
// an error slot that describe it, so a message about the field is read with
// it (outside the <label>, so the accessible name is the label alone).
export function field(label: string, control: HTMLInputElement | HTMLSelectElement, hint?: string): HTMLElement {
  const id = control.id || uid("f");
  control.id = id;
  const err = h("span", { class: "error", id: `${id}-error` });
  const described = [`${id}-error`];
  let hintEl: HTMLElement | null = null;
  if (hint) {
    hintEl = h("span", { class: "hint", id: `${id}-hint` }, hint);
    described.push(`${id}-hint`);
  }
  control.setAttribute("aria-describedby", described.join(" "));
  return h("div", { class: "field" }, h("label", { for: id }, label), control, hintEl, err);
}

// setFieldError shows (or clears) the message beside a control made by field.
export function setFieldError(control: HTMLElement, message: string): void {
  const err = document.getElementById(`${control.id}-error`);
  if (err) err.textContent = message;
  if (message) control.setAttribute("aria-invalid", "true");
  else control.removeAttribute("aria-invalid");
}

export function notice(kind: "error" | "warn" | "info", text: string): HTMLElement {
  return h("p", { class: `notice ${kind === "info" ? "" : kind}`, role: kind === "error" ? "alert" : null }, text);
}

// table renders rows with a caption (its accessible name) inside a wrapper
// that scrolls sideways on narrow screens and can be scrolled by keyboard.
export function table(caption: string, head: string[], rows: Child[][], numeric: number[] = []): HTMLElement {
  const cap = h("caption", { class: "visually-hidden" }, caption);
  const thead = h("thead", {}, h("tr", {}, head.map((t, i) => h("th", { scope: "col", class: numeric.includes(i) ? "num" : null }, t))));
  const tbody = h("tbody", {}, rows.map((r) => h("tr", {}, r.map((c, i) => h("td", { class: numeric.includes(i) ? "num" : null }, c)))));
  return h("div", { class: "table-wrap", tabindex: 0, role: "region", "aria-label": caption }, h("table", {}, cap, thead, tbody));
}

export function select(options: [string, string][], value = ""): HTMLSelectElement {
  return h("select", {}, options.map(([v, label]) => h("option", { value: v, selected: v === value }, label)));
}

// busy runs f with the button marked busy: aria-disabled rather than
// disabled, which would drop the keyboard focus to the page, and a second
// press while f runs does nothing (so a double click acts once).
export async function busy(button: HTMLButtonElement, f: () => Promise<void>): Promise<void> {
  if (button.getAttribute("aria-busy") === "true") return;
  button.setAttribute("aria-busy", "true");
  button.setAttribute("aria-disabled", "true");
  try {
    await f();
  } finally {
    button.removeAttribute("aria-busy");
    button.removeAttribute("aria-disabled");
  }
}
