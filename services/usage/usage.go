// Package usage is the usage ledger: idempotent usage records, aggregates
// per key, model and UTC day (rolled up into months), spend in exact decimal,
// and a bounded request log, all in etcd.
//
// Layout under Prefix (every write is an etcd Txn; see store.go):
//
//	id/<request id>                          dedup marker, empty value
//	log/<workspace>/<time, 19 digits>/<rid>  request log entry (UsageRecord)
//	evicted                                  watermark: time of the newest evicted entry
//	agg/<key>/d/<YYYY-MM-DD>/<model>         day aggregate (tally)
//	agg/<key>/m/<YYYY-MM>/<model>            month aggregate, rolled up from days
//	wk/<workspace>/<key>                     key index of a workspace, value = owner
//
// Period totals (token cap, budget) are summed from day and month
// aggregates at read time rather than kept per period: that saves a write
// per record and stays right when a key's reset period changes.
//
// # Bounded log, bounded idempotency
//
// The log is bounded by Retention and by MaxLogEntries over all
// workspaces, whichever is hit first. Measured (BenchmarkSteady1000rps), an
// entry is about 180 bytes of key and value and its marker about 50, so
// the default cap of 1,000,000 holds about 230 MB of keys and values, some
// 350 MB with etcd's per-key overhead. The janitor trims after every
// sixteenth of the cap accepted by a replica (about a minute at 1,000
// records/s), so the log stays under (1 + replicas/16) x the cap. Without
// the cap, 7 days at 1,000 records/s would be 600 million entries.
//
// Markers are evicted with their entries: kept for the full retention they
// would be 600 million keys, some 30 GB, at 1,000 records/s. Instead the
// janitor raises the watermark to the newest victim's time before deleting,
// every commit Txn compares the watermark's revision, and a record at or
// before the watermark is refused (InvalidArgument) rather than counted
// again. The trade-off: the window in which a retry is recognised is the
// retention or the cap's span of time, whichever is shorter (at 1,000
// records/s and the default cap, about 16 minutes); a client retrying
// later gets a refusal, never a double count. The same holds for records
// whose own time is that old although never sent before. etcd keeps deleted
// revisions until it compacts, so its history retention adds to the bound.
package usage

import (
	"errors"
	"fmt"
	"time"

	typev1 "github.com/keygate/keygate/gen/keygate/type/v1"
	"github.com/keygate/keygate/pkg/money"
)

// Domain errors; server.go maps them to gRPC status codes.
var (
	// ErrUnauthenticated means the caller sent no valid service token.
	ErrUnauthenticated = errors.New("missing or invalid service token: send authorization: Bearer <service token>")
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
func dayStart(t time.Time) time.Time {
	y, m, d := t.UTC().Date()
	return time.Date(y, m, d, 0, 0, 0, 0, time.UTC)
}

// periodBounds returns the start of the reset period containing now and the
// start of the next one (zero for never). Unspecified counts as never.
func periodBounds(p typev1.ResetPeriod, now time.Time) (start, end time.Time) {
	day := dayStart(now)
	switch p {
	case typev1.ResetPeriod_RESET_PERIOD_DAILY:
		return day, day.AddDate(0, 0, 1)
	case typev1.ResetPeriod_RESET_PERIOD_WEEKLY:
		// Weeks start on Monday: Go's Sunday is 0.
		back := (int(day.Weekday()) + 6) % 7
		s := day.AddDate(0, 0, -back)
		return s, s.AddDate(0, 0, 7)
	case typev1.ResetPeriod_RESET_PERIOD_MONTHLY:
		s := time.Date(day.Year(), day.Month(), 1, 0, 0, 0, 0, time.UTC)
		return s, s.AddDate(0, 1, 0)
	default:
		return time.Unix(0, 0).UTC(), time.Time{}
	}
}

// parseDay reads a YYYY-MM-DD date.
func parseDay(s string) (time.Time, error) {
	t, err := time.Parse(dayLayout, s)
	if err != nil {
		return time.Time{}, invalidf("date %q: want YYYY-MM-DD", s)
	}
	return t, nil
}

// dateRange resolves an inclusive [start, end] range of days, by default
// the last 30 days up to today, at most maxDays long.
func dateRange(startS, endS string, now time.Time, maxDays int) (time.Time, time.Time, error) {
	end := dayStart(now)
	if endS != "" {
		t, err := parseDay(endS)
		if err != nil {
			return time.Time{}, time.Time{}, err
		}
		end = t
	}
	start := end.AddDate(0, 0, -29)
	if startS != "" {
		t, err := parseDay(startS)
		if err != nil {
			return time.Time{}, time.Time{}, err
		}
		start = t
	}
	if start.After(end) {
		return time.Time{}, time.Time{}, invalidf("start date %s is after end date %s", start.Format(dayLayout), end.Format(dayLayout))
	}
	if end.Sub(start) > time.Duration(maxDays)*24*time.Hour {
		return time.Time{}, time.Time{}, invalidf("date range is longer than %d days", maxDays)
	}
	return start, end, nil
}
