package main

import (
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

// TestTraceJoins: one inference request is one trace, from the edge's
// server span through the limiter and keystore calls it makes (the
// limiter in the same process is called directly, in a span of its own).
func TestTraceJoins(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	app := MustRunApp(t, "", nil, func(a *App) { a.SpanProcessors = []sdktrace.SpanProcessor{rec} })
	api, edge, root := "http://"+app.HTTPAddr, "http://"+app.EdgeAddr, app.Config.RootToken
	code, _, body := rest(t, "POST", api+"/v1/workspaces", root, map[string]any{"id": "tr", "name": "Trace"})
	require.Equal(t, http.StatusOK, code, body)
	code, _, body = rest(t, "POST", api+"/v1/workspaces/tr/keys", root, map[string]any{"name": "k", "globalLimits": map[string]any{"rpm": 100}})
	require.Equal(t, http.StatusOK, code, body)
	waitHealthy(t, edge+"/healthz")

	const traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	want, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	req, _ := http.NewRequest("POST", edge+"/v1/chat/completions", stringsReader(`{"model":"mock-small","messages":[{"role":"user","content":"hi"}]}`))
	req.Header.Set("Authorization", "Bearer "+body["secret"].(string))
	req.Header.Set("traceparent", traceparent)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)

	// Spans end asynchronously (the settle runs after the answer).
	var mu sync.Mutex
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		names := map[string]bool{}
		for _, s := range rec.Ended() {
			if s.SpanContext().TraceID() == want {
				names[s.Name()+"/"+s.SpanKind().String()] = true
			}
		}
		return names["keygate.limiter.v1.LimiterService/Check (in-process)/internal"] &&
			names["keygate.keystore.v1.KeystoreService/VerifyKey/client"] &&
			names["keygate.keystore.v1.KeystoreService/VerifyKey/server"]
	}, 10*time.Second, 50*time.Millisecond, "spans: %v", spanNames(rec))
}

func spanNames(rec *tracetest.SpanRecorder) []string {
	var out []string
	for _, s := range rec.Ended() {
		out = append(out, s.SpanContext().TraceID().String()[:8]+" "+s.Name()+"/"+s.SpanKind().String())
	}
	return out
}
