package edge_test

import (
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	limiterv1 "github.com/keygate/keygate/gen/keygate/limiter/v1"
	usagev1 "github.com/keygate/keygate/gen/keygate/usage/v1"
	"github.com/keygate/keygate/pkg/money"
	"github.com/keygate/keygate/services/edge"
)

const chatBody = `{"model":"mock-small","messages":[{"role":"user","content":"hi"}],"max_tokens":8}`

func deny(kind limiterv1.LimitKind, model string, retry time.Duration) func(*limiterv1.CheckItem) (*limiterv1.CheckResult, error) {
	return func(*limiterv1.CheckItem) (*limiterv1.CheckResult, error) {
		r := &limiterv1.CheckResult{
			DeniedBy:    kind,
			DeniedModel: model,
			Requests:    &limiterv1.Quota{Kind: limiterv1.LimitKind_LIMIT_KIND_RPM, Limit: 2, Remaining: 0, ResetAfter: durationpb.New(31 * time.Second)},
			Tokens:      &limiterv1.Quota{Kind: limiterv1.LimitKind_LIMIT_KIND_TPD, Limit: 1000, Remaining: 10, ResetAfter: durationpb.New(6 * time.Hour)},
			Quotas:      []*limiterv1.Quota{{Kind: kind, Model: model, Limit: 2, ResetAfter: durationpb.New(31 * time.Second)}},
		}
		if kind == limiterv1.LimitKind_LIMIT_KIND_TPM || kind == limiterv1.LimitKind_LIMIT_KIND_TPD {
			r.Quotas[0].Limit = 100_000 // a window the request fits when empty
		}
		if retry > 0 {
			r.RetryAfter = durationpb.New(retry)
		}
		return r, nil
	}
}

// upstream serves h on a loopback listener and registers it as provider
// "up" with model "up-model" (called "real-model" upstream).
func upstream(tb testing.TB, h http.HandlerFunc) options {
	tb.Helper()
	srv := httptest.NewServer(h)
	tb.Cleanup(srv.Close)
	return withProvider(srv.URL + "/v1")
}

func withProvider(base string) options {
	return options{
		providers: []*keystorev1.Provider{{Id: "up", BaseUrl: base, ApiKeyEnv: "UP_KEY"}},
		models:    []*keystorev1.Model{{Id: "up-model", Provider: "up", UpstreamModel: "real-model", InputPricePerMillionUsd: "1", OutputPricePerMillionUsd: "2"}},
	}
}

const upBody = `{"model":"up-model","messages":[{"role":"user","content":"hi"}],"max_tokens":8}`

