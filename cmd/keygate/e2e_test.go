package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/keygate/keygate/internal/grpctest"
)

// rest sends one JSON request and decodes the JSON answer.
func rest(t *testing.T, method, url, token string, body any) (int, http.Header, map[string]any) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		require.NoError(t, err)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(t.Context(), method, url, rd)
	require.NoError(t, err)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	out := map[string]any{}
	if len(raw) > 0 {
		require.NoError(t, json.Unmarshal(raw, &out), "body: %s", raw)
	}
	return resp.StatusCode, resp.Header, out
}

func num(t *testing.T, v any) int64 {
	t.Helper()
	switch x := v.(type) {
	case float64:
		return int64(x)
	case string: // protojson renders int64 as a string
		n, err := strconv.ParseInt(x, 10, 64)
		require.NoError(t, err)
		return n
	case nil:
		return 0
	}
	t.Fatalf("not a number: %#v", v)
	return 0
}

// TestCorePath drives the README's core path through real listeners: a
// workspace and a key over REST, inference at the edge until the rpm limit,
// then 429 with Retry-After and x-ratelimit-* headers, a wrong key's 401,
// and the usage over REST. A restart keeps the workspace and the key.
func TestCorePath(t *testing.T) {
	dir := t.TempDir()
	app := MustRunApp(t, dir, nil)
	api := "http://" + app.HTTPAddr
	edge := "http://" + app.EdgeAddr
	root := app.Config.RootToken
	require.NotEmpty(t, root)

	code, _, body := rest(t, "POST", api+"/v1/workspaces", root, map[string]any{"id": "acme", "name": "Acme"})
	require.Equal(t, http.StatusOK, code, body)

	code, _, body = rest(t, "POST", api+"/v1/workspaces/acme/keys", root, map[string]any{
		"name":         "web",
		"globalLimits": map[string]any{"rpm": 3, "tpd": 100000},
		"modelLimits":  []any{map[string]any{"model": "mock-small", "limits": map[string]any{"rpm": 5}}},
		"budget":       map[string]any{"amountUsd": "5.00", "resetPeriod": "RESET_PERIOD_MONTHLY"},
	})
	require.Equal(t, http.StatusOK, code, body)
	secret, _ := body["secret"].(string)
	require.NotEmpty(t, secret)
	key := body["key"].(map[string]any)
	keyID := key["id"].(string)
	require.Equal(t, "KEY_STATE_ACTIVE", key["state"])
	require.Equal(t, secret[len(secret)-6:], key["partialKey"].(string)[len("…"):])

	chat := map[string]any{"model": "mock-small", "messages": []any{map[string]any{"role": "user", "content": "hi"}}}
	for i := range 3 {
		code, hdr, body := rest(t, "POST", edge+"/v1/chat/completions", secret, chat)
		require.Equal(t, http.StatusOK, code, "request %d: %v", i, body)
		require.Equal(t, "3", hdr.Get("x-ratelimit-limit-requests"))
		require.Equal(t, strconv.Itoa(2-i), hdr.Get("x-ratelimit-remaining-requests"))
		require.NotEmpty(t, hdr.Get("x-ratelimit-reset-requests"))
		require.NotEmpty(t, hdr.Get("x-ratelimit-limit-tokens"))
		require.NotEmpty(t, hdr.Get("x-ratelimit-remaining-tokens"))
		require.NotEmpty(t, body["choices"])
		require.NotNil(t, body["usage"])
	}
	code, hdr, body := rest(t, "POST", edge+"/v1/chat/completions", secret, chat)
	require.Equal(t, http.StatusTooManyRequests, code, body)
	require.Equal(t, "rate_limit_exceeded", body["error"].(map[string]any)["code"])
	retry, err := strconv.Atoi(hdr.Get("Retry-After"))
	require.NoError(t, err)
	require.Positive(t, retry)
	require.LessOrEqual(t, retry, 60)
	require.Equal(t, "0", hdr.Get("x-ratelimit-remaining-requests"))

	wrong := secret[:len(secret)-1] + "x"
	if wrong == secret {
		wrong = secret[:len(secret)-1] + "y"
	}
	code, _, body = rest(t, "POST", edge+"/v1/chat/completions", wrong, chat)
	require.Equal(t, http.StatusUnauthorized, code)
	require.Equal(t, "invalid_api_key", body["error"].(map[string]any)["code"])
	require.NotContains(t, body["error"].(map[string]any)["message"], wrong)

	// Usage reaches the ledger asynchronously (the edge batches it).
	var usage map[string]any
	require.Eventually(t, func() bool {
		code, _, usage = rest(t, "GET", api+"/v1/workspaces/acme/keys/"+keyID+"/usage", root, nil)
		return code == http.StatusOK && num(t, usage["requestsToday"]) == 3
	}, 20*time.Second, 50*time.Millisecond, "usage: %v", usage)
	require.Positive(t, num(t, usage["tokensToday"]))
	require.Equal(t, int64(100000), num(t, usage["tokenLimitToday"]))
	require.Equal(t, "5.00", usage["budgetUsd"])

	// The key's last use reaches the keystore in the edge's next batch.
	require.Eventually(t, func() bool {
		_, _, k := rest(t, "GET", api+"/v1/workspaces/acme/keys/"+keyID, root, nil)
		used, _ := k["key"].(map[string]any)["lastUsedTime"].(string)
		return used != ""
	}, 30*time.Second, 100*time.Millisecond, "lastUsedTime")

	// Restart: the workspace and key survive, and so does the day's count.
	require.NoError(t, app.Close())
	app = MustRunApp(t, dir, nil)
	api, edge = "http://"+app.HTTPAddr, "http://"+app.EdgeAddr
	code, _, body = rest(t, "GET", api+"/v1/workspaces/acme/keys/"+keyID, root, nil)
	require.Equal(t, http.StatusOK, code, body)
	require.Equal(t, "web", body["key"].(map[string]any)["name"])
	_, _, usage = rest(t, "GET", api+"/v1/workspaces/acme/keys/"+keyID+"/usage", root, nil)
	require.Equal(t, int64(3), num(t, usage["requestsToday"]))
}

