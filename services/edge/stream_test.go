package edge_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	usagev1 "github.com/keygate/keygate/gen/keygate/usage/v1"
)

// events reads an SSE answer into its data payloads.
func events(tb testing.TB, r io.Reader) []string {
	tb.Helper()
	var out []string
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if d, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			out = append(out, d)
		}
	}
	require.NoError(tb, sc.Err())
	return out
}

func TestStreamingThroughMock(t *testing.T) {
	t.Parallel()
	h := startEdge(t, options{})
	cases := []struct {
		name      string
		body      string
		wantUsage bool
	}{
		{"client did not ask for usage", `{"model":"mock-small","stream":true,"max_tokens":5,"messages":[{"role":"user","content":"hi"}]}`, false},
		{"client asked for usage", `{"model":"mock-small","stream":true,"stream_options":{"include_usage":true},"max_tokens":5,"messages":[{"role":"user","content":"hi"}]}`, true},
		{"completion stream", `{"model":"mock-small","stream":true,"max_tokens":5,"prompt":"hi"}`, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := "/v1/chat/completions"
			if strings.Contains(c.body, "prompt") {
				path = "/v1/completions"
			}
			req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, h.url+path, strings.NewReader(c.body))
			require.NoError(t, err)
			req.Header.Set("Authorization", "Bearer "+goodKey)
			resp, err := http.DefaultClient.Do(req)
			require.NoError(t, err)
			defer resp.Body.Close()
			require.Equal(t, http.StatusOK, resp.StatusCode)
			require.True(t, strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream"))
			requireRateHeaders(t, resp.Header)
			ev := events(t, resp.Body)
			require.Equal(t, "[DONE]", ev[len(ev)-1])
			var sawUsage bool
			var text strings.Builder
			for _, e := range ev[:len(ev)-1] {
				var chunk struct {
					Choices []struct {
						Text  string `json:"text"`
						Delta struct {
							Content string `json:"content"`
						} `json:"delta"`
					} `json:"choices"`
					Usage *struct {
						CompletionTokens int64 `json:"completion_tokens"`
					} `json:"usage"`
				}
				require.NoError(t, json.Unmarshal([]byte(e), &chunk))
				if chunk.Usage != nil {
					sawUsage = true
					require.Empty(t, chunk.Choices)
					require.EqualValues(t, 5, chunk.Usage.CompletionTokens)
				}
				for _, ch := range chunk.Choices {
					text.WriteString(ch.Delta.Content + ch.Text)
				}
			}
			require.Equal(t, c.wantUsage, sawUsage)
			require.Equal(t, "This is a deterministic answer", text.String())
			id := resp.Header.Get("X-Request-Id")
			require.Eventually(t, func() bool { return h.usage.record(id) != nil }, 5*time.Second, 5*time.Millisecond)
			rec := h.usage.record(id)
			require.Equal(t, usagev1.RequestStatus_REQUEST_STATUS_OK, rec.GetStatus())
			// Usage comes from the provider's usage chunk, exact.
			require.EqualValues(t, 5, rec.GetCompletionTokens())
			require.Positive(t, rec.GetPromptTokens())
		})
	}
}

// sseUpstream is a provider that sends n chunks, then waits for more until
// release is closed (or the request ends); it reports the request body and
// the end of each request.
type sseUpstream struct {
	bodies  chan map[string]any
	release chan struct{}
	ended   chan error
}

func newSSEUpstream(n int, withUsage bool) (*sseUpstream, http.HandlerFunc) {
	return newSSEUpstreamRole(n, withUsage, false)
}

