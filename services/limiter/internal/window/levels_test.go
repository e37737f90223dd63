package window

import (
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// levels is one item of key k (owned by member m) in workspace w: the
// item's reservation, model and estimates are key's.
func levels(k, m string, key, member, ws Request) []Request {
	for _, r := range []*Request{&member, &ws} {
		r.ReservationID, r.Model, r.Tokens, r.CostMicros = key.ReservationID, key.Model, key.Tokens, key.CostMicros
	}
	key.Key, key.Level = "w/k/"+k, LevelKey
	member.Key, member.Level = "w/m/"+m, LevelMember
	ws.Key, ws.Level = "w/w", LevelWorkspace
	return []Request{key, member, ws}
}

func checkLevels(t *testing.T, tab *Table, now time.Time, rs []Request) Decision {
	t.Helper()
	var d Decision
	_, err := tab.CheckLevels(now, rs, &d)
	require.NoError(t, err)
	return d
}

func TestWorkspaceLimitSharedByKeys(t *testing.T) {
	t.Parallel()
	tab := New(Config{})
	ws := Request{Global: Limits{RPM: 3}}
	for i, k := range []string{"a", "b", "a"} {
		d := checkLevels(t, tab, t0, levels(k, "alice", Request{ReservationID: strconv.Itoa(i)}, Request{}, ws))
		require.True(t, d.Allowed, "request %d", i)
	}
	d := checkLevels(t, tab, t0, levels("b", "alice", Request{Global: Limits{RPM: 10}}, Request{}, ws))
	require.False(t, d.Allowed)
	require.Equal(t, KindRPM, d.DeniedBy)
	require.Equal(t, LevelWorkspace, d.DeniedLevel)
	require.Positive(t, d.RetryAfter)
	// The denial consumed nothing at the key: b has used 1 of its 10.
	for _, q := range d.Quotas[:d.N] {
		if q.Level == LevelKey && q.Kind == KindRPM {
			require.EqualValues(t, 9, q.Remaining)
		}
	}
}

func TestKeyDenialConsumesNothingAbove(t *testing.T) {
	t.Parallel()
	tab := New(Config{})
	member := Request{Global: Limits{RPD: 10}}
	ws := Request{Global: Limits{TPD: 1000}}
	key := Request{Global: Limits{RPM: 1}, Tokens: 100}
	require.True(t, checkLevels(t, tab, t0, levels("a", "alice", key, member, ws)).Allowed)
	d := checkLevels(t, tab, t0, levels("a", "alice", key, member, ws))
	require.False(t, d.Allowed)
	require.Equal(t, LevelKey, d.DeniedLevel)
	// Another key of the member sees 1 request and 100 tokens used above.
	d = checkLevels(t, tab, t0, levels("b", "alice", Request{}, member, ws))
	require.True(t, d.Allowed)
	for _, q := range d.Quotas[:d.N] {
		switch {
		case q.Level == LevelMember && q.Kind == KindRPD:
			require.EqualValues(t, 8, q.Remaining)
		case q.Level == LevelWorkspace && q.Kind == KindTPD:
			require.EqualValues(t, 900, q.Remaining)
		}
	}
}

func TestLevelsExactUnderConcurrency(t *testing.T) {
	t.Parallel()
	tab := New(Config{})
	const wsLimit, memberLimit = 50, 30
	var admitted, byAlice atomic.Int64
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			var d Decision
			member := []string{"alice", "bob"}[w%2]
			for i := range 20 {
				rs := levels("k"+strconv.Itoa(w), member, Request{ReservationID: strconv.Itoa(w*100 + i)},
					Request{Global: Limits{RPM: memberLimit}}, Request{Global: Limits{RPM: wsLimit}})
				if _, err := tab.CheckLevels(t0, rs, &d); err == nil && d.Allowed {
					admitted.Add(1)
					if member == "alice" {
						byAlice.Add(1)
					}
				}
			}
		})
	}
	wg.Wait()
	require.EqualValues(t, wsLimit, admitted.Load())
	require.LessOrEqual(t, byAlice.Load(), int64(memberLimit))
}

func TestReportModeNeverDenies(t *testing.T) {
	t.Parallel()
	tab := New(Config{})
	ws := Request{Report: Report{Global: Limits{RPM: 1}}}
	require.Zero(t, checkLevels(t, tab, t0, levels("a", "m", Request{}, Request{}, ws)).NR)
	d := checkLevels(t, tab, t0, levels("a", "m", Request{}, Request{}, ws))
	require.True(t, d.Allowed)
	require.Equal(t, 1, d.NR)
	require.Equal(t, Reported{Level: LevelWorkspace, Kind: KindRPM}, d.Reported[0])
}

