package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"net/http"
)

// TestOpenAIClient runs the official openai npm client (tests/openai) against
// keygate up: a normal and a streaming chat completion, a wrong key as
// AuthenticationError and a full window as RateLimitError. CI installs the
// client with `npm ci`; elsewhere the test skips when it is not installed.
func TestOpenAIClient(t *testing.T) {
	dir, err := filepath.Abs("../../tests/openai")
	require.NoError(t, err)
	node, nodeErr := exec.LookPath("node")
	_, modErr := os.Stat(filepath.Join(dir, "node_modules", "openai"))
	if nodeErr != nil || modErr != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI must run the openai client test: node=%v, module=%v (run npm ci in tests/openai)", nodeErr, modErr)
		}
		t.Skip("node or the openai npm package is not installed (npm ci --prefix tests/openai)")
	}
	app := MustRunApp(t, "", nil)
	api := "http://" + app.HTTPAddr
	root := app.Config.RootToken
	code, _, body := rest(t, "POST", api+"/v1/workspaces", root, map[string]any{"id": "npm", "name": "npm"})
	require.Equal(t, http.StatusOK, code, body)
	code, _, body = rest(t, "POST", api+"/v1/workspaces/npm/keys", root, map[string]any{"name": "client", "globalLimits": map[string]any{"rpm": 5}})
	require.Equal(t, http.StatusOK, code, body)

	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "--test", "--test-concurrency=1", "openai.test.mjs")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "KEYGATE_EDGE_URL=http://"+app.EdgeAddr, "KEYGATE_KEY="+body["secret"].(string))
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "node --test:\n%s", out)
	t.Logf("node --test:\n%s", out)
}