// newSSEUpstreamRole is newSSEUpstream, first sending OpenAI's role chunk
// (no text) when role is set.
func newSSEUpstreamRole(n int, withUsage, role bool) (*sseUpstream, http.HandlerFunc) {
	u := &sseUpstream{bodies: make(chan map[string]any, 4), release: make(chan struct{}), ended: make(chan error, 4)}
	return u, func(w http.ResponseWriter, r *http.Request) {
		var m map[string]any
		_ = json.NewDecoder(r.Body).Decode(&m)
		u.bodies <- m
		w.Header().Set("Content-Type", "text/event-stream")
		rc := http.NewResponseController(w)
		if role {
			_, _ = io.WriteString(w, `data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}`+"\n\n")
		}
		for i := range n {
			_, _ = io.WriteString(w, `data: {"choices":[{"index":0,"delta":{"content":"w`+string(rune('a'+i))+`"}}]}`+"\n\n")
			_ = rc.Flush()
		}
		select {
		case <-u.release:
		case <-r.Context().Done():
			u.ended <- r.Context().Err()
			return
		}
		if withUsage {
			_, _ = io.WriteString(w, `data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens3":0,"completion_tokens":`+string(rune('0'+n))+`}}`+"\n\n")
		}
		_, _ = io.WriteString(w, "data: [DONE]\n\n")
		u.ended <- nil
	}
}

// TestStreamPassThrough shows chunks reach the client while the provider is
// still answering, and that the edge asks the provider for usage.
func TestStreamPassThrough(t *testing.T) {
	t.Parallel()
	up, handler := newSSEUpstream(2, true)
	h := startEdge(t, upstream(t, handler))
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, h.url+"/v1/chat/completions",
		strings.NewReader(`{"model":"up-model","stream":true,"stream_options":{"x":1},"messages":[{"role":"user","content":"hi"}]}`))
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+goodKey)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body := <-up.bodies
	require.Equal(t, map[string]any{"include_usage": true, "x": float64(1)}, body["stream_options"])
	require.Equal(t, "real-model", body["model"])

	br := bufio.NewReader(resp.Body)
	for _, want := range []string{"wa", "wb"} {
		line, err := br.ReadString('\n')
		require.NoError(t, err)
		require.Contains(t, line, `"content":"`+want+`"`)
		blank, err := br.ReadString('\n')
		require.NoError(t, err)
		require.Equal(t, "\n", blank)
	}
	// Both chunks arrived while the provider is still holding its answer.
	close(up.release)
	rest, err := io.ReadAll(br)
	require.NoError(t, err)
	require.Equal(t, "data: [DONE]\n\n", string(rest), "the usage chunk the client did not ask for is dropped")
	require.NoError(t, <-up.ended)
	id := resp.Header.Get("X-Request-Id")
	require.Eventually(t, func() bool { return h.usage.record(id) != nil }, 5*time.Second, 5*time.Millisecond)
	require.EqualValues(t, 7, h.usage.record(id).GetPromptTokens())
	require.EqualValues(t, 2, h.usage.record(id).GetCompletionTokens())
}

