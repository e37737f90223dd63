// Package loadgen is the load side of keygate's benchmarks: percentiles of
// measured latencies and a bounded closed-loop throughput run.
package loadgen

import (
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Percentile sorts d and returns its p-quantile (0..1) in microseconds.
func Percentile(d []time.Duration, p float64) float64 {
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	return float64(d[min(len(d)-1, int(float64(len(d))*p))].Nanoseconds()) / 1e3
}

// Throughput runs f n times from workers goroutines and returns the calls
// per second and how many returned an error. f must be safe to call
// concurrently; it never runs more than n times.
func Throughput(n, workers int, f func() error) (perSecond float64, failed int64) {
	var left, bad atomic.Int64
	left.Store(int64(n))
	var wg sync.WaitGroup
	start := time.Now()
	for range workers {
		wg.Go(func() {
			for left.Add(-1) >= 0 {
				if f() != nil {
					bad.Add(1)
				}
			}
		})
	}
	wg.Wait()
	return float64(n) / time.Since(start).Seconds(), bad.Load()
}
