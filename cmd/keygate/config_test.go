package main

import (
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	"google.golang.org/grpc/status"
)

func TestParseConfig(t *testing.T) {
	t.Parallel()
	env := func(kv map[string]string) func(string) string { return func(k string) string { return kv[k] } }

	c, _, err := parseConfig("up", nil, env(nil))
	require.NoError(t, err)
	require.Equal(t, ":8080", c.HTTPAddr)
	require.Equal(t, ":8081", c.EdgeAddr)
	require.Equal(t, ":9090", c.GRPCAddr)
	require.Empty(t, c.EtcdEndpoints)
	require.False(t, c.FailOpen)
	require.Equal(t, 3*time.Minute, c.KeyCacheMaxUnconfirmed)
	pct, ok := gcPercent(c, env(nil))
	require.True(t, ok)
	require.Equal(t, 400, pct, "servers collect at 400% unless told otherwise")
	_, ok = gcPercent(c, env(map[string]string{"GOGC": "100"}))
	require.False(t, ok, "GOGC wins over the default")
	c, _, err = parseConfig("up", []string{"--gc-percent", "150"}, env(nil))
	require.NoError(t, err)
	pct, _ = gcPercent(c, env(nil))
	require.Equal(t, 150, pct)

	c, _, err = parseConfig("serve", []string{"--grpc-addr", ":7000"}, env(map[string]string{
		"KEYGATE_GRPC_ADDR":                 ":6000",
		"KEYGATE_HTTP_ADDR":                 ":6001",
		"KEYGATE_ETCD_ENDPOINTS":            "http://a:2379, http://b:2379,",
		"KEYGATE_FAIL_OPEN":                 "true",
		"KEYGATE_LOG_LEVEL":                 "debug",
		"KEYGATE_REQUEST_TIMEOUT":           "5s",
		"KEYGATE_KEY_CACHE_MAX_UNCONFIRMED": "10m",
	}))
	require.NoError(t, err)
	require.Equal(t, ":7000", c.GRPCAddr, "a flag wins over the environment")
	require.Equal(t, ":6001", c.HTTPAddr)
	require.Equal(t, []string{"http://a:2379", "http://b:2379"}, c.EtcdEndpoints)
	require.True(t, c.FailOpen)
	require.Equal(t, slog.LevelDebug, c.LogLevel)
	require.Equal(t, 5*time.Second, c.RequestTimeout)
	require.Equal(t, 10*time.Minute, c.KeyCacheMaxUnconfirmed)

	for name, tc := range map[string]struct {
		args []string
		env  map[string]string
	}{
		"bad bool env":      {env: map[string]string{"KEYGATE_FAIL_OPEN": "maybe"}},
		"bad duration env":  {env: map[string]string{"KEYGATE_REQUEST_TIMEOUT": "soon"}},
		"bad int env":       {env: map[string]string{"KEYGATE_MAX_BODY_BYTES": "lots"}},
		"bad level":         {args: []string{"--log-level", "loud"}},
		"zero body":         {args: []string{"--max-body-bytes", "0"}},
		"negative max toks": {args: []string{"--default-max-tokens", "-1"}},
		"unknown flag":      {args: []string{"--nope"}},
		"negative timeout":  {args: []string{"--request-timeout", "-1s"}},
		"tiny unconfirmed":  {args: []string{"--key-cache-max-unconfirmed", "1s"}},
		"zero gc percent":   {args: []string{"--gc-percent", "0"}},
		"bad gc percent":    {args: []string{"--gc-percent", "-5"}},
	} {
		t.Run(name, func(t *testing.T) {
			_, _, err := parseConfig("up", tc.args, env(tc.env))
			require.Error(t, err)
		})
	}
}

func TestRootTokenCreatedOnceAndKept(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	var out1, out2 strings.Builder
	tok, err := loadOrCreateRootToken(dir, &out1)
	require.NoError(t, err)
	require.Contains(t, out1.String(), tok, "printed when created")
	again, err := loadOrCreateRootToken(dir, &out2)
	require.NoError(t, err)
	require.Equal(t, tok, again)
	require.Empty(t, out2.String(), "never printed again")
}

func TestDescribe(t *testing.T) {
	t.Parallel()
	require.Equal(t, "NOT_FOUND: key \"x\": not found", describe(status.Error(codes.NotFound, `key "x": not found`)))
	require.Equal(t, "INVALID_ARGUMENT: name: too long", describe(status.Error(codes.InvalidArgument, "name: too long")))
	require.Equal(t, "plain", describe(errors.New("plain")))
}

func TestHealthzFollowsGRPCHealth(t *testing.T) {
	t.Parallel()
	h := health.NewServer()
	srv := httptest.NewServer(healthz(h))
	defer srv.Close()
	get := func() int {
		resp, err := http.Get(srv.URL + "/healthz")
		require.NoError(t, err)
		resp.Body.Close()
		return resp.StatusCode
	}
	require.Equal(t, http.StatusOK, get())
	h.Shutdown() // what Close does first
	require.Equal(t, http.StatusServiceUnavailable, get())
}
