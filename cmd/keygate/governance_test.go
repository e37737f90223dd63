package main

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keygate/keygate/internal/clock"
)

// govStack is keygate up on an injected clock, driven over REST and at
// the edge as a user would.
type govStack struct {
	api, edge, root string
	clk             *clock.Fake
}

func (g govStack) call(t *testing.T, method, path string, body any) map[string]any {
	t.Helper()
	code, _, out := rest(t, method, g.api+path, g.root, body)
	require.Equal(t, http.StatusOK, code, "%s %s: %v", method, path, out)
	return out
}

// workspace creates a workspace and a member of it.
func (g govStack) workspace(t *testing.T, id string, members ...string) {
	t.Helper()
	g.call(t, "POST", "/v1/workspaces", map[string]any{"id": id, "maxKeys": 20})
	for _, m := range members {
		g.call(t, "PUT", "/v1/workspaces/"+id+"/members/"+m, map[string]any{"role": "ROLE_MEMBER"})
	}
}

// key creates a key owned by owner and returns its id and secret.
func (g govStack) key(t *testing.T, ws, name, owner string, spec map[string]any) (string, string) {
	t.Helper()
	body := map[string]any{"name": name, "owner": owner}
	for k, v := range spec {
		body[k] = v
	}
	out := g.call(t, "POST", "/v1/workspaces/"+ws+"/keys", body)
	return out["key"].(map[string]any)["id"].(string), out["secret"].(string)
}

// chat sends one chat completion and returns the status, the
// x-keygate-limited-by header and the answer.
func (g govStack) chat(t *testing.T, secret string) (int, string, map[string]any) {
	t.Helper()
	code, hdr, out := rest(t, "POST", g.edge+"/v1/chat/completions", secret, map[string]any{
		"model": "mock-small", "max_tokens": 16, "messages": []any{map[string]any{"role": "user", "content": "hi"}}})
	return code, hdr.Get("x-keygate-limited-by"), out
}

func (g govStack) admitted(t *testing.T, secret string) {
	t.Helper()
	code, by, out := g.chat(t, secret)
	require.Equal(t, http.StatusOK, code, "limited by %q: %v", by, out)
}

func (g govStack) limited(t *testing.T, secret, by string) {
	t.Helper()
	code, got, out := g.chat(t, secret)
	require.Equal(t, http.StatusTooManyRequests, code, out)
	require.Equal(t, by, got)
}