func TestErrorTable(t *testing.T) {
	t.Parallel()
	type tc struct {
		name      string
		opts      func(testing.TB) options
		setup     func(*harness)
		path      string
		header    map[string]string
		body      string
		status    int
		code      string
		retry     string // Retry-After; "" = absent
		checked   bool   // reached the limiter
		released  bool   // the reservation was released
		recorded  usagev1.RequestStatus
		forbidden bool // X-Should-Retry: false
	}
	auth := func(key string) map[string]string {
		return map[string]string{"Authorization": "Bearer " + key, "Content-Type": "application/json"}
	}
	past := timestamppb.New(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	cases := []tc{
		{name: "missing key", header: map[string]string{}, status: 401, code: "invalid_api_key"},
		{name: "malformed authorization", header: map[string]string{"Authorization": "Basic abc"}, status: 401, code: "invalid_api_key"},
		{name: "unknown key", header: auth("kg_nope"), status: 401, code: "invalid_api_key"},
		{name: "disabled key", header: auth("kg_off"), status: 401, code: "invalid_api_key", setup: func(h *harness) {
			h.verifier.set("kg_off", &keystorev1.Key{Id: "k3", State: keystorev1.KeyState_KEY_STATE_DISABLED})
		}},
		{name: "expired key", header: auth("kg_old"), status: 401, code: "invalid_api_key", setup: func(h *harness) {
			h.verifier.set("kg_old", &keystorev1.Key{Id: "k4", State: keystorev1.KeyState_KEY_STATE_ACTIVE, ExpireTime: past})
		}},
		{name: "keystore unreachable", header: auth(goodKey), status: 503, code: "keystore_unavailable", setup: func(h *harness) {
			h.verifier.setDown()
		}},
		{name: "admin key", header: auth(adminKey), status: 403, code: "permission_denied"},
		{name: "model not allowed", header: auth("kg_narrow"), status: 403, code: "model_not_allowed", setup: func(h *harness) {
			h.verifier.set("kg_narrow", &keystorev1.Key{Id: "k5", AllowedModels: []string{"mock-large"}})
		}},
		{name: "unknown model", body: `{"model":"gpt-9","messages":[{"role":"user","content":"hi"}]}`, status: 404, code: "model_not_found"},
		{name: "malformed json", body: `{"model":`, status: 400, code: "invalid_request_error"},
		{name: "not an object", body: `[1,2]`, status: 400, code: "invalid_request_error"},
		{name: "wrong field type", body: `{"model":"mock-small","messages":[{"role":"user","content":"hi"}],"stream":"yes"}`, status: 400, code: "invalid_request_error"},
		{name: "missing model", body: `{"messages":[{"role":"user","content":"hi"}]}`, status: 400, code: "invalid_request_error"},
		{name: "missing messages", body: `{"model":"mock-small"}`, status: 400, code: "invalid_request_error"},
		{name: "empty messages", body: `{"model":"mock-small","messages":[]}`, status: 400, code: "invalid_request_error"},
		{name: "missing prompt", path: "/v1/completions", body: `{"model":"mock-small"}`, status: 400, code: "invalid_request_error"},
		{name: "missing input", path: "/v1/embeddings", body: `{"model":"mock-small"}`, status: 400, code: "invalid_request_error"},
		{name: "negative max_tokens", body: `{"model":"mock-small","messages":[{"role":"user","content":"hi"}],"max_tokens":-1}`, status: 400, code: "invalid_request_error"},
		{name: "body too large", body: `{"model":"mock-small","messages":[{"role":"user","content":"` + strings.Repeat("x", 5<<20) + `"}]}`, status: 413, code: "request_too_large"},
		{name: "rpm full", status: 429, code: "rate_limit_exceeded", retry: "31", checked: true, setup: func(h *harness) {
			h.limiter.setDecide(deny(limiterv1.LimitKind_LIMIT_KIND_RPM, "", 0))
		}},
		{name: "model rpm full", status: 429, code: "rate_limit_exceeded", retry: "12", checked: true, setup: func(h *harness) {
			h.limiter.setDecide(deny(limiterv1.LimitKind_LIMIT_KIND_RPM, "mock-small", 11500*time.Millisecond))
		}},
		{name: "rpd full", status: 429, code: "rate_limit_exceeded", retry: "3600", checked: true, setup: func(h *harness) {
			h.limiter.setDecide(deny(limiterv1.LimitKind_LIMIT_KIND_RPD, "", time.Hour))
		}},
		{name: "tpm full", status: 429, code: "rate_limit_exceeded", retry: "2", checked: true, setup: func(h *harness) {
			h.limiter.setDecide(deny(limiterv1.LimitKind_LIMIT_KIND_TPM, "", 1200*time.Millisecond))
		}},
		// A request larger than the window can never be admitted: no
		// Retry-After, and the client is told not to retry as it is.
		{name: "request larger than tpm", status: 429, code: "rate_limit_exceeded", checked: true, forbidden: true, setup: func(h *harness) {
			h.limiter.setDecide(func(*limiterv1.CheckItem) (*limiterv1.CheckResult, error) {
				return &limiterv1.CheckResult{DeniedBy: limiterv1.LimitKind_LIMIT_KIND_TPM,
					Quotas: []*limiterv1.Quota{{Kind: limiterv1.LimitKind_LIMIT_KIND_TPM, Limit: 10, ResetAfter: durationpb.New(time.Second)}}}, nil
			})
		}},
		{name: "tpd full", status: 429, code: "rate_limit_exceeded", retry: "60", checked: true, setup: func(h *harness) {
			h.limiter.setDecide(deny(limiterv1.LimitKind_LIMIT_KIND_TPD, "", time.Minute))
		}},
		{name: "token cap spent", status: 429, code: "insufficient_quota", checked: true, forbidden: true, setup: func(h *harness) {
			h.limiter.setDecide(func(it *limiterv1.CheckItem) (*limiterv1.CheckResult, error) {
				return &limiterv1.CheckResult{DeniedBy: limiterv1.LimitKind_LIMIT_KIND_TOKEN_CAP}, nil
			})
		}},
		{name: "budget spent", status: 429, code: "insufficient_quota", checked: true, forbidden: true, setup: func(h *harness) {
			h.limiter.setDecide(func(it *limiterv1.CheckItem) (*limiterv1.CheckResult, error) {
				return &limiterv1.CheckResult{DeniedBy: limiterv1.LimitKind_LIMIT_KIND_BUDGET}, nil
			})
		}},
		// The limiter may have reserved before its answer was lost: the
		// edge releases the reservation.
		{name: "limiter unreachable fails closed", status: 503, code: "limiter_unavailable", checked: true, released: true, setup: func(h *harness) {
			h.limiter.setDecide(func(*limiterv1.CheckItem) (*limiterv1.CheckResult, error) { return nil, errors.New("no limiter") })
		}},
		{name: "provider error", body: upBody, status: 502, code: "upstream_error", checked: true, released: true,
			recorded: usagev1.RequestStatus_REQUEST_STATUS_UPSTREAM_ERROR,
			opts: func(tb testing.TB) options {
				return upstream(tb, func(w http.ResponseWriter, _ *http.Request) { http.Error(w, "boom", http.StatusInternalServerError) })
			}},
		{name: "provider rejects credentials", body: upBody, status: 502, code: "upstream_error", checked: true, released: true,
			recorded: usagev1.RequestStatus_REQUEST_STATUS_UPSTREAM_ERROR,
			opts: func(tb testing.TB) options {
				return upstream(tb, func(w http.ResponseWriter, _ *http.Request) { http.Error(w, "no", http.StatusUnauthorized) })
			}},
		{name: "provider unreachable", body: upBody, status: 502, code: "upstream_error", checked: true, released: true,
			recorded: usagev1.RequestStatus_REQUEST_STATUS_UPSTREAM_ERROR,
			opts: func(tb testing.TB) options {
				ln, err := net.Listen("tcp", "127.0.0.1:0")
				require.NoError(tb, err)
				addr := ln.Addr().String()
				require.NoError(tb, ln.Close())
				return withProvider("http://" + addr + "/v1")
			}},
		{name: "provider timeout", body: upBody, status: 504, code: "upstream_error", checked: true, released: true,
			recorded: usagev1.RequestStatus_REQUEST_STATUS_UPSTREAM_ERROR,
			opts: func(tb testing.TB) options {
				o := upstream(tb, func(_ http.ResponseWriter, r *http.Request) {
					_, _ = io.Copy(io.Discard, r.Body) // the server notices a gone client only after the body
					<-r.Context().Done()
				})
				o.config = func(c *edge.Config) { c.RequestTimeout = 200 * time.Millisecond }
				return o
			}},
		{name: "unknown route", path: "/v1/nope", status: 404, code: "not_found"},
		{name: "wrong method", path: "/v1/chat/completions", header: map[string]string{"Authorization": "Bearer " + goodKey, "X-Method": "GET"}, status: 405, code: "method_not_allowed"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			var o options
			if c.opts != nil {
				o = c.opts(t)
			}
			h := startEdge(t, o)
			if c.setup != nil {
				c.setup(h)
			}
			path := c.path
			if path == "" {
				path = "/v1/chat/completions"
			}
			body := c.body
			if body == "" {
				body = chatBody
			}
			header := c.header
			if header == nil {
				header = auth(goodKey)
			}
			method := http.MethodPost
			if header["X-Method"] != "" {
				method = header["X-Method"]
			}
			a := h.do(t, method, path, header, body)
			require.Equal(t, c.status, a.status, "body: %s", a.body)
			require.Equal(t, c.code, a.errorCode())
			var shape struct {
				Error struct {
					Message string `json:"message"`
					Type    string `json:"type"`
					Code    string `json:"code"`
				} `json:"error"`
			}
			require.NoError(t, json.Unmarshal(a.body, &shape))
			require.NotEmpty(t, shape.Error.Message)
			require.NotEmpty(t, shape.Error.Type)
			require.Equal(t, "application/json", a.header.Get("Content-Type"))
			require.Equal(t, c.retry, a.header.Get("Retry-After"))
			if c.forbidden {
				require.Equal(t, "false", a.header.Get("X-Should-Retry"))
			}
			// Only a Check that found windows advertises them.
			if c.checked && !c.forbidden && c.code != "limiter_unavailable" {
				requireRateHeaders(t, a.header)
			} else {
				requireNoRateHeaders(t, a.header)
			}
			require.NotEmpty(t, a.header.Get("X-Request-Id"))
			if c.checked {
				require.Equal(t, 1, h.limiter.checks())
			} else {
				require.Zero(t, h.limiter.checks(), "bad input must not reach the limiter")
			}
			if c.released {
				require.Eventually(t, func() bool { _, r := h.limiter.settled(); return len(r) == 1 }, 5*time.Second, 5*time.Millisecond)
			}
			id := a.header.Get("X-Request-Id")
			if c.recorded != usagev1.RequestStatus_REQUEST_STATUS_UNSPECIFIED {
				require.Eventually(t, func() bool { return h.usage.record(id) != nil }, 5*time.Second, 5*time.Millisecond)
				require.Equal(t, c.recorded, h.usage.record(id).GetStatus())
			} else {
				// Nothing happened: the ledger is not touched.
				require.NoError(t, h.srv.Close(t.Context()))
				require.Empty(t, h.usage.ids())
				s, r := h.limiter.settled()
				require.Empty(t, s)
				if c.released {
					require.Len(t, r, 1)
					require.Equal(t, id, r[0].GetReservationId())
				} else {
					require.Empty(t, r)
				}
			}
			require.NotContains(t, h.logs.String(), goodKey)
		})
	}
}

