// Models and providers: the catalog keys are limited and priced by. Every
// credential reads it; only the root token adds, reprices and removes.
import { call, explain, type Model, type Provider, type ProviderKind } from "../api";
import { listModels } from "../data";
import { announce, field, h, notice, replace, select, table } from "../dom";
import { date } from "../format";
import type { Page } from "../main";

export async function renderModels(p: Page): Promise<void> {
  const [models, providers] = await Promise.all([
    listModels(),
    call("get", "/v1/providers", {}).then((r) => r.providers ?? []),
  ]);
  const root = p.session.root;
  const err = h("div", { "aria-live": "polite" });
  const ctx: Ctx = { p, err, redraw: () => renderModels(p) };
  replace(p.main, h("h1", {}, "Models"),
    root ? null : h("p", { class: "hint" }, "Only the root token edits models and providers."),
    err,
    h("h2", {}, "Models"),
    modelTable(ctx, models, root),
    root ? addModel(ctx, providers) : null,
    h("h2", {}, "Providers"),
    providerTable(ctx, providers, root),
    root ? addProvider(ctx) : null,
  );
}

interface Ctx {
  p: Page;
  err: HTMLElement;
  redraw(): Promise<void>;
}

// act runs a change, then redraws; a failure is said in words above.
async function act(c: Ctx, doing: string, done: string, f: () => Promise<unknown>): Promise<void> {
  try {
    await f();
    announce(done);
    await c.redraw();
  } catch (e) {
    replace(c.err, notice("error", explain(e, doing)));
  }
}

const price = (v?: string) => (v ? `$${v}` : "—");

const kindNames: Record<ProviderKind, string> = {
  PROVIDER_KIND_UNSPECIFIED: "OpenAI-compatible",
  PROVIDER_KIND_OPENAI: "OpenAI-compatible",
  PROVIDER_KIND_ANTHROPIC: "Anthropic",
};

function modelTable(c: Ctx, models: Model[], root: boolean): HTMLElement {
  if (models.length === 0) return h("p", { class: "empty" }, "No models yet.");
  const rows = models.map((m) => {
    const id = m.id ?? "";
    const cache = `${price(m.cacheWritePricePerMillionUsd || m.inputPricePerMillionUsd)} / ${price(m.cacheReadPricePerMillionUsd || m.inputPricePerMillionUsd)}`;
    if (!root) return [h("strong", {}, id), m.provider ?? "", m.upstreamModel || id, price(m.inputPricePerMillionUsd), price(m.outputPricePerMillionUsd), cache, date(m.updateTime)];
    const input = h("input", { type: "text", inputmode: "decimal", class: "narrow", value: m.inputPricePerMillionUsd ?? "", "aria-label": `Input price of ${id}, USD per million tokens` });
    const output = h("input", { type: "text", inputmode: "decimal", class: "narrow", value: m.outputPricePerMillionUsd ?? "", "aria-label": `Output price of ${id}, USD per million tokens` });
    const save = h("button", { type: "button", "aria-label": `Save prices of ${id}` }, "Save prices");
    // Model and workspace masks take the fields' proto names.
    save.addEventListener("click", () => act(c, `reprice ${id}`, `Prices of ${id} saved`, () =>
      call("patch", "/v1/models/{model}", { path: { model: id }, query: { updateMask: "input_price_per_million_usd,output_price_per_million_usd" }, body: { inputPricePerMillionUsd: input.value.trim(), outputPricePerMillionUsd: output.value.trim() } })));
    const del = h("button", { type: "button", class: "danger", "aria-label": `Delete model ${id}` }, "Delete");
    del.addEventListener("click", () => act(c, `delete ${id}`, `${id} deleted`, () => call("delete", "/v1/models/{model}", { path: { model: id } })));
    return [h("strong", {}, id), m.provider ?? "", m.upstreamModel || id, input, output, cache, date(m.updateTime), h("div", { class: "row-actions" }, save, del)];
  });
  const head = ["Model", "Provider", "Upstream model", "Input, USD per million tokens", "Output, USD per million tokens", "Cache write / read", "Updated"];
  return table("Models", root ? [...head, "Actions"] : head, rows);
}