// TestGovernanceREST drives every part of governance over REST against
// keygate up on an injected clock: limits on the workspace and the member
// checked with the key's, the 429 naming the level; resets at the UTC day,
// week and month boundaries; credits and their 402; report mode; a timed
// override that reverts; alerts delivered once to a signed webhook; explain;
// and imported legacy keys.
func TestGovernanceREST(t *testing.T) {
	// Sunday 31 January 2027, 23:00 UTC: the next hour ends a day, a week
	// and a month at once.
	clk := clock.NewFake(time.Date(2027, 1, 31, 23, 0, 0, 0, time.UTC))
	app := MustRunApp(t, "", clk)
	g := govStack{api: "http://" + app.HTTPAddr, edge: "http://" + app.EdgeAddr, root: app.Config.RootToken, clk: clk}

	// Levels: ada may make 2 requests a day, the workspace 3, whoever asks.
	g.workspace(t, "levels", "ada", "bob")
	_, ada := g.key(t, "levels", "ada-key", "ada", nil)
	_, ada2 := g.key(t, "levels", "ada-key-2", "ada", nil)
	_, bob := g.key(t, "levels", "bob-key", "bob", nil)
	g.call(t, "PATCH", "/v1/workspaces/levels?updateMask=limits", map[string]any{"limits": map[string]any{"globalLimits": map[string]any{"rpd": 3}}})
	g.call(t, "PATCH", "/v1/workspaces/levels/members/ada?updateMask=limits", map[string]any{"limits": map[string]any{"globalLimits": map[string]any{"rpd": 2}}})
	g.admitted(t, ada)
	g.admitted(t, ada2)
	g.limited(t, ada, "member/rpd") // ada's two keys together
	g.admitted(t, bob)
	g.limited(t, bob, "workspace/rpd") // a denial consumed nothing: 3 in all

	// Week and month: a token cap per week and a budget per month, on a
	// workspace each.
	g.workspace(t, "weekly")
	_, weekly := g.key(t, "weekly", "w", "", nil)
	g.call(t, "PATCH", "/v1/workspaces/weekly?updateMask=limits", map[string]any{"limits": map[string]any{
		"tokenCap": map[string]any{"tokens": 30, "resetPeriod": "RESET_PERIOD_WEEKLY"}}})
	g.admitted(t, weekly)
	g.limited(t, weekly, "workspace/token_cap")
	g.workspace(t, "monthly")
	_, monthly := g.key(t, "monthly", "m", "", nil)
	g.call(t, "PATCH", "/v1/workspaces/monthly?updateMask=limits", map[string]any{"limits": map[string]any{
		"budget": map[string]any{"amountUsd": "0.000020", "resetPeriod": "RESET_PERIOD_MONTHLY"}}})
	g.admitted(t, monthly)
	g.limited(t, monthly, "workspace/budget")

	// Explain reads the live state: the workspace's rpd is used up.
	ex := g.call(t, "GET", "/v1/workspaces/levels/keys/"+keyIDOf(t, g, "levels", "bob-key")+":explain?model=mock-small&estimatedTokens=10", nil)
	require.NotEqual(t, true, ex["wouldAdmit"], ex)
	require.Equal(t, "LIMIT_LEVEL_WORKSPACE", ex["deniedLevel"], ex)
	require.Equal(t, "LIMIT_KIND_RPD", ex["deniedBy"], ex)
	requireLimitState(t, ex, "LIMIT_LEVEL_WORKSPACE", "LIMIT_KIND_RPD", 3, 3)
	requireLimitState(t, ex, "LIMIT_LEVEL_MEMBER", "", 0, 0) // bob has no member limits

	// Midnight UTC on Sunday 31 January: day, week and month all reset.
	clk.Set(time.Date(2027, 2, 1, 0, 0, 1, 0, time.UTC))
	g.admitted(t, ada)
	g.admitted(t, bob)
	g.admitted(t, weekly)
	g.admitted(t, monthly)

	t.Run("credits", func(t *testing.T) { testCredits(t, g) })
	t.Run("report mode", func(t *testing.T) { testReportMode(t, g) })
	t.Run("alerts", func(t *testing.T) { testAlerts(t, g) })
	t.Run("legacy keys", func(t *testing.T) { testLegacyKeys(t, g) })
	t.Run("timed override", func(t *testing.T) { testOverride(t, g) })
}

func keyIDOf(t *testing.T, g govStack, ws, name string) string {
	t.Helper()
	out := g.call(t, "GET", "/v1/workspaces/"+ws+"/keys", nil)
	for _, k := range out["keys"].([]any) {
		if k.(map[string]any)["name"] == name {
			return k.(map[string]any)["id"].(string)
		}
	}
	t.Fatalf("no key %q in %s", name, ws)
	return ""
}

// requireLimitState finds the explained limit (kind "" asserts there is
// none at that level) and checks its limit and used.
func requireLimitState(t *testing.T, ex map[string]any, level, kind string, limit, used int64) {
	t.Helper()
	limits, _ := ex["limits"].([]any)
	for _, l := range limits {
		s := l.(map[string]any)
		if s["level"] != level {
			continue
		}
		require.NotEmpty(t, kind, "unexpected limit at %s: %v", level, s)
		if s["kind"] == kind && (s["model"] == nil || s["model"] == "") {
			require.Equal(t, limit, num(t, s["limit"]), s)
			require.Equal(t, used, num(t, s["used"]), s)
			require.NotEmpty(t, s["resetTime"], s)
			return
		}
	}
	require.Empty(t, kind, "no %s %s in %v", level, kind, limits)
}

