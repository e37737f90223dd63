// Package telemetry wires logs, metrics and traces once per process: slog
// JSON logs that carry the trace id, OpenTelemetry metrics exported for
// Prometheus, and traces over OTLP when an endpoint is configured.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.37.0"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Options configure Setup.
type Options struct {
	// ServiceName names the process in traces, e.g. "keygate-edge".
	ServiceName string
	// OTLPEndpoint (host:port) enables trace export over OTLP/gRPC.
	OTLPEndpoint string
	// OTLPInsecure sends traces without TLS (a local collector).
	OTLPInsecure bool
	// SampleRatio of root traces kept; 0 means 1 (keep all).
	SampleRatio float64
	// SpanProcessors receive every span besides the OTLP exporter (tests
	// record spans with sdktrace/tracetest).
	SpanProcessors []sdktrace.SpanProcessor
}

// Telemetry holds the providers of one process.
type Telemetry struct {
	Meter      *sdkmetric.MeterProvider
	Tracer     *sdktrace.TracerProvider
	Propagator propagation.TextMapPropagator
	registry   *prometheus.Registry
}

// SecondsBuckets are the histogram boundaries of every duration in
// seconds: the SDK's default ones (0, 5, 10 … 10000) suit milliseconds and
// would put every keygate duration in the first bucket.
var SecondsBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120}

// secondsView gives every histogram measured in seconds SecondsBuckets,
// ours and those of instrumentation libraries (gRPC's call durations).
func secondsView(i sdkmetric.Instrument) (sdkmetric.Stream, bool) {
	if i.Kind != sdkmetric.InstrumentKindHistogram || i.Unit != "s" {
		return sdkmetric.Stream{}, false
	}
	return sdkmetric.Stream{
		Name: i.Name, Description: i.Description, Unit: i.Unit,
		Aggregation: sdkmetric.AggregationExplicitBucketHistogram{Boundaries: SecondsBuckets},
	}, true
}

// Setup builds the providers. Nothing is installed globally: callers pass
// the providers where they are needed.
func Setup(ctx context.Context, o Options) (*Telemetry, error) {
	res := resource.NewSchemaless(semconv.ServiceName(o.ServiceName))
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	exp, err := otelprom.New(otelprom.WithRegisterer(reg), otelprom.WithoutScopeInfo())
	if err != nil {
		return nil, fmt.Errorf("prometheus exporter: %w", err)
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exp), sdkmetric.WithResource(res), sdkmetric.WithView(secondsView))

	ratio := o.SampleRatio
	if ratio == 0 {
		ratio = 1
	}
	root := sdktrace.TraceIDRatioBased(ratio)
	if o.OTLPEndpoint == "" && len(o.SpanProcessors) == 0 {
		// Nobody would read the spans: record none of our own (trace ids
		// still reach the logs), and keep a caller's sampling decision.
		root = sdktrace.NeverSample()
	}
	topts := []sdktrace.TracerProviderOption{
		sdktrace.WithResource(res),
		sdktrace.WithSampler(sdktrace.ParentBased(root)),
	}
	if o.OTLPEndpoint != "" {
		eopts := []otlptracegrpc.Option{otlptracegrpc.WithEndpoint(o.OTLPEndpoint)}
		if o.OTLPInsecure {
			eopts = append(eopts, otlptracegrpc.WithInsecure())
		}
		te, err := otlptracegrpc.New(ctx, eopts...)
		if err != nil {
			return nil, fmt.Errorf("otlp exporter: %w", err)
		}
		topts = append(topts, sdktrace.WithBatcher(te))
	}
	for _, sp := range o.SpanProcessors {
		topts = append(topts, sdktrace.WithSpanProcessor(sp))
	}
	return &Telemetry{
		Meter:      mp,
		Tracer:     sdktrace.NewTracerProvider(topts...),
		Propagator: propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}),
		registry:   reg,
	}, nil
}

// MetricsHandler serves /metrics in the Prometheus text format.
func (t *Telemetry) MetricsHandler() http.Handler {
	return promhttp.HandlerFor(t.registry, promhttp.HandlerOpts{})
}

// Shutdown flushes pending spans and metrics.
func (t *Telemetry) Shutdown(ctx context.Context) error {
	return errors.Join(t.Tracer.Shutdown(ctx), t.Meter.Shutdown(ctx))
}

// ServerOptions instrument a gRPC server and end its interceptor chains in
// panic recovery, so a bug in one call becomes INTERNAL, not a crash.
func (t *Telemetry) ServerOptions(log *slog.Logger) []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.StatsHandler(otelgrpc.NewServerHandler(
			otelgrpc.WithTracerProvider(t.Tracer),
			otelgrpc.WithMeterProvider(t.Meter),
			otelgrpc.WithPropagators(t.Propagator),
		)),
		grpc.ChainUnaryInterceptor(recoverUnary(log)),
		grpc.ChainStreamInterceptor(recoverStream(log)),
	}
}

// DialOptions instrument a gRPC client so that its spans join the caller's
// trace.
func (t *Telemetry) DialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithStatsHandler(otelgrpc.NewClientHandler(
			otelgrpc.WithTracerProvider(t.Tracer),
			otelgrpc.WithMeterProvider(t.Meter),
			otelgrpc.WithPropagators(t.Propagator),
		)),
	}
}

// MeterProvider returns the meter provider as the API type services take.
func (t *Telemetry) MeterProvider() metric.MeterProvider { return t.Meter }

func recoverUnary(log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (resp any, err error) {
		defer func() {
			if r := recover(); r != nil {
				log.ErrorContext(ctx, "panic in gRPC handler", "method", info.FullMethod, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
				err = status.Error(codes.Internal, "internal error")
			}
		}()
		return h(ctx, req)
	}
}

func recoverStream(log *slog.Logger) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) (err error) {
		defer func() {
			if r := recover(); r != nil {
				log.ErrorContext(ss.Context(), "panic in gRPC stream", "method", info.FullMethod, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
				err = status.Error(codes.Internal, "internal error")
			}
		}()
		return h(srv, ss)
	}
}

// NewLogger returns a JSON logger whose records carry trace_id and span_id
// when the context has a span.
func NewLogger(w io.Writer, level slog.Leveler) *slog.Logger {
	return slog.New(traceHandler{slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level})})
}

type traceHandler struct{ slog.Handler }

func (h traceHandler) Handle(ctx context.Context, r slog.Record) error {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		r.AddAttrs(slog.String("trace_id", sc.TraceID().String()), slog.String("span_id", sc.SpanID().String()))
	}
	return h.Handler.Handle(ctx, r)
}

func (h traceHandler) WithAttrs(a []slog.Attr) slog.Handler {
	return traceHandler{h.Handler.WithAttrs(a)}
}

func (h traceHandler) WithGroup(n string) slog.Handler { return traceHandler{h.Handler.WithGroup(n)} }
