package window

import (
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestChangedAndRestore: only keys that changed are exported, once per
// change set; a key restored from its replica decides as the original
// would, and the ledger raises counters that the replica has lower.
func TestChangedAndRestore(t *testing.T) {
	t.Parallel()
	cfg := Config{Seeded: true, ReservationTimeout: time.Minute, Track: true}
	day, tok, cost := DayOf(t0), PeriodOf(t0, PeriodMonthly), PeriodOf(t0, PeriodWeekly)
	a := New(cfg)
	for _, k := range []string{"k", "quiet"} {
		a.Seed(k, day, tok, cost, []Totals{{}})
	}
	require.Len(t, a.Changed(), 2, "seeding changes a key")
	require.Empty(t, a.Changed(), "nothing changed since")
	req := func(i int) *Request {
		return &Request{Key: "k", ReservationID: "r" + strconv.Itoa(i), Global: Limits{RPM: 20, RPD: 12}, Tokens: 1}
	}
	for i := range 4 {
		var d Decision
		require.NoError(t, a.Check(t0, req(i), &d))
		require.True(t, d.Allowed)
	}
	states := wire(t, a.Changed())
	require.Len(t, states, 1, "the key that changed, once for four decisions")
	require.Equal(t, "k", states[0].GetKey())
	require.EqualValues(t, 4, states[0].GetGlobal().GetDayRequests())
	require.Len(t, states[0].GetReservations(), 4)

	// The ledger lags (2 requests: the replica's 4 count) or is ahead (9:
	// a stale replica is raised to it). The rolling window (20) does not
	// bind; the day (12) does.
	for _, tc := range []struct{ ledger, left int64 }{{2, 8}, {9, 3}} {
		b := New(cfg)
		b.Restore(states[0], day, tok, cost, []Totals{{RequestsToday: tc.ledger}})
		require.True(t, b.Held("k"))
		admitted := int64(0)
		for i := 4; i < 30; i++ {
			var d Decision
			require.NoError(t, b.Check(t0.Add(time.Second), req(i), &d))
			if d.Allowed {
				admitted++
			}
		}
		require.Equal(t, tc.left, admitted, "ledger at %d", tc.ledger)
		require.True(t, b.Settle("k", "r0", 1, 0), "reservations came with the replica")
	}
}
