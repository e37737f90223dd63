package loadgen_test

import (
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keygate/keygate/internal/loadgen"
)

func TestPercentile(t *testing.T) {
	t.Parallel()
	d := []time.Duration{5 * time.Microsecond, 1 * time.Microsecond, 3 * time.Microsecond, 2 * time.Microsecond, 4 * time.Microsecond}
	require.Equal(t, 3.0, loadgen.Percentile(d, 0.5))
	require.Equal(t, 5.0, loadgen.Percentile(d, 0.99))
	require.Zero(t, loadgen.Percentile(nil, 0.5))
}

func TestThroughput(t *testing.T) {
	t.Parallel()
	var calls atomic.Int64
	rps, failed := loadgen.Throughput(100, 8, func() error {
		if calls.Add(1)%10 == 0 {
			return errors.New("every tenth fails")
		}
		return nil
	})
	require.EqualValues(t, 100, calls.Load(), "exactly n calls")
	require.EqualValues(t, 10, failed)
	require.Positive(t, rps)
}
