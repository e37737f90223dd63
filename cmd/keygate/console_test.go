package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keygate/keygate/internal/oidc/oidctest"
)

// TestConsoleInChromium drives the web console in Debian's Chromium with
// playwright-core (tests/console) against keygate up: sign-in, the key
// pages, usage and the logs, and what other credentials may see, checking
// each change at the edge with real requests. Controls are found by role
// and accessible name. Screenshots of each page land in
// tests/console/screenshots (KEYGATE_SCREENSHOTS elsewhere). Without
// Chromium or playwright-core the test fails, saying how to install them.
func TestConsoleInChromium(t *testing.T) {
	js, chromium := needBrowser(t)
	var out bytes.Buffer
	app := MustRunApp(t, "", nil, func(a *App) { a.Out = &out })
	require.Contains(t, out.String(), "keygate: web console at http://"+app.HTTPAddr+"/console/", "keygate up prints the console's URL")

	js.run(t, 5*time.Minute, "console.test.mjs", browserEnv(js, app, chromium)...)
}

// TestConsoleSingleSignOn: with an OIDC issuer configured (a loopback test
// issuer), the console signs people in with authorization code and PKCE,
// and they act as the member the ID token names.
func TestConsoleSingleSignOn(t *testing.T) {
	js, chromium := needBrowser(t)
	iss := oidctest.NewProvider(t, "keygate-console", "alice@example.com")
	app := MustRunApp(t, "", nil, func(a *App) {
		a.Config.OIDCIssuer, a.Config.OIDCAudience, a.Config.OIDCJWKSFile = iss.URL, iss.Audience, iss.WriteJWKS(t)
	})
	js.run(t, 2*time.Minute, "sso.test.mjs", browserEnv(js, app, chromium)...)
}

// needBrowser finds the browser tests and Debian's Chromium, or fails
// saying how to install them.
func needBrowser(t *testing.T) (nodeTest, string) {
	t.Helper()
	js := needNodeTest(t, "console", "playwright-core")
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("the console's browser tests need Debian's Chromium (%v): run make test-deps (apt-get install chromium)", err)
	}
	return js, chromium
}

// browserEnv tells the browser tests where the stack is and where to put
// their screenshots.
func browserEnv(js nodeTest, app *App, chromium string) []string {
	shots := os.Getenv("KEYGATE_SCREENSHOTS")
	if shots == "" {
		shots = filepath.Join(js.dir, "screenshots")
	}
	return []string{"KEYGATE_URL=http://" + app.HTTPAddr, "KEYGATE_EDGE_URL=http://" + app.EdgeAddr,
		"KEYGATE_ROOT_TOKEN=" + app.Config.RootToken, "CHROMIUM=" + chromium, "KEYGATE_SCREENSHOTS=" + shots}
}

// TestConsoleGovernance drives the console's governance pages in Chromium
// (tests/console/governance.test.mjs) against keygate up: workspace and
// member limits, report mode and timed overrides set in the Limits page and
// checked at the edge, Explain limits, credits, webhooks and alerts (to a
// receiver in the test), legacy keys, and axe on each page.
func TestConsoleGovernance(t *testing.T) {
	js, chromium := needBrowser(t)
	app := MustRunApp(t, "", nil)
	js.run(t, 5*time.Minute, "governance.test.mjs", browserEnv(js, app, chromium)...)
}
