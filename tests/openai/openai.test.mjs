// The official openai client against keygate's edge, on its default paths.
// The Go test TestOpenAIClient (cmd/keygate) starts keygate, creates the
// keys and runs this; every answer's usage is recorded with told().
import { test } from "node:test";
import assert from "node:assert/strict";
import OpenAI from "openai";
import { told, edgeURL, apiKey, limitedKey, wrongKey } from "../told.mjs";

const baseURL = edgeURL + "/v1";
// No automatic retries: the test must see each answer as it is.
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0 });
const messages = [{ role: "user", content: "Say hello" }];

test("chat completion", async () => {
  const r = await client.chat.completions.create({ model: "mock-small", messages, max_tokens: 32 });
  assert.ok(r.choices[0].message.content.length > 0);
  told(r.usage.prompt_tokens, r.usage.completion_tokens);
});

test("streaming chat completion", async () => {
  const stream = await client.chat.completions.create({
    model: "mock-small", messages, stream: true, max_tokens: 32, stream_options: { include_usage: true },
  });
  let text = "";
  let chunks = 0;
  let usage;
  for await (const chunk of stream) {
    chunks++;
    text += chunk.choices[0]?.delta?.content ?? "";
    usage = chunk.usage ?? usage;
  }
  assert.ok(chunks > 1, "expected several chunks");
  assert.ok(text.length > 0);
  told(usage.prompt_tokens, usage.completion_tokens);
});

test("embeddings on the default encoding (base64) are the float vector", async () => {
  const input = "The quick brown fox";
  const byDefault = await client.embeddings.create({ model: "mock-small", input });
  const floats = await client.embeddings.create({ model: "mock-small", input, encoding_format: "float" });
  const v = byDefault.data[0].embedding;
  assert.equal(v.length, 8);
  assert.ok(v.some((x) => x !== 0), "not a zero vector");
  assert.deepEqual(v, floats.data[0].embedding.map(Math.fround));
  told(byDefault.usage.prompt_tokens, 0);
  told(floats.usage.prompt_tokens, 0);
});

test("responses create", async () => {
  const r = await client.responses.create({ model: "mock-small", input: "Say hello", max_output_tokens: 16 });
  assert.ok(r.output_text.length > 0);
  told(r.usage.input_tokens, r.usage.output_tokens);
});

test("responses stream", async () => {
  const stream = client.responses.stream({ model: "mock-small", input: "Say hello", max_output_tokens: 16 });
  let text = "";
  for await (const event of stream) {
    if (event.type === "response.output_text.delta") text += event.delta;
  }
  const final = await stream.finalResponse();
  assert.equal(final.output_text, text);
  assert.ok(text.length > 0);
  told(final.usage.input_tokens, final.usage.output_tokens);
});

test("models.retrieve", async () => {
  const m = await client.models.retrieve("mock-small");
  assert.equal(m.id, "mock-small");
  await assert.rejects(client.models.retrieve("no-such-model"),
    (err) => err instanceof OpenAI.NotFoundError && err.code === "model_not_found");
});

test("typed errors", async () => {
  const bad = new OpenAI({ baseURL, apiKey: wrongKey, maxRetries: 0 });
  await assert.rejects(bad.chat.completions.create({ model: "mock-small", messages }),
    (err) => err instanceof OpenAI.AuthenticationError && err.status === 401 && err.code === "invalid_api_key");
  await assert.rejects(client.chat.completions.create({ model: "mock-small", messages: [] }),
    (err) => err instanceof OpenAI.BadRequestError && err.status === 400);
  await assert.rejects(client.chat.completions.create({ model: "no-such-model", messages }),
    (err) => err instanceof OpenAI.NotFoundError && err.code === "model_not_found");
});

test("a full window is a RateLimitError", async () => {
  const limited = new OpenAI({ baseURL, apiKey: limitedKey, maxRetries: 0 });
  let err;
  for (let i = 0; i < 3 && !err; i++) {
    try {
      await limited.chat.completions.create({ model: "mock-small", messages, max_tokens: 8 });
    } catch (e) {
      err = e;
    }
  }
  assert.ok(err instanceof OpenAI.RateLimitError, `got ${err}`);
  assert.equal(err.status, 429);
  assert.equal(err.code, "rate_limit_exceeded");
  assert.ok(Number(err.headers.get("retry-after")) > 0);
});
