package edge

import (
	"context"
	"log/slog"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/metric/noop"
	"google.golang.org/grpc"

	usagev1 "github.com/keygate/keygate/gen/keygate/usage/v1"
)

// batchRecorder keeps the size of every batch it was sent.
type batchRecorder struct {
	mu    sync.Mutex
	sizes []int
}

func (b *batchRecorder) RecordUsage(_ context.Context, in *usagev1.RecordUsageRequest, _ ...grpc.CallOption) (*usagev1.RecordUsageResponse, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.sizes = append(b.sizes, len(in.GetRecords()))
	return &usagev1.RecordUsageResponse{Accepted: int32(len(in.GetRecords()))}, nil
}

func (b *batchRecorder) batches() []int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]int(nil), b.sizes...)
}

// TestSenderLingers: a small batch waits for more records, and goes as
// soon as it is large enough; the wait never holds a record past Close.
func TestSenderLingers(t *testing.T) {
	t.Parallel()
	rec := &batchRecorder{}
	s := newSender(rec, "edge-test", 1000, slog.New(slog.DiscardHandler))
	s.sent, s.refusedRecs = noop.Int64Counter{}, noop.Int64Counter{}
	s.batch.delay = time.Hour // only the batch size can end the wait
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { s.run(ctx); close(done) }()

	add := func(n int) {
		for i := range n {
			s.add(&usagev1.UsageRecord{RequestId: "r" + strconv.Itoa(i)})
		}
	}
	add(1)
	add(lingerBelow - 1)
	require.Eventually(t, func() bool { return s.pending() == 0 }, 10*time.Second, time.Millisecond)
	require.Equal(t, []int{lingerBelow}, rec.batches(), "one batch, sent once it was large enough")

	add(3) // waits for the hour, or for the end
	cancel()
	<-done
	require.NoError(t, s.flush(t.Context()))
	require.Equal(t, 0, s.pending())
	require.Equal(t, []int{lingerBelow, 3}, rec.batches(), "what lingered goes at the end, by run or by the flush at Close")
}