func TestCreditsDrawnAndSettled(t *testing.T) {
	t.Parallel()
	tab := New(Config{})
	ws := Request{Credits: true, CreditMicros: 100}
	key := func(id string) Request { return Request{ReservationID: id, CostMicros: 60} }
	require.True(t, checkLevels(t, tab, t0, levels("a", "m", key("1"), Request{}, ws)).Allowed)
	d := checkLevels(t, tab, t0, levels("a", "m", key("2"), Request{}, ws))
	require.False(t, d.Allowed)
	require.Equal(t, KindCredits, d.DeniedBy)
	require.Equal(t, LevelWorkspace, d.DeniedLevel)
	require.Zero(t, d.RetryAfter)
	// Settled below its estimate, the first leaves room for the second.
	for _, e := range []string{"w/k/a", "w/m/m", "w/w"} {
		tab.Settle(e, "1", 5, 30)
	}
	require.True(t, checkLevels(t, tab, t0, levels("a", "m", key("2"), Request{}, ws)).Allowed)
	states, _, err := tab.Explain(t0, levels("a", "m", Request{}, Request{}, ws), &d, nil)
	require.NoError(t, err)
	var credit State
	for _, s := range states {
		if s.Kind == KindCredits {
			credit = s
		}
	}
	require.Equal(t, State{Level: LevelWorkspace, Kind: KindCredits, Period: PeriodID{Kind: PeriodNever},
		Limit: 100, Used: 90, Reserved: 60, Remaining: 10}, credit)
	require.True(t, d.Allowed, "10 micro-USD left admit a request estimated at nothing")
}

func TestCrossingsOncePerPeriodPerThreshold(t *testing.T) {
	t.Parallel()
	tab := New(Config{})
	ws := Request{BudgetMicros: 100, BudgetPeriod: PeriodMonthly, Alerts: []int32{50, 80, 100}}
	req := Request{CostMicros: 30}
	var got []int32
	march := time.Date(2024, 3, 31, 23, 59, 0, 0, time.UTC)
	for range 4 {
		checkLevels(t, tab, march, levels("a", "m", req, Request{}, ws))
	}
	for _, c := range tab.Crossings() {
		require.Equal(t, "w/w", c.Entity)
		require.Equal(t, KindBudget, c.Kind)
		require.Equal(t, PeriodID{Kind: PeriodMonthly, N: 2024*12 + 2}, c.Period)
		got = append(got, c.Threshold)
	}
	require.Equal(t, []int32{50, 80}, got, "30, 60 (50%), 90 (80%), then 120 is denied")
	require.Empty(t, tab.Crossings())
	// April: a new period crosses again.
	april := march.Add(2 * time.Minute)
	checkLevels(t, tab, april, levels("a", "m", Request{CostMicros: 50}, Request{}, ws))
	cs := tab.Crossings()
	require.Len(t, cs, 1)
	require.EqualValues(t, 50, cs[0].Threshold)
	require.Equal(t, PeriodID{Kind: PeriodMonthly, N: 2024*12 + 3}, cs[0].Period)
}

func TestLevelPeriodsResetAtUTCBoundaries(t *testing.T) {
	t.Parallel()
	// Sunday 2024-03-17 23:59:59 UTC: the day and the week end together.
	end := time.Date(2024, 3, 17, 23, 59, 59, 0, time.UTC)
	tests := []struct {
		name string
		ws   Request
	}{
		{"day", Request{Global: Limits{RPD: 1}}},
		{"week", Request{TokenCap: 1, TokenPeriod: PeriodWeekly}},
		{"month", Request{BudgetMicros: 1, BudgetPeriod: PeriodMonthly}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tab := New(Config{})
			at := end
			if tt.name == "month" {
				at = time.Date(2024, 3, 31, 23, 59, 59, 0, time.UTC)
			}
			r := Request{Tokens: 1, CostMicros: 1}
			require.True(t, checkLevels(t, tab, at, levels("a", "m", r, Request{}, tt.ws)).Allowed)
			require.False(t, checkLevels(t, tab, at, levels("b", "m", r, Request{}, tt.ws)).Allowed)
			require.True(t, checkLevels(t, tab, at.Add(time.Second), levels("b", "m", r, Request{}, tt.ws)).Allowed)
		})
	}
}

func TestLevelStateHandedOver(t *testing.T) {
	t.Parallel()
	from, to := New(Config{}), New(Config{Seeded: true})
	ws := Request{Credits: true, CreditMicros: 100, Global: Limits{RPM: 2}}
	require.True(t, checkLevels(t, from, t0, levels("a", "m", Request{ReservationID: "r", CostMicros: 70}, Request{}, ws)).Allowed)
	states, _ := from.Export(t0, []string{"w/k/a", "w/m/m", "w/w"}, "to", "")
	require.Len(t, states, 3)
	to.Import(states)
	d := checkLevels(t, to, t0, levels("a", "m", Request{CostMicros: 40}, Request{}, ws))
	require.False(t, d.Allowed)
	require.Equal(t, KindCredits, d.DeniedBy)
	known, _ := to.Finish("w/w", "r", false, 0, 10)
	require.True(t, known, "the reservation moved with the workspace")
	require.True(t, checkLevels(t, to, t0, levels("a", "m", Request{CostMicros: 40}, Request{}, ws)).Allowed)
}
