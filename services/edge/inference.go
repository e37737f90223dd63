package edge

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	limiterv1 "github.com/keygate/keygate/gen/keygate/limiter/v1"
	usagev1 "github.com/keygate/keygate/gen/keygate/usage/v1"
	"github.com/keygate/keygate/internal/keycache"
	"github.com/keygate/keygate/internal/limitkey"
)

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	if ep := endpoints[r.URL.Path]; ep != nil {
		s.serveInference(w, r, ep)
		return
	}
	switch path := r.URL.Path; {
	case path == "/v1/models":
		s.serveModels(w, r, "")
	case strings.HasPrefix(path, "/v1/models/") && len(path) > len("/v1/models/"):
		s.serveModels(w, r, path[len("/v1/models/"):])
	case path == "/healthz":
		s.serveHealth(w)
	default:
		c := s.begin(w, r, "unknown route", openaiShape{})
		defer c.end()
		c.fail(apiError{http.StatusNotFound, "invalid_request_error", "not_found",
			"Unknown path " + r.URL.Path + ": the edge serves /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/responses, /v1/messages, /v1/messages/count_tokens, /v1/models and /v1/models/{id}."})
	}
}

func (s *Server) serveHealth(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "application/json")
	if s.models.get() == nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte(`{"status":"loading model registry"}` + "\n"))
		return
	}
	_, _ = w.Write([]byte(`{"status":"ok"}` + "\n"))
}

// call is the state of one request.
type call struct {
	s     *Server
	w     http.ResponseWriter
	r     *http.Request
	ctx   context.Context
	span  trace.Span
	start time.Time
	id    string
	shape answerShape
	ver   *keycache.Verified
	key   *keystorev1.Key // ver's key
	// item is the request's Check item, once built; res its answer.
	item *limiterv1.CheckItem
	res  *limiterv1.CheckResult
	// reported names the report-mode limits that would have denied the
	// request ("workspace/tpd"), for its usage record and the key's use.
	reported []string
	reason   string
	status   int
	// rt, est and reserved are set once the request is admitted;
	// accounted once its usage was settled and recorded, which happens
	// before the last byte of the answer leaves, so that no answered
	// request goes unrecorded whatever moment the edge dies at.
	rt        *route
	est       tokens
	reserved  bool
	accounted bool
}

func (s *Server) begin(w http.ResponseWriter, r *http.Request, name string, shape answerShape) *call {
	ctx := s.prop.Extract(r.Context(), propagation.HeaderCarrier(r.Header))
	ctx, span := s.tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindServer))
	c := &call{s: s, w: w, r: r, ctx: ctx, span: span, start: s.clock.Now(), shape: shape,
		id: s.idPfx + "_" + strconv.FormatUint(s.idSeq.Add(1), 36)}
	w.Header()["X-Request-Id"] = []string{c.id}
	return c
}

func (c *call) end() {
	c.s.m.record(c.ctx, c.reason, c.s.clock.Now().Sub(c.start).Seconds())
	if c.span.IsRecording() {
		c.span.SetAttributes(
			attribute.Int("http.response.status_code", c.status),
			attribute.String("keygate.reason", c.reason),
			attribute.String("keygate.request_id", c.id))
	}
	c.span.End()
}

// fail answers with e; the headers carry the Check result if there was one.
func (c *call) fail(e apiError) {
	c.failRetry(e, 0, false)
}

func (c *call) failRetry(e apiError, retry time.Duration, noRetry bool) {
	h := c.w.Header()
	c.shape.rateHeaders(h, c.res, c.s.clock.Now())
	h["Content-Type"] = []string{"application/json"}
	if retry > 0 {
		h["Retry-After"] = []string{retrySeconds(retry)}
	}
	if noRetry {
		// Tells OpenAI's and Anthropic's SDKs not to retry what only a
		// person can fix.
		h["X-Should-Retry"] = []string{"false"}
	}
	c.status, c.reason = e.status, e.code
	c.w.WriteHeader(e.status)
	_, _ = c.w.Write(c.shape.errorBody(e))
}

// answerHeaders starts a successful answer: the limits, and ct as its
// content type.
func (c *call) answerHeaders(status int, ct string) http.Header {
	h := c.w.Header()
	c.shape.rateHeaders(h, c.res, c.s.clock.Now())
	h["Content-Type"] = []string{ct}
	c.status, c.reason = status, "ok"
	return h
}

// serveInference is the one path of every inference request, whatever its
// dialect: authenticate, parse, find the model, check the limits, forward,
// then settle and account.
func (s *Server) serveInference(w http.ResponseWriter, r *http.Request, ep *endpoint) {
	c := s.begin(w, r, ep.name, ep.d)
	defer c.end()
	if !c.authorize(http.MethodPost) {
		return
	}
	body, ok := c.readBody()
	if !ok {
		return
	}
	p, perr := ep.d.parse(body)
	if perr != nil {
		c.fail(*perr)
		return
	}
	rt, ok := c.route(p.model, ep)
	if !ok {
		return
	}
	ubody, err := ep.d.rewrite(body, p, rt.upstreamModel)
	if err != nil {
		c.fail(badRequest("We could not parse the JSON body of your request."))
		return
	}
	c.rt, c.est = rt, s.estimate(p)
	if ep.free {
		// Nothing to limit or account: the answer is all there is.
		c.accounted = true
		c.proxy(ep, p, ubody)
		return
	}
	if !c.admitBacklog() {
		return
	}
	if c.reserved, ok = c.check(rt, c.est); !ok {
		return
	}
	s.keyUse.note(c.key.GetWorkspace(), c.key.GetId(), c.start, c.reported)
	c.account(c.proxy(ep, p, ubody))
}

