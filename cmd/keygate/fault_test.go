package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestEdgeKillDuringUsageOutage: requests an edge answered while the usage
// service was down are neither lost nor counted twice when the edge is
// killed before it could deliver them. The edge's spool (under its data
// dir) keeps them; restarted on the same data dir, the edge replays them
// under the same producer id, and the ledger counts each once.
func TestEdgeKillDuringUsageOutage(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process cluster test")
	}
	n := 100 * chaosScale(t)
	c := newCluster(t)
	c.startEtcd(1)
	ks := c.serve("keystore", "keystore", "--grpc-addr", anyPort)["grpc"]
	usageProc, ua := c.serveProc("usage", "usage", "--grpc-addr", anyPort, "--keystore-addr", ks)
	us := ua["grpc"]
	c.serve("limiter", "limiter", "--grpc-addr", anyPort, "--usage-addr", us)
	// The backlog limit is n: the edge answers n requests the ledger cannot
	// take, then refuses the rest rather than forget them.
	edgeArgs := []string{"edge", "--edge-addr", anyPort, "--keystore-addr", ks, "--usage-addr", us, "--usage-backlog", strconv.Itoa(n)}
	edgeProc, ea := c.serveProc("edge", edgeArgs...)
	edge := "http://" + ea["edge"]
	api := "http://" + c.serve("gateway", "gateway", "--http-addr", anyPort, "--keystore-addr", ks, "--usage-addr", us)["http"]
	c.waitHealthy()

	seedCatalog(t, api, c.root)
	const tpd = 1_000_000
	code, _, body := rest(t, "POST", api+"/v1/workspaces/acme/keys", c.root, map[string]any{"name": "web", "globalLimits": map[string]any{"tpd": tpd}})
	require.Equal(t, http.StatusOK, code, body)
	secret := body["secret"].(string)
	keyID := body["key"].(map[string]any)["id"].(string)

	// The limiter reads a key's totals from the ledger on its first check,
	// so the key must be checked once while the ledger is up. A request
	// over the key's daily tokens is refused by the limiter and leaves no
	// usage record; it also waits out the edge learning the model
	// registry and the limiter.
	tooLarge := fmt.Sprintf(`{"model":"mock-small","messages":[{"role":"user","content":"hi"}],"max_tokens":%d}`, 2*tpd)
	require.Eventually(t, func() bool {
		code, _, _ := restQuiet(edge+"/v1/chat/completions", secret, tooLarge)
		return code == http.StatusTooManyRequests
	}, 30*time.Second, 100*time.Millisecond, "the edge checks the key")

	// The ledger goes down; the edge answers regardless, spooling.
	usageProc.kill(t)
	ids := map[string]bool{}
	for i := range n {
		code, h, _ := chatOnce(t, edge, secret)
		require.Equal(t, http.StatusOK, code, "request %d", i)
		id := h.Get("X-Request-Id")
		require.NotEmpty(t, id)
		require.False(t, ids[id], "request id %s answered twice", id)
		ids[id] = true
	}
	require.Equal(t, n, metric(edge, "keygate_edge_usage_pending"), "every record waits for the ledger")
	for range 3 {
		code, h, body := chatOnce(t, edge, secret)
		require.Equal(t, http.StatusServiceUnavailable, code, "past the backlog limit: %v", body)
		require.Equal(t, "1", h.Get("Retry-After"))
		require.Equal(t, "usage_backlog", body["error"].(map[string]any)["code"], "%v", body)
	}

	// The edge dies with its records undelivered; the ledger comes back
	// where it was (same port, same data dir), then the edge, on the
	// same data dir and so the same spool.
	edgeProc.kill(t)
	c.serveProc("usage", "usage", "--grpc-addr", us, "--keystore-addr", ks)
	edgeProc, ea = c.serveProc("edge", edgeArgs...)
	edge = "http://" + ea["edge"]
	waitHealthy(t, edge+"/healthz")
	producer, err := os.ReadFile(filepath.Join(c.dataDir, "edge", "edge-spool", "producer"))
	require.NoError(t, err)
	replayed := false
	for _, line := range strings.Split(edgeProc.out.String(), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == "edge: replaying spooled usage records" {
			require.Equal(t, float64(n), rec["records"], line)
			require.Equal(t, strings.TrimSpace(string(producer)), rec["producer"], line)
			replayed = true
		}
	}
	require.True(t, replayed, "the restarted edge replays its spool:\n%s", edgeProc.out.String())

	requireLedgerExact(t, c.root, api, []string{edge}, keyID, ids)
	chaosRow{scenario: "kill -9 of an edge holding records during a usage outage", trials: 1,
		admitted: fmt.Sprintf("%d answered, all in the ledger", n), note: "replayed from the spool on restart"}.report(t)
}

