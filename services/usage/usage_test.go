package usage

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	typev1 "github.com/keygate/keygate/gen/keygate/type/v1"
	usagev1 "github.com/keygate/keygate/gen/keygate/usage/v1"
	"github.com/keygate/keygate/pkg/auth"
	"github.com/keygate/keygate/services/usage/internal/reqlog"
)

func TestRecordUsageIdempotent(t *testing.T) {
	e := newEnv(t, 0)
	// Ten records over two keys: odd sequences to k1, even ones to k2, so
	// that each aggregate holds its own mark for the producer.
	mk := func(from, n int) []*usagev1.UsageRecord {
		var out []*usagev1.UsageRecord
		for seq := from; seq < from+n; seq++ {
			out = append(out, rec(fmt.Sprintf("r-%d", seq), []string{"k2", "k1"}[seq%2], "mock-small", 10, 5, t0))
		}
		return out
	}
	r := e.recordAs(t, "p1", 1, mk(1, 10)...)
	require.EqualValues(t, 10, r.GetAccepted())
	require.EqualValues(t, 0, r.GetDuplicates())

	tests := []struct {
		name           string
		producer       string
		first, n       int
		accepted, dups int32
	}{
		{"same batch again counts once", "p1", 1, 10, 0, 10},
		{"a stale part of it counts nothing", "p1", 4, 3, 0, 3},
		// Records 6..10 were counted; 11..15 are new.
		{"an overlapping retry counts only the new part", "p1", 6, 10, 5, 5},
		{"the overlapping retry again is all duplicates", "p1", 6, 10, 0, 10},
		// The identity is (producer, sequence), not the request id.
		{"the same sequence numbers from another producer are new", "p2", 1, 4, 4, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := e.recordAs(t, tc.producer, uint64(tc.first), mk(tc.first, tc.n)...)
			require.Equal(t, tc.accepted, r.GetAccepted())
			require.Equal(t, tc.dups, r.GetDuplicates())
		})
	}
	// p1: 1..15 (k1: 8 odd, k2: 7 even); p2: 1..4 (k1: 2, k2: 2).
	for _, want := range []struct {
		key      string
		requests int64
	}{{"k1", 8 + 2}, {"k2", 7 + 2}} {
		tot := e.totals(t, want.key)
		require.EqualValues(t, want.requests, tot[0].GetRequestsToday(), want.key)
		require.EqualValues(t, want.requests*15, tot[0].GetTokensToday(), want.key)
	}
	entries := logEntries(t, e.rlog, "acme")
	require.Len(t, entries, 15+4, "one log entry per record, however often sent")
	seen := map[string]bool{}
	for _, le := range entries {
		id := fmt.Sprintf("%s/%d", le.Producer, le.Seq)
		require.False(t, seen[id], "log entry %s twice", id)
		seen[id] = true
	}
}

// TestRecordUsageConcurrentOverlapping: producers send their batches in
// order, each batch twice at once (a retry racing the original), and with
// each a stale copy of an earlier batch. Each record counts once.
func TestRecordUsageConcurrentOverlapping(t *testing.T) {
	e := newEnv(t, 0)
	const producers, batches, size, keys = 4, 6, 20, 5
	batch := func(p, i int) []*usagev1.UsageRecord {
		out := make([]*usagev1.UsageRecord, size)
		for j := range out {
			n := i*size + j
			out[j] = rec(fmt.Sprintf("p%d-%d", p, n), fmt.Sprintf("k%d", (p+n)%keys), "mock-small", 10, 5, t0)
		}
		return out
	}
	type result struct{ accepted, dups int }
	results := make([]result, producers)
	errs := make([]error, producers)
	var wg sync.WaitGroup
	for p := range producers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(p), 42))
			producer := fmt.Sprintf("p%d", p)
			for i := range batches {
				first := uint64(i*size + 1)
				stale := -1
				if i > 0 {
					stale = rng.IntN(i)
				}
				var resps [3]*usagev1.RecordUsageResponse
				var callErrs [3]error
				var calls sync.WaitGroup
				for c := range 3 {
					if c == 2 && stale < 0 {
						continue
					}
					calls.Go(func() {
						b, f := batch(p, i), first
						if c == 2 {
							b, f = batch(p, stale), uint64(stale*size+1)
						}
						resps[c], callErrs[c] = send(t.Context(), e.cli, producer, f, b)
					})
				}
				calls.Wait()
				if errs[p] = errors.Join(callErrs[:]...); errs[p] != nil {
					return
				}
				if got := resps[0].GetAccepted() + resps[1].GetAccepted(); got != size {
					errs[p] = fmt.Errorf("batch %d of %s: %d accepted over both copies, want %d", i, producer, got, size)
					return
				}
				if stale >= 0 && (resps[2].GetAccepted() != 0 || resps[2].GetDuplicates() != size) {
					errs[p] = fmt.Errorf("stale batch %d of %s: %v", stale, producer, resps[2])
					return
				}
				for _, r := range resps {
					results[p].accepted += int(r.GetAccepted())
					results[p].dups += int(r.GetDuplicates())
				}
			}
		})
	}
	wg.Wait()
	require.NoError(t, errors.Join(errs...))
	var accepted, dups int
	for _, r := range results {
		accepted += r.accepted
		dups += r.dups
	}
	distinct := producers * batches * size
	sent := producers * (2*batches + batches - 1) * size
	require.Equal(t, distinct, accepted)
	require.Equal(t, sent-distinct, dups)
	var requests, tokens int64
	for k := range keys {
		tot := e.totals(t, fmt.Sprintf("k%d", k))[0]
		requests += tot.GetRequestsToday()
		tokens += tot.GetTokensToday()
	}
	require.EqualValues(t, distinct, requests)
	require.EqualValues(t, distinct*15, tokens)
	require.Equal(t, distinct, logCount(t, e.rlog))
}

