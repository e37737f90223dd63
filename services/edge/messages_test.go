package edge_test

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	limiterv1 "github.com/keygate/keygate/gen/keygate/limiter/v1"
	usagev1 "github.com/keygate/keygate/gen/keygate/usage/v1"
	"github.com/keygate/keygate/services/edge"
	"github.com/keygate/keygate/services/edge/mock"
)

const messagesBody = `{"model":"mock-small","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}`

// anthropicHeaders are what Anthropic's SDK sends.
func anthropicHeaders(key string) map[string]string {
	return map[string]string{"x-api-key": key, "anthropic-version": "2023-06-01", "Content-Type": "application/json"}
}

type anthropicUsage struct {
	InputTokens              int64 `json:"input_tokens"`
	CacheCreationInputTokens int64 `json:"cache_creation_input_tokens"`
	CacheReadInputTokens     int64 `json:"cache_read_input_tokens"`
	OutputTokens             int64 `json:"output_tokens"`
}

// anthropicErrorType is the error type of an answer in Anthropic's shape.
func anthropicErrorType(tb testing.TB, a answer) string {
	tb.Helper()
	var e struct {
		Type  string `json:"type"`
		Error struct {
			Type    string `json:"type"`
			Message string `json:"message"`
		} `json:"error"`
	}
	require.NoError(tb, json.Unmarshal(a.body, &e), "%s", a.body)
	require.Equal(tb, "error", e.Type)
	require.NotEmpty(tb, e.Error.Message)
	return e.Error.Type
}

func TestMessagesThroughMock(t *testing.T) {
	t.Parallel()
	h := startEdge(t, options{})
	t.Run("unary with x-api-key", func(t *testing.T) {
		a := h.do(t, http.MethodPost, "/v1/messages", anthropicHeaders(goodKey),
			`{"model":"mock-small","max_tokens":5,"system":"Be brief.","messages":[{"role":"user","content":"hi"}]}`)
		require.Equal(t, http.StatusOK, a.status, "%s", a.body)
		var msg struct {
			Type    string `json:"type"`
			Content []struct {
				Text string `json:"text"`
			} `json:"content"`
			StopReason string         `json:"stop_reason"`
			Usage      anthropicUsage `json:"usage"`
		}
		require.NoError(t, json.Unmarshal(a.body, &msg))
		require.Equal(t, "message", msg.Type)
		require.Equal(t, "This is a deterministic answer", msg.Content[0].Text)
		require.Equal(t, "max_tokens", msg.StopReason, "max_tokens cut the answer")
		require.Equal(t, "100", a.header.Get("Anthropic-Ratelimit-Requests-Limit"))
		require.Equal(t, "99", a.header.Get("Anthropic-Ratelimit-Requests-Remaining"))
		reset, err := time.Parse(time.RFC3339, a.header.Get("Anthropic-Ratelimit-Tokens-Reset"))
		require.NoError(t, err)
		require.Equal(t, h.clock.Now().Add(6*time.Minute).Truncate(time.Second), reset)
		requireNoRateHeaders(t, a.header) // OpenAI's are not sent
		h.requireRecorded(t, a.header.Get("X-Request-Id"), usagev1.RequestStatus_REQUEST_STATUS_OK, msg.Usage.InputTokens, 5)
	})
	t.Run("bearer", func(t *testing.T) {
		a := h.post(t, "/v1/messages", goodKey, messagesBody)
		require.Equal(t, http.StatusOK, a.status, "%s", a.body)
	})
	t.Run("stream", func(t *testing.T) {
		resp := h.open(t, "/v1/messages", `{"model":"mock-small","max_tokens":3,"stream":true,"messages":[{"role":"user","content":"hi"}]}`)
		defer resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.NotEmpty(t, resp.Header.Get("Anthropic-Ratelimit-Requests-Limit"))
		var names []string
		var text strings.Builder
		var start struct {
			Message struct {
				Usage anthropicUsage `json:"usage"`
			} `json:"message"`
		}
		var delta struct {
			Usage anthropicUsage `json:"usage"`
		}
		for _, e := range namedEvents(t, resp.Body) {
			names = append(names, e.name)
			var ev struct {
				Type  string `json:"type"`
				Delta struct {
					Text string `json:"text"`
				} `json:"delta"`
			}
			require.NoError(t, json.Unmarshal([]byte(e.data), &ev))
			require.Equal(t, e.name, ev.Type)
			text.WriteString(ev.Delta.Text)
			switch e.name {
			case "message_start":
				require.NoError(t, json.Unmarshal([]byte(e.data), &start))
			case "message_delta":
				require.NoError(t, json.Unmarshal([]byte(e.data), &delta))
			}
		}
		require.Equal(t, []string{"message_start", "content_block_start", "ping", "content_block_delta", "content_block_delta",
			"content_block_delta", "content_block_stop", "message_delta", "message_stop"}, names)
		require.Equal(t, "This is a", text.String())
		require.EqualValues(t, 3, delta.Usage.OutputTokens)
		h.requireRecorded(t, resp.Header.Get("X-Request-Id"), usagev1.RequestStatus_REQUEST_STATUS_OK, start.Message.Usage.InputTokens, 3)
	})
	t.Run("count_tokens", func(t *testing.T) {
		checks := h.limiter.checks()
		a := h.do(t, http.MethodPost, "/v1/messages/count_tokens", anthropicHeaders(goodKey),
			`{"model":"mock-small","messages":[{"role":"user","content":"hi"}]}`)
		require.Equal(t, http.StatusOK, a.status, "%s", a.body)
		var n struct {
			InputTokens int64 `json:"input_tokens"`
		}
		require.NoError(t, json.Unmarshal(a.body, &n))
		require.EqualValues(t, mock.PromptTokens([]byte(`[{"role":"user","content":"hi"}]`)), n.InputTokens)
		require.Equal(t, checks, h.limiter.checks(), "counting is not limited")
		require.NoError(t, h.srv.Close(t.Context()))
		require.NotContains(t, h.usage.ids(), a.header.Get("X-Request-Id"), "nor accounted")
	})
}

