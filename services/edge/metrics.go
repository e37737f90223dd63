package edge

import (
	"context"
	"errors"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	limiterv1 "github.com/keygate/keygate/gen/keygate/limiter/v1"
	typev1 "github.com/keygate/keygate/gen/keygate/type/v1"
	"github.com/keygate/keygate/internal/clock"
	"github.com/keygate/keygate/internal/limitkey"
)

type metrics struct {
	requests     metric.Int64Counter
	duration     metric.Float64Histogram
	failOpen     metric.Int64Counter
	usageSent    metric.Int64Counter
	usageRefused metric.Int64Counter
	attrs        map[string]metric.MeasurementOption
	other        metric.MeasurementOption
	// reportDenials counts would-be denials of report-mode limits, by
	// level and limit (no model: its attribute sets are built once).
	reportDenials metric.Int64Counter
	reportAttrs   map[reportAttr]metric.AddOption
}

// reportAttr is a level and a limit kind.
type reportAttr struct {
	level typev1.LimitLevel
	kind  limiterv1.LimitKind
}

func newMetrics(mp metric.MeterProvider, s *sender, clk clock.Clock) (*metrics, error) {
	meter := mp.Meter("github.com/keygate/keygate/services/edge")
	m := &metrics{}
	if err := errors.Join(m.instruments(meter), usageGauges(meter, s, clk)); err != nil {
		return nil, errors.Join(errors.New("edge: metrics"), err)
	}
	m.attributeSets()
	return m, nil
}

