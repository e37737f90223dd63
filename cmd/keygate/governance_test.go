//go:build governance

// These tests drive governance (#14) through the whole binary: the real
// keystore, limiter, ledger and edge. They need the keystore's side of
// #14 (VerifyKey answering the key's workspace and member, their change
// events, imported secrets); until it is merged they compile but do not
// run: go test -tags governance ./cmd/keygate -run Governance.
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// govApp is a running keygate with workspace acme.
type govApp struct {
	api, edge, metrics, root string
}

func startGov(t *testing.T) govApp {
	t.Helper()
	app := MustRunApp(t, "", nil)
	g := govApp{api: "http://" + app.HTTPAddr, edge: "http://" + app.EdgeAddr, metrics: "http://" + app.MetricsAddr, root: app.Config.RootToken}
	g.call(t, "POST", "/v1/workspaces", map[string]any{"id": "acme", "name": "Acme"})
	return g
}

// call sends an admin request as root and requires a 200.
func (g govApp) call(t *testing.T, method, path string, body any) map[string]any {
	t.Helper()
	code, _, out := rest(t, method, g.api+path, g.root, body)
	require.Equal(t, http.StatusOK, code, "%s %s: %v", method, path, out)
	return out
}

// key creates a key owned by owner ("" = root) and returns its secret.
func (g govApp) key(t *testing.T, name, owner string) string {
	t.Helper()
	body := map[string]any{"name": name}
	if owner != "" {
		body["owner"] = owner
	}
	out := g.call(t, "POST", "/v1/workspaces/acme/keys", body)
	return out["secret"].(string)
}

var govChat = map[string]any{"model": "mock-small", "max_tokens": 8,
	"messages": []any{map[string]any{"role": "user", "content": "hi"}}}

func (g govApp) chat(t *testing.T, secret string) (int, http.Header, map[string]any) {
	t.Helper()
	return rest(t, "POST", g.edge+"/v1/chat/completions", secret, govChat)
}

// TestGovernanceWorkspaceLimitShared: a workspace's rpm is shared by all
// its keys: the third request across two keys is refused at the
// workspace level.
func TestGovernanceWorkspaceLimitShared(t *testing.T) {
	g := startGov(t)
	a, b := g.key(t, "a", ""), g.key(t, "b", "")
	g.call(t, "PATCH", "/v1/workspaces/acme?updateMask=limits", map[string]any{"limits": map[string]any{"globalLimits": map[string]any{"rpm": 2}}})
	// The edge learns the change from the key change stream.
	require.Eventually(t, func() bool {
		code, _, _ := g.chat(t, a)
		return code == http.StatusTooManyRequests
	}, 20*time.Second, 50*time.Millisecond)
	code, hdr, body := g.chat(t, b)
	requireLimitedBy(t, "workspace/rpm", code, hdr, body)
}

// TestGovernanceMemberLevel: a member's rpm covers the keys it owns, not
// another member's.
func TestGovernanceMemberLevel(t *testing.T) {
	g := startGov(t)
	for _, m := range []string{"alice", "bob"} {
		g.call(t, "PUT", "/v1/workspaces/acme/members/"+m, map[string]any{"role": "ROLE_MEMBER"})
	}
	g.call(t, "PATCH", "/v1/workspaces/acme/members/alice?updateMask=limits", map[string]any{"limits": map[string]any{"globalLimits": map[string]any{"rpm": 1}}})
	a1, a2, b := g.key(t, "a1", "alice"), g.key(t, "a2", "alice"), g.key(t, "b", "bob")
	code, _, body := g.chat(t, a1)
	require.Equal(t, http.StatusOK, code, body)
	code, hdr, body := g.chat(t, a2)
	requireLimitedBy(t, "member/rpm", code, hdr, body)
	for range 3 {
		code, _, body = g.chat(t, b)
		require.Equal(t, http.StatusOK, code, body)
	}
}

