package money

import (
	"math/big"
	"regexp"
	"testing"
)

var decimal = regexp.MustCompile(`^[0-9]+(\.[0-9]{1,6})?$`)

// reference parses with math/big: the meaning Parse must have.
func reference(s string) (Nanos, bool) {
	if len(s) > 24 || !decimal.MatchString(s) {
		return 0, false
	}
	r, ok := new(big.Rat).SetString(s)
	if !ok {
		return 0, false
	}
	n := new(big.Rat).Mul(r, big.NewRat(Scale, 1))
	if !n.IsInt() || !n.Num().IsInt64() {
		return 0, false
	}
	whole := new(big.Int).Quo(r.Num(), r.Denom())
	if whole.Cmp(big.NewInt((1<<63-1)/Scale-1)) > 0 {
		return 0, false
	}
	return Nanos(n.Num().Int64()), true
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"5", "0.15", "12.345678", "5.", ".5", "-1", "1e3", "9223372035", "9223372036.1", "00.000001", "1.1234567", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := Parse(s)
		want, ok := reference(s)
		if ok != (err == nil) || (ok && got != want) {
			t.Fatalf("Parse(%q) = %v, %v; want %v, ok %v", s, got, err, want, ok)
		}
	})
}