// instruments creates the counters and histograms the request path adds to.
func (m *metrics) instruments(meter metric.Meter) error {
	var err error
	var errs []error
	m.requests, err = meter.Int64Counter("keygate.edge.requests",
		metric.WithUnit("{request}"), metric.WithDescription("Answers of the edge, by status class and reason."))
	errs = append(errs, err)
	m.duration, err = meter.Float64Histogram("keygate.edge.request.duration",
		metric.WithUnit("s"), metric.WithDescription("Time from request to the end of the answer, by status class and reason."),
		metric.WithExplicitBucketBoundaries(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
	errs = append(errs, err)
	m.failOpen, err = meter.Int64Counter("keygate.edge.limiter.fail_open",
		metric.WithUnit("{request}"), metric.WithDescription("Requests admitted unchecked because the limiter was unreachable and FailOpen is set."))
	errs = append(errs, err)
	m.usageSent, err = meter.Int64Counter("keygate.edge.usage.sent",
		metric.WithUnit("{record}"), metric.WithDescription("Usage records the ledger acknowledged."))
	errs = append(errs, err)
	m.usageRefused, err = meter.Int64Counter("keygate.edge.usage.refused",
		metric.WithUnit("{record}"), metric.WithDescription("Usage records the ledger refused as invalid and the edge dropped (should stay 0)."))
	errs = append(errs, err)
	m.reportDenials, err = meter.Int64Counter("keygate.edge.report_denials",
		metric.WithUnit("{request}"), metric.WithDescription("Requests a report-mode limit would have denied, by level and limit; they were not denied for it."))
	errs = append(errs, err)
	return errors.Join(errs...)
}

// usageGauges reports the usage sender's queue and spool.
func usageGauges(meter metric.Meter, s *sender, clk clock.Clock) error {
	var err error
	var errs []error
	_, err = meter.Float64ObservableGauge("keygate.edge.usage.oldest_age",
		metric.WithUnit("s"), metric.WithDescription("Age of the oldest usage record the ledger has not acknowledged (0 when none waits)."),
		metric.WithFloat64Callback(func(_ context.Context, o metric.Float64Observer) error {
			o.Observe(s.oldestAge(clk.Now()).Seconds())
			return nil
		}))
	errs = append(errs, err)
	_, err = meter.Int64ObservableGauge("keygate.edge.usage.spool_size",
		metric.WithUnit("By"), metric.WithDescription("Disk taken by the usage spool's segments (0 without a spool)."),
		metric.WithInt64Callback(func(_ context.Context, o metric.Int64Observer) error {
			if s.sp != nil {
				o.Observe(s.sp.Bytes())
			}
			return nil
		}))
	errs = append(errs, err)
	_, err = meter.Int64ObservableGauge("keygate.edge.usage.backlog_limit",
		metric.WithUnit("{record}"), metric.WithDescription("Pending usage records at which the edge stops admitting requests (503 usage_backlog)."),
		metric.WithInt64Callback(func(_ context.Context, o metric.Int64Observer) error {
			o.Observe(int64(s.limit))
			return nil
		}))
	errs = append(errs, err)
	_, err = meter.Int64ObservableGauge("keygate.edge.usage.pending",
		metric.WithUnit("{record}"), metric.WithDescription("Usage records waiting for the ledger."),
		metric.WithInt64Callback(func(_ context.Context, o metric.Int64Observer) error {
			o.Observe(int64(s.pending()))
			return nil
		}))
	errs = append(errs, err)
	return errors.Join(errs...)
}

// attributeSets builds once every attribute set the request path uses, so
// that it does not allocate them.
func (m *metrics) attributeSets() {
	// reasons label every answer in keygate.edge.requests; each has one status
	// class. Attribute sets are built once here so that the request path does
	// not allocate them.
	reasonClasses := []struct{ reason, class string }{
		{"ok", "2xx"},
		{"invalid_api_key", "4xx"},
		{"permission_denied", "4xx"},
		{"model_not_allowed", "4xx"},
		{"model_not_found", "4xx"},
		{"invalid_request_error", "4xx"},
		{"request_too_large", "4xx"},
		{"rate_limit_exceeded", "4xx"},
		{"insufficient_quota", "4xx"},
		{"insufficient_credits", "4xx"},
		{"not_found", "4xx"},
		{"method_not_allowed", "4xx"},
		{"upstream_client_error", "4xx"},
		{"client_cancelled", "4xx"},
		{"limiter_unavailable", "5xx"},
		{"usage_backlog", "5xx"},
		{"keystore_unavailable", "5xx"},
		{"limits_unavailable", "5xx"},
		{"registry_unavailable", "5xx"},
		{"upstream_error", "5xx"},
	}
	m.attrs = make(map[string]metric.MeasurementOption, len(reasonClasses))
	for _, rc := range reasonClasses {
		m.attrs[rc.reason] = metric.WithAttributeSet(attribute.NewSet(
			attribute.String("status_class", rc.class), attribute.String("reason", rc.reason)))
	}
	m.other = metric.WithAttributeSet(attribute.NewSet(
		attribute.String("status_class", "other"), attribute.String("reason", "other")))
	m.reportAttrs = map[reportAttr]metric.AddOption{}
	for _, lv := range []typev1.LimitLevel{typev1.LimitLevel_LIMIT_LEVEL_KEY, typev1.LimitLevel_LIMIT_LEVEL_MEMBER, typev1.LimitLevel_LIMIT_LEVEL_WORKSPACE} {
		for k := range limiterv1.LimitKind_name {
			kind := limiterv1.LimitKind(k)
			m.reportAttrs[reportAttr{lv, kind}] = metric.WithAttributeSet(attribute.NewSet(
				attribute.String("level", limitkey.LevelName(lv)), attribute.String("limit", limitkey.KindName(kind))))
		}
	}
}

// reportDenial counts a would-be denial by a report-mode limit.
func (m *metrics) reportDenial(ctx context.Context, lv typev1.LimitLevel, k limiterv1.LimitKind) {
	if lv == typev1.LimitLevel_LIMIT_LEVEL_UNSPECIFIED {
		lv = typev1.LimitLevel_LIMIT_LEVEL_KEY
	}
	opt, ok := m.reportAttrs[reportAttr{lv, k}]
	if !ok { // a level or kind newer than this edge
		opt = m.reportAttrs[reportAttr{typev1.LimitLevel_LIMIT_LEVEL_KEY, limiterv1.LimitKind_LIMIT_KIND_UNSPECIFIED}]
	}
	m.reportDenials.Add(ctx, 1, opt)
}

func (m *metrics) record(ctx context.Context, reason string, seconds float64) {
	opt, ok := m.attrs[reason]
	if !ok {
		opt = m.other
	}
	m.requests.Add(ctx, 1, opt)
	m.duration.Record(ctx, seconds, opt)
}
