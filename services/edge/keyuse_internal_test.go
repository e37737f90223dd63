package edge

import (
	"context"
	"log/slog"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	"github.com/keygate/keygate/internal/grpctest"
)

// outageKeystore refuses RecordKeyUse while down, else counts the uses.
type outageKeystore struct {
	keystorev1.UnimplementedKeystoreServiceServer
	mu   sync.Mutex
	down bool
	got  int
}

func (k *outageKeystore) RecordKeyUse(_ context.Context, in *keystorev1.RecordKeyUseRequest) (*keystorev1.RecordKeyUseResponse, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.down {
		return nil, status.Error(codes.Unavailable, "down")
	}
	k.got += len(in.GetUses())
	return &keystorev1.RecordKeyUseResponse{}, nil
}

func (k *outageKeystore) setDown(down bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.down = down
}

func (k *outageKeystore) received() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.got
}

func newTestKeyUses(tb testing.TB, limit int) (*keyUses, *outageKeystore, *sdkmetric.ManualReader) {
	tb.Helper()
	ks := &outageKeystore{}
	s := grpctest.Serve(tb, func(r grpc.ServiceRegistrar) { keystorev1.RegisterKeystoreServiceServer(r, ks) })
	conn := grpctest.Dial(tb, s.Addr)
	reader := sdkmetric.NewManualReader()
	u, err := newKeyUses(keystorev1.NewKeystoreServiceClient(conn), limit,
		sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)), slog.New(slog.DiscardHandler))
	require.NoError(tb, err)
	return u, ks, reader
}

func droppedKeys(tb testing.TB, r *sdkmetric.ManualReader) int64 {
	tb.Helper()
	var rm metricdata.ResourceMetrics
	require.NoError(tb, r.Collect(context.Background(), &rm))
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name == "keygate.edge.key_use.dropped" {
				return m.Data.(metricdata.Sum[int64]).DataPoints[0].Value
			}
		}
	}
	return 0
}

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// The map is bounded: beyond the limit new keys are dropped and counted,
// known keys still move forward, also while a failed flush puts its keys
// back.
func TestKeyUsesBounded(t *testing.T) {
	u, ks, reader := newTestKeyUses(t, 3)
	for i := range 5 {
		u.note("acme", "k"+strconv.Itoa(i), t0, nil)
	}
	require.Len(t, u.pending, 3)
	require.EqualValues(t, 2, droppedKeys(t, reader))
	u.note("acme", "k0", t0.Add(time.Second), nil)
	require.Equal(t, t0.Add(time.Second), u.pending["k0"].t)

	ks.setDown(true)
	require.Error(t, u.flush(t.Context()))
	require.Len(t, u.pending, 3, "kept for the next flush")

	// New keys noted during an outage take the room of nothing: the held
	// keys keep it.
	u.note("acme", "k9", t0, nil)
	require.EqualValues(t, 3, droppedKeys(t, reader))

	ks.setDown(false)
	require.NoError(t, u.flush(t.Context()))
	require.Empty(t, u.pending)
	require.Equal(t, 3, ks.received())
}

// Keys a failed flush put back still keep their latest time.
func TestKeyUsesLatestWinsAfterFailure(t *testing.T) {
	u, ks, _ := newTestKeyUses(t, 10)
	u.note("acme", "k0", t0, nil)
	ks.setDown(true)
	require.Error(t, u.flush(t.Context()))
	u.note("acme", "k0", t0.Add(-time.Minute), nil)
	require.Equal(t, t0, u.pending["k0"].t)
	u.note("acme", "k0", t0.Add(time.Minute), nil)
	require.Equal(t, t0.Add(time.Minute), u.pending["k0"].t)
}

// Noting a key already pending allocates nothing: the request path pays a
// mutex and a map update.
func TestKeyUsesNoteAllocatesNothing(t *testing.T) {
	u, _, _ := newTestKeyUses(t, 10)
	u.note("acme", "k0", t0, nil)
	now := t0
	allocs := testing.AllocsPerRun(1000, func() {
		now = now.Add(time.Millisecond)
		u.note("acme", "k0", now, nil)
	})
	require.Zero(t, allocs)
	var off *keyUses
	require.Zero(t, testing.AllocsPerRun(100, func() { off.note("acme", "k0", now, nil) }))
}

// BenchmarkKeyUseNote compares note with a bare mutex-guarded map update,
// the reference it should match.
func BenchmarkKeyUseNote(b *testing.B) {
	ids := make([]string, 1000)
	for i := range ids {
		ids[i] = "key" + strconv.Itoa(i)
	}
	b.Run("note", func(b *testing.B) {
		u, _, _ := newTestKeyUses(b, keyUseLimit)
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			u.note("acme", ids[i%len(ids)], t0, nil)
			i++
		}
	})
	b.Run("reference", func(b *testing.B) {
		var mu sync.Mutex
		m := map[string]time.Time{}
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			mu.Lock()
			m[ids[i%len(ids)]] = t0
			mu.Unlock()
			i++
		}
	})
}