func TestRateLimitHeaders(t *testing.T) {
	t.Parallel()
	h := startEdge(t, options{})
	a := h.post(t, "/v1/chat/completions", goodKey, chatBody)
	require.Equal(t, http.StatusOK, a.status, "%s", a.body)
	require.Equal(t, "100", a.header.Get("X-Ratelimit-Limit-Requests"))
	require.Equal(t, "99", a.header.Get("X-Ratelimit-Remaining-Requests"))
	require.Equal(t, "600ms", a.header.Get("X-Ratelimit-Reset-Requests"))
	require.Equal(t, "100000", a.header.Get("X-Ratelimit-Limit-Tokens"))
	require.Equal(t, "90000", a.header.Get("X-Ratelimit-Remaining-Tokens"))
	require.Equal(t, "6m0s", a.header.Get("X-Ratelimit-Reset-Tokens"))
	require.Empty(t, a.header.Get("Retry-After"))

	h.limiter.setDecide(deny(limiterv1.LimitKind_LIMIT_KIND_RPM, "", 0))
	a = h.post(t, "/v1/chat/completions", goodKey, chatBody)
	require.Equal(t, http.StatusTooManyRequests, a.status)
	require.Equal(t, "2", a.header.Get("X-Ratelimit-Limit-Requests"))
	require.Equal(t, "0", a.header.Get("X-Ratelimit-Remaining-Requests"))
	require.Equal(t, "31s", a.header.Get("X-Ratelimit-Reset-Requests"))
	require.Equal(t, "6h0m0s", a.header.Get("X-Ratelimit-Reset-Tokens"))

	t.Run("an unlimited dimension is not advertised", func(t *testing.T) {
		h.limiter.setDecide(func(*limiterv1.CheckItem) (*limiterv1.CheckResult, error) {
			// A key with an rpm and no token window.
			return &limiterv1.CheckResult{Allowed: true,
				Requests: &limiterv1.Quota{Kind: limiterv1.LimitKind_LIMIT_KIND_RPM, Limit: 5, Remaining: 4, ResetAfter: durationpb.New(time.Second)},
				Tokens:   &limiterv1.Quota{Kind: limiterv1.LimitKind_LIMIT_KIND_TPM}}, nil
		})
		a := h.post(t, "/v1/chat/completions", goodKey, chatBody)
		require.Equal(t, http.StatusOK, a.status, "%s", a.body)
		require.Equal(t, "5", a.header.Get("X-Ratelimit-Limit-Requests"))
		for _, name := range []string{"X-Ratelimit-Limit-Tokens", "X-Ratelimit-Remaining-Tokens", "X-Ratelimit-Reset-Tokens"} {
			require.Empty(t, a.header.Values(name), name)
		}
	})
}

