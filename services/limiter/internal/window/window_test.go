package window

import (
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

var t0 = time.Date(2024, 3, 14, 12, 0, 0, 0, time.UTC)

func check(t *testing.T, tab *Table, now time.Time, r Request) Decision {
	t.Helper()
	var d Decision
	require.NoError(t, tab.Check(now, &r, &d))
	return d
}

func quota(d Decision, k Kind, model bool) Quota {
	for _, q := range d.Quotas[:d.N] {
		if q.Kind == k && q.Model == model {
			return q
		}
	}
	return Quota{}
}

func TestExactUnderConcurrency(t *testing.T) {
	t.Parallel()
	tab := New(Config{})
	const limit, workers, each = 100, 16, 40
	var admitted atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			var d Decision
			for i := range each {
				r := Request{Key: "k", Model: "m", ReservationID: strconv.Itoa(w*each + i),
					Global: Limits{RPM: limit, TPM: 10_000}, ModelLimits: Limits{RPD: 1000}, Tokens: 7}
				if tab.Check(t0, &r, &d) == nil && d.Allowed {
					admitted.Add(1)
				}
			}
		})
	}
	wg.Wait()
	require.EqualValues(t, limit, admitted.Load())
	d := check(t, tab, t0, Request{Key: "k", Global: Limits{RPM: limit, TPM: 10_000}})
	require.False(t, d.Allowed)
	require.EqualValues(t, 10_000-limit*7, quota(d, KindTPM, false).Remaining)
}

func TestDeniedConsumesNothing(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		req    Request
		denyBy Kind
		model  bool
	}{
		{"model rpm refuses, global untouched", Request{Global: Limits{RPM: 10, TPM: 1000, RPD: 100, TPD: 10000}, ModelLimits: Limits{RPM: 1}, Tokens: 5}, KindRPM, true},
		{"global tpm refuses, model untouched", Request{Global: Limits{TPM: 12}, ModelLimits: Limits{RPM: 10, TPD: 100}, Tokens: 10}, KindTPM, false},
		{"budget refuses, windows untouched", Request{Global: Limits{RPM: 10, TPM: 1000}, ModelLimits: Limits{RPD: 10}, BudgetMicros: 150, CostMicros: 100, Tokens: 3}, KindBudget, false},
		{"token cap refuses", Request{Global: Limits{RPM: 10}, TokenCap: 15, TokenPeriod: PeriodMonthly, Tokens: 10}, KindTokenCap, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			// twin sees only the admitted request; tab also sees the denials.
			tab, twin := New(Config{}), New(Config{})
			r := tt.req
			r.Key, r.Model, r.ReservationID = "k", "m", "first"
			require.True(t, check(t, tab, t0, r).Allowed)
			require.True(t, check(t, twin, t0, r).Allowed)
			for i := range 5 {
				r.ReservationID = "denied" + strconv.Itoa(i)
				d := check(t, tab, t0, r)
				require.False(t, d.Allowed)
				require.Equal(t, tt.denyBy, d.DeniedBy)
				require.Equal(t, tt.model, d.DeniedModel)
				require.False(t, tab.Release("k", r.ReservationID), "a denied check holds no reservation")
			}
			probe := r
			probe.ReservationID, probe.Tokens, probe.CostMicros = "", 0, 0
			require.Equal(t, check(t, twin, t0, probe), check(t, tab, t0, probe))
		})
	}
}

func TestRollingWindow(t *testing.T) {
	t.Parallel()
	tab := New(Config{})
	r := Request{Key: "k", Global: Limits{RPM: 3}}
	now := t0.Add(200 * time.Millisecond)
	for i := range 3 {
		require.True(t, check(t, tab, now.Add(time.Duration(i)*10*time.Second), r).Allowed)
	}
	// Full: the first request (second 0) leaves at second 60.
	at := now.Add(25 * time.Second)
	d := check(t, tab, at, r)
	require.False(t, d.Allowed)
	require.Equal(t, KindRPM, d.DeniedBy)
	require.Equal(t, t0.Add(60*time.Second).Sub(at), d.RetryAfter)
	require.False(t, check(t, tab, t0.Add(59*time.Second+999*time.Millisecond), r).Allowed)
	require.True(t, check(t, tab, t0.Add(60*time.Second), r).Allowed)
	// Requests at 10 s, 20 s and 60 s fill it again; one more fits at 70 s.
	d = check(t, tab, t0.Add(61*time.Second), r)
	require.False(t, d.Allowed)
	require.Equal(t, 9*time.Second, d.RetryAfter)
	q := quota(d, KindRPM, false)
	require.Zero(t, q.Remaining)
	require.Equal(t, 59*time.Second, q.ResetAfter)
}

