package usage

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	usagev1 "github.com/keygate/keygate/gen/keygate/usage/v1"
	"github.com/keygate/keygate/internal/etcdtest"
	"github.com/keygate/keygate/internal/grpctest"
	"github.com/keygate/keygate/services/usage/internal/reqlog"
)

// BenchmarkLedger drives the usage path as edges do: producers each send
// their records in order, one batch in flight, over real gRPC to a real
// ledger on real etcd with the embedded request log. It reports sustained
// records/s, CPU per record (the whole process: gRPC both ways, ledger,
// etcd, log store; the records are built before the clock starts),
// etcd write Txns/s, bytes per record in etcd and in the log, and, as the
// same machine's reference in the same run, plain etcd Puts/s from as many
// concurrent clients.
//
// Each b.N is a run of ledgerRecords records over ledgerKeys keys.
func BenchmarkLedger(b *testing.B) {
	const (
		producers = 4
		batch     = 5000
	)
	for _, keys := range []int{100, 1000} {
		b.Run(fmt.Sprintf("keys=%d", keys), func(b *testing.B) {
			records := 200_000
			if testing.Short() {
				records = 20_000
			}
			var sum ledgerRun
			for range b.N {
				r := runLedger(b, producers, batch, keys, records)
				sum.records += r.records
				sum.wall += r.wall
				sum.cpu += r.cpu
				sum.txns += r.txns
				sum.etcdBytes += r.etcdBytes
				sum.logBytes += r.logBytes
				sum.putsPerSec += r.putsPerSec
			}
			n := float64(b.N)
			b.ReportMetric(float64(sum.records)/sum.wall.Seconds(), "records/s")
			b.ReportMetric(float64(sum.cpu.Microseconds())/float64(sum.records), "cpu-µs/record")
			b.ReportMetric(float64(sum.txns)/sum.wall.Seconds(), "etcd-txns/s")
			b.ReportMetric(float64(sum.etcdBytes)/float64(sum.records), "etcd-B/record")
			b.ReportMetric(float64(sum.logBytes)/float64(sum.records), "log-B/record")
			b.ReportMetric(sum.putsPerSec/n, "ref-etcd-puts/s")
			b.ReportMetric(float64(sum.records)/sum.wall.Seconds()/(sum.putsPerSec/n), "ratio-to-puts")
		})
	}
}

type ledgerRun struct {
	records    int
	wall, cpu  time.Duration
	txns       int64
	etcdBytes  int64
	logBytes   int64
	putsPerSec float64
}

func runLedger(b *testing.B, producers, batch, keys, records int) ledgerRun {
	b.StopTimer()
	cluster := etcdtest.Start(b)
	_, ksc, _ := startKeystore(b)
	rlog, err := reqlog.OpenPebble(b.TempDir(), 0, nil)
	require.NoError(b, err)
	b.Cleanup(func() { _ = rlog.Close() })
	reader := sdkmetric.NewManualReader()
	srv, err := New(b.Context(), Config{
		Etcd: cluster.Client, Logger: slog.New(slog.DiscardHandler), ServiceToken: serviceToken, Keystore: ksc,
		RequestLog: rlog, Meter: sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)),
	})
	require.NoError(b, err)
	b.Cleanup(func() { _ = srv.Close() })
	go func() { _ = srv.Run(b.Context()) }()
	cli := usagev1.NewUsageServiceClient(grpctest.Dial(b, grpctest.Serve(b, srv.Register).Addr))

	// The records of each producer, in batches, built before timing.
	now := time.Now()
	per := records / producers
	work := make([][]*usagev1.RecordUsageRequest, producers)
	for p := range producers {
		prod := fmt.Sprintf("edge-%d", p)
		for first := 0; first < per; first += batch {
			req := &usagev1.RecordUsageRequest{Producer: prod, FirstSequence: uint64(first + 1)}
			for i := first; i < min(first+batch, per); i++ {
				k := (p*per + i) % keys
				req.Records = append(req.Records, &usagev1.UsageRecord{
					RequestId: fmt.Sprintf("req_%s_%d", prod, i), Key: fmt.Sprintf("key%04d", k), Workspace: "acme",
					Owner: fmt.Sprintf("owner%d", k%50), Model: "mock-small", PromptTokens: 120, CompletionTokens: 40,
					Status: usagev1.RequestStatus_REQUEST_STATUS_OK, Latency: durationpb.New(3 * time.Millisecond),
					Time: timestamppb.New(now),
				})
			}
			work[p] = append(work[p], req)
		}
	}

	ctx := svc(b.Context())
	b.StartTimer()
	cpu0, wall0 := cpuTime(), time.Now()
	var wg sync.WaitGroup
	for p := range producers {
		wg.Go(func() {
			for _, req := range work[p] {
				for {
					rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
					_, err := cli.RecordUsage(rctx, req)
					cancel()
					if err == nil {
						break
					}
					b.Logf("producer %d: %v (retrying)", p, err)
				}
			}
		})
	}
	wg.Wait()
	wall, cpu := time.Since(wall0), cpuTime()-cpu0
	b.StopTimer()

	run := ledgerRun{records: per * producers, wall: wall, cpu: cpu}
	run.txns = int64(sumMetric(b, reader, "keygate.usage.etcd.txns"))
	run.etcdBytes = prefixSize(b, cluster.Client, Prefix)
	run.logBytes = rlog.DiskBytes()
	tot := int64(0)
	for k := range keys {
		tot += totalsOf(b, cli, fmt.Sprintf("key%04d", k))
	}
	require.EqualValues(b, run.records, tot, "every record counted once")
	run.putsPerSec = etcdPutRate(b, cluster.Client, producers*4, 20_000)
	b.StartTimer()
	return run
}

func totalsOf(tb testing.TB, cli usagev1.UsageServiceClient, key string) int64 {
	resp, err := cli.GetTotals(svc(tb.Context()), &usagev1.GetTotalsRequest{Queries: []*usagev1.TotalsQuery{{Key: key}}})
	require.NoError(tb, err)
	return resp.GetTotals()[0].GetRequestsToday()
}

// etcdPutRate is the reference: n Puts of a 150-byte value from workers
// concurrent clients, one key each, as a naive ledger would write.
func etcdPutRate(tb testing.TB, cli *clientv3.Client, workers, n int) float64 {
	val := strings.Repeat("x", 150)
	var wg sync.WaitGroup
	start := time.Now()
	for w := range workers {
		wg.Go(func() {
			for i := w; i < n; i += workers {
				if _, err := cli.Put(tb.Context(), fmt.Sprintf("/bench/put/%d", i), val); err != nil {
					tb.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	return float64(n) / time.Since(start).Seconds()
}

// prefixSize is the bytes of keys and values under p.
func prefixSize(tb testing.TB, cli *clientv3.Client, p string) int64 {
	resp, err := cli.Get(tb.Context(), p, clientv3.WithPrefix())
	require.NoError(tb, err)
	var n int64
	for _, kv := range resp.Kvs {
		n += int64(len(kv.Key) + len(kv.Value))
	}
	return n
}

func sumMetric(tb testing.TB, r *sdkmetric.ManualReader, name string) float64 {
	var rm metricdata.ResourceMetrics
	require.NoError(tb, r.Collect(tb.Context(), &rm))
	var sum float64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != name {
				continue
			}
			if s, ok := m.Data.(metricdata.Sum[int64]); ok {
				for _, dp := range s.DataPoints {
					sum += float64(dp.Value)
				}
			}
		}
	}
	return sum
}

// cpuTime is this process's user and system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
