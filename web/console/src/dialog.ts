// Modal dialogs on the native <dialog> element: showModal makes the rest of
// the page inert and Escape closes it; this adds what it leaves out: Tab
// wraps inside the dialog, focus returns to the control that opened it, and
// the dialog leaves the page when it closes (with any secret it showed).
import { Child, h, replace, uid } from "./dom";

export interface Dialog {
  el: HTMLDialogElement;
  // body holds the dialog's content below its heading; replace it to move
  // to a next step (e.g. from a form to the secret it produced).
  body: HTMLElement;
  close(): void;
  // onClose runs once, after the dialog has left the page.
  onClose(f: () => void): void;
}

const focusable = "a[href], button:not([disabled]), input:not([disabled]), select:not([disabled]), textarea:not([disabled]), [tabindex]:not([tabindex='-1'])";

export function openDialog(title: string, ...content: Child[]): Dialog {
  const opener = document.activeElement as HTMLElement | null;
  const titleId = uid("dlg");
  const body = h("div", {});
  replace(body, ...content);
  const el = h("dialog", { "aria-labelledby": titleId }, h("h2", { id: titleId }, title), body);
  const closers: (() => void)[] = [];
  el.addEventListener("keydown", (ev) => trapTab(el, ev));
  el.addEventListener("close", () => {
    el.remove();
    if (opener && opener.isConnected) opener.focus();
    else document.getElementById("main")?.focus();
    for (const f of closers) f();
  });
  document.body.appendChild(el);
  el.showModal();
  focusFirst(el);
  return {
    el,
    body,
    close: () => el.close(),
    onClose: (f) => closers.push(f),
  };
}

// focusFirst puts focus on the first field (or, failing that, the first
// control) of the dialog, so typing can start at once.
export function focusFirst(el: HTMLElement): void {
  const first = el.querySelector<HTMLElement>("[autofocus], input:not([type=hidden]):not([readonly]), select, textarea") ??
    el.querySelector<HTMLElement>(focusable);
  first?.focus();
}

function trapTab(el: HTMLElement, ev: KeyboardEvent): void {
  if (ev.key !== "Tab") return;
  const items = [...el.querySelectorAll<HTMLElement>(focusable)].filter((x) => x.offsetParent !== null || x === document.activeElement);
  if (items.length === 0) return;
  const first = items[0];
  const last = items[items.length - 1];
  if (ev.shiftKey && document.activeElement === first) {
    ev.preventDefault();
    last.focus();
  } else if (!ev.shiftKey && document.activeElement === last) {
    ev.preventDefault();
    first.focus();
  }
}

// buttons lays out a dialog's action row.
export function buttons(...children: Child[]): HTMLElement {
  return h("div", { class: "dialog-buttons" }, ...children);
}