func TestInferenceThroughMock(t *testing.T) {
	t.Parallel()
	h := startEdge(t, options{})
	h.verifier.set("kg_capped", &keystorev1.Key{Id: "k9", Workspace: "acme", Owner: "bob",
		Budget: nil, AllowedModels: []string{"mock-small"}})
	cases := []struct {
		name, path, body string
		prompt, compl    int64
	}{
		{"chat", "/v1/chat/completions", chatBody, 0, 8},
		{"completion", "/v1/completions", `{"model":"mock-small","prompt":"say hi","max_tokens":4}`, 0, 4},
		{"embedding", "/v1/embeddings", `{"model":"mock-small","input":["a","b"]}`, 0, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a := h.post(t, c.path, goodKey, c.body)
			require.Equal(t, http.StatusOK, a.status, "%s", a.body)
			requireRateHeaders(t, a.header)
			var resp struct {
				Usage struct {
					PromptTokens     int64 `json:"prompt_tokens"`
					CompletionTokens int64 `json:"completion_tokens"`
				} `json:"usage"`
			}
			require.NoError(t, json.Unmarshal(a.body, &resp))
			require.Equal(t, c.compl, resp.Usage.CompletionTokens)
			id := a.header.Get("X-Request-Id")
			require.Eventually(t, func() bool { return h.usage.record(id) != nil }, 5*time.Second, 5*time.Millisecond)
			rec := h.usage.record(id)
			require.Equal(t, usagev1.RequestStatus_REQUEST_STATUS_OK, rec.GetStatus())
			require.Equal(t, "key1", rec.GetKey())
			require.Equal(t, "acme", rec.GetWorkspace())
			require.Equal(t, "alice", rec.GetOwner())
			require.Equal(t, "mock-small", rec.GetModel())
			require.Equal(t, resp.Usage.PromptTokens, rec.GetPromptTokens())
			require.Equal(t, resp.Usage.CompletionTokens, rec.GetCompletionTokens())
			require.Equal(t, h.clock.Now(), rec.GetTime().AsTime())
			// One price decision: the record carries the catalog's prices,
			// and the budget was settled at exactly what they cost.
			require.Equal(t, "0.15", rec.GetInputPricePerMillionUsd())
			require.Equal(t, "0.60", rec.GetOutputPricePerMillionUsd())
			prices, err := money.ParsePrices(rec.GetInputPricePerMillionUsd(), rec.GetOutputPricePerMillionUsd(),
				rec.GetCacheWritePricePerMillionUsd(), rec.GetCacheReadPricePerMillionUsd())
			require.NoError(t, err)
			wantCost := prices.Cost(rec.GetPromptTokens(), rec.GetCompletionTokens(), 0, 0).Micros()
			require.Eventually(t, func() bool {
				s, _ := h.limiter.settled()
				for _, st := range s {
					if st.GetReservationId() == id {
						return st.GetActualTokens() == resp.Usage.PromptTokens+resp.Usage.CompletionTokens && st.GetKey() == "key1" &&
							st.GetActualCostMicros() == wantCost
					}
				}
				return false
			}, 5*time.Second, 5*time.Millisecond)
		})
	}
	t.Run("check carries the policy and estimate", func(t *testing.T) {
		h.verifier.set("kg_lim", &keystorev1.Key{Id: "k10", Workspace: "acme",
			ModelLimits: nil})
		a := h.post(t, "/v1/chat/completions", "kg_lim", `{"model":"mock-large","messages":[{"role":"user","content":"0123456789abcdef"}],"max_tokens":100}`)
		require.Equal(t, http.StatusOK, a.status)
		h.limiter.mu.Lock()
		item := h.limiter.items[len(h.limiter.items)-1]
		h.limiter.mu.Unlock()
		require.Equal(t, a.header.Get("X-Request-Id"), item.GetReservationId())
		require.Equal(t, "k10", item.GetKey())
		require.Equal(t, "mock-large", item.GetModel())
		prompt := int64(len(`[{"role":"user","content":"0123456789abcdef"}]`))/4 + 1
		require.Equal(t, prompt+100, item.GetEstimatedTokens())
		// $2.50/M in, $10/M out, rounded up to the micro-dollar.
		require.Equal(t, (prompt*2_500_000+100*10_000_000+999_999)/1_000_000, item.GetEstimatedCostMicros())
	})
}

