// The official @anthropic-ai/sdk client against keygate's edge, on its
// default paths (x-api-key, anthropic-version). The Go test
// TestAnthropicClient (cmd/keygate) starts keygate and runs this.
import { test } from "node:test";
import assert from "node:assert/strict";
import Anthropic from "@anthropic-ai/sdk";
import { told, edgeURL, apiKey, limitedKey, wrongKey } from "../told.mjs";

// The SDK adds /v1/messages to its base URL.
const client = new Anthropic({ baseURL: edgeURL, apiKey, maxRetries: 0 });
const messages = [{ role: "user", content: "Say hello" }];

test("messages create", async () => {
  const m = await client.messages.create({ model: "mock-small", max_tokens: 32, messages });
  assert.equal(m.type, "message");
  assert.ok(m.content[0].text.length > 0);
  told(m.usage.input_tokens + (m.usage.cache_creation_input_tokens ?? 0) + (m.usage.cache_read_input_tokens ?? 0), m.usage.output_tokens);
});

test("messages create with a cached system prompt", async () => {
  const m = await client.messages.create({
    model: "mock-large", max_tokens: 8, messages,
    system: [{ type: "text", text: "You are terse. ".repeat(20), cache_control: { type: "ephemeral" } }],
  });
  assert.ok(m.usage.cache_creation_input_tokens > 0);
  told(m.usage.input_tokens + m.usage.cache_creation_input_tokens + (m.usage.cache_read_input_tokens ?? 0), m.usage.output_tokens);
});

test("messages stream", async () => {
  const stream = client.messages.stream({ model: "mock-small", max_tokens: 32, messages });
  let text = "";
  stream.on("text", (t) => { text += t; });
  const m = await stream.finalMessage();
  assert.ok(text.length > 0);
  assert.equal(m.content[0].text, text);
  told(m.usage.input_tokens + (m.usage.cache_creation_input_tokens ?? 0) + (m.usage.cache_read_input_tokens ?? 0), m.usage.output_tokens);
});

test("count tokens", async () => {
  const r = await client.messages.countTokens({ model: "mock-small", messages });
  assert.ok(r.input_tokens > 0);
});

test("a wrong key is an AuthenticationError", async () => {
  const bad = new Anthropic({ baseURL: edgeURL, apiKey: wrongKey, maxRetries: 0 });
  await assert.rejects(bad.messages.create({ model: "mock-small", max_tokens: 8, messages }),
    (err) => err instanceof Anthropic.AuthenticationError && err.status === 401 && err.error?.error?.type === "authentication_error");
});

test("an unknown model is a NotFoundError", async () => {
  await assert.rejects(client.messages.create({ model: "claude-nope", max_tokens: 8, messages }),
    (err) => err instanceof Anthropic.NotFoundError && err.error?.error?.type === "not_found_error");
});

test("a full window is a RateLimitError", async () => {
  const limited = new Anthropic({ baseURL: edgeURL, apiKey: limitedKey, maxRetries: 0 });
  let err;
  for (let i = 0; i < 3 && !err; i++) {
    try {
      await limited.messages.create({ model: "mock-small", max_tokens: 8, messages });
    } catch (e) {
      err = e;
    }
  }
  assert.ok(err instanceof Anthropic.RateLimitError, `got ${err}`);
  assert.equal(err.status, 429);
  assert.equal(err.error?.error?.type, "rate_limit_error");
  assert.ok(Number(err.headers?.get?.("retry-after") ?? err.headers?.["retry-after"]) > 0);
});
