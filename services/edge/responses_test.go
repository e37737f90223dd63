package edge_test

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	usagev1 "github.com/keygate/keygate/gen/keygate/usage/v1"
)

// sseEvent is one server-sent event: its name (if any) and its data.
type sseEvent struct {
	name, data string
}

// namedEvents reads an SSE answer into its events.
func namedEvents(tb testing.TB, r io.Reader) []sseEvent {
	tb.Helper()
	var out []sseEvent
	var cur sseEvent
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if cur != (sseEvent{}) {
				out = append(out, cur)
			}
			cur = sseEvent{}
		case strings.HasPrefix(line, "event: "):
			cur.name = line[len("event: "):]
		case strings.HasPrefix(line, "data: "):
			cur.data = line[len("data: "):]
		}
	}
	require.NoError(tb, sc.Err())
	return out
}

// requireRecorded waits for the ledger record of the answer a and checks
// its tokens and status.
func (h *harness) requireRecorded(tb testing.TB, id string, status usagev1.RequestStatus, prompt, completion int64) *usagev1.UsageRecord {
	tb.Helper()
	require.Eventually(tb, func() bool { return h.usage.record(id) != nil }, 5*time.Second, 5*time.Millisecond)
	rec := h.usage.record(id)
	require.Equal(tb, status, rec.GetStatus())
	require.Equal(tb, prompt, rec.GetPromptTokens(), "prompt tokens")
	require.Equal(tb, completion, rec.GetCompletionTokens(), "completion tokens")
	require.Eventually(tb, func() bool {
		s, _ := h.limiter.settled()
		for _, st := range s {
			if st.GetReservationId() == id {
				return st.GetActualTokens() == prompt+completion
			}
		}
		return false
	}, 5*time.Second, 5*time.Millisecond, "settled to the recorded usage")
	return rec
}

type responsesUsage struct {
	InputTokens  int64 `json:"input_tokens"`
	OutputTokens int64 `json:"output_tokens"`
}

func TestResponsesThroughMock(t *testing.T) {
	t.Parallel()
	h := startEdge(t, options{})
	t.Run("unary", func(t *testing.T) {
		a := h.post(t, "/v1/responses", goodKey, `{"model":"mock-small","input":"Say hi","max_output_tokens":5}`)
		require.Equal(t, http.StatusOK, a.status, "%s", a.body)
		requireRateHeaders(t, a.header)
		var resp struct {
			Object string `json:"object"`
			Output []struct {
				Content []struct {
					Text string `json:"text"`
				} `json:"content"`
			} `json:"output"`
			Usage responsesUsage `json:"usage"`
		}
		require.NoError(t, json.Unmarshal(a.body, &resp))
		require.Equal(t, "response", resp.Object)
		require.Equal(t, "This is a deterministic answer", resp.Output[0].Content[0].Text)
		require.EqualValues(t, 5, resp.Usage.OutputTokens)
		id := a.header.Get("X-Request-Id")
		h.requireRecorded(t, id, usagev1.RequestStatus_REQUEST_STATUS_OK, resp.Usage.InputTokens, 5)
		h.limiter.mu.Lock()
		item := h.limiter.items[len(h.limiter.items)-1]
		h.limiter.mu.Unlock()
		require.Equal(t, int64(len(`"Say hi"`))/4+1+5, item.GetEstimatedTokens(), "input estimate plus max_output_tokens")
	})
	t.Run("default reservation", func(t *testing.T) {
		a := h.post(t, "/v1/responses", goodKey, `{"model":"mock-small","input":[{"role":"user","content":"hi"}],"instructions":"Be brief."}`)
		require.Equal(t, http.StatusOK, a.status, "%s", a.body)
		h.limiter.mu.Lock()
		item := h.limiter.items[len(h.limiter.items)-1]
		h.limiter.mu.Unlock()
		prompt := int64(len(`[{"role":"user","content":"hi"}]`)+len(`"Be brief."`))/4 + 1
		require.Equal(t, prompt+1024, item.GetEstimatedTokens())
	})
	t.Run("stream", func(t *testing.T) {
		resp := h.open(t, "/v1/responses", `{"model":"mock-small","input":"Say hi","stream":true,"max_output_tokens":3}`)
		defer resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)
		requireRateHeaders(t, resp.Header)
		evs := namedEvents(t, resp.Body)
		var names []string
		var text strings.Builder
		for _, e := range evs {
			names = append(names, e.name)
			var ev struct {
				Type  string `json:"type"`
				Delta string `json:"delta"`
			}
			require.NoError(t, json.Unmarshal([]byte(e.data), &ev))
			require.Equal(t, e.name, ev.Type)
			if ev.Type == "response.output_text.delta" {
				text.WriteString(ev.Delta)
			}
		}
		require.Equal(t, "response.created", names[0])
		require.Contains(t, names, "response.output_text.delta")
		require.Equal(t, "response.incomplete", names[len(names)-1], "max_output_tokens cut the answer")
		require.Equal(t, "This is a", text.String())
		var last struct {
			Response struct {
				Usage responsesUsage `json:"usage"`
			} `json:"response"`
		}
		require.NoError(t, json.Unmarshal([]byte(evs[len(evs)-1].data), &last))
		h.requireRecorded(t, resp.Header.Get("X-Request-Id"), usagev1.RequestStatus_REQUEST_STATUS_OK, last.Response.Usage.InputTokens, 3)
	})
	t.Run("bad input", func(t *testing.T) {
		for _, body := range []string{`{"model":"mock-small"}`, `{"input":"hi"}`, `{"model":"mock-small","input":"hi","max_output_tokens":-1}`, `{"model":"mock-small","input":"hi","Model":"mock-large"}`} {
			a := h.post(t, "/v1/responses", goodKey, body)
			require.Equal(t, http.StatusBadRequest, a.status, body)
			require.Equal(t, "invalid_request_error", a.errorCode())
		}
	})
}