func TestAPIKeyHeader(t *testing.T) {
	t.Parallel()
	h := startEdge(t, options{})
	a := h.do(t, http.MethodPost, "/v1/chat/completions", map[string]string{"api-key": goodKey}, chatBody)
	require.Equal(t, http.StatusOK, a.status, "%s", a.body)
	a = h.do(t, http.MethodPost, "/v1/chat/completions", map[string]string{"api-key": "kg_wrong"}, chatBody)
	require.Equal(t, http.StatusUnauthorized, a.status)
	require.Equal(t, "invalid_api_key", a.errorCode())
}

func TestBodyLimit(t *testing.T) {
	t.Parallel()
	h := startEdge(t, options{config: func(c *edge.Config) { c.MaxBodyBytes = 1024 }})
	big := `{"model":"mock-small","messages":[{"role":"user","content":"` + strings.Repeat("x", 2000) + `"}]}`
	t.Run("content length", func(t *testing.T) {
		a := h.post(t, "/v1/chat/completions", goodKey, big)
		require.Equal(t, http.StatusRequestEntityTooLarge, a.status)
		require.Equal(t, "request_too_large", a.errorCode())
	})
	t.Run("chunked", func(t *testing.T) {
		req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, h.url+"/v1/chat/completions", struct{ *strings.Reader }{strings.NewReader(big)})
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+goodKey)
		req.ContentLength = -1 // sent chunked: only the reader's cap can stop it
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		require.Equal(t, http.StatusRequestEntityTooLarge, resp.StatusCode)
	})
	t.Run("under the limit", func(t *testing.T) {
		require.Equal(t, http.StatusOK, h.post(t, "/v1/chat/completions", goodKey, chatBody).status)
	})
	require.Equal(t, 1, h.limiter.checks())
}

