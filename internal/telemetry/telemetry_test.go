package telemetry_test

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/metric"

	"github.com/keygate/keygate/internal/telemetry"
)

func TestLoggerCarriesTraceID(t *testing.T) {
	t.Parallel()
	tel, err := telemetry.Setup(t.Context(), telemetry.Options{ServiceName: "test"})
	require.NoError(t, err)
	t.Cleanup(func() { _ = tel.Shutdown(t.Context()) })

	var buf bytes.Buffer
	log := telemetry.NewLogger(&buf, slog.LevelInfo).With("service", "x")
	ctx, span := tel.Tracer.Tracer("t").Start(t.Context(), "op")
	log.InfoContext(ctx, "hello")
	span.End()

	var rec map[string]any
	require.NoError(t, json.Unmarshal(buf.Bytes(), &rec))
	require.Equal(t, "hello", rec["msg"])
	require.Equal(t, "x", rec["service"])
	require.Equal(t, span.SpanContext().TraceID().String(), rec["trace_id"])

	buf.Reset()
	log.Info("no span")
	require.NotContains(t, buf.String(), "trace_id")
}

func TestMetricsHandler(t *testing.T) {
	t.Parallel()
	tel, err := telemetry.Setup(t.Context(), telemetry.Options{ServiceName: "test"})
	require.NoError(t, err)
	c, err := tel.MeterProvider().Meter("t").Int64Counter("keygate.test.things")
	require.NoError(t, err)
	c.Add(t.Context(), 3)
	rr := httptest.NewRecorder()
	tel.MetricsHandler().ServeHTTP(rr, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rr.Body)
	require.Contains(t, string(body), "keygate_test_things_total 3")
}

// TestSecondsHistograms: a histogram in seconds, without buckets of its
// own, is exported with sub-second buckets rather than the SDK's
// millisecond-sized defaults.
func TestSecondsHistograms(t *testing.T) {
	t.Parallel()
	tel, err := telemetry.Setup(t.Context(), telemetry.Options{ServiceName: "test"})
	require.NoError(t, err)
	h, err := tel.MeterProvider().Meter("t").Float64Histogram("keygate.test.wait", metric.WithUnit("s"))
	require.NoError(t, err)
	h.Record(t.Context(), 0.003)
	rr := httptest.NewRecorder()
	tel.MetricsHandler().ServeHTTP(rr, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rr.Body)
	require.Contains(t, string(body), `keygate_test_wait_seconds_bucket{le="0.0025"} 0`)
	require.Contains(t, string(body), `keygate_test_wait_seconds_bucket{le="0.005"} 1`)
	require.NotContains(t, string(body), `le="5000"`)
}
