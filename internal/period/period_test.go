package period

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestPeriods(t *testing.T) {
	t.Parallel()
	at := time.Date(2024, 3, 14, 15, 9, 26, 0, time.FixedZone("X", 5*3600)) // 10:09:26 UTC, a Thursday
	cases := []struct {
		k          Kind
		start, end time.Time
	}{
		{Daily, time.Date(2024, 3, 14, 0, 0, 0, 0, time.UTC), time.Date(2024, 3, 15, 0, 0, 0, 0, time.UTC)},
		{Weekly, time.Date(2024, 3, 11, 0, 0, 0, 0, time.UTC), time.Date(2024, 3, 18, 0, 0, 0, 0, time.UTC)},
		{Monthly, time.Date(2024, 3, 1, 0, 0, 0, 0, time.UTC), time.Date(2024, 4, 1, 0, 0, 0, 0, time.UTC)},
		{Never, time.Time{}, time.Time{}},
		{Unspecified, time.Time{}, time.Time{}},
		{Kind(42), time.Time{}, time.Time{}},
	}
	for _, c := range cases {
		id := Of(at, c.k)
		require.Equal(t, c.start, id.Start(), "kind %d", c.k)
		require.Equal(t, c.end, id.End(), "kind %d", c.k)
		if !c.start.IsZero() {
			require.Equal(t, id, Of(c.start, c.k), "a period contains its start")
			require.Equal(t, ID{id.Kind, id.N + 1}, Of(c.end, c.k), "and not its end")
			require.Equal(t, id, Of(c.end.Add(-time.Nanosecond), c.k))
		}
	}
	// December rolls into the next year; weeks span years; days before 1970.
	require.Equal(t, time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC), Of(time.Date(2024, 12, 31, 23, 0, 0, 0, time.UTC), Monthly).End())
	require.Equal(t, time.Date(2024, 12, 30, 0, 0, 0, 0, time.UTC), Of(time.Date(2025, 1, 2, 0, 0, 0, 0, time.UTC), Weekly).Start())
	require.Equal(t, int64(-1), Day(time.Date(1969, 12, 31, 23, 59, 59, 0, time.UTC)))
	require.Equal(t, time.Date(2024, 3, 14, 0, 0, 0, 0, time.UTC), DayStart(at))
}