func TestTokenWindowRetry(t *testing.T) {
	t.Parallel()
	tab := New(Config{})
	lim := Limits{TPM: 100}
	require.True(t, check(t, tab, t0, Request{Key: "k", Global: lim, Tokens: 60}).Allowed)
	require.True(t, check(t, tab, t0.Add(5*time.Second), Request{Key: "k", Global: lim, Tokens: 30}).Allowed)
	d := check(t, tab, t0.Add(10*time.Second), Request{Key: "k", Global: lim, Tokens: 50})
	require.False(t, d.Allowed)
	require.Equal(t, 50*time.Second, d.RetryAfter, "60 tokens must leave")
	d = check(t, tab, t0.Add(10*time.Second), Request{Key: "k", Global: lim, Tokens: 101})
	require.False(t, d.Allowed)
	require.Zero(t, d.RetryAfter, "an estimate above the limit never fits")
}

func TestSettleReleaseExpiry(t *testing.T) {
	t.Parallel()
	lim := Limits{RPM: 10, TPM: 100, TPD: 1000}
	tests := []struct {
		name     string
		finish   func(tab *Table) bool
		advance  time.Duration
		wantReq  int64 // remaining requests
		wantTok  int64 // remaining tpm
		wantDay  int64 // remaining tpd
		wantCost int64 // remaining budget
	}{
		{"settle replaces the estimate", func(tab *Table) bool { return tab.Settle("k", "r", 12, 30) }, 0, 9, 88, 988, 970},
		{"settle above estimate", func(tab *Table) bool { return tab.Settle("k", "r", 70, 90) }, 0, 9, 30, 930, 910},
		{"release frees everything", func(tab *Table) bool { return tab.Release("k", "r") }, 0, 10, 100, 1000, 1000},
		{"settle after the rolling window passed adjusts day only", func(tab *Table) bool { return tab.Settle("k", "r", 5, 10) }, 61 * time.Second, 10, 100, 995, 990},
		{"unsettled reservation expires at its estimate", func(tab *Table) bool {
			tab.Sweep(t0.Add(11 * time.Minute))
			return !tab.Settle("k", "r", 0, 0) && !tab.Release("k", "r")
		}, 11 * time.Minute, 10, 100, 960, 950},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tab := New(Config{})
			r := Request{Key: "k", Model: "m", ReservationID: "r", Global: lim, BudgetMicros: 1000, Tokens: 40, CostMicros: 50}
			require.True(t, check(t, tab, t0, r).Allowed)
			require.True(t, tt.finish(tab))
			require.False(t, tab.Settle("k", "r", 1, 1), "a reservation finishes once")
			d := check(t, tab, t0.Add(tt.advance), Request{Key: "k", Global: lim, BudgetMicros: 1000, Tokens: 0})
			require.Equal(t, tt.wantReq-1, quota(d, KindRPM, false).Remaining)
			require.Equal(t, tt.wantTok, quota(d, KindTPM, false).Remaining)
			require.Equal(t, tt.wantDay, quota(d, KindTPD, false).Remaining)
			require.Equal(t, tt.wantCost, quota(d, KindBudget, false).Remaining)
		})
	}
}