// open posts body with the good key and returns the answer unread.
func (h *harness) open(tb testing.TB, path, body string) *http.Response {
	tb.Helper()
	req, err := http.NewRequestWithContext(tb.Context(), http.MethodPost, h.url+path, strings.NewReader(body))
	require.NoError(tb, err)
	req.Header.Set("Authorization", "Bearer "+goodKey)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(tb, err)
	return resp
}

// TestResponsesPassThrough: a Responses request reaches an OpenAI-kind
// provider at /responses with its model renamed; usage comes from the
// provider's answer.
func TestResponsesPassThrough(t *testing.T) {
	t.Parallel()
	got := make(chan map[string]any, 1)
	paths := make(chan string, 1)
	h := startEdge(t, upstream(t, func(w http.ResponseWriter, r *http.Request) {
		var m map[string]any
		_ = json.NewDecoder(r.Body).Decode(&m)
		got <- m
		paths <- r.URL.Path
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"object":"response","output":[],"usage":{"input_tokens":11,"output_tokens":4,"total_tokens":15}}`))
	}))
	a := h.post(t, "/v1/responses", goodKey, `{"model":"up-model","input":"hi","reasoning":{"effort":"low"}}`)
	require.Equal(t, http.StatusOK, a.status, "%s", a.body)
	require.Equal(t, "/v1/responses", <-paths)
	m := <-got
	require.Equal(t, "real-model", m["model"])
	require.Equal(t, map[string]any{"effort": "low"}, m["reasoning"])
	h.requireRecorded(t, a.header.Get("X-Request-Id"), usagev1.RequestStatus_REQUEST_STATUS_OK, 11, 4)
}

// TestResponsesStreamAborted: a client that leaves mid-stream is charged
// the deltas it received and the input estimate, settled not released.
func TestResponsesStreamAborted(t *testing.T) {
	t.Parallel()
	const sent = 3
	ended := make(chan error, 1)
	h := startEdge(t, upstream(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		rc := http.NewResponseController(w)
		_, _ = io.WriteString(w, "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"status\":\"in_progress\",\"usage\":null}}\n\n")
		for i := range sent {
			_, _ = io.WriteString(w, "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"w"+strconv.Itoa(i)+"\"}\n\n")
		}
		_ = rc.Flush()
		<-r.Context().Done()
		ended <- r.Context().Err()
	}))
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.url+"/v1/responses", strings.NewReader(`{"model":"up-model","input":"hello","stream":true}`))
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+goodKey)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	br := bufio.NewReader(resp.Body)
	for range (1 + sent) * 3 { // event, data, blank
		_, err := br.ReadString('\n')
		require.NoError(t, err)
	}
	cancel()
	_ = resp.Body.Close()
	select {
	case err := <-ended:
		require.ErrorIs(t, err, context.Canceled)
	case <-time.After(10 * time.Second):
		t.Fatal("the provider's request was not cancelled")
	}
	h.requireRecorded(t, resp.Header.Get("X-Request-Id"), usagev1.RequestStatus_REQUEST_STATUS_CLIENT_CANCELLED, int64(len(`"hello"`))/4+1, sent)
}