func TestFailOpen(t *testing.T) {
	t.Parallel()
	for _, open := range []bool{false, true} {
		name := "closed"
		if open {
			name = "open"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			h := startEdge(t, options{config: func(c *edge.Config) { c.FailOpen = open }})
			h.limiter.setDecide(func(*limiterv1.CheckItem) (*limiterv1.CheckResult, error) { return nil, errors.New("no limiter") })
			a := h.post(t, "/v1/chat/completions", goodKey, chatBody)
			requireNoRateHeaders(t, a.header)
			if !open {
				require.Equal(t, http.StatusServiceUnavailable, a.status)
				require.Equal(t, "limiter_unavailable", a.errorCode())
				require.Zero(t, h.counter(t, "keygate.edge.limiter.fail_open"))
				return
			}
			require.Equal(t, http.StatusOK, a.status, "%s", a.body)
			require.EqualValues(t, 1, h.counter(t, "keygate.edge.limiter.fail_open"))
			id := a.header.Get("X-Request-Id")
			require.Eventually(t, func() bool { return h.usage.record(id) != nil }, 5*time.Second, 5*time.Millisecond)
			// Nothing is settled; the reservation the limiter may have made
			// before failing is released.
			require.NoError(t, h.srv.Close(t.Context()))
			s, r := h.limiter.settled()
			require.Empty(t, s)
			require.Len(t, r, 1)
			require.Equal(t, id, r[0].GetReservationId())
		})
	}
}

func TestModelsList(t *testing.T) {
	t.Parallel()
	h := startEdge(t, options{})
	h.verifier.set("kg_narrow", &keystorev1.Key{Id: "k5", AllowedModels: []string{"mock-large", "retired"}})
	list := func(key string) []string {
		a := h.do(t, http.MethodGet, "/v1/models", map[string]string{"Authorization": "Bearer " + key}, "")
		require.Equal(t, http.StatusOK, a.status, "%s", a.body)
		requireNoRateHeaders(t, a.header)
		var resp struct {
			Object string `json:"object"`
			Data   []struct {
				ID      string `json:"id"`
				Object  string `json:"object"`
				OwnedBy string `json:"owned_by"`
			} `json:"data"`
		}
		require.NoError(t, json.Unmarshal(a.body, &resp))
		require.Equal(t, "list", resp.Object)
		var ids []string
		for _, m := range resp.Data {
			require.Equal(t, "model", m.Object)
			require.Equal(t, "mock", m.OwnedBy)
			ids = append(ids, m.ID)
		}
		return ids
	}
	t.Run("all models", func(t *testing.T) { require.Equal(t, []string{"mock-large", "mock-small"}, list(goodKey)) })
	t.Run("allowed models only", func(t *testing.T) { require.Equal(t, []string{"mock-large"}, list("kg_narrow")) })
	t.Run("invalid key", func(t *testing.T) {
		a := h.do(t, http.MethodGet, "/v1/models", map[string]string{"Authorization": "Bearer kg_x"}, "")
		require.Equal(t, http.StatusUnauthorized, a.status)
	})
	t.Run("admin key", func(t *testing.T) {
		a := h.do(t, http.MethodGet, "/v1/models", map[string]string{"Authorization": "Bearer " + adminKey}, "")
		require.Equal(t, http.StatusForbidden, a.status)
	})
	require.Zero(t, h.limiter.checks())
}