// TestGovernanceCreditsPaymentRequired: a workspace whose credits cannot
// cover a request's estimate answers 402 in each dialect, not to be
// retried.
func TestGovernanceCreditsPaymentRequired(t *testing.T) {
	g := startGov(t)
	secret := g.key(t, "k", "")
	g.call(t, "POST", "/v1/workspaces/acme/credits/entries", map[string]any{"id": "t1", "kind": "CREDIT_ENTRY_KIND_TOP_UP", "amountUsd": "0.000010"})
	big := map[string]any{"model": "mock-small", "max_tokens": 100000, "messages": []any{map[string]any{"role": "user", "content": "hi"}}}
	var code int
	var hdr http.Header
	var body map[string]any
	require.Eventually(t, func() bool {
		code, hdr, body = rest(t, "POST", g.edge+"/v1/chat/completions", secret, big)
		return code == http.StatusPaymentRequired
	}, 20*time.Second, 50*time.Millisecond, "%d %v", code, body)
	require.Equal(t, "insufficient_credits", body["error"].(map[string]any)["code"])
	require.Equal(t, "false", hdr.Get("X-Should-Retry"))
	require.Empty(t, hdr.Get("Retry-After"))
	require.Equal(t, "workspace/credits", hdr.Get("X-Keygate-Limited-By"))

	req, err := http.NewRequestWithContext(t.Context(), "POST", g.edge+"/v1/messages",
		strings.NewReader(`{"model":"mock-small","max_tokens":100000,"messages":[{"role":"user","content":"hi"}]}`))
	require.NoError(t, err)
	req.Header.Set("x-api-key", secret)
	req.Header.Set("anthropic-version", "2023-06-01")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	var ant map[string]any
	require.NoError(t, jsonDecode(resp.Body, &ant))
	require.Equal(t, http.StatusPaymentRequired, resp.StatusCode, ant)
	require.Equal(t, "billing_error", ant["error"].(map[string]any)["type"])
	require.Equal(t, "false", resp.Header.Get("X-Should-Retry"))
}

// TestGovernanceReportModeCounts: a report-mode limit never denies; the
// edge counts what it would have denied.
func TestGovernanceReportModeCounts(t *testing.T) {
	g := startGov(t)
	secret := g.key(t, "k", "")
	g.call(t, "PATCH", "/v1/workspaces/acme?updateMask=report_limits", map[string]any{"reportLimits": map[string]any{"globalLimits": map[string]any{"rpm": 1}}})
	require.Eventually(t, func() bool {
		code, _, body := g.chat(t, secret)
		require.Equal(t, http.StatusOK, code, body)
		return metric(g.metrics, "keygate_edge_report_denials_total") > 0
	}, 20*time.Second, 50*time.Millisecond)
	for range 3 {
		code, _, body := g.chat(t, secret)
		require.Equal(t, http.StatusOK, code, body)
	}
}

// TestGovernanceOverrideReverts: a timed override raises the workspace's
// rpm until it expires; then the workspace's own limit applies again, with
// nothing undone by hand.
func TestGovernanceOverrideReverts(t *testing.T) {
	g := startGov(t)
	secret := g.key(t, "k", "")
	g.call(t, "PATCH", "/v1/workspaces/acme?updateMask=limits", map[string]any{"limits": map[string]any{"globalLimits": map[string]any{"rpm": 1}}})
	expire := time.Now().Add(5 * time.Second).UTC().Format(time.RFC3339Nano)
	g.call(t, "PATCH", "/v1/workspaces/acme?updateMask=limit_override", map[string]any{"limitOverride": map[string]any{
		"policy": map[string]any{"globalLimits": map[string]any{"rpm": 100}}, "expireTime": expire, "reason": "launch"}})
	require.Eventually(t, func() bool {
		code, _, _ := g.chat(t, secret)
		code2, _, _ := g.chat(t, secret)
		return code == http.StatusOK && code2 == http.StatusOK
	}, 4*time.Second, 20*time.Millisecond, "the override is in force")
	var code int
	var hdr http.Header
	var body map[string]any
	require.Eventually(t, func() bool {
		code, hdr, body = g.chat(t, secret)
		return code == http.StatusTooManyRequests
	}, 20*time.Second, 50*time.Millisecond, "reverted")
	requireLimitedBy(t, "workspace/rpm", code, hdr, body)
}

// TestGovernanceImportedKey: an imported secret in another system's format
// works at the edge; an unknown one is a 401.
func TestGovernanceImportedKey(t *testing.T) {
	g := startGov(t)
	legacy := "sk-legacy-" + strings.Repeat("q7", 20)
	sum := sha256.Sum256([]byte(legacy))
	g.call(t, "POST", "/v1/workspaces/acme/keys:import", map[string]any{"keys": []any{map[string]any{
		"name": "old", "secretSha256": hex.EncodeToString(sum[:])}}})
	code, _, body := g.chat(t, legacy)
	require.Equal(t, http.StatusOK, code, body)
	for range 3 {
		code, _, body = g.chat(t, "sk-legacy-"+strings.Repeat("x9", 20))
		require.Equal(t, http.StatusUnauthorized, code, body)
	}
}
