package usage

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/timestamppb"

	usagev1 "github.com/keygate/keygate/gen/keygate/usage/v1"
	"github.com/keygate/keygate/pkg/money"
)

// smallCost is the cost of rec(..., "mock-small", 10, 5, ...):
// 10 x 0.15 + 5 x 0.60 USD per million tokens = 4,500 nanodollars.
const smallCost = 4500

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

// ids lists the request ids that still have a marker.
func ids(tb testing.TB, cli *clientv3.Client) []string {
	tb.Helper()
	resp, err := cli.Get(tb.Context(), Prefix+"id/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	require.NoError(tb, err)
	var out []string
	for _, kv := range resp.Kvs {
		out = append(out, strings.TrimPrefix(string(kv.Key), Prefix+"id/"))
	}
	sort.Strings(out)
	return out
}

func TestLogCap(t *testing.T) {
	const limit = 10
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	e := newEnvWith(t, func(c *Config) {
		c.MaxLogEntries = limit
		c.Meter = mp
	})
	// Replica b reads the watermark before the eviction: its commit must
	// refuse what its stale up-front check lets through.
	bs, b := e.replica(t)
	_, err := b.RecordUsage(svc(t.Context()), &usagev1.RecordUsageRequest{Records: recs("b-first", 1, "k1", "mock-small", t0)})
	require.NoError(t, err)

	// 25 older records, one a minute, over two workspaces; r-00 is the
	// oldest. One batch, so every marker exists before any eviction.
	var batch []*usagev1.UsageRecord
	for i := range 25 {
		r := rec(fmt.Sprintf("r-%02d", i), "k1", "mock-small", 10, 5, t0.Add(time.Duration(i-30)*time.Minute))
		if i%2 == 1 {
			r.Workspace = "beta"
		}
		batch = append(batch, r)
	}
	resp := e.record(t, batch...)
	require.EqualValues(t, 25, resp.GetAccepted())

	_, err = e.srv.trim(t.Context())
	require.NoError(t, err)
	require.EqualValues(t, limit, count(t, e.etcd, "log/"))
	require.EqualValues(t, limit, count(t, e.etcd, "id/"))
	want := []string{"b-first-0"}
	for i := 16; i < 25; i++ {
		want = append(want, fmt.Sprintf("r-%02d", i))
	}
	require.Equal(t, want, ids(t, e.etcd), "the newest entries over both workspaces stay")
	wm, _, err := e.srv.st.watermark(t.Context())
	require.NoError(t, err)
	require.Equal(t, batch[15].GetTime().AsTime().UnixNano(), wm, "the watermark is the newest evicted entry")
	require.EqualValues(t, 26, e.totals(t, "k1")[0].GetRequestsToday(), "aggregates outlive the log")

	tests := []struct {
		name     string
		client   usagev1.UsageServiceClient
		records  []*usagev1.UsageRecord
		code     codes.Code
		msg      string
		accepted int32
		dups     int32
	}{
		{"evicted retry refused up front", e.cli, batch[15:16], codes.InvalidArgument, "cannot be deduplicated", 0, 0},
		{"evicted retry refused at commit by a stale replica", b, batch[15:16], codes.InvalidArgument, `record "r-15"`, 0, 0},
		{"a batch with one evicted record is refused whole", e.cli, batch[14:], codes.InvalidArgument, "cannot be deduplicated", 0, 0},
		{"retained retries are duplicates", b, batch[16:], codes.OK, "", 0, 9},
		{"a new record is accepted", b, recs("new", 1, "k1", "mock-small", t0), codes.OK, "", 1, 0},
	}
	// b's janitor may have seen the eviction; make its up-front check stale
	// for sure (its committer still holds the old watermark revision).
	bs.com.evicted.Store(0)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := e.totals(t, "k1")[0].GetRequestsToday()
			resp, err := tc.client.RecordUsage(svc(t.Context()), &usagev1.RecordUsageRequest{Records: tc.records})
			if tc.code != codes.OK {
				requireCode(t, err, tc.code)
				require.Contains(t, err.Error(), tc.msg)
				require.Equal(t, before, e.totals(t, "k1")[0].GetRequestsToday(), "nothing counted")
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.accepted, resp.GetAccepted())
			require.Equal(t, tc.dups, resp.GetDuplicates())
			require.Equal(t, before+int64(tc.accepted), e.totals(t, "k1")[0].GetRequestsToday())
		})
	}

	t.Run("the janitor trims on its own as records arrive", func(t *testing.T) {
		for i := range 5 {
			e.clk.Advance(time.Second)
			e.record(t, recs(fmt.Sprintf("late-%d", i), 1, "k2", "mock-small", e.clk.Now())...)
		}
		require.Eventually(t, func() bool {
			return count(t, e.etcd, "log/") == limit && count(t, e.etcd, "id/") == limit
		}, 10*time.Second, 10*time.Millisecond)
	})

	t.Run("metrics", func(t *testing.T) {
		m := metricSums(t, reader)
		// Both replicas share the meter provider.
		rec := m["keygate.usage.records"]
		require.EqualValues(t, 1+25+1+5, rec["result=accepted"])
		require.EqualValues(t, 9, rec["result=duplicate"])
		require.EqualValues(t, 1+1+11, rec["result=rejected"])
		require.InDelta(t, 32*smallCost/1e9, m["keygate.usage.spend"]["model=mock-small"], 1e-12)
		require.GreaterOrEqual(t, m["keygate.usage.log.evicted"]["reason=cap"], float64(15))
	})
}

