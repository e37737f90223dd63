package main

import (
	"bufio"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestGracefulShutdown: closing the app (what SIGTERM does) lets a request
// in flight finish: a stream that has started keeps every chunk to [DONE].
func TestGracefulShutdown(t *testing.T) {
	app := MustRunApp(t, "", nil, func(a *App) { a.Config.MockChunkDelay = 100 * time.Millisecond })
	api, edge, root := "http://"+app.HTTPAddr, "http://"+app.EdgeAddr, app.Config.RootToken
	code, _, body := rest(t, "POST", api+"/v1/workspaces", root, map[string]any{"id": "gs", "name": "Shutdown"})
	require.Equal(t, http.StatusOK, code, body)
	code, _, body = rest(t, "POST", api+"/v1/workspaces/gs/keys", root, map[string]any{"name": "k"})
	require.Equal(t, http.StatusOK, code, body)
	waitHealthy(t, edge+"/healthz")

	req, _ := http.NewRequest("POST", edge+"/v1/chat/completions", strings.NewReader(
		`{"model":"mock-small","stream":true,"max_tokens":8,"messages":[{"role":"user","content":"hi"}]}`))
	req.Header.Set("Authorization", "Bearer "+body["secret"].(string))
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	sc := bufio.NewScanner(resp.Body)
	require.True(t, sc.Scan(), "first chunk")
	require.True(t, strings.HasPrefix(sc.Text(), "data: "), sc.Text())

	closed := make(chan error, 1)
	go func() { closed <- app.Close() }()

	var last string
	for sc.Scan() {
		if line := sc.Text(); line != "" {
			last = line
		}
	}
	require.NoError(t, sc.Err())
	require.Equal(t, "data: [DONE]", last, "the stream ran to its end during shutdown")
	require.NoError(t, <-closed)

	// Once closed, the edge takes no new requests.
	_, err = http.Get(edge + "/healthz")
	require.Error(t, err)
}
