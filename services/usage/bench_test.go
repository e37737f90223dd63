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
// elapsed time. work gets its worker's index w, so that a worker can be one
// producer sending in order, and the unit i.
func parallel(b *testing.B, n, workers int, work func(w, i int) error) time.Duration {
	b.Helper()
	var next atomic.Int64
	var wg sync.WaitGroup
	var failed atomic.Value
	start := time.Now()
	for w := range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := work(w, i); err != nil {
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

// benchProducers numbers records for a benchmark's workers: worker w is
// producer "<name>-w", whose next batch starts at next[w].
type benchProducers struct {
	name string
	next []uint64
}

func newProducers(name string, workers int) *benchProducers {
	p := &benchProducers{name: name, next: make([]uint64, workers)}
	for w := range p.next {
		p.next[w] = 1
	}
	return p
}

// send sends rs as worker w's next batch; only worker w calls it for w.
func (p *benchProducers) send(cli usagev1.UsageServiceClient, w int, rs []*usagev1.UsageRecord) error {
	first := p.next[w]
	p.next[w] += uint64(len(rs))
	_, err := send(context.Background(), cli, fmt.Sprintf("%s-%d", p.name, w), first, rs)
	return err
}

// BenchmarkIngest compares, in one run, records/s accepted end to end
// (gRPC -> ledger -> etcd and the request log, durable on answer) against
// the reference of one etcd Put per record, with the same client
// concurrency. Each worker is one producer, sending in order.
func BenchmarkIngest(b *testing.B) {
	const workers, batchSize = 16, 100
	e := newEnv(b, 0)
	n := max(b.N, workers*batchSize)
	mk := func(prefix string, i int) *usagev1.UsageRecord {
		return rec(fmt.Sprintf("%s-%d-%d", prefix, b.N, i), fmt.Sprintf("k%d", i%100), "mock-small", 100, 50, t0)
	}
	// Producer names differ per run: b.N changes between runs on one env.
	batchers := newProducers(fmt.Sprintf("batch-%d", b.N), workers)
	singles := newProducers(fmt.Sprintf("single-%d", b.N), workers)
	b.ResetTimer()

	batched := parallel(b, n/batchSize, workers, func(w, i int) error {
		rs := make([]*usagev1.UsageRecord, batchSize)
		for j := range rs {
			rs[j] = mk("batch", i*batchSize+j)
		}
		return batchers.send(e.cli, w, rs)
	})
	single := parallel(b, n/4, workers, func(w, i int) error {
		return singles.send(e.cli, w, []*usagev1.UsageRecord{mk("single", i)})
	})
	put := parallel(b, n/4, workers, func(_, i int) error {
		r := mk("put", i)
		val, err := proto.Marshal(r)
		if err != nil {
			return err
		}
		_, err = e.etcd.Put(context.Background(), fmt.Sprintf("/bench/ref/%s", r.GetRequestId()), string(val))
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
// second over 100 keys for 5 s and measures etcd write Txns/s (revisions)
// and aggregate bytes per active key-day. The calls are concurrent, so
// each is its own producer: the aggregates hold far more marks than behind
// a few edges that batch, and agg-bytes/key-day is an upper bound.
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
					id := fmt.Sprintf("steady-%d-%d", start.UnixNano(), i)
					r := rec(id, fmt.Sprintf("k%d", i%keys), []string{"mock-small", "mock-large"}[(i/keys)%2], 100, 50, t0)
					if _, err := send(context.Background(), e.cli, id, 1, []*usagev1.UsageRecord{r}); err != nil {
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
		b.ReportMetric(float64(sent)/elapsed.Seconds(), "requests/s")
		b.ReportMetric(float64(txns)/elapsed.Seconds(), "etcd-txns/s")
		b.ReportMetric(float64(sent)/float64(txns), "records/txn")
		b.ReportMetric(float64(aggBytes)/keys, "agg-bytes/key-day")
		b.ReportMetric(float64(aggRows)/keys, "agg-rows/key-day")
		b.ReportMetric(float64(e.rlog.DiskBytes())/float64(logCount(b, e.rlog)), "log-disk-bytes/entry")
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