func TestServerSurface(t *testing.T) {
	app := MustRunApp(t, "", nil)
	// The edge is ready once it has read the model registry.
	for _, url := range []string{"http://" + app.HTTPAddr + "/healthz", "http://" + app.EdgeAddr + "/healthz"} {
		waitHealthy(t, url)
	}
	code, _, doc := rest(t, "GET", "http://"+app.HTTPAddr+"/openapi.json", "", nil)
	require.Equal(t, http.StatusOK, code)
	require.Contains(t, doc["paths"], "/v1/workspaces/{workspace}/keys")

	resp, err := http.Get("http://" + app.HTTPAddr + "/metrics")
	require.NoError(t, err)
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Contains(t, string(metrics), "rpc_server")

	cc := grpctest.Dial(t, app.GRPCAddr)
	for _, svc := range []string{"", "keygate.keystore.v1.KeystoreService", "keygate.limiter.v1.LimiterService", "keygate.usage.v1.UsageService"} {
		hr, err := healthpb.NewHealthClient(cc).Check(t.Context(), &healthpb.HealthCheckRequest{Service: svc})
		require.NoError(t, err, svc)
		require.Equal(t, healthpb.HealthCheckResponse_SERVING, hr.Status, svc)
	}

	// No credential, a wrong one, and an oversized body.
	code, _, body := rest(t, "POST", "http://"+app.HTTPAddr+"/v1/workspaces", "", map[string]any{"id": "x"})
	require.Equal(t, http.StatusUnauthorized, code, body)
	code, _, _ = rest(t, "POST", "http://"+app.HTTPAddr+"/v1/workspaces", "nope", map[string]any{"id": "x"})
	require.Equal(t, http.StatusUnauthorized, code)
	big := map[string]any{"id": "big", "name": string(bytes.Repeat([]byte("a"), 2<<20))}
	code, _, _ = rest(t, "POST", "http://"+app.HTTPAddr+"/v1/workspaces", app.Config.RootToken, big)
	require.Equal(t, http.StatusRequestEntityTooLarge, code)
}

func stringsReader(s string) io.Reader { return bytes.NewReader([]byte(s)) }