// TestMessagesErrors: refusals in Anthropic's shape and statuses, with
// retry-after where a retry can succeed.
func TestMessagesErrors(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name    string
		header  map[string]string
		body    string
		setup   func(*harness)
		status  int
		typ     string
		retry   string
		limited bool // anthropic-ratelimit headers
	}{
		{name: "missing key", header: map[string]string{"anthropic-version": "2023-06-01"}, status: 401, typ: "authentication_error"},
		{name: "wrong key", header: anthropicHeaders("kg_nope"), status: 401, typ: "authentication_error"},
		{name: "admin key", header: anthropicHeaders(adminKey), status: 403, typ: "permission_error"},
		{name: "missing max_tokens", body: `{"model":"mock-small","messages":[{"role":"user","content":"hi"}]}`, status: 400, typ: "invalid_request_error"},
		{name: "empty messages", body: `{"model":"mock-small","max_tokens":5,"messages":[]}`, status: 400, typ: "invalid_request_error"},
		{name: "malformed json", body: `{"model":`, status: 400, typ: "invalid_request_error"},
		{name: "unknown model", body: `{"model":"claude-9","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}`, status: 404, typ: "not_found_error"},
		{name: "too large", body: `{"model":"mock-small","max_tokens":5,"messages":[{"role":"user","content":"` + strings.Repeat("x", 5<<20) + `"}]}`, status: 413, typ: "request_too_large"},
		{name: "rate limited", status: 429, typ: "rate_limit_error", retry: "31", limited: true, setup: func(h *harness) {
			h.limiter.setDecide(deny(limiterv1.LimitKind_LIMIT_KIND_RPM, "", 0))
		}},
		{name: "budget spent", status: 429, typ: "rate_limit_error", setup: func(h *harness) {
			h.limiter.setDecide(func(*limiterv1.CheckItem) (*limiterv1.CheckResult, error) {
				return &limiterv1.CheckResult{DeniedBy: limiterv1.LimitKind_LIMIT_KIND_BUDGET}, nil
			})
		}},
		{name: "limiter down", status: 503, typ: "overloaded_error", setup: func(h *harness) {
			h.limiter.setDecide(func(*limiterv1.CheckItem) (*limiterv1.CheckResult, error) { return nil, context.DeadlineExceeded })
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			h := startEdge(t, options{})
			if c.setup != nil {
				c.setup(h)
			}
			header, body := c.header, c.body
			if header == nil {
				header = anthropicHeaders(goodKey)
			}
			if body == "" {
				body = messagesBody
			}
			a := h.do(t, http.MethodPost, "/v1/messages", header, body)
			require.Equal(t, c.status, a.status, "%s", a.body)
			require.Equal(t, c.typ, anthropicErrorType(t, a))
			require.Equal(t, c.retry, a.header.Get("Retry-After"))
			if c.limited {
				require.Equal(t, "0", a.header.Get("Anthropic-Ratelimit-Requests-Remaining"))
			} else {
				require.Empty(t, a.header.Get("Anthropic-Ratelimit-Requests-Remaining"))
			}
		})
	}
}

// TestMessagesStreamAborted: a client that leaves mid-stream is charged
// the input message_start reported and the text it received.
func TestMessagesStreamAborted(t *testing.T) {
	t.Parallel()
	// The mock sends its first word, then waits (until the client leaves).
	h := startEdge(t, options{config: func(c *edge.Config) { c.Mock = mock.Options{ChunkDelay: time.Hour} }})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.url+"/v1/messages",
		strings.NewReader(`{"model":"mock-small","max_tokens":100,"stream":true,"messages":[{"role":"user","content":"hello"}]}`))
	require.NoError(t, err)
	for k, v := range anthropicHeaders(goodKey) {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	br := bufio.NewReader(resp.Body)
	var start struct {
		Message struct {
			Usage anthropicUsage `json:"usage"`
		} `json:"message"`
	}
	for {
		line, err := br.ReadString('\n')
		require.NoError(t, err)
		if d, ok := strings.CutPrefix(line, "data: "); ok && strings.Contains(d, `"message_start"`) {
			require.NoError(t, json.Unmarshal([]byte(d), &start))
		}
		if strings.Contains(line, `"text_delta"`) {
			break
		}
	}
	cancel()
	_ = resp.Body.Close()
	h.requireRecorded(t, resp.Header.Get("X-Request-Id"), usagev1.RequestStatus_REQUEST_STATUS_CLIENT_CANCELLED, start.Message.Usage.InputTokens, 1)
}

