package window

import (
	"runtime"
	"strconv"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	limiterv1 "github.com/keygate/keygate/gen/keygate/limiter/v1"
)

func benchRequest() Request {
	return Request{
		Key: "key-1", Model: "mock-small",
		Global:      Limits{RPM: 1 << 40, RPD: 1 << 40, TPM: 1 << 40, TPD: 1 << 40},
		ModelLimits: Limits{RPM: 1 << 40, TPM: 1 << 40},
		TokenCap:    1 << 50, TokenPeriod: PeriodMonthly,
		BudgetMicros: 1 << 50, BudgetPeriod: PeriodMonthly,
		Tokens: 100, CostMicros: 20,
	}
}

// BenchmarkDecision is one in-process decision for a key with global and
// per-model limits, a token cap and a budget.
func BenchmarkDecision(b *testing.B) {
	tab := New(Config{})
	r := benchRequest()
	var d Decision
	now := time.Date(2024, 3, 14, 12, 0, 0, 0, time.UTC)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		_ = tab.Check(now.Add(time.Duration(i)*time.Microsecond), &r, &d)
	}
}

// BenchmarkDecisionLevels is BenchmarkDecision for a key with a member
// and a workspace level, each with the same limits, against the key alone
// in the same run.
func BenchmarkDecisionLevels(b *testing.B) {
	now := time.Date(2024, 3, 14, 12, 0, 0, 0, time.UTC)
	for _, n := range []int{1, 3} {
		b.Run("levels="+strconv.Itoa(n), func(b *testing.B) {
			tab := New(Config{})
			rs := make([]Request, n)
			for i, name := range []string{"w/k/key-1", "w/m/alice", "w/w"}[:n] {
				rs[i] = benchRequest()
				rs[i].Key, rs[i].Level = name, Level(i+1)
			}
			var d Decision
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				_, _ = tab.CheckLevels(now.Add(time.Duration(i)*time.Microsecond), rs, &d)
			}
		})
	}
}

// BenchmarkReserveSettle is Check with a reservation followed by Settle.
func BenchmarkReserveSettle(b *testing.B) {
	tab := New(Config{})
	r := benchRequest()
	ids := make([]string, 1024)
	for i := range ids {
		ids[i] = "req-" + strconv.Itoa(i)
	}
	var d Decision
	now := time.Date(2024, 3, 14, 12, 0, 0, 0, time.UTC)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		r.ReservationID = ids[i%len(ids)]
		_ = tab.Check(now.Add(time.Duration(i)*time.Microsecond), &r, &d)
		tab.Settle(r.Key, r.ReservationID, 90, 18)
	}
}

// BenchmarkDecisionParallel spreads decisions over many keys and cores;
// replicated, the keys that changed are also exported and encoded every
// 10 ms, as a replica in a cluster does for their next owner.
func BenchmarkDecisionParallel(b *testing.B) {
	for _, replicated := range []bool{false, true} {
		b.Run("replicated="+strconv.FormatBool(replicated), func(b *testing.B) {
			tab := New(Config{Track: replicated})
			if replicated {
				stop := make(chan struct{})
				done := make(chan struct{})
				go func() {
					defer close(done)
					tick := time.NewTicker(10 * time.Millisecond)
					defer tick.Stop()
					for {
						select {
						case <-stop:
							return
						case <-tick.C:
						}
						_, _ = proto.Marshal(&limiterv1.ReplicateRequest{States: tab.Changed()})
					}
				}()
				b.Cleanup(func() { close(stop); <-done })
			}
			decideParallel(b, tab)
		})
	}
}

func decideParallel(b *testing.B, tab *Table) {
	keys := make([]string, 4096)
	for i := range keys {
		keys[i] = "key-" + strconv.Itoa(i)
	}
	now := time.Date(2024, 3, 14, 12, 0, 0, 0, time.UTC)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		r := benchRequest()
		var d Decision
		i := 0
		for pb.Next() {
			r.Key = keys[i%len(keys)]
			_ = tab.Check(now, &r, &d)
			i += 7
		}
	})
}

// BenchmarkMemoryPerKey reports the heap held per active key with four
// global limits.
func BenchmarkMemoryPerKey(b *testing.B) {
	const n = 10_000
	keys := make([]string, n)
	for i := range keys {
		keys[i] = "key-" + strconv.Itoa(i)
	}
	now := time.Date(2024, 3, 14, 12, 0, 0, 0, time.UTC)
	var perKey float64
	for b.Loop() {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		tab := New(Config{})
		var d Decision
		for _, k := range keys {
			r := Request{Key: k, Global: Limits{RPM: 10, RPD: 100, TPM: 1000, TPD: 10000}, Tokens: 10}
			_ = tab.Check(now, &r, &d)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		perKey = float64(after.HeapAlloc-before.HeapAlloc) / n
		runtime.KeepAlive(tab)
	}
	b.ReportMetric(perKey, "B/key")
}
