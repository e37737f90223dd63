// Package period owns the calendar periods keygate counts and resets
// limits on, all in UTC: the day, the week (starting Monday) and the
// month. The limiter's windows and the usage ledger's totals both take
// their periods from here, so a budget's period starts at the same instant
// in both.
package period

import "time"

// Kind is a reset period; its values match keygate.type.v1.ResetPeriod.
// Unspecified (and any unknown value) behaves as Never.
type Kind uint8

// The reset periods.
const (
	Unspecified Kind = iota
	Never
	Daily
	Weekly
	Monthly
)

const daySecs = 24 * 60 * 60

// ID identifies one period: the Nth of its kind since the Unix epoch (days
// and weeks) or since year 0 (months).
type ID struct {
	Kind Kind
	N    int64
}

// Day returns the UTC day number of t (days since 1970-01-01).
func Day(t time.Time) int64 { return DayOfUnix(t.Unix()) }

// DayOfUnix returns the UTC day number of a Unix second.
func DayOfUnix(sec int64) int64 { return floorDiv(sec, daySecs) }

// DayStart returns 00:00 UTC of t's day.
func DayStart(t time.Time) time.Time { return time.Unix(Day(t)*daySecs, 0).UTC() }

// Of returns the period of kind k containing t.
func Of(t time.Time, k Kind) ID {
	switch normal(k) {
	case Daily:
		return ID{Daily, Day(t)}
	case Weekly:
		// 1970-01-01 was a Thursday: shift by 3 days so weeks start on
		// Monday.
		return ID{Weekly, floorDiv(Day(t)+3, 7)}
	case Monthly:
		y, m, _ := t.UTC().Date()
		return ID{Monthly, int64(y)*12 + int64(m) - 1}
	default:
		return ID{Never, 0}
	}
}

// Start returns when the period begins; the zero time for Never.
func (id ID) Start() time.Time {
	switch id.Kind {
	case Daily:
		return time.Unix(id.N*daySecs, 0).UTC()
	case Weekly:
		return time.Unix((id.N*7-3)*daySecs, 0).UTC()
	case Monthly:
		return time.Date(int(id.N/12), time.Month(id.N%12+1), 1, 0, 0, 0, 0, time.UTC)
	default:
		return time.Time{}
	}
}

// End returns when the next period begins; the zero time for Never.
func (id ID) End() time.Time {
	if id.Kind == Never || id.Kind == Unspecified {
		return time.Time{}
	}
	return ID{id.Kind, id.N + 1}.Start()
}

func normal(k Kind) Kind {
	if k == Unspecified || k > Monthly {
		return Never
	}
	return k
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && a < 0 {
		q--
	}
	return q
}
