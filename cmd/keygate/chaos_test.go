package main

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The fault tests double as the chaos benchmark (make bench-chaos): with
// KEYGATE_CHAOS_SCALE=n they run n times the trials or records, and with
// KEYGATE_CHAOS_REPORT=file each appends its figures to file as one row of
// the table the target prints.

// chaosScale is the multiplier of the fault tests' counts; 1 in make test.
func chaosScale(t *testing.T) int {
	t.Helper()
	v := os.Getenv("KEYGATE_CHAOS_SCALE")
	if v == "" {
		return 1
	}
	n, err := strconv.Atoi(v)
	require.NoError(t, err, "KEYGATE_CHAOS_SCALE")
	require.Positive(t, n, "KEYGATE_CHAOS_SCALE")
	return n
}

// chaosRow is one scenario's figures; a field left empty is "-".
type chaosRow struct {
	scenario    string
	trials      int
	admitted    string // admitted of limit
	lost        int
	doubled     int
	unavailable int64 // 503 answers on the fault's path
	recovery    string
	note        string
}

var chaosMu sync.Mutex

// report appends r to the chaos report, if one is asked for.
func (r chaosRow) report(t *testing.T) {
	t.Helper()
	path := os.Getenv("KEYGATE_CHAOS_REPORT")
	t.Logf("chaos: %+v", r)
	if path == "" {
		return
	}
	dash := func(s string) string {
		if s == "" {
			return "-"
		}
		return s
	}
	chaosMu.Lock()
	defer chaosMu.Unlock()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	require.NoError(t, err)
	defer f.Close()
	_, err = fmt.Fprintf(f, "%s\t%d\t%s\t%d\t%d\t%d\t%s\t%s\n", r.scenario, r.trials, dash(r.admitted), r.lost, r.doubled,
		r.unavailable, dash(r.recovery), dash(r.note))
	require.NoError(t, err)
}

// durations formats the median and the maximum of ds.
func durations(ds []time.Duration) string {
	if len(ds) == 0 {
		return ""
	}
	s := slices.Sorted(slices.Values(ds))
	return fmt.Sprintf("p50 %v, max %v", s[len(s)/2].Round(time.Millisecond), s[len(s)-1].Round(time.Millisecond))
}