function addModel(c: Ctx, providers: Provider[]): HTMLElement {
  const id = h("input", { type: "text", autocomplete: "off", required: true });
  const provider = select(providers.map((p) => [p.id ?? "", p.id ?? ""]));
  const upstream = h("input", { type: "text", autocomplete: "off", placeholder: "same as the model" });
  const input = h("input", { type: "text", inputmode: "decimal", autocomplete: "off", placeholder: "0.15" });
  const output = h("input", { type: "text", inputmode: "decimal", autocomplete: "off", placeholder: "0.60" });
  const cacheWrite = h("input", { type: "text", inputmode: "decimal", autocomplete: "off", placeholder: "the input price" });
  const cacheRead = h("input", { type: "text", inputmode: "decimal", autocomplete: "off", placeholder: "the input price" });
  const form = h("form", { class: "toolbar" }, field("Model ID", id), field("Provider", provider), field("Upstream model", upstream),
    field("Input price (USD per million)", input), field("Output price (USD per million)", output),
    field("Cache write price (optional)", cacheWrite), field("Cache read price (optional)", cacheRead),
    h("button", { type: "submit", class: "primary" }, "Add model"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    act(c, `add the model ${id.value}`, `Model ${id.value} added`, () => call("post", "/v1/models", { body: {
      id: id.value.trim(), provider: provider.value, upstreamModel: upstream.value.trim(),
      inputPricePerMillionUsd: input.value.trim(), outputPricePerMillionUsd: output.value.trim(),
      cacheWritePricePerMillionUsd: cacheWrite.value.trim(), cacheReadPricePerMillionUsd: cacheRead.value.trim(),
    } }));
  });
  return h("section", { "aria-labelledby": "add-model" }, h("h3", { id: "add-model" }, "Add a model"), form);
}

function providerTable(c: Ctx, providers: Provider[], root: boolean): HTMLElement {
  if (providers.length === 0) return h("p", { class: "empty" }, "No providers yet.");
  const rows = providers.map((pr) => {
    const id = pr.id ?? "";
    const cells = [h("strong", {}, id), kindNames[pr.kind ?? "PROVIDER_KIND_UNSPECIFIED"], pr.baseUrl ?? "", pr.apiKeyEnv || pr.apiKeyFile || "—", date(pr.createTime)];
    if (!root) return cells;
    const del = h("button", { type: "button", class: "danger", "aria-label": `Delete provider ${id}` }, "Delete");
    del.addEventListener("click", () => act(c, `delete the provider ${id}`, `Provider ${id} deleted`, () => call("delete", "/v1/providers/{provider}", { path: { provider: id } })));
    return [...cells, del];
  });
  const head = ["Provider", "Kind", "Base URL", "API key from", "Created"];
  return table("Providers", root ? [...head, "Actions"] : head, rows);
}

function addProvider(c: Ctx): HTMLElement {
  const id = h("input", { type: "text", autocomplete: "off", required: true });
  const base = h("input", { type: "url", autocomplete: "off", placeholder: "https://api.example.com/v1" });
  const env = h("input", { type: "text", autocomplete: "off", placeholder: "OPENAI_API_KEY" });
  const kind = select([["PROVIDER_KIND_OPENAI", kindNames.PROVIDER_KIND_OPENAI], ["PROVIDER_KIND_ANTHROPIC", kindNames.PROVIDER_KIND_ANTHROPIC]]);
  const form = h("form", { class: "toolbar" }, field("Provider ID", id), field("Kind", kind), field("Base URL", base),
    field("API key environment variable", env, "The secret stays in the environment, never in keygate's store."), h("button", { type: "submit", class: "primary" }, "Add provider"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    act(c, `add the provider ${id.value}`, `Provider ${id.value} added`, () => call("post", "/v1/providers", { body: { id: id.value.trim(), kind: kind.value as ProviderKind, baseUrl: base.value.trim(), apiKeyEnv: env.value.trim() } }));
  });
  return h("section", { "aria-labelledby": "add-provider" }, h("h3", { id: "add-provider" }, "Add a provider"), form);
}
