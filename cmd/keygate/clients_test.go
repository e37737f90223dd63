package main

import (
	"bufio"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The official clients run against keygate up on their default paths,
// changed only in base URL and key. `make test` installs them (make
// test-deps-npm); without them a test fails, saying how to install them,
// rather than skip.

// TestOpenAIClient: the openai npm client (tests/openai): chat, stream,
// embeddings on the default encoding, responses create and stream,
// models.retrieve, typed errors.
func TestOpenAIClient(t *testing.T) { runNodeClient(t, "openai", "openai.test.mjs", "openai") }

// TestAnthropicClient: @anthropic-ai/sdk (tests/anthropic): messages
// create and stream, count tokens, typed AuthenticationError,
// NotFoundError and RateLimitError.
func TestAnthropicClient(t *testing.T) {
	runNodeClient(t, "anthropic", "anthropic.test.mjs", "@anthropic-ai/sdk")
}

// TestAISDKClient: the Vercel AI SDK (ai 5, tests/aisdk): generateText and
// streamText through @ai-sdk/openai's default provider (the Responses API)
// and @ai-sdk/anthropic, and embed.
func TestAISDKClient(t *testing.T) {
	runNodeClient(t, "aisdk", "aisdk.test.mjs", "ai", "@ai-sdk/openai", "@ai-sdk/anthropic")
}

// clientKeys is a workspace with two keys: key, unlimited, whose ledger
// usage the test compares with what the client was told, and limited (one
// request a minute), for rate-limit errors.
type clientKeys struct {
	app                 *App
	key, keyID, limited string
	api                 string
}

func newClientKeys(t *testing.T) clientKeys {
	t.Helper()
	app := MustRunApp(t, "", nil)
	ck := clientKeys{app: app, api: "http://" + app.HTTPAddr}
	root := app.Config.RootToken
	code, _, body := rest(t, "POST", ck.api+"/v1/workspaces", root, map[string]any{"id": "clients", "name": "clients"})
	require.Equal(t, http.StatusOK, code, body)
	code, _, body = rest(t, "POST", ck.api+"/v1/workspaces/clients/keys", root, map[string]any{"name": "client"})
	require.Equal(t, http.StatusOK, code, body)
	ck.key, ck.keyID = body["secret"].(string), body["key"].(map[string]any)["id"].(string)
	code, _, body = rest(t, "POST", ck.api+"/v1/workspaces/clients/keys", root, map[string]any{"name": "limited", "globalLimits": map[string]any{"rpm": 1}})
	require.Equal(t, http.StatusOK, code, body)
	ck.limited = body["secret"].(string)
	return ck
}

// told sums what the client was told, from the file it wrote.
func told(t *testing.T, path string) (requests, prompt, completion int64) {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err, "the client recorded no usage")
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var u struct{ Prompt, Completion int64 }
		require.NoError(t, json.Unmarshal(sc.Bytes(), &u))
		requests, prompt, completion = requests+1, prompt+u.Prompt, completion+u.Completion
	}
	require.NoError(t, sc.Err())
	return requests, prompt, completion
}

// requireLedgerMatches waits for the key's usage in the ledger to equal
// what the client was told (the edge sends usage in batches).
func (ck clientKeys) requireLedgerMatches(t *testing.T, toldPath string) {
	t.Helper()
	requests, prompt, completion := told(t, toldPath)
	require.Positive(t, requests)
	var got map[string]any
	require.Eventually(t, func() bool {
		code, _, body := rest(t, "GET", ck.api+"/v1/workspaces/clients/keys/"+ck.keyID+"/usage", ck.app.Config.RootToken, nil)
		got = body
		return code == http.StatusOK && num(t, body["requestsToday"]) >= requests
	}, 10*time.Second, 20*time.Millisecond, "ledger %v", got)
	require.Equal(t, requests, num(t, got["requestsToday"]), "requests")
	require.Equal(t, prompt, num(t, got["promptTokensToday"]), "prompt tokens")
	require.Equal(t, completion, num(t, got["completionTokensToday"]), "completion tokens")
}

// runNodeClient runs `node --test file` in tests/dir against a fresh
// keygate up and compares the ledger with what the client was told.
func runNodeClient(t *testing.T, dir, file string, modules ...string) {
	js := needNodeTest(t, dir, modules...)
	ck := newClientKeys(t)
	toldPath := filepath.Join(t.TempDir(), "told.jsonl")
	js.run(t, 2*time.Minute, file, "KEYGATE_EDGE_URL=http://"+ck.app.EdgeAddr, "KEYGATE_KEY="+ck.key,
		"KEYGATE_LIMITED_KEY="+ck.limited, "KEYGATE_TOLD="+toldPath)
	ck.requireLedgerMatches(t, toldPath)
}