// requireLedgerExact waits until the ledger has counted the key's
// requests and the edges have nothing left to send, then asserts that
// the answered requests (ids) are each in the ledger once: requests today
// and the request log, no id missing, none twice.
func requireLedgerExact(t *testing.T, root, api string, edges []string, keyID string, ids map[string]bool) {
	t.Helper()
	n := int64(len(ids))
	usageAPI := api + "/v1/workspaces/acme/keys/" + keyID + "/usage"
	requestsToday := func() (int64, error) {
		var u struct {
			RequestsToday json.Number `json:"requestsToday"`
		}
		if err := getJSON(usageAPI, root, &u); err != nil {
			return 0, err
		}
		return u.RequestsToday.Int64()
	}
	var last atomic.Value
	last.Store("nothing read")
	require.Eventually(t, func() bool {
		got, err := requestsToday()
		logged, lerr := requestLog(api, root, keyID)
		last.Store(fmt.Sprintf("requestsToday %d (%v), request log %d entries (%v)", got, err, len(logged), lerr))
		return err == nil && lerr == nil && got == n && len(logged) == int(n)
	}, 60*time.Second, 100*time.Millisecond, "usage, last read: %s", stringer(func() string { return last.Load().(string) }))

	// Once the edges have nothing left to send, the counts are final.
	for _, edge := range edges {
		require.Eventually(t, func() bool { return metric(edge, "keygate_edge_usage_pending") == 0 },
			10*time.Second, 50*time.Millisecond, "the edge's backlog drains")
	}
	got, err := requestsToday()
	require.NoError(t, err)
	require.Equal(t, n, got, "each answered request counted once")
	logged, err := requestLog(api, root, keyID)
	require.NoError(t, err)
	var missing, doubled []string
	seen := map[string]int{}
	for _, id := range logged {
		seen[id]++
		if seen[id] == 2 {
			doubled = append(doubled, id)
		}
	}
	for id := range ids {
		if seen[id] == 0 {
			missing = append(missing, id)
		}
	}
	require.Empty(t, missing, "answered requests missing from the request log")
	require.Empty(t, doubled, "requests logged twice")
	require.Len(t, logged, int(n))
}

// getJSON GETs url with token and decodes the answer into v (numbers as
// json.Number); it uses no require, so pollers may call it.
func getJSON(url, token string, v any) error {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %d %s", url, resp.StatusCode, b)
	}
	d := json.NewDecoder(strings.NewReader(string(b)))
	d.UseNumber()
	return d.Decode(v)
}

// requestLog lists the request ids of the key's request log, every page.
func requestLog(api, token, key string) ([]string, error) {
	var ids []string
	tok := ""
	for {
		q := url.Values{"key": {key}, "pageSize": {"500"}}
		if tok != "" {
			q.Set("pageToken", tok)
		}
		var page struct {
			Requests []struct {
				RequestID string `json:"requestId"`
			} `json:"requests"`
			NextPageToken string `json:"nextPageToken"`
		}
		if err := getJSON(api+"/v1/workspaces/acme/requests?"+q.Encode(), token, &page); err != nil {
			return nil, err
		}
		for _, r := range page.Requests {
			ids = append(ids, r.RequestID)
		}
		if page.NextPageToken == "" {
			return ids, nil
		}
		tok = page.NextPageToken
	}
}

// stringer formats as what f returns when printed.
type stringer func() string

func (f stringer) String() string { return f() }

// metric reads a gauge from base's /metrics, summed over its series; -1
// when it cannot be read.
func metric(base, name string) int {
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sum, found := 0.0, false
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, name)
		if !ok || (rest != "" && rest[0] != '{' && rest[0] != ' ') {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			return -1
		}
		sum += v
		found = true
	}
	if !found {
		return -1
	}
	return int(sum)
}

