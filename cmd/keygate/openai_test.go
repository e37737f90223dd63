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
// AuthenticationError and a full window as RateLimitError. `make test`
// installs the client (make test-deps); without it the test fails, saying
// how to install it, rather than skip.
func TestOpenAIClient(t *testing.T) {
	dir, err := filepath.Abs("../../tests/openai")
	require.NoError(t, err)
	node, nodeErr := exec.LookPath("node")
	_, modErr := os.Stat(filepath.Join(dir, "node_modules", "openai"))
	if nodeErr != nil || modErr != nil {
		t.Fatalf("the openai npm client is not installed (node: %v, module: %v): run make test-deps (npm ci --prefix tests/openai)", nodeErr, modErr)
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