// TestAnswerLostRetriedElsewhere: a batch whose aggregates committed on
// one replica but whose answer was an error (its request log failed) is
// retried, with new records, on another replica: the old records count
// once, the new ones once, and the retry writes the log entries.
func TestAnswerLostRetriedElsewhere(t *testing.T) {
	e := newEnv(t, 0)
	fl := &failingLog{}
	a := e.replica(t, func(c *Config) {
		fl.RequestLog = c.RequestLog
		c.RequestLog = fl
	})
	first := recs("first", 5, "k1", "mock-small", t0)
	fl.fail.Store(true)
	_, err := send(t.Context(), a.cli, "edge-1", 1, first)
	requireCode(t, err, codes.Unavailable)
	require.EqualValues(t, 5, e.totals(t, "k1")[0].GetRequestsToday(), "the aggregates committed")
	require.Zero(t, logCount(t, a.rlog))

	more := append(slices.Clone(first), recs("more", 3, "k1", "mock-small", t0)...)
	r := e.recordAs(t, "edge-1", 1, more...)
	require.EqualValues(t, 3, r.GetAccepted())
	require.EqualValues(t, 5, r.GetDuplicates())
	require.EqualValues(t, 8, e.totals(t, "k1")[0].GetRequestsToday())
	require.Equal(t, 8, logCount(t, e.rlog), "the retry logs the records counted before")

	fl.fail.Store(false)
	r, err = send(t.Context(), a.cli, "edge-1", 1, more)
	require.NoError(t, err)
	require.EqualValues(t, 0, r.GetAccepted())
	require.EqualValues(t, 8, r.GetDuplicates())
	require.EqualValues(t, 8, e.totals(t, "k1")[0].GetRequestsToday())
	require.Equal(t, 8, logCount(t, a.rlog))
}

// failingLog is a request log whose appends fail while fail is set.
type failingLog struct {
	RequestLog
	fail atomic.Bool
}

func (f *failingLog) Append(ctx context.Context, es []reqlog.Entry) error {
	if f.fail.Load() {
		return errors.New("disk full")
	}
	return f.RequestLog.Append(ctx, es)
}

