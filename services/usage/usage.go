// Package usage is the usage ledger: records counted exactly once,
// aggregates per key, model and UTC day (rolled up into months) with spend
// in exact decimal, all in etcd; and a request log in a store made for
// append-heavy data (see reqlog).
//
// Layout under Prefix in etcd (every write is an etcd Txn; see commit.go):
//
//	agg/<key>/d/<YYYY-MM-DD>/<model>   day aggregate: tally and marks
//	agg/<key>/m/<YYYY-MM>/<model>      month aggregate, rolled up from days
//	wk/<workspace>/<key>               key index of a workspace, value = owner
//
// The member and workspace levels, and a workspace's credit spend, keep
// the same aggregates under ids starting with '@' (see levels.go), written
// in the group commit that writes the key's.
//
// # Exactly once, with state that grows with producers
//
// A producer (an edge process) numbers its records 1, 2, 3 … and sends a
// batch only once the batches before it were acknowledged. Each day
// aggregate keeps, per producer that wrote to it, the highest sequence
// number folded in (its mark); a record counts only if it is above the
// mark, and totals and mark move in one compare-and-swap. A retried batch
// (after a timeout, a crash of this replica, or on another replica) thus
// counts each record once, with no marker per record: the marks grow with
// producers per key-day, a few bytes each. Records older than the
// retention are refused, so none reaches a day already rolled up into its
// month, where marks are dropped.
//
// # Group commit
//
// Concurrent RecordUsage calls are merged for commitLinger; each touched
// aggregate is written once per group, aggsPerTxn to a Txn. etcd thus sees
// Txns in proportion to active key-model-days per group, whatever the
// request rate. The request log is appended after the aggregates (an
// entry written twice is stored once), and only then are the calls
// answered.
//
// Period totals (token cap, budget) are summed from day and month
// aggregates at read time rather than kept per period: that saves a write
// per record and stays right when a key's reset period changes.
package usage

import (
	"errors"
	"fmt"
	"time"

	typev1 "github.com/keygate/keygate/gen/keygate/type/v1"
	"github.com/keygate/keygate/internal/period"
	"github.com/keygate/keygate/pkg/auth"
	"github.com/keygate/keygate/pkg/money"
)

// Domain errors; server.go maps them to gRPC status codes.
var (
	// errNoToken means the caller sent no valid service token.
	errNoToken = fmt.Errorf("%w: send authorization: Bearer <service token>", auth.ErrUnauthenticated)
	// ErrUnavailable means a dependency (etcd, keystore) did not answer.
	ErrUnavailable = errors.New("usage ledger unavailable")
)

// InvalidError is bad input; nothing was written.
type InvalidError struct{ Msg string }

func (e *InvalidError) Error() string { return e.Msg }

func invalidf(format string, a ...any) error {
	return &InvalidError{Msg: fmt.Sprintf(format, a...)}
}

// tally is the content of one aggregate: counts and exact spend.
type tally struct {
	Requests   int64
	Prompt     int64
	Completion int64
	Cost       money.Nanos
}

func (t *tally) add(o tally) {
	t.Requests += o.Requests
	t.Prompt += o.Prompt
	t.Completion += o.Completion
	t.Cost += o.Cost
}

func (t tally) tokens() int64 { return t.Prompt + t.Completion }

const dayLayout = "2006-01-02"
const monthLayout = "2006-01"

// dayStart is 00:00 UTC of t's day.
func dayStart(t time.Time) time.Time { return period.DayStart(t) }

// periodBounds returns the start of the reset period containing now and the
// start of the next one (zero for never). Never's totals count from the
// epoch.
func periodBounds(p typev1.ResetPeriod, now time.Time) (start, end time.Time) {
	id := period.Of(now, period.Kind(p))
	if id.Kind == period.Never {
		return time.Unix(0, 0).UTC(), time.Time{}
	}
	return id.Start(), id.End()
}

// parseDay reads a YYYY-MM-DD date; field names it in the error.
func parseDay(field, s string) (time.Time, error) {
	t, err := time.Parse(dayLayout, s)
	if err != nil {
		return time.Time{}, invalidf("%s: %q is not a date: want YYYY-MM-DD", field, s)
	}
	return t, nil
}

// dateRange resolves an inclusive [start, end] range of days, by default
// the last 30 days up to today, at most maxDays long.
func dateRange(startS, endS string, now time.Time, maxDays int) (time.Time, time.Time, error) {
	end := dayStart(now)
	if endS != "" {
		t, err := parseDay("end_date", endS)
		if err != nil {
			return time.Time{}, time.Time{}, err
		}
		end = t
	}
	start := end.AddDate(0, 0, -29)
	if startS != "" {
		t, err := parseDay("start_date", startS)
		if err != nil {
			return time.Time{}, time.Time{}, err
		}
		start = t
	}
	if start.After(end) {
		return time.Time{}, time.Time{}, invalidf("start_date %s is after end_date %s", start.Format(dayLayout), end.Format(dayLayout))
	}
	if end.Sub(start) > time.Duration(maxDays)*24*time.Hour {
		return time.Time{}, time.Time{}, invalidf("date range is longer than %d days", maxDays)
	}
	return start, end, nil
}