// anthropicUpstream serves h as provider "claude" (kind anthropic) with
// model "claude-x" (upstream "claude-real"), priced with cache prices.
func anthropicUpstream(tb testing.TB, h http.HandlerFunc) options {
	tb.Helper()
	srv := httptest.NewServer(h)
	tb.Cleanup(srv.Close)
	return options{
		providers: []*keystorev1.Provider{{Id: "claude", BaseUrl: srv.URL + "/v1", ApiKeyEnv: "UP_KEY", Kind: keystorev1.ProviderKind_PROVIDER_KIND_ANTHROPIC}},
		models: []*keystorev1.Model{{Id: "claude-x", Provider: "claude", UpstreamModel: "claude-real",
			InputPricePerMillionUsd: "3", OutputPricePerMillionUsd: "15", CacheWritePricePerMillionUsd: "3.75", CacheReadPricePerMillionUsd: "0.30"}},
	}
}

// TestMessagesToAnthropic: what reaches an Anthropic provider (its own
// credential as x-api-key, the client's anthropic-version and -beta, the
// upstream model name), and cache tokens each at their price.
func TestMessagesToAnthropic(t *testing.T) {
	t.Parallel()
	got := make(chan *http.Request, 1)
	bodies := make(chan map[string]any, 1)
	h := startEdge(t, anthropicUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		var m map[string]any
		_ = json.NewDecoder(r.Body).Decode(&m)
		got <- r
		bodies <- m
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"type":"message","content":[{"type":"text","text":"hi"}],"usage":{"input_tokens":1000,"cache_creation_input_tokens":2000,"cache_read_input_tokens":10000,"output_tokens":500}}`))
	}))
	hdr := anthropicHeaders(goodKey)
	hdr["anthropic-beta"] = "prompt-caching-2024-07-31"
	a := h.do(t, http.MethodPost, "/v1/messages", hdr, `{"model":"claude-x","max_tokens":600,"messages":[{"role":"user","content":"hi"}]}`)
	require.Equal(t, http.StatusOK, a.status, "%s", a.body)
	r := <-got
	require.Equal(t, "/v1/messages", r.URL.Path)
	require.Equal(t, "provider-secret", r.Header.Get("X-Api-Key"))
	require.Empty(t, r.Header.Get("Authorization"))
	require.Equal(t, "2023-06-01", r.Header.Get("Anthropic-Version"))
	require.Equal(t, "prompt-caching-2024-07-31", r.Header.Get("Anthropic-Beta"))
	require.Equal(t, "claude-real", (<-bodies)["model"])

	id := a.header.Get("X-Request-Id")
	rec := h.requireRecorded(t, id, usagev1.RequestStatus_REQUEST_STATUS_OK, 13000, 500)
	require.EqualValues(t, 2000, rec.GetCacheWriteTokens())
	require.EqualValues(t, 10000, rec.GetCacheReadTokens())
	s, _ := h.limiter.settled()
	var cost int64
	for _, st := range s {
		if st.GetReservationId() == id {
			cost = st.GetActualCostMicros()
		}
	}
	// 1000 × $3 + 2000 × $3.75 + 10000 × $0.30 + 500 × $15, per million.
	require.EqualValues(t, 3000+7500+3000+7500, cost)
}

// TestWrongDialect: a request in one dialect for a model whose provider
// speaks only the other is a 400 naming the endpoint to use.
func TestWrongDialect(t *testing.T) {
	t.Parallel()
	o := anthropicUpstream(t, func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusTeapot) })
	o.providers = append(o.providers, &keystorev1.Provider{Id: "up", BaseUrl: "http://127.0.0.1:1/v1"})
	o.models = append(o.models, &keystorev1.Model{Id: "up-model", Provider: "up", InputPricePerMillionUsd: "1", OutputPricePerMillionUsd: "1"})
	h := startEdge(t, o)
	t.Run("chat to an Anthropic model", func(t *testing.T) {
		a := h.post(t, "/v1/chat/completions", goodKey, `{"model":"claude-x","messages":[{"role":"user","content":"hi"}]}`)
		require.Equal(t, http.StatusBadRequest, a.status)
		require.Contains(t, string(a.body), "/v1/messages")
		require.Equal(t, "invalid_request_error", a.errorCode())
	})
	t.Run("messages to an OpenAI model", func(t *testing.T) {
		a := h.do(t, http.MethodPost, "/v1/messages", anthropicHeaders(goodKey), `{"model":"up-model","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}`)
		require.Equal(t, http.StatusBadRequest, a.status)
		require.Equal(t, "invalid_request_error", anthropicErrorType(t, a))
		require.Contains(t, string(a.body), "/v1/chat/completions")
	})
	require.Zero(t, h.limiter.checks(), "refused before the limiter")
}
