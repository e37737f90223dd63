// Showing a new secret once: with a Copy button and the warning that it
// will not be shown again. When the dialog closes, the secret leaves the
// page and every reference this code held to it.
import type { Dialog } from "./dialog";
import { buttons } from "./dialog";
import { announce, h, replace } from "./dom";

// kept says what keygate keeps of it: a key's hash only; a webhook's
// secret itself, to sign with.
export function showSecret(d: Dialog, keyName: string, secret: string, kept = "keygate keeps only its hash."): void {
  const input = h("input", { type: "text", readonly: true, value: secret, "aria-describedby": "secret-warning", spellcheck: "false", autocomplete: "off" });
  input.id = "new-secret";
  const status = h("span", { role: "status", class: "hint" });
  const copy = h("button", { type: "button", onclick: () => copySecret(input, status) }, "Copy");
  const done = h("button", { type: "button", class: "primary", onclick: () => d.close() }, "Done");
  replace(d.body,
    h("p", { class: "notice warn", id: "secret-warning" }, `Copy the secret of ${keyName} now: it will not be shown again. ${kept}`),
    h("label", { for: input.id }, `Secret of ${keyName}`),
    h("div", { class: "secret" }, input, copy),
    status,
    buttons(done),
  );
  d.onClose(() => {
    input.value = "";
  });
  input.focus();
  input.select();
  announce(`The new secret of ${keyName} is shown once; copy it now.`);
}

async function copySecret(input: HTMLInputElement, status: HTMLElement): Promise<void> {
  try {
    await navigator.clipboard.writeText(input.value);
  } catch {
    // Without the async clipboard (plain HTTP on another host) the
    // selection can still be copied the old way.
    input.select();
    if (!document.execCommand("copy")) {
      status.textContent = "Copying failed: select the secret and copy it by hand.";
      return;
    }
  }
  status.textContent = "Copied to the clipboard.";
}
