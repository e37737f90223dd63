package main

import (
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// revocation disables the cluster's key under load over its edges and
// returns how long after the disable each edge first refused the key. It
// asserts that no request sent to an edge after that edge refused the key
// was admitted.
func revocation(t *testing.T, lc *limiterCluster) []time.Duration {
	t.Helper()
	ld := startLoad(t, lc.edges, lc.secret, 4, 10*time.Millisecond, 1<<30, time.Now().Add(time.Minute)) // 400 a second
	defer ld.wait()
	pause(t, 500*time.Millisecond)
	disabled := time.Now()
	code, _, body := rest(t, "PATCH", lc.api+"/v1/workspaces/acme/keys/"+lc.keyID+"?updateMask=enabled", lc.c.root, map[string]any{"enabled": false})
	require.Equal(t, http.StatusOK, code, body)
	refused := func(a answer) bool { return a.code == http.StatusUnauthorized }
	require.Eventually(t, func() bool {
		seen := map[int]bool{}
		for _, a := range ld.answers() {
			if refused(a) {
				seen[a.edge] = true
			}
		}
		return len(seen) == len(lc.edges)
	}, 30*time.Second, 5*time.Millisecond, "every edge refuses the disabled key")
	pause(t, 200*time.Millisecond)
	ld.wait()

	first := make([]time.Time, len(lc.edges))
	for _, a := range ld.answers() {
		if refused(a) && (first[a.edge].IsZero() || a.end.Before(first[a.edge])) {
			first[a.edge] = a.end
		}
	}
	var took []time.Duration
	for e, at := range first {
		took = append(took, at.Sub(disabled))
		for _, a := range ld.answers() {
			if a.edge == e && a.start.After(at) {
				require.Equal(t, http.StatusUnauthorized, a.code, "edge %d admitted the key %v after it first refused it", e, a.start.Sub(at))
			}
		}
	}
	for _, a := range ld.answers() {
		require.Contains(t, []int{http.StatusOK, http.StatusUnauthorized}, a.code, "only 200 before and 401 after")
	}
	return took
}

// TestRevocationReachesEdges: a key disabled under load is refused by
// both edges, and once an edge has refused it, it never admits it again.
func TestRevocationReachesEdges(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process cluster test")
	}
	lc := newLimiterCluster(t, 2, 1_000_000)
	trials := 3 * chaosScale(t)
	var all []time.Duration
	for i := range trials {
		if i > 0 {
			lc.newKey(t, 1_000_000)
		}
		lc.warm(t)
		took := revocation(t, lc)
		t.Logf("each edge refused the key %v after the disable was sent", took)
		all = append(all, took...)
	}
	chaosRow{scenario: "disable a key under load (400/s over 2 edges)", trials: trials,
		recovery: durations(all), note: "time until each edge refuses; none admits after"}.report(t)
}