func TestTwoReplicasOverlapping(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	e := newEnvWith(t, func(c *Config) { c.Meter = mp })
	_, second := e.replica(t)
	clients := []usagev1.UsageServiceClient{e.cli, second}

	// Writer w sends records w*50 .. w*50+99 to replica w%2 in batches of
	// 25, so every record but the first and last 50 goes to both replicas
	// at about the same time; models alternate.
	const writers, span, keys = 8, 100, 5
	models := []string{"mock-small", "mock-large"}
	var mu sync.Mutex
	var accepted, dups int
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Go(func() {
			var all []*usagev1.UsageRecord
			for i := w * 50; i < w*50+span; i++ {
				all = append(all, rec(fmt.Sprintf("r-%d", i), fmt.Sprintf("k%d", i%keys), models[i%2], int64(i), 7, t0))
			}
			for i := 0; i < len(all); i += 25 {
				resp, err := clients[w%2].RecordUsage(svc(t.Context()), &usagev1.RecordUsageRequest{Records: all[i : i+25]})
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				accepted += int(resp.GetAccepted())
				dups += int(resp.GetDuplicates())
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}

	distinct := (writers-1)*50 + span
	require.Equal(t, distinct, accepted, "each record accepted by exactly one replica")
	require.Equal(t, writers*span-distinct, dups)
	require.EqualValues(t, distinct, count(t, e.etcd, "id/"))
	require.EqualValues(t, distinct, count(t, e.etcd, "log/"))

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
	for i := range distinct {
		m := models[i%2]
		k := fmt.Sprintf("k%d/%s", i%keys, m)
		want[k] = agg{want[k].requests + 1, want[k].tokens + int64(i) + 7}
		c := money.Cost(int64(i), prices[m][0]) + money.Cost(7, prices[m][1])
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
	require.EqualValues(t, distinct, reqs)
	require.Len(t, gotCost, 2)
	require.Equal(t, wantText, gotCost, "spend is exact")

	m := metricSums(t, reader)
	require.EqualValues(t, distinct, m["keygate.usage.records"]["result=accepted"])
	require.EqualValues(t, writers*span-distinct, m["keygate.usage.records"]["result=duplicate"])
	spend := m["keygate.usage.spend"]["model=mock-small"] + m["keygate.usage.spend"]["model=mock-large"]
	require.InDelta(t, float64(wantCost)/1e9, spend, 1e-9)
}

// TestTrimBeyondOnePass: an excess larger than one eviction pass is trimmed
// in one call, each pass evicting the next oldest entries.
func TestTrimBeyondOnePass(t *testing.T) {
	e := newEnvWith(t, func(c *Config) { c.MaxLogEntries = 10 })
	e.srv.evictPass = 4
	var batch []*usagev1.UsageRecord
	for i := range 25 {
		batch = append(batch, rec(fmt.Sprintf("p-%02d", i), "k1", "mock-small", 1, 1, t0.Add(time.Duration(i-30)*time.Minute)))
	}
	e.record(t, batch...)
	// The server may trim on its own meanwhile; either way one call leaves
	// exactly the cap.
	_, err := e.srv.trim(t.Context())
	require.NoError(t, err)
	require.EqualValues(t, 10, count(t, e.etcd, "log/"))
	require.EqualValues(t, 10, count(t, e.etcd, "id/"))
}