func TestCost(t *testing.T) {
	e := newEnv(t, 0)
	e.ks.models = append(e.ks.models,
		&keystorev1.Model{Id: "odd", InputPricePerMillionUsd: "0.000001", OutputPricePerMillionUsd: "3.333333"},
		&keystorev1.Model{Id: "free", InputPricePerMillionUsd: "0", OutputPricePerMillionUsd: "0"},
		&keystorev1.Model{Id: "cached", InputPricePerMillionUsd: "3", OutputPricePerMillionUsd: "15",
			CacheWritePricePerMillionUsd: "3.75", CacheReadPricePerMillionUsd: "0.30"})
	tests := []struct {
		name, model               string
		prompt, completion        int64
		wantCost, wantIn, wantOut string
	}{
		{"small model", "mock-small", 1000, 500, "0.00045", "0.15", "0.60"},
		{"large model", "mock-large", 1_000_000, 1_000_000, "12.50", "2.50", "10.00"},
		{"zero tokens", "mock-small", 0, 0, "0.00", "0.15", "0.60"},
		// 1 token at $0.000001/M is 1e-12 USD: rounded up to a nano-dollar.
		{"rounded up, never free", "odd", 1, 0, "0.000000001", "0.000001", "3.333333"},
		{"fractional price", "odd", 0, 3, "0.00001", "0.000001", "3.333333"},
		{"explicitly free model", "free", 100, 100, "0.00", "0.00", "0.00"},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			key := fmt.Sprintf("cost-%d", i)
			e.record(t, rec("c-"+key, key, tc.model, tc.prompt, tc.completion, t0))
			l, err := e.cli.ListRequests(member(t.Context()), &usagev1.ListRequestsRequest{Workspace: "acme", Key: key})
			require.NoError(t, err)
			require.Len(t, l.GetRequests(), 1)
			got := l.GetRequests()[0]
			require.Equal(t, tc.wantCost, got.GetCostUsd())
			require.Equal(t, tc.wantIn, got.GetInputPricePerMillionUsd())
			require.Equal(t, tc.wantOut, got.GetOutputPricePerMillionUsd())
		})
	}
	t.Run("cache tokens at their prices", func(t *testing.T) {
		// 1M prompt tokens of which 200k written to and 500k read from the
		// cache, and 100k output: 0.9 + 0.75 + 0.15 + 1.5.
		r := rec("c-cached", "cached-key", "cached", 1_000_000, 100_000, t0)
		r.CacheWriteTokens, r.CacheReadTokens = 200_000, 500_000
		e.record(t, r)
		l, err := e.cli.ListRequests(member(t.Context()), &usagev1.ListRequestsRequest{Workspace: "acme", Key: "cached-key"})
		require.NoError(t, err)
		got := l.GetRequests()[0]
		require.Equal(t, "3.30", got.GetCostUsd())
		require.Equal(t, "3.75", got.GetCacheWritePricePerMillionUsd())
		require.Equal(t, "0.30", got.GetCacheReadPricePerMillionUsd())
	})
	t.Run("the edge's prices, not the book's", func(t *testing.T) {
		// The edge charged the key's budget at the prices it decided with
		// (here a catalog version the book no longer has): the ledger
		// charges the same, so budget and spend agree.
		r := rec("c-edge", "edge-priced", "mock-small", 1_000_000, 1_000_000, t0)
		r.InputPricePerMillionUsd, r.OutputPricePerMillionUsd = "1.00", "2.00"
		e.record(t, r)
		l, err := e.cli.ListRequests(member(t.Context()), &usagev1.ListRequestsRequest{Workspace: "acme", Key: "edge-priced"})
		require.NoError(t, err)
		got := l.GetRequests()[0]
		require.Equal(t, "3.00", got.GetCostUsd())
		require.Equal(t, "1.00", got.GetInputPricePerMillionUsd())

		bad := rec("c-bad", "edge-priced", "mock-small", 1, 1, t0)
		bad.InputPricePerMillionUsd, bad.OutputPricePerMillionUsd = "1.00", "-2"
		_, err = send(t.Context(), e.cli, testProducer, e.reserve(1), []*usagev1.UsageRecord{bad})
		require.Equal(t, codes.InvalidArgument, status.Code(err), "%v", err)
		require.ErrorContains(t, err, "output price")
		l, err = e.cli.ListRequests(member(t.Context()), &usagev1.ListRequestsRequest{Workspace: "acme", Key: "edge-priced"})
		require.NoError(t, err)
		require.Len(t, l.GetRequests(), 1, "a refused record changes nothing")
	})
	t.Run("spend adds exactly", func(t *testing.T) {
		// 7 records of 1 prompt token at $0.15/M: 7 x 0.00000015.
		e.ks.setKey(&keystorev1.Key{Id: "sum", Workspace: "acme"})
		for i := range 7 {
			e.record(t, rec(fmt.Sprintf("s-%d", i), "sum", "mock-small", 1, 0, t0))
		}
		u, err := e.cli.GetUsage(member(t.Context()), &usagev1.GetUsageRequest{Workspace: "acme", Key: "sum"})
		require.NoError(t, err)
		require.Equal(t, "0.00000105", u.GetSpendTodayUsd())
		require.Equal(t, "0.00000105", u.GetSpendUsd())
		require.EqualValues(t, 2, e.totals(t, "sum")[0].GetPeriodCostMicros(), "micros round up")
	})
}

