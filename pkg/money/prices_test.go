package money_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/keygate/keygate/pkg/money"
)

func TestPrices(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name                 string
		in, out, write, read string
		want                 money.Nanos // for 1M of each kind
		err                  string
	}{
		{"cache prices given", "3", "15", "3.75", "0.30", 22_050_000_000, ""},
		{"cache at the input price", "3", "15", "", "", 24_000_000_000, ""},
		{"bad cache price", "3", "15", "x", "", 0, "cache write price"},
		{"missing output", "3", "", "", "", 0, "output price"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, err := money.ParsePrices(c.in, c.out, c.write, c.read)
			if c.err != "" {
				require.ErrorContains(t, err, c.err)
				require.ErrorIs(t, err, money.ErrInvalid)
				return
			}
			require.NoError(t, err)
			require.Equal(t, c.want, p.Cost(1_000_000, 1_000_000, 1_000_000, 1_000_000))
		})
	}
}
