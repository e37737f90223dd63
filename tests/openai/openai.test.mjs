// The official openai client against keygate's edge. The Go test
// TestOpenAIClient (cmd/keygate) starts keygate, creates the key and runs
// this with KEYGATE_EDGE_URL and KEYGATE_KEY set.
import { test } from "node:test";
import assert from "node:assert/strict";
import OpenAI from "openai";

const baseURL = process.env.KEYGATE_EDGE_URL + "/v1";
const apiKey = process.env.KEYGATE_KEY;
// No automatic retries: the test must see each answer as it is.
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0 });
const messages = [{ role: "user", content: "Say hello" }];

test("chat completion", async () => {
  const r = await client.chat.completions.create({ model: "mock-small", messages, max_tokens: 32 });
  assert.ok(r.choices[0].message.content.length > 0);
  assert.ok(r.usage.total_tokens > 0);
});

test("streaming chat completion", async () => {
  const stream = await client.chat.completions.create({ model: "mock-small", messages, stream: true, max_tokens: 32 });
  let text = "";
  let chunks = 0;
  for await (const chunk of stream) {
    chunks++;
    text += chunk.choices[0]?.delta?.content ?? "";
  }
  assert.ok(chunks > 1, "expected several chunks");
  assert.ok(text.length > 0);
});

test("wrong key is an AuthenticationError", async () => {
  const bad = new OpenAI({ baseURL, apiKey: apiKey.slice(0, -1) + (apiKey.endsWith("x") ? "y" : "x"), maxRetries: 0 });
  await assert.rejects(
    bad.chat.completions.create({ model: "mock-small", messages }),
    (err) => err instanceof OpenAI.AuthenticationError && err.status === 401 && err.code === "invalid_api_key",
  );
});

test("a full window is a RateLimitError", async () => {
  let err;
  for (let i = 0; i < 20 && !err; i++) {
    try {
      await client.chat.completions.create({ model: "mock-small", messages, max_tokens: 8 });
    } catch (e) {
      err = e;
    }
  }
  assert.ok(err instanceof OpenAI.RateLimitError, `got ${err}`);
  assert.equal(err.status, 429);
  assert.equal(err.code, "rate_limit_exceeded");
  assert.ok(Number(err.headers.get("retry-after")) > 0);
});
