package usage

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	usagev1 "github.com/keygate/keygate/gen/keygate/usage/v1"
)

// parallel runs n units of work over workers goroutines and returns the
// elapsed time.
func parallel(b *testing.B, n, workers int, work func(i int) error) time.Duration {
	b.Helper()
	var next atomic.Int64
	var wg sync.WaitGroup
	var failed atomic.Value
	start := time.Now()
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := work(i); err != nil {
					failed.Store(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err, _ := failed.Load().(error); err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}

// BenchmarkIngest compares, in one run, records/s accepted end to end
// (gRPC -> ledger -> etcd, durable on answer) against the reference of one
// etcd Put per record, with the same client concurrency.
func BenchmarkIngest(b *testing.B) {
	const workers, batchSize = 16, 100
	e := newEnv(b, 0)
	n := max(b.N, workers*batchSize)
	mk := func(prefix string, i int) *usagev1.UsageRecord {
		return rec(fmt.Sprintf("%s-%d-%d", prefix, b.N, i), fmt.Sprintf("k%d", i%100), "mock-small", 100, 50, t0)
	}
	b.ResetTimer()

	batched := parallel(b, n/batchSize, workers, func(i int) error {
		rs := make([]*usagev1.UsageRecord, batchSize)
		for j := range rs {
			rs[j] = mk("batch", i*batchSize+j)
		}
		_, err := e.cli.RecordUsage(svc(context.Background()), &usagev1.RecordUsageRequest{Records: rs})
		return err
	})
	single := parallel(b, n/4, workers, func(i int) error {
		_, err := e.cli.RecordUsage(svc(context.Background()), &usagev1.RecordUsageRequest{Records: []*usagev1.UsageRecord{mk("single", i)}})
		return err
	})
	put := parallel(b, n/4, workers, func(i int) error {
		r := mk("put", i)
		val, err := proto.Marshal(r)
		if err != nil {
			return err
		}
		_, err = e.etcd.Put(context.Background(), logKey("ref", t0, r.GetRequestId()), string(val))
		return err
	})
	b.StopTimer()
	perSec := func(k int, d time.Duration) float64 { return float64(k) / d.Seconds() }
	b.ReportMetric(perSec(n/batchSize*batchSize, batched), "batched-records/s")
	b.ReportMetric(perSec(n/4, single), "single-call-records/s")
	b.ReportMetric(perSec(n/4, put), "put-per-record-records/s")
	b.ReportMetric(perSec(n/batchSize*batchSize, batched)/perSec(n/4, put), "batched/put-ratio")
	b.ReportMetric(perSec(n/4, single)/perSec(n/4, put), "single-call/put-ratio")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkSteady1000rps sends 1,000 single-record RecordUsage calls per
// second over 100 keys for 5 s, as edges that do not batch would, and
// measures etcd write Txns/s (revisions) and bytes per active key-day.
func BenchmarkSteady1000rps(b *testing.B) {
	const keys, rps, seconds = 100, 1000, 5
	e := newEnv(b, 0)
	rev := func() int64 {
		r, err := e.etcd.Get(context.Background(), "probe")
		require.NoError(b, err)
		return r.Header.Revision
	}
	for b.Loop() {
		startRev := rev()
		start := time.Now()
		tick := time.NewTicker(10 * time.Millisecond)
		var wg sync.WaitGroup
		var errs atomic.Int64
		sent := 0
		for sent < rps*seconds {
			<-tick.C
			for range rps / 100 {
				i := sent
				sent++
				wg.Go(func() {
					r := rec(fmt.Sprintf("steady-%d-%d", start.UnixNano(), i), fmt.Sprintf("k%d", i%keys), []string{"mock-small", "mock-large"}[(i/keys)%2], 100, 50, t0)
					if _, err := e.cli.RecordUsage(svc(context.Background()), &usagev1.RecordUsageRequest{Records: []*usagev1.UsageRecord{r}}); err != nil {
						errs.Add(1)
					}
				})
			}
		}
		tick.Stop()
		wg.Wait()
		elapsed := time.Since(start)
		require.Zero(b, errs.Load())
		txns := rev() - startRev

		aggBytes, aggRows := prefixBytes(b, e.etcd, Prefix+"agg/")
		logBytes, logRows := prefixBytes(b, e.etcd, Prefix+"log/")
		idBytes, idRows := prefixBytes(b, e.etcd, Prefix+"id/")
		b.ReportMetric(float64(sent)/elapsed.Seconds(), "requests/s")
		b.ReportMetric(float64(txns)/elapsed.Seconds(), "etcd-txns/s")
		b.ReportMetric(float64(sent)/float64(txns), "records/txn")
		b.ReportMetric(float64(aggBytes)/keys, "agg-bytes/key-day")
		b.ReportMetric(float64(aggRows)/keys, "agg-rows/key-day")
		b.ReportMetric(float64(logBytes)/float64(logRows), "log-bytes/entry")
		b.ReportMetric(float64(idBytes)/float64(idRows), "id-bytes/marker")
	}
	b.ReportMetric(0, "ns/op")
}

// prefixBytes is the live key+value bytes and key count under a prefix.
func prefixBytes(tb testing.TB, cli *clientv3.Client, p string) (int64, int64) {
	tb.Helper()
	resp, err := cli.Get(context.Background(), p, clientv3.WithPrefix())
	require.NoError(tb, err)
	var n int64
	for _, kv := range resp.Kvs {
		n += int64(len(kv.Key) + len(kv.Value))
	}
	return n, int64(len(resp.Kvs))
}

// BenchmarkCap1000rps sends 1,000 records/s for 3 s against a log capped at
// 1,000 entries and reports the largest log seen (sampled every 50 ms) over
// the cap: the janitor keeps up, and commits survive its evictions.
func BenchmarkCap1000rps(b *testing.B) {
	const limit, rps, seconds = 1000, 1000, 3
	e := newEnvWith(b, func(c *Config) { c.MaxLogEntries = limit })
	for b.Loop() {
		start := time.Now()
		stop := make(chan struct{})
		var peak atomic.Int64
		var sampler sync.WaitGroup
		sampler.Go(func() {
			t := time.NewTicker(50 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-stop:
					return
				case <-t.C:
					if n := count(b, e.etcd, "log/"); n > peak.Load() {
						peak.Store(n)
					}
				}
			}
		})
		tick := time.NewTicker(10 * time.Millisecond)
		var wg sync.WaitGroup
		var errs atomic.Int64
		for sent := 0; sent < rps*seconds; {
			<-tick.C
			for range rps / 100 {
				i := sent
				sent++
				wg.Go(func() {
					// Times advance with the sends, as live traffic does.
					r := rec(fmt.Sprintf("cap-%d-%d", start.UnixNano(), i), fmt.Sprintf("k%d", i%100), "mock-small", 100, 50, t0.Add(time.Duration(i)*time.Millisecond))
					if _, err := e.cli.RecordUsage(svc(context.Background()), &usagev1.RecordUsageRequest{Records: []*usagev1.UsageRecord{r}}); err != nil {
						errs.Add(1)
					}
				})
			}
		}
		tick.Stop()
		wg.Wait()
		close(stop)
		sampler.Wait()
		require.Zero(b, errs.Load())
		b.ReportMetric(float64(peak.Load())/limit, "peak-log/cap")
	}
	b.ReportMetric(0, "ns/op")
}