func testCredits(t *testing.T, g govStack) {
	g.workspace(t, "paid")
	_, secret := g.key(t, "paid", "k", "", nil)
	entry := map[string]any{"id": "invoice-1", "kind": "CREDIT_ENTRY_KIND_TOP_UP", "amountUsd": "0.000010"}
	first := g.call(t, "POST", "/v1/workspaces/paid/credits/entries", entry)
	require.NotEqual(t, true, first["replayed"])
	again := g.call(t, "POST", "/v1/workspaces/paid/credits/entries", entry)
	require.Equal(t, true, again["replayed"], "the same id twice is one entry")

	// The balance cannot cover the estimate: 402, not 429, in each dialect.
	code, hdr, out := rest(t, "POST", g.edge+"/v1/chat/completions", secret, map[string]any{
		"model": "mock-small", "max_tokens": 64, "messages": []any{map[string]any{"role": "user", "content": "hi"}}})
	require.Equal(t, http.StatusPaymentRequired, code, out)
	require.Equal(t, "insufficient_credits", out["error"].(map[string]any)["code"])
	require.Equal(t, "false", hdr.Get("x-should-retry"))
	require.Equal(t, "workspace/credits", hdr.Get("x-keygate-limited-by"))
	code, _, out = rest(t, "POST", g.edge+"/v1/messages", secret, map[string]any{
		"model": "mock-small", "max_tokens": 64, "messages": []any{map[string]any{"role": "user", "content": "hi"}}})
	require.Equal(t, http.StatusPaymentRequired, code, out)
	require.Equal(t, "billing_error", out["error"].(map[string]any)["type"])

	g.call(t, "POST", "/v1/workspaces/paid/credits/entries", map[string]any{"id": "invoice-2", "kind": "CREDIT_ENTRY_KIND_TOP_UP", "amountUsd": "5.00"})
	// The edge cached the workspace with the 402s above; the top-up's
	// level marker reaches it through its change stream, a moment later.
	require.Eventually(t, func() bool { code, _, _ := g.chat(t, secret); return code == http.StatusOK },
		10*time.Second, 10*time.Millisecond, "the top-up reaches the edge")
	// The request's cost is drawn from the credits (the ledger's spend).
	require.Eventually(t, func() bool {
		c := g.call(t, "GET", "/v1/workspaces/paid/credits", nil)
		return c["grantedUsd"] == "5.00001" && c["spentUsd"] != "0" && c["spentUsd"] != nil
	}, 20*time.Second, 50*time.Millisecond)
	hist := g.call(t, "GET", "/v1/workspaces/paid/credits/entries", nil)
	require.Len(t, hist["entries"], 2)
}

func testReportMode(t *testing.T, g govStack) {
	g.workspace(t, "shadow")
	_, secret := g.key(t, "shadow", "k", "", nil)
	g.call(t, "PATCH", "/v1/workspaces/shadow?updateMask=report_limits", map[string]any{"reportLimits": map[string]any{"globalLimits": map[string]any{"rpd": 1}}})
	for range 3 {
		g.admitted(t, secret) // reported, never denied
	}
	ex := g.call(t, "GET", "/v1/workspaces/shadow/keys/"+keyIDOf(t, g, "shadow", "k")+":explain?model=mock-small", nil)
	require.Equal(t, true, ex["wouldAdmit"], ex)
	require.NotEmpty(t, ex["reported"], "the report-mode rpd would deny: %v", ex)
}

