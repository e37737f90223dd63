package main

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestUsageAndEtcdMemberKill: under steady load over two edges, the usage
// service is killed (kill -9) and started again, then one of three etcd
// members is. Inference never stops: every request is answered 200, a
// key disabled before the faults stays rejected, and afterwards the
// ledger holds every answered request exactly once.
func TestUsageAndEtcdMemberKill(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process cluster test")
	}
	c := newCluster(t)
	c.startEtcd(3)
	ks := c.serve("keystore", "keystore", "--grpc-addr", anyPort)["grpc"]
	usageProc, ua := c.serveProc("usage", "usage", "--grpc-addr", anyPort, "--keystore-addr", ks)
	us := ua["grpc"]
	for _, name := range []string{"limiter-0", "limiter-1"} {
		c.serve(name, "limiter", "--grpc-addr", anyPort, "--usage-addr", us)
	}
	var edges []string
	for _, name := range []string{"edge-0", "edge-1"} {
		edges = append(edges, "http://"+c.serve(name, "edge", "--edge-addr", anyPort, "--keystore-addr", ks, "--usage-addr", us)["edge"])
	}
	api := "http://" + c.serve("gateway", "gateway", "--http-addr", anyPort, "--keystore-addr", ks, "--usage-addr", us)["http"]
	c.waitHealthy()

	seedCatalog(t, api, c.root)
	newKey := func(name string) (id, secret string) {
		code, _, body := rest(t, "POST", api+"/v1/workspaces/acme/keys", c.root,
			map[string]any{"name": name, "globalLimits": map[string]any{"rpd": 1_000_000}})
		require.Equal(t, http.StatusOK, code, body)
		return body["key"].(map[string]any)["id"].(string), body["secret"].(string)
	}
	keyID, secret := newKey("a")
	offID, offSecret := newKey("disabled")
	ids := map[string]bool{}
	for _, edge := range edges {
		for _, s := range []string{secret, offSecret} {
			require.Eventually(t, func() bool {
				code, h, _ := chatOnce(t, edge, s)
				if code == http.StatusOK && s == secret {
					ids[h.Get("X-Request-Id")] = true
				}
				return code == http.StatusOK
			}, 30*time.Second, 100*time.Millisecond, "%s answers", edge)
		}
	}
	code, _, body := rest(t, "PATCH", api+"/v1/workspaces/acme/keys/"+offID+"?updateMask=enabled", c.root, map[string]any{"enabled": false})
	require.Equal(t, http.StatusOK, code, body)
	for _, edge := range edges {
		require.Eventually(t, func() bool { code, _, _ := chatOnce(t, edge, offSecret); return code == http.StatusUnauthorized },
			10*time.Second, 20*time.Millisecond, "%s rejects the disabled key", edge)
	}

	// Each fault lasts 3 s (times the chaos scale).
	down := time.Duration(chaosScale(t)) * 3 * time.Second
	ld := startLoad(t, edges, secret, 4, 40*time.Millisecond, 1<<30, time.Now().Add(4*down)) // 100 a second
	defer ld.wait()
	pause(t, 2*time.Second)
	usageProc.kill(t)
	t.Logf("usage killed with %d answered", ld.admitted.Load())
	pause(t, down)
	c.serveProc("usage", "usage", "--grpc-addr", us, "--keystore-addr", ks)
	pause(t, 2*time.Second)
	c.etcd[0].p.kill(t)
	t.Logf("etcd member %s killed with %d answered", c.etcd[0].name, ld.admitted.Load())
	pause(t, down)
	c.restartEtcd(0)
	pause(t, 2*time.Second)
	ld.wait()

	t.Logf("%v", ld)
	require.Empty(t, ld.other, "every answer 200")
	require.Zero(t, ld.unavailable.Load())
	require.Zero(t, ld.limited.Load())
	require.Positive(t, ld.admitted.Load())
	for _, edge := range edges {
		code, _, _ := chatOnce(t, edge, offSecret)
		require.Equal(t, http.StatusUnauthorized, code, "the disabled key stays rejected at %s", edge)
	}
	for id := range ld.ids {
		ids[id] = true
	}
	requireLedgerExact(t, c.root, api, edges, keyID, ids)
	chaosRow{scenario: "kill -9 of usage, then of 1 of 3 etcd members, under load", trials: 1,
		admitted: fmt.Sprintf("%d of %d answered 200", ld.admitted.Load(), ld.sent.Load()), note: "ledger exact after"}.report(t)
}
