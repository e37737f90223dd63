package limiter

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	limiterv1 "github.com/keygate/keygate/gen/keygate/limiter/v1"
	typev1 "github.com/keygate/keygate/gen/keygate/type/v1"
	"github.com/keygate/keygate/internal/limitclient"
)

// TestRollingRestartKeepsWindows: under concurrent Checks routed as an
// edge routes them, every replica in turn is closed and started again on
// its address. Within one minute (the fake clock stands still), every
// limit - rpm, rpd, tpm, tpd, token cap, budget - admits exactly its
// limit: no move hands out a fresh window. The ledger knows none of the
// usage, so a key seeded from it instead of handed over would admit more.
func TestRollingRestartKeepsWindows(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	rs := []*replica{c.start(t), c.start(t), c.start(t)}
	waitMembers(t, 3, rs...)
	lc, err := limitclient.New(t.Context(), limitclient.Config{Etcd: c.etcd.Client})
	require.NoError(t, err)
	t.Cleanup(func() { _ = lc.Close() })

	// item() estimates 10 tokens and 5 micro-dollars: each policy admits 100.
	policies := map[string]*typev1.Policy{
		"rpm":    {GlobalLimits: &typev1.Limits{Rpm: 100}},
		"rpd":    {GlobalLimits: &typev1.Limits{Rpd: 100}},
		"tpm":    {GlobalLimits: &typev1.Limits{Tpm: 1000}},
		"tpd":    {ModelLimits: []*typev1.ModelLimits{{Model: "mock-small", Limits: &typev1.Limits{Tpd: 1000}}}},
		"cap":    {TokenCap: &typev1.TokenCap{Tokens: 1000, ResetPeriod: typev1.ResetPeriod_RESET_PERIOD_MONTHLY}},
		"budget": {Budget: &typev1.Budget{AmountUsd: "0.0005", ResetPeriod: typev1.ResetPeriod_RESET_PERIOD_DAILY}},
	}
	var names []string
	for name := range policies {
		for k := range 4 {
			names = append(names, name+"-"+strconv.Itoa(k))
		}
	}
	admitted := map[string]*atomic.Int64{}
	for _, n := range names {
		admitted[n] = &atomic.Int64{}
	}
	var sent, failed atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 6 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				var items []*limiterv1.CheckItem
				for _, n := range names {
					p := policies[n[:len(n)-2]]
					items = append(items, item(n, strconv.Itoa(w)+"-"+strconv.Itoa(i), p))
				}
				ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
				res, err := lc.Check(ctx, items)
				cancel()
				if err != nil {
					if failed.Add(1) <= 3 {
						t.Logf("check failed: %v", err)
					}
					continue
				}
				sent.Add(1)
				for j, r := range res {
					if r.Allowed {
						admitted[names[j]].Add(1)
					}
				}
				if i%4 == 0 {
					time.Sleep(time.Millisecond) // spread each key's 100 over the restarts
				}
			}
		})
	}
	time.Sleep(20 * time.Millisecond)
	for i, r := range rs {
		r.stop()
		waitMembers(t, 2, rs[(i+1)%3], rs[(i+2)%3])
		time.Sleep(10 * time.Millisecond)
		rs[i] = c.startAt(t, r.addr)
		waitMembers(t, 3, rs...)
		time.Sleep(10 * time.Millisecond)
	}
	// Load goes on until every key has been asked past its limit.
	for start := sent.Load(); sent.Load() < start+150; {
		time.Sleep(5 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	t.Logf("batches answered %d, failed %d", sent.Load(), failed.Load())
	require.Greater(t, sent.Load(), int64(100))
	require.Zero(t, failed.Load(), "no batch failed across the restarts")
	for _, n := range names {
		t.Logf("%s: %d", n, admitted[n].Load())
	}
	t.Logf("ledger calls %d", c.ledger.calls.Load())
	for _, n := range names {
		require.EqualValues(t, 100, admitted[n].Load(), "%s admitted", n)
	}
	// The ledger was never asked for a key a replica had handed over: each
	// key was seeded once, when first checked.
	require.LessOrEqual(t, c.ledger.calls.Load(), int64(len(names)))
}
