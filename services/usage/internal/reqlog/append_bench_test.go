package reqlog

import (
	"context"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// BenchmarkPebbleAppend appends request-log entries in the ledger's batch
// size and reports the process CPU per entry, background flushes and
// compactions included (they run on pebble's own goroutines).
func BenchmarkPebbleAppend(b *testing.B) {
	p, err := OpenPebble(b.TempDir(), 0, nil)
	if err != nil {
		b.Fatal(err)
	}

	rec := make([]byte, 180)
	const batch = 500
	es := make([]Entry, batch)
	at := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	var seq uint64
	cpu0 := cpuTime()
	b.ResetTimer()
	for b.Loop() {
		for i := range es {
			seq++
			at = at.Add(150 * time.Microsecond)
			es[i] = Entry{Workspace: "bench", Key: "key" + strconv.Itoa(int(seq%8)), Owner: "owner", Model: "gpt-4o-mini",
				Status: 1, At: at, Producer: "edge-1", Seq: seq, Record: rec}
		}
		if err := p.Append(context.Background(), es); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	_ = p.Close()
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(seq)/1e3, "cpu-µs/entry")
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
