package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// nodeTest is an npm test project under tests/ (installed by make
// test-deps) that a Go test runs against keygate with `node --test`.
type nodeTest struct {
	dir  string
	node string
}

// needNodeTest finds the project tests/<name> and fails, saying how to
// install it, when node or a module it needs is missing: never a skip.
func needNodeTest(t *testing.T, name string, modules ...string) nodeTest {
	t.Helper()
	dir, err := filepath.Abs(filepath.Join("../../tests", name))
	require.NoError(t, err)
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("node (20) is needed for tests/%s: %v", name, err)
	}
	for _, m := range modules {
		if _, err := os.Stat(filepath.Join(dir, "node_modules", m)); err != nil {
			t.Fatalf("tests/%s needs the npm module %s: run make test-deps (npm ci --prefix tests/%s)", name, m, name)
		}
	}
	return nodeTest{dir: dir, node: node}
}

// run runs one test file with the given environment added, one test at a
// time, and fails with its output if any test fails.
func (n nodeTest) run(t *testing.T, timeout time.Duration, file string, env ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, n.node, "--test", "--test-concurrency=1", file)
	cmd.Dir = n.dir
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "node --test:\n%s", out)
	t.Logf("node --test:\n%s", out)
}