func TestGetUsageResets(t *testing.T) {
	e := newEnv(t, 0)
	e.ks.setKey(&keystorev1.Key{
		Id: "k1", Workspace: "acme",
		GlobalLimits: &typev1.Limits{Rpd: 100, Tpd: 1000},
		ModelLimits:  []*typev1.ModelLimits{{Model: "mock-large", Limits: &typev1.Limits{Rpd: 5, Tpd: 50}}},
		TokenCap:     &typev1.TokenCap{Tokens: 5000, ResetPeriod: typev1.ResetPeriod_RESET_PERIOD_WEEKLY},
		Budget:       &typev1.Budget{AmountUsd: "5", ResetPeriod: typev1.ResetPeriod_RESET_PERIOD_MONTHLY},
	})
	get := func(t *testing.T, model string) *usagev1.GetUsageResponse {
		u, err := e.cli.GetUsage(member(t.Context()), &usagev1.GetUsageRequest{Workspace: "acme", Key: "k1", Model: model})
		require.NoError(t, err)
		return u
	}
	e.record(t, rec("r1", "k1", "mock-small", 100, 50, t0), rec("r2", "k1", "mock-large", 10, 10, t0))

	t.Run("today", func(t *testing.T) {
		u := get(t, "")
		require.Equal(t, "2026-03-11", u.GetDay())
		require.EqualValues(t, 2, u.GetRequestsToday())
		require.EqualValues(t, 100, u.GetRequestLimitToday())
		require.EqualValues(t, 170, u.GetTokensToday())
		require.EqualValues(t, 110, u.GetPromptTokensToday())
		require.EqualValues(t, 1000, u.GetTokenLimitToday())
		require.EqualValues(t, 170, u.GetPeriodTokens())
		require.EqualValues(t, 5000, u.GetTokenCap())
		require.Equal(t, "5.00", u.GetBudgetUsd())
		require.Equal(t, time.Date(2026, 3, 9, 0, 0, 0, 0, time.UTC), u.GetTokenPeriodStart().AsTime(), "weeks start on Monday")
		require.Equal(t, time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC), u.GetBudgetPeriodStart().AsTime())
		require.Equal(t, time.Date(2026, 4, 1, 0, 0, 0, 0, time.UTC), u.GetBudgetPeriodEnd().AsTime())
		// 100*0.15/M + 50*0.60/M + 10*2.5/M + 10*10/M
		require.Equal(t, "0.00017", u.GetSpendUsd())
		require.Len(t, u.GetModels(), 2)
		require.Equal(t, "mock-large", u.GetModels()[0].GetModel())
		require.EqualValues(t, 5, u.GetModels()[0].GetRequestLimitToday())
		require.EqualValues(t, 100, u.GetModels()[1].GetRequestLimitToday(), "no model limits: the global ones")
	})
	t.Run("one model", func(t *testing.T) {
		u := get(t, "mock-large")
		require.EqualValues(t, 1, u.GetRequestsToday())
		require.EqualValues(t, 5, u.GetRequestLimitToday())
		require.EqualValues(t, 20, u.GetTokensToday())
		require.Len(t, u.GetModels(), 1)
	})
	t.Run("next day resets today, not the periods", func(t *testing.T) {
		e.clk.Set(time.Date(2026, 3, 12, 0, 0, 0, 0, time.UTC))
		u := get(t, "")
		require.EqualValues(t, 0, u.GetRequestsToday())
		require.EqualValues(t, 0, u.GetTokensToday())
		require.EqualValues(t, 170, u.GetPeriodTokens())
		require.Equal(t, "0.00017", u.GetSpendUsd())
	})
	t.Run("monday resets the weekly token cap", func(t *testing.T) {
		e.clk.Set(time.Date(2026, 3, 16, 0, 0, 0, 0, time.UTC))
		u := get(t, "")
		require.EqualValues(t, 0, u.GetPeriodTokens())
		require.Equal(t, "0.00017", u.GetSpendUsd())
	})
	t.Run("first of the month resets the monthly budget", func(t *testing.T) {
		e.clk.Set(time.Date(2026, 4, 1, 0, 0, 0, 0, time.UTC))
		u := get(t, "")
		require.Equal(t, "0.00", u.GetSpendUsd())
	})
}

func TestPeriodBounds(t *testing.T) {
	now := time.Date(2026, 3, 15, 23, 59, 0, 0, time.UTC) // a Sunday
	tests := []struct {
		p          typev1.ResetPeriod
		start, end time.Time
	}{
		{typev1.ResetPeriod_RESET_PERIOD_DAILY, time.Date(2026, 3, 15, 0, 0, 0, 0, time.UTC), time.Date(2026, 3, 16, 0, 0, 0, 0, time.UTC)},
		{typev1.ResetPeriod_RESET_PERIOD_WEEKLY, time.Date(2026, 3, 9, 0, 0, 0, 0, time.UTC), time.Date(2026, 3, 16, 0, 0, 0, 0, time.UTC)},
		{typev1.ResetPeriod_RESET_PERIOD_MONTHLY, time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC), time.Date(2026, 4, 1, 0, 0, 0, 0, time.UTC)},
		{typev1.ResetPeriod_RESET_PERIOD_NEVER, time.Unix(0, 0).UTC(), time.Time{}},
		{typev1.ResetPeriod_RESET_PERIOD_UNSPECIFIED, time.Unix(0, 0).UTC(), time.Time{}},
	}
	for _, tc := range tests {
		t.Run(tc.p.String(), func(t *testing.T) {
			s, e := periodBounds(tc.p, now)
			require.Equal(t, tc.start, s)
			require.Equal(t, tc.end, e)
		})
	}
}