func TestRetriedCheckChargesOnce(t *testing.T) {
	t.Parallel()
	tab := New(Config{})
	r := Request{Key: "k", ReservationID: "same", Global: Limits{RPM: 2}, Tokens: 3}
	require.True(t, check(t, tab, t0, r).Allowed)
	require.True(t, check(t, tab, t0, r).Allowed)
	r.ReservationID = "other"
	require.True(t, check(t, tab, t0, r).Allowed)
	r.ReservationID = "third"
	require.False(t, check(t, tab, t0, r).Allowed)
}

func TestCalendarResets(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		req     Request
		kind    Kind
		start   time.Time
		stillAt time.Time // denied again here
		resetAt time.Time // admitted again here
	}{
		{"rpd at UTC midnight", Request{Global: Limits{RPD: 1}}, KindRPD,
			time.Date(2024, 3, 14, 0, 0, 1, 0, time.UTC), time.Date(2024, 3, 14, 23, 59, 59, 0, time.UTC), time.Date(2024, 3, 15, 0, 0, 0, 0, time.UTC)},
		{"tpd at UTC midnight", Request{Global: Limits{TPD: 10}, Tokens: 10}, KindTPD,
			time.Date(2024, 3, 14, 9, 0, 0, 0, time.UTC), time.Date(2024, 3, 14, 23, 0, 0, 0, time.UTC), time.Date(2024, 3, 15, 0, 0, 0, 0, time.UTC)},
		{"daily budget", Request{BudgetMicros: 10, BudgetPeriod: PeriodDaily, CostMicros: 10}, KindBudget,
			time.Date(2024, 3, 14, 9, 0, 0, 0, time.UTC), time.Date(2024, 3, 14, 23, 0, 0, 0, time.UTC), time.Date(2024, 3, 15, 0, 0, 0, 0, time.UTC)},
		{"weekly cap resets on Monday", Request{TokenCap: 10, TokenPeriod: PeriodWeekly, Tokens: 10}, KindTokenCap,
			time.Date(2024, 3, 11, 0, 0, 0, 0, time.UTC), time.Date(2024, 3, 17, 23, 59, 59, 0, time.UTC), time.Date(2024, 3, 18, 0, 0, 0, 0, time.UTC)},
		{"monthly budget", Request{BudgetMicros: 10, BudgetPeriod: PeriodMonthly, CostMicros: 10}, KindBudget,
			time.Date(2024, 2, 1, 0, 0, 0, 0, time.UTC), time.Date(2024, 2, 29, 23, 0, 0, 0, time.UTC), time.Date(2024, 3, 1, 0, 0, 0, 0, time.UTC)},
		{"never resets", Request{TokenCap: 10, TokenPeriod: PeriodNever, Tokens: 10}, KindTokenCap,
			time.Date(2024, 2, 1, 0, 0, 0, 0, time.UTC), time.Date(2030, 2, 29, 23, 0, 0, 0, time.UTC), time.Time{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tab := New(Config{})
			r := tt.req
			r.Key = "k"
			require.True(t, check(t, tab, tt.start, r).Allowed)
			tab.Sweep(tt.stillAt) // keeps the key: its totals are current
			d := check(t, tab, tt.stillAt, r)
			require.False(t, d.Allowed)
			require.Equal(t, tt.kind, d.DeniedBy)
			if !tt.resetAt.IsZero() {
				require.Equal(t, tt.resetAt.Sub(tt.stillAt), quota(d, tt.kind, false).ResetAfter)
				require.True(t, check(t, tab, tt.resetAt, r).Allowed)
			}
		})
	}
}

func TestPeriodStart(t *testing.T) {
	t.Parallel()
	at := time.Date(2024, 3, 14, 15, 4, 5, 0, time.UTC) // a Thursday
	require.Equal(t, time.Date(2024, 3, 14, 0, 0, 0, 0, time.UTC), PeriodOf(at, PeriodDaily).Start())
	require.Equal(t, time.Date(2024, 3, 11, 0, 0, 0, 0, time.UTC), PeriodOf(at, PeriodWeekly).Start())
	require.Equal(t, time.Date(2024, 3, 1, 0, 0, 0, 0, time.UTC), PeriodOf(at, PeriodMonthly).Start())
	require.True(t, PeriodOf(at, PeriodNever).Start().IsZero())
	require.True(t, PeriodOf(at, PeriodUnspecified).Start().IsZero())
}

