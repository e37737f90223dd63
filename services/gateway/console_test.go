package gateway_test

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/metadata"
)

// TestConsoleServedWithSecurityHeaders: the embedded console answers at
// /console/ with a CSP that allows no inline code and no other origin, no
// framing, nosniff and no referrer, on the page and on its assets.
func TestConsoleServedWithSecurityHeaders(t *testing.T) {
	t.Parallel()
	url := start(t, idle())
	for _, tc := range []struct {
		path, contentType, body string
	}{
		{"/console/", "text/html", `<script type="module" src="console.js">`},
		{"/console/console.js", "text/javascript", ""},
		{"/console/console.css", "text/css", ""},
	} {
		t.Run(tc.path, func(t *testing.T) {
			resp, b := get(t, url+tc.path)
			require.Equal(t, http.StatusOK, resp.StatusCode)
			require.Contains(t, resp.Header.Get("Content-Type"), tc.contentType)
			require.Contains(t, b, tc.body)
			csp := resp.Header.Get("Content-Security-Policy")
			for _, want := range []string{"default-src 'none'", "script-src 'self'", "style-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"} {
				require.Contains(t, csp, want)
			}
			require.NotContains(t, csp, "unsafe-inline")
			require.NotContains(t, csp, "unsafe-eval")
			require.Equal(t, "nosniff", resp.Header.Get("X-Content-Type-Options"))
			require.Equal(t, "no-referrer", resp.Header.Get("Referrer-Policy"))
			require.Equal(t, "DENY", resp.Header.Get("X-Frame-Options"))
		})
	}
}

// TestConsoleHasNoInlineCode: the built page holds no inline script or
// style, which the CSP would block.
func TestConsoleHasNoInlineCode(t *testing.T) {
	t.Parallel()
	_, page := get(t, start(t, idle())+"/console/")
	require.NotContains(t, page, "<style")
	require.NotContains(t, page, " style=")
	require.NotContains(t, page, " on")
	require.Equal(t, 1, strings.Count(page, "<script"), "one script, loaded from a file")
	require.Contains(t, page, `<script type="module" src="console.js"></script>`)
}

func TestConsoleRedirects(t *testing.T) {
	t.Parallel()
	url := start(t, idle())
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	for _, path := range []string{"/", "/console"} {
		resp, err := client.Get(url + path)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusFound, resp.StatusCode, path)
		require.Equal(t, "/console/", resp.Header.Get("Location"), path)
	}
	resp, err := client.Get(url + "/console/missing.js")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusNotFound, resp.StatusCode)
	require.Equal(t, "nosniff", resp.Header.Get("X-Content-Type-Options"))
}

// idle is a keystore the console tests never reach.
func idle() *recorder {
	return &recorder{md: make(chan metadata.MD, 1), deadline: make(chan time.Duration, 1)}
}

// TestConsoleWithoutSSO: with no issuer configured the console is told so,
// and the code exchange does not exist.
func TestConsoleWithoutSSO(t *testing.T) {
	t.Parallel()
	url := start(t, idle())
	resp, b := get(t, url+"/console/config.json")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.JSONEq(t, `{"sso":false}`, b)
	require.NotEmpty(t, resp.Header.Get("Content-Security-Policy"))

	resp, err := http.Post(url+"/console/sso/token", "application/json", strings.NewReader(`{"code":"c","codeVerifier":"v"}`))
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusNotFound, resp.StatusCode)
}

// get fetches url and reads its whole body.
func get(t *testing.T, url string) (*http.Response, string) {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	return resp, string(b)
}