func TestRollup(t *testing.T) {
	jan := time.Date(2026, 1, 10, 12, 0, 0, 0, time.UTC)
	// The janitor's first pass, at start, must not see March yet.
	e := newEnvAt(t, jan, nil)
	e.record(t, recs("jan-a", 3, "k1", "mock-small", jan)...)
	e.clk.Set(jan.AddDate(0, 0, 1))
	e.record(t, recs("jan-b", 2, "k1", "mock-small", jan.AddDate(0, 0, 1))...)
	e.record(t, recs("jan-c", 1, "k1", "mock-large", jan.AddDate(0, 0, 1))...)
	feb := time.Date(2026, 2, 3, 0, 0, 0, 0, time.UTC)
	e.clk.Set(feb)
	e.record(t, recs("feb", 4, "k1", "mock-small", feb)...)
	before := e.totals(t, "k1", "mock-small")

	t.Run("previous month stays as days", func(t *testing.T) {
		require.NoError(t, e.srv.maintain(t.Context()))
		require.EqualValues(t, 3, count(t, e.etcd, "agg/k1/d/2026-01-"))
		require.EqualValues(t, 0, count(t, e.etcd, "agg/k1/m/"))
	})
	t.Run("two months on, days become a month", func(t *testing.T) {
		e.clk.Set(time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC))
		require.NoError(t, e.srv.maintain(t.Context()))
		require.EqualValues(t, 0, count(t, e.etcd, "agg/k1/d/2026-01-"))
		require.EqualValues(t, 2, count(t, e.etcd, "agg/k1/m/2026-01/"))
		require.EqualValues(t, 1, count(t, e.etcd, "agg/k1/d/2026-02-"))
		after := e.totals(t, "k1", "mock-small")
		for i := range before {
			require.Equal(t, before[i].GetPeriodTokens(), after[i].GetPeriodTokens())
			require.Equal(t, before[i].GetPeriodCostMicros(), after[i].GetPeriodCostMicros())
		}
		require.EqualValues(t, 10*15, after[0].GetPeriodTokens())
		// Idempotent.
		require.NoError(t, e.srv.maintain(t.Context()))
		require.EqualValues(t, 2, count(t, e.etcd, "agg/k1/m/2026-01/"))
		again := e.totals(t, "k1", "mock-small")
		for i := range after {
			require.True(t, proto.Equal(after[i], again[i]))
		}
	})
	t.Run("listing covers rolled up months", func(t *testing.T) {
		l, err := e.cli.ListUsage(member(t.Context()), &usagev1.ListUsageRequest{Workspace: "acme", GroupBy: usagev1.GroupBy_GROUP_BY_MODEL, StartDate: "2026-01-01", EndDate: "2026-02-28"})
		require.NoError(t, err)
		require.Len(t, l.GetRows(), 2)
		require.EqualValues(t, 1, l.GetRows()[0].GetRequests())
		require.EqualValues(t, 9, l.GetRows()[1].GetRequests())
	})
}

func TestRetention(t *testing.T) {
	e := newEnv(t, time.Hour)
	// The log drops whole slices of reqlog.SliceWidth (a minute) that end
	// at or before now - retention; t0 starts a slice.
	e.record(t, recs("old", 3, "k1", "mock-small", t0)...) // slice 12:00-12:01
	e.clk.Set(t0.Add(30 * time.Minute))
	e.record(t, recs("edge", 1, "k1", "mock-small", t0.Add(12*time.Minute))...) // 12:12-12:13
	e.record(t, recs("new", 2, "k1", "mock-small", e.clk.Now())...)             // 12:30-12:31
	require.Equal(t, 6, logCount(t, e.rlog))

	steps := []struct {
		name string
		now  time.Time
		log  int
	}{
		{"nothing is past the retention", t0.Add(60 * time.Minute), 6},
		// The edge record (12:12) is older than the cutoff (12:12:30) but
		// its slice ends after it.
		{"a slice ending before the cutoff goes", t0.Add(72*time.Minute + 30*time.Second), 3},
		{"a slice ending at the cutoff goes", t0.Add(73 * time.Minute), 2},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			e.clk.Set(st.now)
			require.NoError(t, e.srv.maintain(t.Context()))
			require.Equal(t, st.log, logCount(t, e.rlog))
			require.EqualValues(t, 6, e.totals(t, "k1")[0].GetRequestsToday(), "aggregates outlive the log")
			require.EqualValues(t, 1, count(t, e.etcd, "agg/k1/"))
			require.EqualValues(t, 2, count(t, e.etcd, "agg/"+levelMark), "the member's and the workspace's")
		})
	}

	// Now 13:20: the oldest acceptable record time is 12:20.
	tests := []struct {
		name string
		at   time.Time
		code codes.Code
	}{
		{"a record older than the retention is refused", t0, codes.InvalidArgument},
		{"a nanosecond too old is refused", t0.Add(13*time.Minute - 1), codes.InvalidArgument},
		{"a record exactly at the retention is accepted", t0.Add(13 * time.Minute), codes.OK},
	}
	requests, entries := int64(6), 2
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := send(t.Context(), e.cli, testProducer, e.reserve(1), recs("late", 1, "k1", "mock-small", tc.at))
			if tc.code == codes.OK {
				require.NoError(t, err)
				requests++
				entries++
			} else {
				requireCode(t, err, tc.code)
			}
			require.Equal(t, requests, e.totals(t, "k1")[0].GetRequestsToday())
			require.Equal(t, entries, logCount(t, e.rlog))
		})
	}
}

