package usage

import (
	"maps"
	"math"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/keygate/keygate/pkg/money"
)

func requireAggEqual(tb testing.TB, want, got agg) {
	tb.Helper()
	require.Equal(tb, want.t, got.t)
	// No marks and an empty set of marks are the same.
	require.True(tb, maps.Equal(want.marks, got.marks), "marks: want %v, got %v", want.marks, got.marks)
}

func TestAggEncoding(t *testing.T) {
	busy := tally{Requests: 1_000_000, Prompt: 1 << 40, Completion: 123_456_789, Cost: money.Nanos(math.MaxInt64)}
	tests := []struct {
		name string
		a    agg
	}{
		{"empty", agg{}},
		{"no marks", agg{t: tally{Requests: 3, Prompt: 30, Completion: 15, Cost: 13_500}}},
		{"empty marks", agg{t: tally{Requests: 1}, marks: map[string]uint64{}}},
		{"one producer", agg{t: tally{Requests: 2, Prompt: 20, Completion: 10, Cost: 9000}, marks: map[string]uint64{"edge-1": 42}}},
		{"many producers", agg{t: busy, marks: map[string]uint64{
			"edge-1": 1, "edge-2": 1 << 32, "e": math.MaxUint64, strings.Repeat("p", maxProducerLen): 7, "": 0,
		}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := encodeAgg(tc.a)
			got, err := decodeAgg(b)
			require.NoError(t, err)
			requireAggEqual(t, tc.a, got)
			// The tally reads alone, as rollups and queries read it.
			tl, rest, err := decodeTally(b)
			require.NoError(t, err)
			require.Equal(t, tc.a.t, tl)
			require.NotEmpty(t, rest, "the marks follow the tally")
			require.Equal(t, b, encodeAgg(got), "the encoding is canonical: marks sorted")
		})
	}

	t.Run("a month aggregate has no marks", func(t *testing.T) {
		b := encodeTally(busy)
		tl, rest, err := decodeTally(b)
		require.NoError(t, err)
		require.Equal(t, busy, tl)
		require.Empty(t, rest)
		a, err := decodeAgg(b)
		require.NoError(t, err)
		requireAggEqual(t, agg{t: busy}, a)
	})

	t.Run("truncated values are errors", func(t *testing.T) {
		b := encodeAgg(agg{t: busy, marks: map[string]uint64{"edge-1": 1 << 50, "edge-2": 9}})
		tallyLen := len(encodeTally(busy))
		for n := range len(b) {
			a, err := decodeAgg(b[:n])
			if n == tallyLen {
				// Just the tally: a value written without marks.
				require.NoError(t, err)
				requireAggEqual(t, agg{t: busy}, a)
				continue
			}
			require.Error(t, err, "%d of %d bytes", n, len(b))
		}
	})
}

// FuzzDecodeAgg: any value decodes or errors without panicking, and what
// decodes encodes back to the same aggregate.
func FuzzDecodeAgg(f *testing.F) {
	f.Add(encodeTally(tally{Requests: 1}))
	f.Add(encodeAgg(agg{t: tally{Requests: 2, Cost: 9}, marks: map[string]uint64{"edge-1": 42, "edge-2": math.MaxUint64}}))
	f.Add([]byte{0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := decodeAgg(b)
		if err != nil {
			return
		}
		again, err := decodeAgg(encodeAgg(a))
		require.NoError(t, err)
		requireAggEqual(t, a, again)
	})
}
