package usage

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"google.golang.org/protobuf/types/known/timestamppb"

	usagev1 "github.com/keygate/keygate/gen/keygate/usage/v1"
	"github.com/keygate/keygate/pkg/money"
	"github.com/keygate/keygate/services/usage/internal/reqlog"
)

// metricSums reads every int and float sum of the reader, by metric name
// and then by its attributes' encoding.
func metricSums(tb testing.TB, r *sdkmetric.ManualReader) map[string]map[string]float64 {
	tb.Helper()
	var rm metricdata.ResourceMetrics
	require.NoError(tb, r.Collect(tb.Context(), &rm))
	out := map[string]map[string]float64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			pts := map[string]float64{}
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				for _, p := range d.DataPoints {
					pts[p.Attributes.Encoded(attribute.DefaultEncoder())] += float64(p.Value)
				}
			case metricdata.Sum[float64]:
				for _, p := range d.DataPoints {
					pts[p.Attributes.Encoded(attribute.DefaultEncoder())] += p.Value
				}
			}
			out[m.Name] = pts
		}
	}
	return out
}

// TestTwoReplicasOverlapping: producers send their batches in order, each
// batch to both replicas at once (a retry racing the original elsewhere),
// and with each a stale copy of an earlier batch to either replica. Each
// record counts exactly once, with exact aggregates, spend and metrics.
func TestTwoReplicasOverlapping(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	e := newEnvWith(t, func(c *Config) { c.Meter = mp })
	second := e.replica(t)
	clients := []usagev1.UsageServiceClient{e.cli, second.cli}

	// Record n of producer p is record g = p*perProducer + n of the run:
	// key g%keys, model g%2, g prompt tokens and 7 completion tokens.
	const producers, batches, size, keys = 6, 5, 20, 5
	const perProducer = batches * size
	models := []string{"mock-small", "mock-large"}
	batch := func(p, i int) []*usagev1.UsageRecord {
		out := make([]*usagev1.UsageRecord, size)
		for j := range out {
			g := p*perProducer + i*size + j
			out[j] = rec(fmt.Sprintf("r-%d", g), fmt.Sprintf("k%d", g%keys), models[g%2], int64(g), 7, t0)
		}
		return out
	}
	var accepted, dups, sent atomic.Int64
	errs := make([]error, producers)
	var wg sync.WaitGroup
	for p := range producers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(p), 7))
			producer := fmt.Sprintf("edge-%d", p)
			for i := range batches {
				type call struct {
					cli   usagev1.UsageServiceClient
					batch int
				}
				calls := []call{{clients[p%2], i}, {clients[(p+1)%2], i}}
				if i > 0 {
					calls = append(calls, call{clients[rng.IntN(2)], rng.IntN(i)})
				}
				resps := make([]*usagev1.RecordUsageResponse, len(calls))
				callErrs := make([]error, len(calls))
				var cw sync.WaitGroup
				for c, cl := range calls {
					cw.Go(func() {
						resps[c], callErrs[c] = send(t.Context(), cl.cli, producer, uint64(cl.batch*size+1), batch(p, cl.batch))
					})
				}
				cw.Wait()
				if errs[p] = errors.Join(callErrs...); errs[p] != nil {
					return
				}
				if got := resps[0].GetAccepted() + resps[1].GetAccepted(); got != size {
					errs[p] = fmt.Errorf("batch %d of %s: %d accepted over both replicas, want %d", i, producer, got, size)
					return
				}
				if len(resps) > 2 && resps[2].GetAccepted() != 0 {
					errs[p] = fmt.Errorf("stale batch %d of %s counted again: %v", calls[2].batch, producer, resps[2])
					return
				}
				for _, r := range resps {
					accepted.Add(int64(r.GetAccepted()))
					dups.Add(int64(r.GetDuplicates()))
					sent.Add(size)
				}
			}
		})
	}
	wg.Wait()
	require.NoError(t, errors.Join(errs...))

	distinct := int64(producers * perProducer)
	require.Equal(t, int64(producers*(3*batches-1)*size), sent.Load())
	require.Equal(t, distinct, accepted.Load(), "each record accepted by exactly one replica")
	require.Equal(t, sent.Load()-distinct, dups.Load())
	for _, r := range []*reqlog.Pebble{e.rlog, second.rlog} {
		require.EqualValues(t, distinct, logCount(t, r), "every batch went to both replicas")
	}

	// Expected aggregates, computed from the distinct records.
	prices := map[string][2]money.Nanos{}
	for _, m := range defaultModels()[:2] {
		in, err := money.Parse(m.GetInputPricePerMillionUsd())
		require.NoError(t, err)
		out, err := money.Parse(m.GetOutputPricePerMillionUsd())
		require.NoError(t, err)
		prices[m.GetId()] = [2]money.Nanos{in, out}
	}
	type agg struct{ requests, tokens int64 }
	want := map[string]agg{}
	var wantCost money.Nanos
	modelCost := map[string]money.Nanos{}
	for g := range int(distinct) {
		m := models[g%2]
		k := fmt.Sprintf("k%d/%s", g%keys, m)
		want[k] = agg{want[k].requests + 1, want[k].tokens + int64(g) + 7}
		c := money.Cost(int64(g), prices[m][0]) + money.Cost(7, prices[m][1])
		wantCost += c
		modelCost[m] += c
	}
	// Both replicas answer the same totals.
	for _, cl := range clients {
		got := map[string]agg{}
		for k := range keys {
			for _, m := range models {
				resp, err := cl.GetTotals(svc(t.Context()), &usagev1.GetTotalsRequest{Queries: []*usagev1.TotalsQuery{{
					Key: fmt.Sprintf("k%d", k), Models: []string{m}, TokenPeriodStart: timestamppb.New(time.Unix(0, 0)),
				}}})
				require.NoError(t, err)
				for _, tot := range resp.GetTotals() {
					if tot.GetModel() != "" {
						got[tot.GetKey()+"/"+tot.GetModel()] = agg{tot.GetRequestsToday(), tot.GetTokensToday()}
					}
				}
			}
		}
		require.Equal(t, want, got)
	}
	l, err := e.cli.ListUsage(member(t.Context()), &usagev1.ListUsageRequest{Workspace: "acme", GroupBy: usagev1.GroupBy_GROUP_BY_MODEL})
	require.NoError(t, err)
	var reqs int64
	gotCost := map[string]string{}
	wantText := map[string]string{}
	for _, r := range l.GetRows() {
		reqs += r.GetRequests()
		gotCost[r.GetGroup()] = r.GetSpendUsd()
		wantText[r.GetGroup()] = modelCost[r.GetGroup()].String()
	}
	require.Equal(t, distinct, reqs)
	require.Len(t, gotCost, 2)
	require.Equal(t, wantText, gotCost, "spend is exact")

	m := metricSums(t, reader)
	require.EqualValues(t, distinct, m["keygate.usage.records"]["result=accepted"])
	require.EqualValues(t, sent.Load()-distinct, m["keygate.usage.records"]["result=duplicate"])
	spend := m["keygate.usage.spend"]["model=mock-small"] + m["keygate.usage.spend"]["model=mock-large"]
	require.InDelta(t, float64(wantCost)/1e9, spend, 1e-9)
}