func testAlerts(t *testing.T, g govStack) {
	var mu sync.Mutex
	var got []map[string]any
	var secret string
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		defer mu.Unlock()
		mac := hmac.New(sha256.New, []byte(secret))
		mac.Write([]byte(r.Header.Get("webhook-id") + "." + r.Header.Get("webhook-timestamp") + "." + string(body)))
		if r.Header.Get("webhook-signature") != "v1,"+base64.StdEncoding.EncodeToString(mac.Sum(nil)) {
			http.Error(w, "bad signature", http.StatusUnauthorized)
			return
		}
		var p map[string]any
		if json.Unmarshal(body, &p) == nil {
			got = append(got, p)
		}
	}))
	t.Cleanup(recv.Close)

	g.workspace(t, "alerted")
	_, key := g.key(t, "alerted", "k", "", nil)
	wh := g.call(t, "POST", "/v1/workspaces/alerted/webhooks", map[string]any{"url": recv.URL})
	mu.Lock()
	secret = wh["secret"].(string)
	mu.Unlock()
	g.call(t, "PATCH", "/v1/workspaces/alerted?updateMask=limits,alert_thresholds", map[string]any{
		"limits": map[string]any{"globalLimits": map[string]any{"rpd": 4}}, "alertThresholds": []int{50, 100}})
	for range 4 {
		g.admitted(t, key)
	}
	g.limited(t, key, "workspace/rpd")
	require.Eventually(t, func() bool { mu.Lock(); defer mu.Unlock(); return len(got) >= 2 }, 30*time.Second, 20*time.Millisecond)
	// Once per period per threshold: nothing more arrives.
	alerts := g.call(t, "GET", "/v1/workspaces/alerted/alerts", nil)
	require.Len(t, alerts["alerts"], 2, alerts)
	mu.Lock()
	defer mu.Unlock()
	require.Len(t, got, 2)
	seen := map[float64]bool{}
	for _, p := range got {
		require.Equal(t, "workspace", p["level"], p)
		require.Equal(t, "rpd", p["limit"], p)
		seen[p["threshold_percent"].(float64)] = true
	}
	require.Equal(t, map[float64]bool{50: true, 100: true}, seen)
}

func testLegacyKeys(t *testing.T, g govStack) {
	g.workspace(t, "migrated")
	const old = "sk-legacy-0123456789abcdefghijklmnopqrstuv"
	sum := sha256.Sum256([]byte(old))
	out := g.call(t, "POST", "/v1/workspaces/migrated/keys:import", map[string]any{"keys": []any{map[string]any{
		"name": "from-old-gateway", "secretSha256": hex.EncodeToString(sum[:]), "partialKey": "sk-...stuv",
		"globalLimits": map[string]any{"rpd": 1}}}})
	require.Len(t, out["keys"], 1)
	require.Equal(t, true, out["keys"].([]any)[0].(map[string]any)["legacy"])
	g.admitted(t, old)
	g.limited(t, old, "key/rpd") // imported keys carry limits like any key
	code, _, _ := g.chat(t, "sk-legacy-unknown-0123456789abcdefghijkl")
	require.Equal(t, http.StatusUnauthorized, code)
	listed := g.call(t, "GET", "/v1/workspaces/migrated/keys?legacy=true", nil)
	require.Len(t, listed["keys"], 1)
}

func testOverride(t *testing.T, g govStack) {
	g.workspace(t, "override")
	id, secret := g.key(t, "override", "k", "", map[string]any{"globalLimits": map[string]any{"rpd": 5}})
	until := g.clk.Now().Add(time.Hour)
	g.call(t, "PATCH", "/v1/workspaces/override/keys/"+id+"?updateMask=limit_override", map[string]any{"limitOverride": map[string]any{
		"policy": map[string]any{"globalLimits": map[string]any{"rpd": 1}}, "expireTime": until.Format(time.RFC3339)}})
	g.admitted(t, secret)
	g.limited(t, secret, "key/rpd")
	// At the override's end the key's own rpd is back, on every edge, and
	// the keystore clears the override with an audit event.
	g.clk.Set(until.Add(time.Second))
	g.admitted(t, secret)
	require.Eventually(t, func() bool {
		k := g.call(t, "GET", "/v1/workspaces/override/keys/"+id, nil)["key"].(map[string]any)
		return k["limitOverride"] == nil
	}, 20*time.Second, 50*time.Millisecond)
}