func TestRecordUsageBadInput(t *testing.T) {
	e := newEnv(t, 0)
	good := rec("ok", "k1", "mock-small", 1, 1, t0)
	// batch is a valid request: the good record and r, from producer
	// "edge-1" numbered from 1.
	batch := func(r *usagev1.UsageRecord) *usagev1.RecordUsageRequest {
		return &usagev1.RecordUsageRequest{Producer: "edge-1", FirstSequence: 1, Records: []*usagev1.UsageRecord{good, r}}
	}
	mod := func(f func(r *usagev1.UsageRecord)) *usagev1.RecordUsageRequest {
		r := rec("bad", "k1", "mock-small", 1, 1, t0)
		f(r)
		return batch(r)
	}
	req := func(f func(req *usagev1.RecordUsageRequest)) *usagev1.RecordUsageRequest {
		r := batch(rec("fine", "k1", "mock-small", 1, 1, t0))
		f(r)
		return r
	}
	tests := []struct {
		name string
		req  *usagev1.RecordUsageRequest
	}{
		{"missing request id", mod(func(r *usagev1.UsageRecord) { r.RequestId = "" })},
		{"missing key", mod(func(r *usagev1.UsageRecord) { r.Key = "" })},
		{"missing workspace", mod(func(r *usagev1.UsageRecord) { r.Workspace = "" })},
		{"slash in key", mod(func(r *usagev1.UsageRecord) { r.Key = "a/b" })},
		{"unknown model", mod(func(r *usagev1.UsageRecord) { r.Model = "nope" })},
		{"model without price", mod(func(r *usagev1.UsageRecord) { r.Model = "unpriced" })},
		{"negative prompt tokens", mod(func(r *usagev1.UsageRecord) { r.PromptTokens = -1 })},
		{"negative completion tokens", mod(func(r *usagev1.UsageRecord) { r.CompletionTokens = -1 })},
		{"more cache tokens than prompt tokens", mod(func(r *usagev1.UsageRecord) { r.CacheReadTokens = 2 })},
		{"negative cache tokens", mod(func(r *usagev1.UsageRecord) { r.CacheWriteTokens = -1 })},
		{"unknown status", mod(func(r *usagev1.UsageRecord) { r.Status = 42 })},
		{"negative latency", mod(func(r *usagev1.UsageRecord) { r.Latency = durationpb.New(-time.Second) })},
		{"time in the future", mod(func(r *usagev1.UsageRecord) { r.Time = timestamppb.New(t0.Add(time.Hour)) })},
		{"missing producer", req(func(r *usagev1.RecordUsageRequest) { r.Producer = "" })},
		{"producer over 64 bytes", req(func(r *usagev1.RecordUsageRequest) { r.Producer = strings.Repeat("p", 65) })},
		{"slash in producer", req(func(r *usagev1.RecordUsageRequest) { r.Producer = "edge/1" })},
		{"first_sequence 0", req(func(r *usagev1.RecordUsageRequest) { r.FirstSequence = 0 })},
		// Two records from MaxUint64: the second has no sequence number.
		{"first_sequence overflows", req(func(r *usagev1.RecordUsageRequest) { r.FirstSequence = math.MaxUint64 })},
		{"empty batch without producer", &usagev1.RecordUsageRequest{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// The good record in the same batch is not written either.
			_, err := e.cli.RecordUsage(svc(t.Context()), tc.req)
			requireCode(t, err, codes.InvalidArgument)
			require.EqualValues(t, 0, count(t, e.etcd, ""))
			require.Zero(t, logCount(t, e.rlog))
		})
	}
	t.Run("a 64-byte producer and sequences near the top are fine", func(t *testing.T) {
		r := e.recordAs(t, strings.Repeat("p", 64), 1, good)
		require.EqualValues(t, 1, r.GetAccepted())
		r = e.recordAs(t, "edge-1", math.MaxUint64-1, good)
		require.EqualValues(t, 1, r.GetAccepted())
		require.Equal(t, 2, logCount(t, e.rlog))
	})
}

