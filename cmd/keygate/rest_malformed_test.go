package main

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// rawREST sends body as is to a URL taken as written (so that %FF reaches
// the server) and decodes the JSON answer.
func rawREST(t testing.TB, method, url, token, body string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
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
		require.NoError(t, json.Unmarshal(raw, &out), "%s %s: body %q", method, url, raw)
	}
	return resp.StatusCode, out
}

// requireRESTError checks an answer in the gateway's error shape.
func requireRESTError(t *testing.T, code int, body map[string]any, wantCode int, wantStatus, wantInMessage string) {
	t.Helper()
	require.Equal(t, wantCode, code, "%v", body)
	e, _ := body["error"].(map[string]any)
	require.NotNil(t, e, "%v", body)
	require.Equal(t, wantStatus, e["status"], "%v", body)
	require.Equal(t, float64(wantCode), e["code"], "%v", body)
	require.Contains(t, e["message"], wantInMessage, "%v", body)
}

// restFixture is a workspace "acme" with a member and a key, over REST.
type restFixture struct {
	api, edge, root, keyID, secret string
}

func newRESTFixture(t *testing.T) restFixture {
	t.Helper()
	app := MustRunApp(t, "", nil)
	f := restFixture{api: "http://" + app.HTTPAddr, edge: "http://" + app.EdgeAddr, root: app.Config.RootToken}
	code, b := rawREST(t, "POST", f.api+"/v1/workspaces", f.root, `{"id":"acme","name":"Acme"}`)
	require.Equal(t, http.StatusOK, code, b)
	code, b = rawREST(t, "PUT", f.api+"/v1/workspaces/acme/members/alice", f.root, `{"role":"ROLE_MEMBER"}`)
	require.Equal(t, http.StatusOK, code, b)
	code, b = rawREST(t, "POST", f.api+"/v1/workspaces/acme/keys", f.root,
		`{"name":"web","globalLimits":{"rpm":60},"budget":{"amountUsd":"0.01","resetPeriod":"RESET_PERIOD_MONTHLY"}}`)
	require.Equal(t, http.StatusOK, code, b)
	f.keyID = b["key"].(map[string]any)["id"].(string)
	f.secret = b["secret"].(string)
	return f
}

// state is everything a malformed request could have changed: the
// workspace, its keys (with their etags), members, providers, models and
// the audit log.
func (f restFixture) state(t *testing.T) string {
	t.Helper()
	var sb strings.Builder
	for _, p := range []string{
		"/v1/workspaces/acme", "/v1/workspaces/acme/keys", "/v1/workspaces/acme/members",
		"/v1/providers", "/v1/models", "/v1/workspaces/acme/auditEvents",
	} {
		code, b := rawREST(t, "GET", f.api+p, f.root, "")
		require.Equal(t, http.StatusOK, code, "%s: %v", p, b)
		j, err := json.Marshal(b)
		require.NoError(t, err)
		sb.WriteString(p + " " + string(j) + "\n")
	}
	return sb.String()
}

