// Package money does exact decimal arithmetic on US dollar amounts.
//
// Amounts are integer nano-dollars (1e-9 USD). A price is dollars per
// million tokens with at most 6 decimal places, so the cost of n tokens,
// n × price / 1e6, is a whole number of nano-dollars only when rounded; we
// round each charge up to the next nano-dollar, never down, so nothing is
// ever served for free. int64 nano-dollars hold up to about $9.2 billion.
package money

import (
	"errors"
	"math"
	"strconv"
	"strings"
)

// Nanos is an amount in nano-dollars.
type Nanos int64

const (
	// Scale is nano-dollars per dollar.
	Scale = 1_000_000_000
	// maxDecimals is the most decimal places a price or budget may have.
	maxDecimals = 6
)

// ErrInvalid means a decimal string is not a valid non-negative USD amount.
var ErrInvalid = errors.New("invalid USD amount: want a non-negative decimal such as \"5.00\" with at most 6 decimal places")

// Parse reads a non-negative decimal dollar amount such as "5", "0.15" or
// "12.345678".
func Parse(s string) (Nanos, error) {
	if s == "" || len(s) > 24 {
		return 0, ErrInvalid
	}
	// One pass over the bytes, no strconv: the limiter parses the budget
	// of every level on every check.
	var whole, frac int64
	digits, decimals, dot := 0, 0, false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '.' && !dot:
			dot = true
		case c < '0' || c > '9':
			return 0, ErrInvalid
		case dot:
			frac = frac*10 + int64(c-'0')
			decimals++
		default:
			if whole > ((1<<63-1)/Scale-1)/10 {
				return 0, ErrInvalid
			}
			whole = whole*10 + int64(c-'0')
			digits++
		}
	}
	if digits == 0 || (dot && decimals == 0) || decimals > maxDecimals || whole > (1<<63-1)/Scale-1 {
		return 0, ErrInvalid
	}
	for range 9 - decimals {
		frac *= 10
	}
	return Nanos(whole*Scale + frac), nil
}

// ParseSigned reads a decimal dollar amount that may be negative ("-2.50"),
// as credit adjustments are.
func ParseSigned(s string) (Nanos, error) {
	if rest, ok := strings.CutPrefix(s, "-"); ok {
		n, err := Parse(rest)
		return -n, err
	}
	return Parse(s)
}

// String renders the amount in dollars with at least two decimal places and
// no trailing zeros past them: "5.00", "0.000015".
func (n Nanos) String() string {
	neg := n < 0
	if neg {
		n = -n
	}
	whole := int64(n) / Scale
	frac := strconv.FormatInt(int64(n)%Scale+Scale, 10)[1:]
	frac = strings.TrimRight(frac, "0")
	for len(frac) < 2 {
		frac += "0"
	}
	s := strconv.FormatInt(whole, 10) + "." + frac
	if neg {
		s = "-" + s
	}
	return s
}

// Cost is the charge for tokens at a price in dollars per million tokens,
// rounded up to the next nano-dollar.
func Cost(tokens int64, pricePerMillion Nanos) Nanos {
	if tokens <= 0 || pricePerMillion <= 0 {
		return 0
	}
	// tokens × price / 1e6 without overflow for realistic values: split
	// the price into whole millions and a remainder.
	q, r := int64(pricePerMillion)/1_000_000, int64(pricePerMillion)%1_000_000
	c := tokens*q + (tokens*r+999_999)/1_000_000
	return Nanos(c)
}

// FromMicros converts micro-dollars (the limiter's and the ledger's unit)
// to Nanos, saturating instead of overflowing.
func FromMicros(m int64) Nanos {
	switch {
	case m > math.MaxInt64/1000:
		return Nanos(math.MaxInt64)
	case m < math.MinInt64/1000:
		return Nanos(math.MinInt64)
	}
	return Nanos(m * 1000)
}

// Micros converts to micro-dollars, rounding up.
func (n Nanos) Micros() int64 { return (int64(n) + 999) / 1000 }