// TestOvershootBound checks the documented bound: total <= L + Σ max(0,
// actual - estimate).
func TestOvershootBound(t *testing.T) {
	t.Parallel()
	tab := New(Config{})
	const limit, est, extra = 1000, 90, 25
	lim := Limits{TPM: limit, TPD: limit}
	var admitted []string
	for i := range 50 {
		id := strconv.Itoa(i)
		if check(t, tab, t0, Request{Key: "k", ReservationID: id, Global: lim, TokenCap: limit, Tokens: est}).Allowed {
			admitted = append(admitted, id)
		}
	}
	require.Len(t, admitted, limit/est)
	for _, id := range admitted {
		require.True(t, tab.Settle("k", id, est+extra, 0))
	}
	d := check(t, tab, t0, Request{Key: "k", Global: lim, TokenCap: limit, Tokens: 1})
	require.False(t, d.Allowed)
	used := limit - quota(d, KindTPD, false).Remaining
	require.Zero(t, quota(d, KindTPD, false).Remaining)
	total := int64(len(admitted) * (est + extra))
	require.LessOrEqual(t, total, int64(limit+len(admitted)*extra), "bound")
	require.Greater(t, total, int64(limit), "settling above the estimate does overshoot")
	require.EqualValues(t, limit, used)
}

func TestSeeding(t *testing.T) {
	t.Parallel()
	tab := New(Config{Seeded: true})
	r := Request{Key: "k", Model: "m", Global: Limits{RPD: 10}, ModelLimits: Limits{RPD: 5}, TokenCap: 100, TokenPeriod: PeriodMonthly}
	var d Decision
	require.ErrorIs(t, tab.Check(t0, &r, &d), ErrNotSeeded)
	day := newClock(t0).day
	tok := PeriodOf(t0, PeriodMonthly)
	tab.Seed("k", day, tok, PeriodOf(t0, PeriodNever), []Totals{{RequestsToday: 9, PeriodTokens: 40}, {Model: "m", RequestsToday: 4}})
	require.True(t, check(t, tab, t0, r).Allowed)
	d = check(t, tab, t0, r)
	require.False(t, d.Allowed)
	require.Equal(t, KindRPD, d.DeniedBy)
	// Seeding twice changes nothing already seeded.
	tab.Seed("k", day, tok, PeriodOf(t0, PeriodNever), []Totals{{RequestsToday: 0}, {Model: "m"}})
	require.False(t, check(t, tab, t0, r).Allowed)
	// A model that gains limits later needs its own seed.
	r.Model = "other"
	require.ErrorIs(t, tab.Check(t0, &r, &d), ErrNotSeeded)
	// Retain drops keys this replica no longer owns; they need a seed again.
	tab.Retain(func(string) bool { return false })
	require.Zero(t, tab.Len())
	r.Model = "m"
	require.ErrorIs(t, tab.Check(t0, &r, &d), ErrNotSeeded)
}

func TestSweepDropsIdleKeys(t *testing.T) {
	t.Parallel()
	tab := New(Config{})
	require.True(t, check(t, tab, t0, Request{Key: "rolling", Global: Limits{RPM: 5}}).Allowed)
	require.True(t, check(t, tab, t0, Request{Key: "daily", Global: Limits{RPD: 5}}).Allowed)
	require.True(t, check(t, tab, t0, Request{Key: "held", ReservationID: "r", Global: Limits{RPM: 5}}).Allowed)
	tab.Sweep(t0.Add(59 * time.Second))
	require.Equal(t, 3, tab.Len())
	tab.Sweep(t0.Add(61 * time.Second))
	require.Equal(t, 2, tab.Len(), "rolling-only key dropped after its window")
	tab.Sweep(t0.Add(11 * time.Hour))
	require.Equal(t, 1, tab.Len(), "reservation expired; daily totals still current")
	tab.Sweep(t0.Add(13 * time.Hour))
	require.Zero(t, tab.Len(), "the day is over")
}