// TestRESTInvalidUTF8 sends a path segment or query value that is not
// UTF-8 (%FF) to every kind of route: each is a 400 INVALID_ARGUMENT naming
// the field, and changes nothing. It was a 500: grpc-go refuses to marshal
// a proto3 string that is not UTF-8, so the gateway's call failed INTERNAL
// before reaching the service.
func TestRESTInvalidUTF8(t *testing.T) {
	f := newRESTFixture(t)
	k := "/v1/workspaces/acme/keys/" + f.keyID
	before := f.state(t)
	for _, tc := range []struct{ method, path, body, field string }{
		{"GET", "/v1/workspaces/%FF", "", "workspace"},
		{"PATCH", "/v1/workspaces/%FF?updateMask=name", `{"name":"x"}`, "workspace"},
		{"POST", "/v1/workspaces/%FF/keys", `{"name":"web2"}`, "workspace"},
		{"GET", "/v1/workspaces/acme/keys/%FF", "", "key"},
		{"GET", "/v1/workspaces/acme/keys/ab%FFcd", "", "key"},
		{"PATCH", "/v1/workspaces/acme/keys/%FF", `{"name":"x"}`, "key"},
		{"DELETE", "/v1/workspaces/acme/keys/%FF", "", "key"},
		{"POST", "/v1/workspaces/acme/keys/%FF:rotate", `{}`, "key"},
		{"POST", "/v1/workspaces/acme/keys/%FF:expire", `{}`, "key"},
		{"PUT", "/v1/workspaces/acme/members/%FF", `{"role":"ROLE_MEMBER"}`, "member"},
		{"DELETE", "/v1/workspaces/acme/members/%FF", "", "member"},
		{"GET", "/v1/models/%FF", "", "model"},
		{"DELETE", "/v1/providers/%FF", "", "provider"},
		{"GET", "/v1/workspaces/acme/keys?pageToken=%FF", "", "page_token"},
		{"GET", "/v1/workspaces/acme/auditEvents?pageToken=%FF", "", "page_token"},
		{"GET", k + "/auditEvents?pageToken=%FF", "", "page_token"},
		{"GET", "/v1/workspaces/acme/requests?key=%FF", "", "key"},
		{"GET", "/v1/workspaces/acme/requests?pageToken=%FF", "", "page_token"},
		{"GET", k + "/usage?model=%FF", "", "model"},
		{"GET", k + "/usage:series?startDate=%FF", "", "start_date"},
		{"PATCH", k + "?updateMask=name%FF", `{"name":"x"}`, "update_mask.paths[0]"},
		{"PATCH", k + "?etag=%FF&updateMask=name", `{"name":"x"}`, "etag"},
	} {
		code, body := rawREST(t, tc.method, f.api+tc.path, f.root, tc.body)
		requireRESTError(t, code, body, http.StatusBadRequest, "INVALID_ARGUMENT", tc.field+": must be valid UTF-8")
	}
	require.Equal(t, before, f.state(t), "a refused request changed something")
}

// TestRESTPatchStaleEtag: the etag a PATCH body carries (the resource as
// read, sent back) is the update's precondition, with an explicit
// updateMask as without one: stale, it is a 409 ABORTED and nothing changes.
// With a mask it used to be ignored and the update applied; without one it
// was a 400 ("cannot update etag").
func TestRESTPatchStaleEtag(t *testing.T) {
	f := newRESTFixture(t)
	k := f.api + "/v1/workspaces/acme/keys/" + f.keyID
	ws := f.api + "/v1/workspaces/acme"
	code, b := rawREST(t, "GET", k, f.root, "")
	require.Equal(t, http.StatusOK, code, b)
	etag := b["key"].(map[string]any)["etag"].(string)
	stale := "1"
	require.NotEqual(t, etag, stale)

	before := f.state(t)
	for _, tc := range []struct{ url, body string }{
		{k + "?updateMask=name", `{"etag":"` + stale + `","name":"renamed"}`},
		{k + "?updateMask=globalLimits.rpm", `{"etag":"` + stale + `","globalLimits":{"rpm":5}}`},
		{k + "?updateMask=enabled", `{"etag":"` + stale + `","enabled":false}`},
		{k, `{"etag":"` + stale + `","name":"renamed"}`},
		{k + "?etag=" + stale, `{"name":"renamed"}`},
		{ws + "?updateMask=name", `{"etag":"` + stale + `","name":"Renamed"}`},
		{ws, `{"etag":"` + stale + `","name":"Renamed"}`},
	} {
		code, body := rawREST(t, "PATCH", tc.url, f.root, tc.body)
		requireRESTError(t, code, body, http.StatusConflict, "ABORTED", "etag mismatch")
	}
	// Two different etags are ambiguous: 400 naming the patch's.
	code, body := rawREST(t, "PATCH", k+"?updateMask=name&etag="+etag, f.root, `{"etag":"`+stale+`","name":"renamed"}`)
	requireRESTError(t, code, body, http.StatusBadRequest, "INVALID_ARGUMENT", "patch.etag")
	// Only an etag: nothing to update.
	code, body = rawREST(t, "PATCH", k, f.root, `{"etag":"`+etag+`"}`)
	requireRESTError(t, code, body, http.StatusBadRequest, "INVALID_ARGUMENT", "update_mask")
	require.Equal(t, before, f.state(t), "a refused update changed something")

	// The current etag, in the body with a mask, updates.
	code, b = rawREST(t, "PATCH", k+"?updateMask=name", f.root, `{"etag":"`+etag+`","name":"renamed"}`)
	require.Equal(t, http.StatusOK, code, b)
	require.Equal(t, "renamed", b["key"].(map[string]any)["name"])
	require.NotEqual(t, etag, b["key"].(map[string]any)["etag"])
	// And the etag it had is now stale.
	code, body = rawREST(t, "PATCH", k+"?updateMask=name", f.root, `{"etag":"`+etag+`","name":"again"}`)
	requireRESTError(t, code, body, http.StatusConflict, "ABORTED", "etag mismatch")
}