func TestAuth(t *testing.T) {
	e := newEnv(t, 0)
	e.ks.setKey(&keystorev1.Key{Id: "k1", Workspace: "acme"})
	ctx := t.Context()
	t.Run("RecordUsage without service token", func(t *testing.T) {
		for _, c := range []struct {
			name string
			ctx  func() error
		}{
			{"none", func() error {
				_, err := e.cli.RecordUsage(ctx, &usagev1.RecordUsageRequest{Producer: "edge-1", FirstSequence: 1, Records: recs("x", 1, "k1", "mock-small", t0)})
				return err
			}},
			{"member token", func() error {
				_, err := e.cli.RecordUsage(member(ctx), &usagev1.RecordUsageRequest{Producer: "edge-1", FirstSequence: 1, Records: recs("x", 1, "k1", "mock-small", t0)})
				return err
			}},
			{"GetTotals none", func() error {
				_, err := e.cli.GetTotals(ctx, &usagev1.GetTotalsRequest{})
				return err
			}},
		} {
			t.Run(c.name, func(t *testing.T) {
				requireCode(t, c.ctx(), codes.Unauthenticated)
				require.EqualValues(t, 0, count(t, e.etcd, ""))
				require.Zero(t, logCount(t, e.rlog))
			})
		}
	})
	t.Run("management calls follow the keystore", func(t *testing.T) {
		tests := []struct {
			name  string
			token string
			want  codes.Code
		}{
			{"GetUsage no credential", "", codes.Unauthenticated},
			{"GetUsage other workspace member", otherToken, codes.NotFound},
			{"GetUsage member", memberToken, codes.OK},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				c := ctx
				if tc.token != "" {
					c = auth.WithBearer(ctx, tc.token)
				}
				_, err := e.cli.GetUsage(c, &usagev1.GetUsageRequest{Workspace: "acme", Key: "k1"})
				if tc.want == codes.OK {
					require.NoError(t, err)
					return
				}
				requireCode(t, err, tc.want)
			})
		}
		_, err := e.cli.GetUsage(member(ctx), &usagev1.GetUsageRequest{Workspace: "acme", Key: "missing"})
		requireCode(t, err, codes.NotFound)
		_, err = e.cli.ListRequests(auth.WithBearer(ctx, otherToken), &usagev1.ListRequestsRequest{Workspace: "acme"})
		requireCode(t, err, codes.NotFound)
		_, err = e.cli.ListUsage(ctx, &usagev1.ListUsageRequest{Workspace: "acme"})
		requireCode(t, err, codes.Unauthenticated)
	})
}

func TestListRequests(t *testing.T) {
	e := newEnv(t, 0)
	var all []*usagev1.UsageRecord
	for i := range 30 {
		r := rec(fmt.Sprintf("r%02d", i), fmt.Sprintf("k%d", i%3), []string{"mock-small", "mock-large"}[i%2], 1, 1, t0.Add(time.Duration(i)*time.Second))
		if i%5 == 0 {
			r.Status = usagev1.RequestStatus_REQUEST_STATUS_UPSTREAM_ERROR
		}
		all = append(all, r)
	}
	e.record(t, all...)
	list := func(t *testing.T, req *usagev1.ListRequestsRequest) []string {
		var ids []string
		for range 100 {
			resp, err := e.cli.ListRequests(member(t.Context()), req)
			require.NoError(t, err)
			for _, r := range resp.GetRequests() {
				ids = append(ids, r.GetRequestId())
			}
			if resp.GetNextPageToken() == "" {
				return ids
			}
			req.PageToken = resp.GetNextPageToken()
		}
		t.Fatal("pagination did not end")
		return nil
	}
	tests := []struct {
		name string
		req  *usagev1.ListRequestsRequest
		want []string
	}{
		{"newest first, pages of 7", &usagev1.ListRequestsRequest{PageSize: 7}, nil},
		{"by key", &usagev1.ListRequestsRequest{Key: "k1", PageSize: 4}, []string{"r28", "r25", "r22", "r19", "r16", "r13", "r10", "r07", "r04", "r01"}},
		{"by owner", &usagev1.ListRequestsRequest{Owner: "owner-k2"}, []string{"r29", "r26", "r23", "r20", "r17", "r14", "r11", "r08", "r05", "r02"}},
		{"by model and status", &usagev1.ListRequestsRequest{Model: "mock-small", Status: usagev1.RequestStatus_REQUEST_STATUS_UPSTREAM_ERROR}, []string{"r20", "r10", "r00"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.req.Workspace = "acme"
			want := tc.want
			if want == nil {
				for i := 29; i >= 0; i-- {
					want = append(want, fmt.Sprintf("r%02d", i))
				}
			}
			require.Equal(t, want, list(t, tc.req))
		})
	}
	t.Run("foreign page token", func(t *testing.T) {
		_, err := e.cli.ListRequests(member(t.Context()), &usagev1.ListRequestsRequest{Workspace: "acme", PageToken: "bm9wZQ"})
		requireCode(t, err, codes.InvalidArgument)
	})
}

