// The Vercel AI SDK (ai 5) against keygate's edge: @ai-sdk/openai's default
// provider (the Responses API) and @ai-sdk/anthropic. The Go test
// TestAISDKClient (cmd/keygate) starts keygate and runs this.
import { test } from "node:test";
import assert from "node:assert/strict";
import { generateText, streamText, embed } from "ai";
import { createOpenAI } from "@ai-sdk/openai";
import { createAnthropic } from "@ai-sdk/anthropic";
import { told, edgeURL, apiKey } from "../told.mjs";

const openai = createOpenAI({ baseURL: edgeURL + "/v1", apiKey });
const anthropic = createAnthropic({ baseURL: edgeURL + "/v1", apiKey });
const prompt = "Say hello";

for (const [name, model] of [["openai", () => openai("mock-small")], ["anthropic", () => anthropic("mock-small")]]) {
  test(`${name} generateText`, async () => {
    const r = await generateText({ model: model(), prompt, maxOutputTokens: 16, maxRetries: 0 });
    assert.ok(r.text.length > 0);
    if (name === "openai") {
      // The default provider speaks the Responses API.
      assert.equal(r.providerMetadata?.openai?.responseId, "resp_mock", JSON.stringify(r.providerMetadata));
    }
    told(r.usage.inputTokens, r.usage.outputTokens);
  });

  test(`${name} streamText`, async () => {
    const r = streamText({ model: model(), prompt, maxOutputTokens: 16, maxRetries: 0, onError: ({ error }) => { throw error; } });
    let text = "";
    for await (const t of r.textStream) text += t;
    assert.ok(text.length > 0);
    const usage = await r.usage;
    told(usage.inputTokens, usage.outputTokens);
  });
}

test("openai embed", async () => {
  const r = await embed({ model: openai.textEmbeddingModel("mock-small"), value: "The quick brown fox", maxRetries: 0 });
  assert.equal(r.embedding.length, 8);
  assert.ok(r.embedding.some((x) => x !== 0));
  told(r.usage.tokens, 0);
});