// authorize answers unless the request uses method and a usable key.
func (c *call) authorize(method string) bool {
	if c.r.Method != method {
		c.fail(apiError{http.StatusMethodNotAllowed, "invalid_request_error", "method_not_allowed", "Use " + method + " for " + c.r.URL.Path + "."})
		return false
	}
	return c.authenticate()
}

// catalog is the current model registry; nil (answered) before it loaded.
func (c *call) catalog() *catalog {
	cat := c.s.models.get()
	if cat == nil {
		c.fail(apiError{http.StatusServiceUnavailable, "server_error", "registry_unavailable",
			"The model registry has not loaded yet; please retry shortly."})
	}
	return cat
}

// route finds the model the key asked for, and answers when it may not be
// used through ep.
func (c *call) route(model string, ep *endpoint) (*route, bool) {
	cat := c.catalog()
	if cat == nil {
		return nil, false
	}
	rt := cat.byID[model]
	if rt == nil {
		c.fail(modelNotFound(model))
		return nil, false
	}
	if allowed := c.key.GetAllowedModels(); len(allowed) > 0 && !slices.Contains(allowed, rt.id) {
		c.fail(apiError{http.StatusForbidden, "permission_error", "model_not_allowed",
			"This key may not use the model '" + rt.id + "'. GET /v1/models lists the models it may use."})
		return nil, false
	}
	if rt.up.kinds&ep.kind == 0 {
		c.fail(badRequest("The model '" + rt.id + "' is served by a provider that does not speak " + ep.name +
			"; send this request to " + endpointFor(rt.up.kinds) + "."))
		return nil, false
	}
	return rt, true
}

// admitBacklog refuses a request while the ledger is too far behind to
// account for it; each transition is logged once.
func (c *call) admitBacklog() bool {
	if c.s.usage.full() {
		if c.s.backlogged.CompareAndSwap(false, true) {
			c.s.log.Error("edge: usage backlog full; refusing requests until the ledger catches up",
				"pending", c.s.usage.pending(), "limit", c.s.cfg.UsageBacklog)
		}
		c.failRetry(apiError{http.StatusServiceUnavailable, "server_error", "usage_backlog",
			"The usage ledger is behind, so the request was not admitted; please retry shortly."}, time.Second, false)
		return false
	}
	if c.s.backlogged.Load() && c.s.backlogged.CompareAndSwap(true, false) {
		c.s.log.Info("edge: usage backlog below its limit; admitting again", "pending", c.s.usage.pending())
	}
	return true
}

func cost(rt *route, t tokens) int64 {
	return rt.prices.Cost(t.input, t.output, t.cacheWrite, t.cacheRead).Micros()
}

// newItem is the Check item of one request: the key's template for the
// model (shared, so copied field by field: the sub-messages are shared,
// read only) with the request's reservation id and estimates.
func newItem(tpl *limiterv1.CheckItem, id string, tokens, costMicros int64) *limiterv1.CheckItem {
	return &limiterv1.CheckItem{
		ReservationId:       id,
		Key:                 tpl.GetKey(),
		Model:               tpl.GetModel(),
		Policy:              tpl.GetPolicy(),
		EstimatedTokens:     tokens,
		EstimatedCostMicros: costMicros,
		Workspace:           tpl.GetWorkspace(),
		Member:              tpl.GetMember(),
		Report:              tpl.GetReport(),
		Levels:              tpl.GetLevels(),
		Credits:             tpl.GetCredits(),
		AlertThresholds:     tpl.GetAlertThresholds(),
	}
}