func TestSeriesAndListUsage(t *testing.T) {
	e := newEnv(t, 0)
	e.ks.setKey(&keystorev1.Key{Id: "k1", Workspace: "acme"})
	e.record(t, recs("d0", 2, "k1", "mock-small", t0.AddDate(0, 0, -2))...)
	e.record(t, recs("d1", 3, "k1", "mock-large", t0)...)
	e.record(t, recs("d2", 1, "k2", "mock-small", t0)...)

	t.Run("series", func(t *testing.T) {
		s, err := e.cli.GetUsageSeries(member(t.Context()), &usagev1.GetUsageSeriesRequest{Workspace: "acme", Key: "k1", StartDate: "2026-03-08", EndDate: "2026-03-11"})
		require.NoError(t, err)
		var got []int64
		for _, p := range s.GetPoints() {
			got = append(got, p.GetRequests())
		}
		require.Equal(t, []int64{0, 2, 0, 3}, got)
		require.Equal(t, "2026-03-09", s.GetPoints()[1].GetDay())
	})
	t.Run("series default is the last 30 days", func(t *testing.T) {
		s, err := e.cli.GetUsageSeries(member(t.Context()), &usagev1.GetUsageSeriesRequest{Workspace: "acme", Key: "k1", Model: "mock-large"})
		require.NoError(t, err)
		require.Len(t, s.GetPoints(), 30)
		require.EqualValues(t, 3, s.GetPoints()[29].GetRequests())
	})
	t.Run("bad range", func(t *testing.T) {
		_, err := e.cli.GetUsageSeries(member(t.Context()), &usagev1.GetUsageSeriesRequest{Workspace: "acme", Key: "k1", StartDate: "2026-03-12", EndDate: "2026-03-11"})
		requireCode(t, err, codes.InvalidArgument)
		_, err = e.cli.GetUsageSeries(member(t.Context()), &usagev1.GetUsageSeriesRequest{Workspace: "acme", Key: "k1", StartDate: "03/12/2026"})
		requireCode(t, err, codes.InvalidArgument)
	})
	tests := []struct {
		by   usagev1.GroupBy
		want map[string]int64
	}{
		{usagev1.GroupBy_GROUP_BY_KEY, map[string]int64{"k1": 5, "k2": 1}},
		{usagev1.GroupBy_GROUP_BY_MODEL, map[string]int64{"mock-small": 3, "mock-large": 3}},
		{usagev1.GroupBy_GROUP_BY_OWNER, map[string]int64{"owner-k1": 5, "owner-k2": 1}},
	}
	for _, tc := range tests {
		t.Run(tc.by.String(), func(t *testing.T) {
			l, err := e.cli.ListUsage(member(t.Context()), &usagev1.ListUsageRequest{Workspace: "acme", GroupBy: tc.by})
			require.NoError(t, err)
			got := map[string]int64{}
			for _, r := range l.GetRows() {
				got[r.GetGroup()] = r.GetRequests()
			}
			require.Equal(t, tc.want, got)
		})
	}
}

func TestGetTotals(t *testing.T) {
	e := newEnv(t, 0)
	e.record(t, recs("y", 2, "k1", "mock-small", t0.AddDate(0, 0, -1))...)
	e.record(t, recs("t", 3, "k1", "mock-large", t0)...)
	e.record(t, recs("u", 1, "k2", "mock-small", t0)...)
	resp, err := e.cli.GetTotals(svc(t.Context()), &usagev1.GetTotalsRequest{Queries: []*usagev1.TotalsQuery{
		{Key: "k1", Models: []string{"mock-small", "mock-large"}, TokenPeriodStart: timestamppb.New(t0.AddDate(0, 0, -1)), BudgetPeriodStart: timestamppb.New(dayStart(t0))},
		{Key: "k2"},
		{Key: "never-used"},
	}})
	require.NoError(t, err)
	type row struct{ req, tok, ptok, micros int64 }
	got := map[string]row{}
	for _, x := range resp.GetTotals() {
		got[x.GetKey()+"/"+x.GetModel()] = row{x.GetRequestsToday(), x.GetTokensToday(), x.GetPeriodTokens(), x.GetPeriodCostMicros()}
	}
	// mock-large: 3 x (10 x 2.50 + 5 x 10.00)/M = 225 micros.
	require.Equal(t, map[string]row{
		"k1/":           {3, 45, 75, 225},
		"k1/mock-small": {0, 0, 30, 0},
		"k1/mock-large": {3, 45, 45, 225},
		"k2/":           {1, 15, 15, 5},
		"never-used/":   {},
	}, got)
	_, err = e.cli.GetTotals(svc(t.Context()), &usagev1.GetTotalsRequest{Day: "yesterday"})
	requireCode(t, err, codes.InvalidArgument)
}

func TestRecordUsageLargeBatchSplitsTxns(t *testing.T) {
	e := newEnv(t, 0)
	// 2,000 records over 300 aggregates: many Txns, each within etcd's
	// 128-op limit.
	var b []*usagev1.UsageRecord
	for i := range 2000 {
		b = append(b, rec(fmt.Sprintf("big-%d", i), fmt.Sprintf("k%d", i%150), []string{"mock-small", "mock-large"}[(i/150)%2], 1, 2, t0))
	}
	r := e.recordAs(t, "edge-1", 1, b...)
	require.EqualValues(t, 2000, r.GetAccepted())
	t.Run("a retry of the first half is all duplicates", func(t *testing.T) {
		r := e.recordAs(t, "edge-1", 1, b[:1000]...)
		require.EqualValues(t, 0, r.GetAccepted())
		require.EqualValues(t, 1000, r.GetDuplicates())
	})
	require.EqualValues(t, 300, count(t, e.etcd, "agg/k"))
	// A member per key (rec makes each key's owner), and the workspace,
	// each per model.
	require.EqualValues(t, 150*2+2, count(t, e.etcd, "agg/"+levelMark))
	var total int64
	for k := range 150 {
		total += e.totals(t, fmt.Sprintf("k%d", k))[0].GetTokensToday()
	}
	require.EqualValues(t, 2000*3, total)
	require.Equal(t, 2000, logCount(t, e.rlog))
}