// TestUpstreamRequest checks what reaches the provider: its own credential
// and model name, never the client's key or hop-by-hop headers.
func TestUpstreamRequest(t *testing.T) {
	t.Parallel()
	got := make(chan *http.Request, 1)
	bodies := make(chan map[string]any, 1)
	o := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		var m map[string]any
		_ = json.NewDecoder(r.Body).Decode(&m)
		got <- r
		bodies <- m
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"id":"x","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}}`))
	})
	h := startEdge(t, o)
	a := h.do(t, http.MethodPost, "/v1/chat/completions", map[string]string{
		"Authorization": "Bearer " + goodKey, "Api-Key": goodKey,
		"Connection": "keep-alive, X-Hop", "X-Hop": "1", "Keep-Alive": "timeout=5", "Te": "trailers",
		"Proxy-Authorization": "Basic x", "Cookie": "session=1",
	}, `{"model":"up-model","messages":[{"role":"user","content":"hi"}],"temperature":0.5}`)
	require.Equal(t, http.StatusOK, a.status, "%s", a.body)
	r := <-got
	require.Equal(t, "/v1/chat/completions", r.URL.Path)
	require.Equal(t, "Bearer provider-secret", r.Header.Get("Authorization"))
	for name, vals := range r.Header {
		for _, v := range vals {
			require.NotContains(t, v, goodKey, "header %s", name)
		}
	}
	for _, name := range []string{"Api-Key", "X-Hop", "Keep-Alive", "Te", "Proxy-Authorization", "Cookie"} {
		require.Empty(t, r.Header.Get(name), name)
	}
	m := <-bodies
	require.Equal(t, "real-model", m["model"])
	require.InDelta(t, 0.5, m["temperature"], 1e-9)
	id := a.header.Get("X-Request-Id")
	require.Eventually(t, func() bool { return h.usage.record(id) != nil }, 5*time.Second, 5*time.Millisecond)
	require.EqualValues(t, 5, h.usage.record(id).GetCompletionTokens())
	require.Equal(t, "up-model", h.usage.record(id).GetModel())
}

func TestPassThroughProviderClientError(t *testing.T) {
	t.Parallel()
	h := startEdge(t, upstream(t, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		_, _ = w.Write([]byte(`{"error":{"message":"temperature too high","type":"invalid_request_error","code":"bad_temperature"}}`))
	}))
	a := h.post(t, "/v1/chat/completions", goodKey, upBody)
	require.Equal(t, http.StatusBadRequest, a.status)
	require.Equal(t, "bad_temperature", a.errorCode())
	requireRateHeaders(t, a.header)
	require.Eventually(t, func() bool { _, r := h.limiter.settled(); return len(r) == 1 }, 5*time.Second, 5*time.Millisecond)
}

func TestNew(t *testing.T) {
	t.Parallel()
	_, err := edge.New(edge.Config{})
	require.ErrorContains(t, err, "Verifier")
}

func TestKeysNeverLogged(t *testing.T) {
	t.Parallel()
	h := startEdge(t, withProvider("http://127.0.0.1:1/v1"))
	h.post(t, "/v1/chat/completions", goodKey, upBody)
	h.limiter.setDecide(func(*limiterv1.CheckItem) (*limiterv1.CheckResult, error) { return nil, errors.New("down") })
	h.post(t, "/v1/chat/completions", goodKey, chatBody)
	h.verifier.setDown()
	h.post(t, "/v1/chat/completions", goodKey, chatBody)
	require.NotEmpty(t, h.logs.String())
	require.NotContains(t, h.logs.String(), goodKey)
	require.NotContains(t, h.logs.String(), "provider-secret")
}