// TestRESTUnknownQueryParameter: a query parameter that names no field of
// the call is a 400 naming it, as an unknown body field is, instead of being
// ignored (usage:series?from=garbage answered the default 30 days).
// Malformed dates name their parameter.
func TestRESTUnknownQueryParameter(t *testing.T) {
	f := newRESTFixture(t)
	k := "/v1/workspaces/acme/keys/" + f.keyID
	before := f.state(t)
	for _, tc := range []struct{ method, path, body, want string }{
		{"GET", k + "/usage:series?from=garbage", "", `unknown query parameter "from"; this call takes model, startDate, endDate`},
		{"GET", k + "/usage:series?from=2026-01-01&to=2026-01-31", "", `unknown query parameter "from"`},
		{"GET", k + "/usage:series?startDate=garbage", "", `start_date: "garbage" is not a date`},
		{"GET", k + "/usage:series?start_date=2026-02-30", "", `start_date: "2026-02-30" is not a date`},
		{"GET", k + "/usage:series?endDate=20260101", "", `end_date: "20260101" is not a date`},
		{"GET", "/v1/workspaces/acme/usage?startDate=garbage", "", `start_date: "garbage" is not a date`},
		{"GET", "/v1/workspaces/acme/usage?since=2026-01-01", "", `unknown query parameter "since"`},
		{"GET", "/v1/workspaces/acme/keys?pagesize=10", "", `unknown query parameter "pagesize"`},
		{"GET", "/v1/workspaces/acme/requests?keyId=x", "", `unknown query parameter "keyId"`},
		{"GET", "/v1/workspaces/acme/keys?%FF=1", "", `unknown query parameter "\xff"`},
		{"PATCH", k + "?updatemask=name", `{"name":"renamed"}`, `unknown query parameter "updatemask"`},
		{"DELETE", k + "?force=true", "", `unknown query parameter "force"`},
	} {
		code, body := rawREST(t, tc.method, f.api+tc.path, f.root, tc.body)
		requireRESTError(t, code, body, http.StatusBadRequest, "INVALID_ARGUMENT", tc.want)
	}
	require.Equal(t, before, f.state(t), "a refused request changed something")

	// The parameters as documented still work, by JSON or proto name.
	today := time.Now().UTC().Format(time.DateOnly)
	for _, p := range []string{
		k + "/usage:series?startDate=" + today + "&endDate=" + today,
		k + "/usage:series?start_date=" + today + "&model=mock-small",
		"/v1/workspaces/acme/usage?groupBy=GROUP_BY_MODEL",
		"/v1/workspaces/acme/keys?pageSize=1",
		"/v1/workspaces/acme/requests?key=" + f.keyID + "&pageSize=5",
	} {
		code, body := rawREST(t, "GET", f.api+p, f.root, "")
		require.Equal(t, http.StatusOK, code, "%s: %v", p, body)
	}
}

// TestBudgetDenialInDollars: a request a $0.01 budget cannot cover is
// refused with the budget in dollars, not the limiter's micro-dollars
// ("limit 10000").
func TestBudgetDenialInDollars(t *testing.T) {
	f := newRESTFixture(t)
	waitHealthy(t, f.edge+"/healthz")
	// 2000 completion tokens of mock-large at $10 per million: $0.02.
	code, _, body := rest(t, "POST", f.edge+"/v1/chat/completions", f.secret, map[string]any{
		"model": "mock-large", "max_tokens": 2000,
		"messages": []any{map[string]any{"role": "user", "content": "hi"}},
	})
	require.Equal(t, http.StatusTooManyRequests, code, body)
	e := body["error"].(map[string]any)
	require.Equal(t, "insufficient_quota", e["code"])
	msg := e["message"].(string)
	require.Contains(t, msg, "cost budget (limit $0.01)")
	require.NotContains(t, msg, "10000")
}
