package console_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/keygate/keygate/internal/oidc/oidctest"
	"github.com/keygate/keygate/services/gateway/console"
)

func serve(t *testing.T, sso *console.SSO) string {
	t.Helper()
	srv := httptest.NewServer(console.Handler(sso))
	t.Cleanup(srv.Close)
	return srv.URL + console.Prefix
}

func decode(t *testing.T, resp *http.Response) map[string]string {
	t.Helper()
	defer resp.Body.Close()
	out := map[string]any{}
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&out))
	s := map[string]string{}
	for k, v := range out {
		if str, ok := v.(string); ok {
			s[k] = str
		}
	}
	return s
}

// TestSSOConfigAndRefusedCode: with an issuer, the console learns where to
// send people; a code the issuer refuses is a 401 in words that repeats
// nothing of what was sent.
func TestSSOConfigAndRefusedCode(t *testing.T) {
	t.Parallel()
	iss := oidctest.NewProvider(t, "keygate-console", "alice@example.com")
	url := serve(t, &console.SSO{Issuer: iss.URL, ClientID: iss.Audience})

	resp, err := http.Get(url + "config.json")
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	cfg := decode(t, resp)
	require.Equal(t, iss.URL+"/authorize", cfg["authorizationEndpoint"])
	require.Equal(t, "keygate-console", cfg["clientId"])

	resp, err = http.Post(url+"sso/token", "application/json", strings.NewReader(`{"code":"not-issued-xyz","codeVerifier":"v","redirectUri":"http://x/console/"}`))
	require.NoError(t, err)
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	body := decode(t, resp)
	require.Contains(t, body["error"], "refused the sign-in")
	require.NotContains(t, body["error"], "not-issued-xyz")

	resp, err = http.Post(url+"sso/token", "application/json", strings.NewReader(`{"code":""}`))
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)
}

// TestSSOIssuerDown: an issuer that does not answer is a 502 saying so,
// and the console still serves its pages.
func TestSSOIssuerDown(t *testing.T) {
	t.Parallel()
	down := httptest.NewServer(http.NotFoundHandler())
	down.Close()
	url := serve(t, &console.SSO{Issuer: down.URL, ClientID: "c"})
	resp, err := http.Get(url + "config.json")
	require.NoError(t, err)
	require.Equal(t, http.StatusBadGateway, resp.StatusCode)
	require.Contains(t, decode(t, resp)["error"], "did not answer")
	resp, err = http.Get(url)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
}
