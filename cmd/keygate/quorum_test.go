package main

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// quorumLoss is how long TestEtcdQuorumLoss keeps etcd without quorum:
// well past the limiters' membership lease (5 s) and the keystore
// stream's reconnects.
const quorumLoss = 30 * time.Second

// TestEtcdQuorumLoss: two of three etcd members are killed for 30 s.
// Nobody can change a key meanwhile, so inference goes on: the edge
// serves the keys it verified, the limiters decide from memory on the
// last ring they saw, and usage waits in the edge's spool. A key disabled
// before the loss stays rejected, a key never seen fails closed, and
// management calls fail fast (503). Once the members are back, the ledger
// counts every answered request exactly once, without restarting
// anything.
func TestEtcdQuorumLoss(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process cluster test")
	}
	c := newCluster(t)
	c.startEtcd(3)
	ks := c.serve("keystore", "keystore", "--grpc-addr", anyPort)["grpc"]
	us := c.serve("usage", "usage", "--grpc-addr", anyPort, "--keystore-addr", ks)["grpc"]
	for _, name := range []string{"limiter-0", "limiter-1"} {
		c.serve(name, "limiter", "--grpc-addr", anyPort, "--usage-addr", us)
	}
	edge := "http://" + c.serve("edge", "edge", "--edge-addr", anyPort, "--keystore-addr", ks, "--usage-addr", us)["edge"]
	api := "http://" + c.serve("gateway", "gateway", "--http-addr", anyPort, "--keystore-addr", ks, "--usage-addr", us)["http"]
	c.waitHealthy()

	seedCatalog(t, api, c.root)
	type key struct{ id, secret string }
	newKey := func(name string) key {
		code, _, body := rest(t, "POST", api+"/v1/workspaces/acme/keys", c.root,
			map[string]any{"name": name, "globalLimits": map[string]any{"rpd": 100_000}})
		require.Equal(t, http.StatusOK, code, body)
		return key{body["key"].(map[string]any)["id"].(string), body["secret"].(string)}
	}
	a, disabled, unseen := newKey("a"), newKey("disabled"), newKey("unseen")
	ids := map[string]bool{}
	chat := func(k key) (int, string) {
		code, h, body := chatOnce(t, edge, k.secret)
		if code == http.StatusOK && k == a {
			ids[h.Get("X-Request-Id")] = true
		}
		e, _ := body["error"].(map[string]any)
		reason, _ := e["code"].(string)
		return code, reason
	}
	require.Eventually(t, func() bool { code, _ := chat(a); return code == http.StatusOK }, 30*time.Second, 100*time.Millisecond)
	require.Eventually(t, func() bool { code, _ := chat(disabled); return code == http.StatusOK }, 30*time.Second, 100*time.Millisecond)
	code, _, body := rest(t, "PATCH", api+"/v1/workspaces/acme/keys/"+disabled.id+"?updateMask=enabled", c.root, map[string]any{"enabled": false})
	require.Equal(t, http.StatusOK, code, body)
	require.Eventually(t, func() bool { code, _ := chat(disabled); return code == http.StatusUnauthorized }, 10*time.Second, 20*time.Millisecond)
	code, reason := chat(a)
	require.Equal(t, http.StatusOK, code, reason)

	c.etcd[1].p.kill(t)
	c.etcd[2].p.kill(t)
	lost := time.Now()
	requests := 0
	for time.Since(lost) < quorumLoss {
		code, reason := chat(a)
		require.Equal(t, http.StatusOK, code, "A, %v after quorum was lost: %s", time.Since(lost).Round(time.Millisecond), reason)
		requests++
		pause(t, 100*time.Millisecond)
	}
	t.Logf("%d requests answered without quorum", requests)
	code, reason = chat(disabled)
	require.Equal(t, http.StatusUnauthorized, code, "the key disabled before the loss stays rejected: %s", reason)
	code, reason = chat(unseen)
	require.Equal(t, http.StatusServiceUnavailable, code, "a key the edge never verified fails closed: %s", reason)
	var mgmt []time.Duration
	for _, call := range []struct{ method, path, body string }{
		{"GET", "/v1/workspaces/acme/keys", ""},
		{"POST", "/v1/workspaces/acme/keys", `{"name":"new"}`},
		{"PATCH", "/v1/workspaces/acme/keys/" + a.id + "?updateMask=enabled", `{"enabled":false}`},
	} {
		start := time.Now()
		code, body := restRaw(t, call.method, api+call.path, c.root, call.body)
		took := time.Since(start)
		t.Logf("%s %s without quorum: %d in %v", call.method, call.path, code, took.Round(time.Millisecond))
		require.Equal(t, http.StatusServiceUnavailable, code, "%s %s: %s", call.method, call.path, body)
		require.Less(t, took, 5*time.Second, "%s %s fails fast", call.method, call.path)
		mgmt = append(mgmt, took)
	}

	c.restartEtcd(1)
	c.restartEtcd(2)
	require.Eventually(t, func() bool {
		code, _ := restRaw(t, "GET", api+"/v1/workspaces/acme/keys", c.root, "")
		return code == http.StatusOK
	}, 60*time.Second, 200*time.Millisecond, "management works again once quorum is back")
	back := time.Since(lost.Add(quorumLoss))
	t.Logf("management back %v after the members restarted", back.Round(time.Millisecond))
	code, reason = chat(a)
	require.Equal(t, http.StatusOK, code, reason)
	code, reason = chat(disabled)
	require.Equal(t, http.StatusUnauthorized, code, reason)
	require.Eventually(t, func() bool { code, _ := chat(unseen); return code == http.StatusOK }, 30*time.Second, 100*time.Millisecond,
		"the key never seen is verified once the keystore reaches etcd")
	requireLedgerExact(t, c.root, api, []string{edge}, a.id, ids)
	chaosRow{scenario: fmt.Sprintf("etcd quorum lost for %v", quorumLoss), trials: 1,
		admitted: fmt.Sprintf("%d of %d answered 200", requests, requests),
		recovery: fmt.Sprintf("management 503 in %s; back %v after quorum", durations(mgmt), back.Round(time.Millisecond)),
		note:     "disabled key kept out, unseen key 503, ledger exact after"}.report(t)

	// Told to stop while etcd has no quorum, every process exits within
	// its shutdown timeout (20 s).
	c.etcd[1].p.kill(t)
	c.etcd[2].p.kill(t)
	for name, took := range c.stopTimed(t) {
		t.Logf("%s stopped %v after SIGTERM without quorum", name, took.Round(time.Millisecond))
		require.Less(t, took, 20*time.Second, "%s stops within its shutdown timeout", name)
	}
}

// restRaw sends body (JSON, or none) with token and returns the status and
// the body as text; it uses no require, so pollers may call it.
func restRaw(t *testing.T, method, url, token, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, strings.NewReader(body))
	if err != nil {
		return 0, err.Error()
	}
	req.Header.Set("Authorization", "Bearer "+token)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	var b strings.Builder
	_, _ = io.Copy(&b, resp.Body)
	return resp.StatusCode, b.String()
}
