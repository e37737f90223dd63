package money_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/keygate/keygate/pkg/money"
)

func TestParse(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		want money.Nanos
		err  bool
	}{
		{in: "0", want: 0},
		{in: "5", want: 5 * money.Scale},
		{in: "5.00", want: 5 * money.Scale},
		{in: "0.15", want: 150_000_000},
		{in: "12.345678", want: 12_345_678_000},
		{in: "0.000001", want: 1000},
		{in: "", err: true},
		{in: "-1", err: true},
		{in: "1.", err: true},
		{in: ".5", err: true},
		{in: "1.0000001", err: true},
		{in: "1e3", err: true},
		{in: "1,5", err: true},
		{in: " 1", err: true},
		{in: "99999999999999999999", err: true},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := money.Parse(tc.in)
			if tc.err {
				require.ErrorIs(t, err, money.ErrInvalid)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
}

func TestString(t *testing.T) {
	t.Parallel()
	for n, want := range map[money.Nanos]string{
		0:                "0.00",
		5 * money.Scale:  "5.00",
		150_000_000:      "0.15",
		15_000:           "0.000015",
		1:                "0.000000001",
		-2_500_000_000:   "-2.50",
		12_345_678_000:   "12.345678",
		10 * money.Scale: "10.00",
	} {
		require.Equal(t, want, n.String())
		if n >= 0 && n%1000 == 0 {
			back, err := money.Parse(want)
			require.NoError(t, err)
			require.Equal(t, n, back, "round trip of %s", want)
		}
	}
}

func TestCost(t *testing.T) {
	t.Parallel()
	price := func(s string) money.Nanos {
		p, err := money.Parse(s)
		require.NoError(t, err)
		return p
	}
	for _, tc := range []struct {
		name   string
		tokens int64
		price  string
		want   money.Nanos
	}{
		{"a million tokens cost the price", 1_000_000, "0.15", 150_000_000},
		{"one token at $0.15/M is 150 nano-dollars", 1, "0.15", 150},
		{"fractions round up, never down", 1, "0.000001", 1},
		{"no tokens, no cost", 0, "10.00", 0},
		{"free model", 1000, "0", 0},
		{"large counts stay exact", 3_000_000_000, "10.00", 30_000 * money.Scale},
		{"sum of parts", 7, "2.50", 17_500},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, money.Cost(tc.tokens, price(tc.price)))
		})
	}
	require.Equal(t, int64(1), money.Nanos(1).Micros(), "micros round up")
	require.Equal(t, int64(150), money.Nanos(150_000).Micros())
}
