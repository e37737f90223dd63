package window

import (
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	limiterv1 "github.com/keygate/keygate/gen/keygate/limiter/v1"
)

// wire sends states through protobuf, as Handover does.
func wire(t *testing.T, states []*limiterv1.KeySnapshot) []*limiterv1.KeySnapshot {
	t.Helper()
	out := make([]*limiterv1.KeySnapshot, len(states))
	for i, st := range states {
		b, err := proto.Marshal(st)
		require.NoError(t, err)
		out[i] = &limiterv1.KeySnapshot{}
		require.NoError(t, proto.Unmarshal(b, out[i]))
	}
	return out
}

func handoverRequest(i int) Request {
	return Request{
		Key: "k", Model: "m" + strconv.Itoa(i%2), ReservationID: "r" + strconv.Itoa(i),
		Global:      Limits{RPM: 20, RPD: 50, TPM: 400, TPD: 1000},
		ModelLimits: Limits{RPM: 8, TPD: 300},
		TokenCap:    900, TokenPeriod: PeriodMonthly,
		BudgetMicros: 2000, BudgetPeriod: PeriodWeekly,
		Tokens: int64(5 + i%7), CostMicros: int64(30 + i%5),
	}
}

// TestExportImportRoundTrip: a key exported (through protobuf) and
// imported into another table decides every later request, settlement
// and release exactly as the table it came from would have; the exporting
// table is fenced.
func TestExportImportRoundTrip(t *testing.T) {
	t.Parallel()
	seed := func(tab *Table) {
		tab.Seed("k", DayOf(t0), PeriodOf(t0, PeriodMonthly), PeriodOf(t0, PeriodWeekly),
			[]Totals{{RequestsToday: 3, TokensToday: 40, PeriodTokens: 100, PeriodCostMicros: 500}, {Model: "m0", RequestsToday: 1}, {Model: "m1"}})
	}
	cfg := Config{Seeded: true, ReservationTimeout: time.Minute}
	ref, a, b := New(cfg), New(cfg), New(cfg)
	seed(ref)
	seed(a)
	// Fill the windows over 40 seconds, with settlements and releases.
	step := func(tabs []*Table, i int, now time.Time) {
		var want Decision
		var wantKnown bool
		for j, tab := range tabs {
			var d Decision
			r := handoverRequest(i)
			require.NoError(t, tab.Check(now, &r, &d), "table %d request %d", j, i)
			if j == 0 {
				want = d
			} else {
				require.Equal(t, want, d, "request %d", i)
			}
			var known bool
			switch i % 5 {
			case 1:
				known = tab.Settle("k", "r"+strconv.Itoa(i-1), 3, 10)
			case 3:
				known = tab.Release("k", "r"+strconv.Itoa(i-2))
			}
			if j == 0 {
				wantKnown = known
			} else {
				require.Equal(t, wantKnown, known, "request %d", i)
			}
		}
	}
	for i := range 40 {
		step([]*Table{ref, a}, i, t0.Add(time.Duration(i)*time.Second))
	}
	now := t0.Add(40 * time.Second)
	states, moved := a.Export(now, []string{"k", "unknown"}, "b", "req-1")
	require.Empty(t, moved)
	require.Len(t, states, 1)
	require.Equal(t, 1, b.Import(wire(t, states)))
	require.True(t, b.Held("k"))
	require.False(t, a.Held("k"))
	require.Equal(t, "b", a.MovedTo("k"))

	// The old holder is fenced: it neither decides nor settles.
	r := handoverRequest(0)
	var d Decision
	require.ErrorIs(t, a.Check(now, &r, &d), ErrMoved)
	known, to := a.Finish("k", "r39", false, 1, 1)
	require.False(t, known)
	require.Equal(t, "b", to)
	_, moved = a.Export(now, []string{"k"}, "c", "req-2")
	require.Equal(t, []*limiterv1.Moved{{Key: "k", Owner: "b"}}, moved)
	// The same request again (its answer was lost) gets the state again;
	// another request by the same owner (it restarted) does not.
	again, _ := a.Export(now, []string{"k"}, "b", "req-1")
	require.True(t, proto.Equal(states[0], again[0]))
	again, moved = a.Export(now, []string{"k"}, "b", "req-3")
	require.Empty(t, again)
	require.Equal(t, []*limiterv1.Moved{{Key: "k", Owner: "b"}}, moved)

	// Reservations travelled: settling at the new holder matches.
	require.Equal(t, ref.Settle("k", "r38", 2, 1), b.Settle("k", "r38", 2, 1))
	require.True(t, b.Release("k", "r37") == ref.Release("k", "r37"))
	for i := 40; i < 80; i++ {
		step([]*Table{ref, b}, i, t0.Add(time.Duration(i)*time.Second))
	}
	// And back to the first table, which takes it over again.
	now = t0.Add(80 * time.Second)
	states, _ = b.Export(now, []string{"k"}, "a", "")
	require.Equal(t, 1, a.Import(wire(t, states)))
	require.Zero(t, b.Import(nil))
	for i := 80; i < 150; i++ {
		step([]*Table{ref, a}, i, t0.Add(time.Duration(i)*time.Second/2))
	}
	require.Equal(t, 1, a.HeldCount())
	require.Zero(t, b.HeldCount())

	// A held key keeps its own state: a late import is ignored.
	require.Zero(t, a.Import(wire(t, states)))
	// The fence is swept after a rolling window.
	b.Sweep(now.Add(Span))
	require.Zero(t, b.Len())
}

// TestExportAll fences every held key to its owner.
func TestExportAll(t *testing.T) {
	t.Parallel()
	tab := New(Config{})
	for i := range 10 {
		check(t, tab, t0, Request{Key: "k" + strconv.Itoa(i), Global: Limits{RPM: 5}})
	}
	out := tab.ExportAll(t0, func(key string) string {
		if key == "k0" {
			return ""
		}
		return "owner-" + key[len(key)-1:]
	})
	require.Len(t, out, 9)
	require.Len(t, out["owner-3"], 1)
	require.EqualValues(t, 1, out["owner-3"][0].GetGlobal().GetBuckets()[0].GetRequests())
	require.Equal(t, 1, tab.HeldCount())
	// A failed push is undone by importing the states again.
	require.Equal(t, 1, tab.Import(out["owner-3"]))
	require.Equal(t, 2, tab.HeldCount())
}