// TestStreamClientDisconnect: the client goes away mid-stream; the edge
// cancels the provider's request and charges what was sent, capped by
// max_tokens.
func TestStreamClientDisconnect(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name      string
		maxTokens string
		sent      int
		want      int64
		role      bool
	}{
		{"charged per chunk sent", "", 3, 3, false},
		{"capped by max_tokens", `,"max_tokens":2`, 4, 2, false},
		// OpenAI's first chunk carries the role and no text: it is not a
		// token the client received.
		{"the role chunk is not a token", "", 3, 3, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			up, handler := newSSEUpstreamRole(c.sent, true, c.role)
			h := startEdge(t, upstream(t, handler))
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.url+"/v1/chat/completions",
				strings.NewReader(`{"model":"up-model","stream":true`+c.maxTokens+`,"messages":[{"role":"user","content":"hi"}]}`))
			require.NoError(t, err)
			req.Header.Set("Authorization", "Bearer "+goodKey)
			resp, err := http.DefaultClient.Do(req)
			require.NoError(t, err)
			br := bufio.NewReader(resp.Body)
			events := c.sent
			if c.role {
				events++
			}
			for range events * 2 {
				_, err := br.ReadString('\n')
				require.NoError(t, err)
			}
			cancel()
			_ = resp.Body.Close()
			select {
			case err := <-up.ended:
				require.ErrorIs(t, err, context.Canceled, "the provider's request is cancelled")
			case <-time.After(10 * time.Second):
				t.Fatal("the provider's request was not cancelled")
			}
			id := resp.Header.Get("X-Request-Id")
			require.Eventually(t, func() bool { return h.usage.record(id) != nil }, 5*time.Second, 5*time.Millisecond)
			rec := h.usage.record(id)
			require.Equal(t, usagev1.RequestStatus_REQUEST_STATUS_CLIENT_CANCELLED, rec.GetStatus())
			require.Equal(t, c.want, rec.GetCompletionTokens())
			require.Positive(t, rec.GetPromptTokens())
			require.Eventually(t, func() bool {
				s, r := h.limiter.settled()
				return len(s) == 1 && len(r) == 0 && s[0].GetActualTokens() == rec.GetPromptTokens()+c.want
			}, 5*time.Second, 5*time.Millisecond)
		})
	}
}

// TestClientGoneBeforeAnswer: a client that hangs up while the provider is
// still working is charged its prompt and its request counts: a release
// would let a client that always hangs up escape its request limits.
func TestClientGoneBeforeAnswer(t *testing.T) {
	t.Parallel()
	asked := make(chan struct{})
	h := startEdge(t, upstream(t, func(w http.ResponseWriter, r *http.Request) {
		// Read the body: only then does the server notice a closed
		// connection and cancel r.Context().
		_, _ = io.Copy(io.Discard, r.Body)
		close(asked)
		<-r.Context().Done() // never answers before the client leaves
	}))
	ctx, cancel := context.WithCancel(t.Context())
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.url+"/v1/chat/completions",
		strings.NewReader(`{"model":"up-model","messages":[{"role":"user","content":"hello there"}]}`))
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+goodKey)
	done := make(chan error, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}()
	<-asked
	cancel()
	require.Error(t, <-done)

	require.Eventually(t, func() bool {
		s, r := h.limiter.settled()
		return len(s) == 1 && len(r) == 0 && s[0].GetActualTokens() > 0
	}, 5*time.Second, 5*time.Millisecond, "settled with the prompt, not released")
	s, _ := h.limiter.settled()
	require.Eventually(t, func() bool { return h.usage.record(s[0].GetReservationId()) != nil }, 5*time.Second, 5*time.Millisecond)
	rec := h.usage.record(s[0].GetReservationId())
	require.Equal(t, usagev1.RequestStatus_REQUEST_STATUS_CLIENT_CANCELLED, rec.GetStatus())
	require.Positive(t, rec.GetPromptTokens())
	require.Zero(t, rec.GetCompletionTokens())
}

// TestStreamLineBound: a provider that never ends a streamed line cannot
// grow the edge's memory; the stream ends as an upstream error.
func TestStreamLineBound(t *testing.T) {
	t.Parallel()
	h := startEdge(t, upstream(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte("data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n"))
		chunk := bytes.Repeat([]byte("x"), 64<<10)
		for range 40 { // 2.5 MiB without a newline
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	}))
	a := h.post(t, "/v1/chat/completions", goodKey, `{"model":"up-model","stream":true,"messages":[{"role":"user","content":"hi"}]}`)
	require.Equal(t, http.StatusOK, a.status)
	require.Less(t, len(a.body), 2<<20, "the endless line was not passed on whole")
	id := a.header.Get("X-Request-Id")
	require.Eventually(t, func() bool { return h.usage.record(id) != nil }, 5*time.Second, 5*time.Millisecond)
	require.Equal(t, usagev1.RequestStatus_REQUEST_STATUS_UPSTREAM_ERROR, h.usage.record(id).GetStatus())
}