// TestKeystoreKill: a keystore lost to kill -9 degrades the edge, it does
// not stop inference. The keys the edge verified keep answering from its
// cache, a key it saw disabled stays rejected, and a key it never saw
// fails closed (503). The keystore comes back on the same address; the
// edge, never restarted, resumes its change stream from where it was, so
// a key disabled afterwards is rejected there while the others still work.
func TestKeystoreKill(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process cluster test")
	}
	n := 20 * chaosScale(t)
	c := newCluster(t)
	c.startEtcd(1)
	ksProc, ksAddrs := c.serveProc("keystore", "keystore", "--grpc-addr", anyPort)
	ks := ksAddrs["grpc"]
	us := c.serve("usage", "usage", "--grpc-addr", anyPort, "--keystore-addr", ks)["grpc"]
	c.serve("limiter", "limiter", "--grpc-addr", anyPort, "--usage-addr", us)
	edgeProc, ea := c.serveProc("edge", "edge", "--edge-addr", anyPort, "--keystore-addr", ks, "--usage-addr", us)
	edge := "http://" + ea["edge"]
	api := "http://" + c.serve("gateway", "gateway", "--http-addr", anyPort, "--keystore-addr", ks, "--usage-addr", us)["http"]
	c.waitHealthy()

	seedCatalog(t, api, c.root)
	type key struct{ id, secret string }
	keys := map[string]key{}
	for _, name := range []string{"a", "b", "c", "d"} {
		code, _, body := rest(t, "POST", api+"/v1/workspaces/acme/keys", c.root, map[string]any{"name": name})
		require.Equal(t, http.StatusOK, code, body)
		keys[name] = key{body["key"].(map[string]any)["id"].(string), body["secret"].(string)}
	}
	a, b, kc, d := keys["a"], keys["b"], keys["c"], keys["d"]
	answeredB := map[string]bool{} // B's requests answered 200, for the ledger check
	chat := func(k key) (int, string) {
		code, h, body := chatOnce(t, edge, k.secret)
		if code == http.StatusOK && k == b {
			answeredB[h.Get("X-Request-Id")] = true
		}
		e, _ := body["error"].(map[string]any)
		reason, _ := e["code"].(string)
		return code, reason
	}
	answers := func(k key, want int) func() bool {
		return func() bool { code, _ := chat(k); return code == want }
	}
	disable := func(k key) func() bool {
		return func() bool {
			req, err := http.NewRequest(http.MethodPatch, api+"/v1/workspaces/acme/keys/"+k.id+"?updateMask=enabled", strings.NewReader(`{"enabled":false}`))
			if err != nil {
				return false
			}
			req.Header.Set("Authorization", "Bearer "+c.root)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == http.StatusOK
		}
	}

	// The first answers also wait out the edge learning the model registry
	// and the limiter.
	for _, k := range []key{a, b, kc} {
		require.Eventually(t, answers(k, http.StatusOK), 30*time.Second, 100*time.Millisecond, "key %s", k.id)
	}
	// C is disabled; the edge hears of it from the stream and asks the
	// keystore, which rejects it.
	require.True(t, disable(kc)())
	require.Eventually(t, answers(kc, http.StatusUnauthorized), 10*time.Second, 20*time.Millisecond, "C rejected")
	// A and B verified once more, after every change the stream carried
	// so far: a key's own creation reaching the cache after its first
	// verification drops it (correctly, if needlessly).
	for _, k := range []key{a, b} {
		code, reason := chat(k)
		require.Equal(t, http.StatusOK, code, reason)
	}

	ksProc.kill(t)
	for i := range n {
		for name, k := range map[string]key{"A": a, "B": b} {
			code, reason := chat(k)
			require.Equal(t, http.StatusOK, code, "%s, request %d after the kill: %s", name, i, reason)
		}
	}
	code, reason := chat(kc)
	require.Equal(t, http.StatusUnauthorized, code, "C stays rejected: %s", reason)
	code, reason = chat(d)
	require.Equal(t, http.StatusServiceUnavailable, code, "D, never seen, fails closed")
	require.Equal(t, "keystore_unavailable", reason)
	require.Eventually(t, func() bool { return metric(edge, "keygate_keycache_unconfirmed_seconds") >= 1 },
		10*time.Second, 100*time.Millisecond, "the edge reports its cache unconfirmed")

	// The keystore returns on the same address; A is disabled through it.
	c.serveProc("keystore", "keystore", "--grpc-addr", ks)
	require.Eventually(t, disable(a), 30*time.Second, 100*time.Millisecond, "disable A once the gateway reaches the keystore again")
	require.Eventually(t, answers(a, http.StatusUnauthorized), 30*time.Second, 50*time.Millisecond, "the edge rejects A")
	code, reason = chat(b)
	require.Equal(t, http.StatusOK, code, "B still works: %s", reason)
	require.Eventually(t, answers(d, http.StatusOK), 10*time.Second, 50*time.Millisecond, "D, through the keystore")
	require.Eventually(t, func() bool { return metric(edge, "keygate_keycache_unconfirmed_seconds") == 0 },
		10*time.Second, 100*time.Millisecond, "the edge's cache is confirmed again")
	var resumed, resynced bool
	for _, line := range strings.Split(edgeProc.out.String(), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) != nil {
			continue
		}
		msg, _ := rec["msg"].(string)
		resumed = resumed || strings.HasPrefix(msg, "key change stream resumed")
		resynced = resynced || strings.HasPrefix(msg, "key change stream resynced")
	}
	require.True(t, resumed, "the edge resumed its stream:\n%s", tail(edgeProc.out.String(), 4000))
	require.False(t, resynced, "without a resync")
	requireLedgerExact(t, c.root, api, []string{edge}, b.id, answeredB)
	chaosRow{scenario: "kill -9 of the keystore", trials: 1, admitted: fmt.Sprintf("%d of %d cached-key requests answered 200", 2*n, 2*n),
		note: "disabled key kept out, unseen key 503, stream resumed"}.report(t)
}
