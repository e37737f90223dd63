package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestConsoleInChromium drives the web console in Debian's Chromium with
// playwright-core (tests/console) against keygate up: sign-in, the key
// pages, usage and the logs, and what other credentials may see, checking
// each change at the edge with real requests. Controls are found by role
// and accessible name. Screenshots of each page land in
// tests/console/screenshots (KEYGATE_SCREENSHOTS elsewhere). Without
// Chromium or playwright-core the test fails, saying how to install them.
func TestConsoleInChromium(t *testing.T) {
	js := needNodeTest(t, "console", "playwright-core")
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("the console's browser tests need Debian's Chromium (%v): run make test-deps (apt-get install chromium)", err)
	}
	var out bytes.Buffer
	app := MustRunApp(t, "", nil, func(a *App) { a.Out = &out })
	require.Contains(t, out.String(), "keygate: web console at http://"+app.HTTPAddr+"/console/", "keygate up prints the console's URL")

	shots := os.Getenv("KEYGATE_SCREENSHOTS")
	if shots == "" {
		shots = filepath.Join(js.dir, "screenshots")
	}
	js.run(t, 5*time.Minute, "console.test.mjs",
		"KEYGATE_URL=http://"+app.HTTPAddr, "KEYGATE_EDGE_URL=http://"+app.EdgeAddr,
		"KEYGATE_ROOT_TOKEN="+app.Config.RootToken, "CHROMIUM="+chromium, "KEYGATE_SCREENSHOTS="+shots)
}