// check runs the one limiter Check of the request, over every level of
// the key. It reports whether a reservation was made and whether to go on.
func (c *call) check(rt *route, est tokens) (reserved, ok bool) {
	tpl, err := c.ver.Item(rt.id, c.start)
	if err != nil {
		// The keystore sent levels the edge cannot read (a workspace's
		// credits): nothing the client can fix, and nothing to decide on.
		c.s.log.Error("edge: the key's limits cannot be built", "request_id", c.id, "err", err)
		c.fail(apiError{http.StatusServiceUnavailable, "server_error", "limits_unavailable",
			"The limits of this key could not be read, so the request was not admitted; please retry shortly."})
		return false, false
	}
	item := newItem(tpl, c.id, est.total(), cost(rt, est))
	c.item = item
	// A stalled limiter must not hang the request: past the timeout the
	// client retries the next owner or the request fails over.
	ctx, cancel := context.WithTimeout(c.ctx, c.s.cfg.LimiterTimeout)
	results, err := c.s.cfg.Limiter.Check(ctx, []*limiterv1.CheckItem{item})
	cancel()
	if err == nil && len(results) != 1 {
		err = errors.New("limiter answered " + strconv.Itoa(len(results)) + " results for 1 item")
	}
	if err != nil {
		return false, c.limiterFailed(err)
	}
	if c.s.limDown.CompareAndSwap(true, false) {
		c.s.log.Info("edge: limiter available again")
	}
	c.res = results[0]
	if len(c.res.GetReported()) > 0 {
		c.report(c.res.GetReported())
	}
	if !c.res.GetAllowed() {
		e, retry := denial(c.res, item.GetEstimatedTokens())
		c.w.Header()["X-Keygate-Limited-By"] = []string{limitkey.LimitedBy(c.res.GetDeniedLevel(), c.res.GetDeniedBy(), c.res.GetDeniedModel())}
		c.failRetry(e, retry, e.code == "insufficient_quota" || retry == 0)
		return false, false
	}
	return true, true
}

// report counts the report-mode limits that would have denied the request
// and keeps their names for its usage record and the key's use. Only
// requests a report-mode limit would refuse pay for it.
func (c *call) report(rs []*limiterv1.Reported) {
	c.reported = make([]string, 0, len(rs))
	for _, r := range rs {
		c.s.m.reportDenial(c.ctx, r.GetLevel(), r.GetKind())
		c.reported = append(c.reported, limitkey.LimitedBy(r.GetLevel(), r.GetKind(), r.GetModel()))
	}
}

// limiterFailed handles a Check that got no answer; it reports whether to
// go on unchecked (fail open).
func (c *call) limiterFailed(err error) bool {
	// The limiter may have reserved before the answer was lost: releasing
	// an unknown reservation is harmless, keeping a stray one would charge
	// the key for a request never served.
	c.s.settle.releaseLost(c.ctx, c.release(), 3*c.s.cfg.LimiterTimeout)
	if c.r.Context().Err() != nil {
		// The client left; that says nothing about the limiter.
		c.status, c.reason = 499, "client_cancelled"
		return false
	}
	if c.s.limDown.CompareAndSwap(false, true) {
		c.s.log.Error("edge: limiter unavailable", "fail_open", c.s.cfg.FailOpen, "err", err)
	}
	if !c.s.cfg.FailOpen {
		c.fail(apiError{http.StatusServiceUnavailable, "server_error", "limiter_unavailable",
			"The rate limiter is unavailable, so the request was not admitted; please retry shortly."})
		return false
	}
	c.s.m.failOpen.Add(c.ctx, 1)
	return true
}

// outcome is what a forwarded request used.
type outcome struct {
	used    tokens
	status  usagev1.RequestStatus
	release bool // nothing was produced: free the reservation
}

// account settles the reservation and records the usage of out, once.
func (c *call) account(out outcome) {
	if c.accounted {
		return
	}
	c.accounted = true
	key, rt := c.key, c.rt
	if c.reserved {
		if out.release {
			c.s.settle.add(c.ctx, settleOp{release: c.release()})
		} else {
			c.s.settle.add(c.ctx, settleOp{settle: &limiterv1.Settlement{
				ReservationId:    c.id,
				Key:              key.GetId(),
				Model:            rt.id,
				ActualTokens:     out.used.total(),
				ActualCostMicros: cost(rt, out.used),
				// As in the item: it names where the reservation was made.
				Workspace: c.item.GetWorkspace(),
				Member:    c.item.GetMember(),
			}})
		}
	}
	now := c.s.clock.Now()
	c.s.usage.add(&usagev1.UsageRecord{
		RequestId:        c.id,
		Key:              key.GetId(),
		Workspace:        key.GetWorkspace(),
		Owner:            key.GetOwner(),
		Model:            rt.id,
		PromptTokens:     out.used.input + out.used.cacheWrite + out.used.cacheRead,
		CompletionTokens: out.used.output,
		CacheWriteTokens: out.used.cacheWrite,
		CacheReadTokens:  out.used.cacheRead,
		Status:           out.status,
		Latency:          durationpb.New(now.Sub(c.start)),
		Time:             timestamppb.New(now),
		// The prices the budget was just settled at: the ledger charges
		// the same ones.
		InputPricePerMillionUsd:      rt.priced.input,
		OutputPricePerMillionUsd:     rt.priced.output,
		CacheWritePricePerMillionUsd: rt.priced.cacheWrite,
		CacheReadPricePerMillionUsd:  rt.priced.cacheRead,
		PricesAsOf:                   rt.priced.asOf,
		Reported:                     c.reported,
		Credits:                      c.item.GetCredits() != nil,
		RequestLogCap:                c.ver.Levels.Workspace.GetRequestLogCap(),
	})
}

// release frees the request's reservation, wherever the item was routed.
func (c *call) release() *limiterv1.Release {
	return &limiterv1.Release{ReservationId: c.id, Key: c.key.GetId(),
		Workspace: c.item.GetWorkspace(), Member: c.item.GetMember()}
}
