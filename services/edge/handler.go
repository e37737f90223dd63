package edge

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"io"
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
	typev1 "github.com/keygate/keygate/gen/keygate/type/v1"
	usagev1 "github.com/keygate/keygate/gen/keygate/usage/v1"
	"github.com/keygate/keygate/pkg/money"
)

// endpoint is one inference route.
type endpoint struct {
	name   string // span name
	suffix string // path after the provider's base URL
	chat   bool
	embed  bool
}

var (
	chatEndpoint       = &endpoint{name: "POST /v1/chat/completions", suffix: "/chat/completions", chat: true}
	completionEndpoint = &endpoint{name: "POST /v1/completions", suffix: "/completions"}
	embeddingEndpoint  = &endpoint{name: "POST /v1/embeddings", suffix: "/embeddings", embed: true}
)

// maxUpstreamBody bounds a non-streamed provider answer held in memory.
const maxUpstreamBody = 64 << 20

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/v1/chat/completions":
		s.serveInference(w, r, chatEndpoint)
	case "/v1/completions":
		s.serveInference(w, r, completionEndpoint)
	case "/v1/embeddings":
		s.serveInference(w, r, embeddingEndpoint)
	case "/v1/models":
		s.serveModels(w, r, "")
	case "/healthz":
		s.serveHealth(w)
	default:
		if id, ok := strings.CutPrefix(r.URL.Path, "/v1/models/"); ok && id != "" {
			s.serveModels(w, r, id)
			return
		}
		c := s.begin(w, r, "unknown route")
		defer c.end()
		c.fail(apiError{http.StatusNotFound, "invalid_request_error", "not_found",
			"Unknown path " + r.URL.Path + ": the edge serves /v1/chat/completions, /v1/completions, /v1/embeddings and /v1/models."})
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
	s      *Server
	w      http.ResponseWriter
	r      *http.Request
	ctx    context.Context
	span   trace.Span
	start  time.Time
	id     string
	key    *keystorev1.Key
	res    *limiterv1.CheckResult
	reason string
	status int
	// rt and reserved are set once the request is admitted; accounted once
	// its usage was settled and recorded, which happens before the last
	// byte of the answer leaves, so that no answered request goes
	// unrecorded whatever moment the edge dies at.
	rt        *route
	reserved  bool
	accounted bool
}

func (s *Server) begin(w http.ResponseWriter, r *http.Request, name string) *call {
	ctx := s.prop.Extract(r.Context(), propagation.HeaderCarrier(r.Header))
	ctx, span := s.tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindServer))
	c := &call{s: s, w: w, r: r, ctx: ctx, span: span, start: s.clock.Now(),
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
	setRateHeaders(h, c.res)
	h["Content-Type"] = []string{"application/json"}
	if retry > 0 {
		h["Retry-After"] = []string{retrySeconds(retry)}
	}
	if noRetry {
		// Tells OpenAI's SDKs not to retry what only a person can fix.
		h["X-Should-Retry"] = []string{"false"}
	}
	c.status, c.reason = e.status, e.code
	c.w.WriteHeader(e.status)
	_, _ = c.w.Write(e.body())
}

// bearer is the presented key: "Authorization: Bearer <key>", or the
// "api-key" header of Azure-style clients.
func bearer(r *http.Request) string {
	if a := r.Header.Get("Authorization"); len(a) > 7 && strings.EqualFold(a[:7], "bearer ") {
		return strings.TrimSpace(a[7:])
	}
	return strings.TrimSpace(r.Header.Get("Api-Key"))
}

// authenticate verifies the key and answers when it is not usable.
func (c *call) authenticate() bool {
	secret := bearer(c.r)
	if secret == "" {
		c.fail(apiError{http.StatusUnauthorized, "invalid_request_error", "invalid_api_key",
			"You didn't provide an API key. Send it as 'Authorization: Bearer <key>' (or in the 'api-key' header)."})
		return false
	}
	key, err := c.s.cfg.Verifier.Verify(c.ctx, secret)
	switch {
	case errors.Is(err, c.s.cfg.ErrInvalidKey):
		c.fail(invalidKey())
		return false
	case err != nil:
		// At most one line a minute: an outage is every request at once
		// (the key cache logs its own state changes).
		now := c.s.clock.Now().UnixNano()
		if last := c.s.ksLogged.Load(); now-last >= int64(time.Minute) && c.s.ksLogged.CompareAndSwap(last, now) {
			c.s.log.Warn("edge: key verification unavailable; answering 503 keystore_unavailable for keys it cannot verify", "request_id", c.id, "err", err)
		}
		c.fail(apiError{http.StatusServiceUnavailable, "server_error", "keystore_unavailable",
			"The key service is unavailable; please retry shortly."})
		return false
	}
	// The verifier checks these; checking again is cheap and guards against
	// a cache that missed an expiry.
	if st := key.GetState(); st == keystorev1.KeyState_KEY_STATE_DISABLED || st == keystorev1.KeyState_KEY_STATE_EXPIRED ||
		(key.GetExpireTime() != nil && !c.s.clock.Now().Before(key.GetExpireTime().AsTime())) {
		c.fail(invalidKey())
		return false
	}
	if key.GetKind() == keystorev1.KeyKind_KEY_KIND_ADMIN {
		c.fail(apiError{http.StatusForbidden, "permission_error", "permission_denied",
			"Admin keys manage keygate and cannot be used for inference; use a standard key."})
		return false
	}
	c.key = key
	return true
}

func invalidKey() apiError {
	return apiError{http.StatusUnauthorized, "invalid_request_error", "invalid_api_key",
		"Incorrect API key provided, or the key is disabled, expired or deleted. Check the key in the keygate console."}
}

// request is what the edge reads of an inference body; everything else
// passes through untouched.
type request struct {
	Model               string          `json:"model"`
	Stream              bool            `json:"stream"`
	StreamOptions       json.RawMessage `json:"stream_options"`
	MaxTokens           *int64          `json:"max_tokens"`
	MaxCompletionTokens *int64          `json:"max_completion_tokens"`
	N                   *int64          `json:"n"`
	Messages            json.RawMessage `json:"messages"`
	Prompt              json.RawMessage `json:"prompt"`
	Input               json.RawMessage `json:"input"`
}

// readBody reads the body under the size cap.
func (c *call) readBody() ([]byte, bool) {
	limit := c.s.cfg.MaxBodyBytes
	if c.r.ContentLength > limit {
		c.fail(tooLarge(limit))
		return nil, false
	}
	var buf bytes.Buffer
	if c.r.ContentLength > 0 {
		buf.Grow(int(c.r.ContentLength) + 1)
	}
	_, err := buf.ReadFrom(http.MaxBytesReader(c.w, c.r.Body, limit))
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			c.fail(tooLarge(limit))
		} else {
			c.fail(badRequest("Could not read the request body."))
		}
		return nil, false
	}
	return buf.Bytes(), true
}

func tooLarge(limit int64) apiError {
	return apiError{http.StatusRequestEntityTooLarge, "invalid_request_error", "request_too_large",
		"The request body is larger than the limit of " + strconv.FormatInt(limit, 10) + " bytes."}
}

// parse decodes and validates the body for ep.
func parse(body []byte, ep *endpoint) (*request, *apiError) {
	var req request
	if err := json.Unmarshal(body, &req); err != nil {
		msg := "We could not parse the JSON body of your request: it must be a JSON object."
		if te, ok := errors.AsType[*json.UnmarshalTypeError](err); ok && te.Field != "" {
			msg = "Invalid type for '" + te.Field + "': got a JSON " + te.Value + "."
		}
		e := badRequest(msg)
		return nil, &e
	}
	fail := func(msg string) (*request, *apiError) {
		e := badRequest(msg)
		return nil, &e
	}
	if k, ok := caseVariant(body); ok {
		return fail("Unrecognized request argument '" + k + "': JSON keys are case-sensitive.")
	}
	switch {
	case req.Model == "":
		return fail("You must provide a model parameter.")
	case ep.chat && !nonEmptyArray(req.Messages):
		return fail("'messages' must be a non-empty array.")
	case !ep.chat && !ep.embed && absent(req.Prompt):
		return fail("You must provide a 'prompt' parameter.")
	case ep.embed && absent(req.Input):
		return fail("You must provide an 'input' parameter.")
	case req.MaxTokens != nil && *req.MaxTokens < 0, req.MaxCompletionTokens != nil && *req.MaxCompletionTokens < 0:
		return fail("'max_tokens' must not be negative.")
	case req.N != nil && (*req.N < 1 || *req.N > 128):
		return fail("'n' must be between 1 and 128.")
	}
	if !absent(req.StreamOptions) && bytes.TrimSpace(req.StreamOptions)[0] != '{' {
		return fail("'stream_options' must be an object.")
	}
	return &req, nil
}

// requestKeys are the JSON names of request's fields.
var requestKeys = []string{"model", "stream", "stream_options", "max_tokens", "max_completion_tokens", "n", "messages", "prompt", "input"}

// skipJSON decodes nothing; it lets caseVariant list keys without copying
// their values.
type skipJSON struct{}

func (*skipJSON) UnmarshalJSON([]byte) error { return nil }

// caseVariant finds a top-level key that encoding/json folds onto a field of
// request without being its exact name. Providers read keys exactly, so
// {"model":"a","Model":"b"} would be authorised and priced as b but served
// as a.
func caseVariant(body []byte) (string, bool) {
	var keys map[string]skipJSON
	if json.Unmarshal(body, &keys) != nil {
		return "", false
	}
	for k := range keys {
		for _, f := range requestKeys {
			if k != f && strings.EqualFold(k, f) {
				return k, true
			}
		}
	}
	return "", false
}

func absent(raw json.RawMessage) bool {
	t := bytes.TrimSpace(raw)
	return len(t) == 0 || string(t) == "null"
}

func nonEmptyArray(raw json.RawMessage) bool {
	t := bytes.TrimSpace(raw)
	return len(t) >= 2 && t[0] == '[' && len(bytes.TrimSpace(t[1:len(t)-1])) > 0
}

// wantsUsage says whether the client asked for the final usage chunk.
func (r *request) wantsUsage() bool {
	var so struct {
		IncludeUsage bool `json:"include_usage"`
	}
	return !absent(r.StreamOptions) && json.Unmarshal(r.StreamOptions, &so) == nil && so.IncludeUsage
}

// upstreamBody is the body sent to the provider: the client's own, unless
// the model is renamed or a stream needs stream_options.include_usage.
func upstreamBody(body []byte, req *request, rt *route, ep *endpoint) ([]byte, error) {
	stream := req.Stream && !ep.embed
	if rt.upstreamModel == req.Model && (!stream || req.wantsUsage()) {
		return body, nil
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(body, &m); err != nil {
		return nil, err
	}
	m["model"], _ = json.Marshal(rt.upstreamModel)
	if stream {
		so := map[string]json.RawMessage{}
		if !absent(req.StreamOptions) {
			if err := json.Unmarshal(req.StreamOptions, &so); err != nil {
				return nil, err
			}
		}
		so["include_usage"] = json.RawMessage("true")
		m["stream_options"], _ = json.Marshal(so)
	}
	return json.Marshal(m)
}

// maxEstimate bounds a completion estimate: far above any model's output,
// and small enough that the sum with the prompt estimate and its cost at any
// price stay within int64.
const maxEstimate = 1 << 40

// estimate is what Check reserves.
type estimate struct {
	prompt     int64
	completion int64 // the most the answer may use
}

func (s *Server) estimate(req *request, ep *endpoint) estimate {
	raw := req.Messages
	switch {
	case ep.embed:
		raw = req.Input
	case !ep.chat:
		raw = req.Prompt
	}
	// A cheap estimate (4 bytes a token); Settle corrects it.
	e := estimate{prompt: int64(len(raw))/4 + 1}
	if ep.embed {
		return e
	}
	e.completion = s.cfg.DefaultMaxTokens
	if req.MaxCompletionTokens != nil && *req.MaxCompletionTokens > 0 {
		e.completion = *req.MaxCompletionTokens
	} else if req.MaxTokens != nil && *req.MaxTokens > 0 {
		e.completion = *req.MaxTokens
	}
	// max_tokens is the client's to choose: saturate rather than let a huge
	// value (times n) overflow into a negative reservation.
	e.completion = min(e.completion, maxEstimate)
	if req.N != nil && *req.N > 1 {
		e.completion = min(e.completion*(*req.N), maxEstimate)
	}
	return e
}

func cost(rt *route, prompt, completion int64) int64 {
	return (money.Cost(prompt, rt.inPrice) + money.Cost(completion, rt.outPrice)).Micros()
}

func (s *Server) serveInference(w http.ResponseWriter, r *http.Request, ep *endpoint) {
	c := s.begin(w, r, ep.name)
	defer c.end()
	if r.Method != http.MethodPost {
		c.fail(apiError{http.StatusMethodNotAllowed, "invalid_request_error", "method_not_allowed", "Use POST for " + r.URL.Path + "."})
		return
	}
	if !c.authenticate() {
		return
	}
	body, ok := c.readBody()
	if !ok {
		return
	}
	req, perr := parse(body, ep)
	if perr != nil {
		c.fail(*perr)
		return
	}
	cat := s.models.get()
	if cat == nil {
		c.fail(apiError{http.StatusServiceUnavailable, "server_error", "registry_unavailable",
			"The model registry has not loaded yet; please retry shortly."})
		return
	}
	rt := cat.byID[req.Model]
	if rt == nil {
		c.fail(modelNotFound(req.Model))
		return
	}
	if allowed := c.key.GetAllowedModels(); len(allowed) > 0 && !slices.Contains(allowed, rt.id) {
		c.fail(apiError{http.StatusForbidden, "permission_error", "model_not_allowed",
			"This key may not use the model '" + rt.id + "'. GET /v1/models lists the models it may use."})
		return
	}
	ubody, err := upstreamBody(body, req, rt, ep)
	if err != nil {
		c.fail(badRequest("We could not parse the JSON body of your request."))
		return
	}
	est := s.estimate(req, ep)
	if c.s.usage.full() {
		c.backlogFull()
		return
	}
	if c.s.backlogged.Load() && c.s.backlogged.CompareAndSwap(true, false) {
		c.s.log.Info("edge: usage backlog below its limit; admitting again", "pending", c.s.usage.pending())
	}
	reserved, ok := c.check(rt, est)
	if !ok {
		return
	}
	s.keyUse.note(c.key.GetWorkspace(), c.key.GetId(), c.start)
	c.forward(rt, req, ep, ubody, est, reserved)
}

// backlogFull refuses a request while the ledger is too far behind to
// account for it; the transition is logged once.
func (c *call) backlogFull() {
	if c.s.backlogged.CompareAndSwap(false, true) {
		c.s.log.Error("edge: usage backlog full; refusing requests until the ledger catches up",
			"pending", c.s.usage.pending(), "limit", c.s.cfg.UsageBacklog)
	}
	c.failRetry(apiError{http.StatusServiceUnavailable, "server_error", "usage_backlog",
		"The usage ledger is behind, so the request was not admitted; please retry shortly."}, time.Second, false)
}

// check runs the one limiter Check of the request. It reports whether a
// reservation was made and whether to go on.
func (c *call) check(rt *route, est estimate) (reserved, ok bool) {
	key := c.key
	pol := &typev1.Policy{GlobalLimits: key.GetGlobalLimits(), TokenCap: key.GetTokenCap(), Budget: key.GetBudget()}
	for _, ml := range key.GetModelLimits() {
		if ml.GetModel() == rt.id {
			pol.ModelLimits = []*typev1.ModelLimits{ml}
			break
		}
	}
	item := &limiterv1.CheckItem{
		ReservationId:       c.id,
		Key:                 key.GetId(),
		Model:               rt.id,
		Policy:              pol,
		EstimatedTokens:     est.prompt + est.completion,
		EstimatedCostMicros: cost(rt, est.prompt, est.completion),
	}
	// A stalled limiter must not hang the request: past the timeout the
	// client retries the next owner or the request fails over.
	ctx, cancel := context.WithTimeout(c.ctx, c.s.cfg.LimiterTimeout)
	results, err := c.s.cfg.Limiter.Check(ctx, []*limiterv1.CheckItem{item})
	cancel()
	if err == nil && len(results) != 1 {
		err = errors.New("limiter answered " + strconv.Itoa(len(results)) + " results for 1 item")
	}
	if err != nil {
		// The limiter may have reserved before the answer was lost:
		// releasing an unknown reservation is harmless, keeping a stray
		// one would charge the key for a request never served.
		c.s.settle.add(c.ctx, settleOp{release: &limiterv1.Release{ReservationId: c.id, Key: key.GetId()}})
		if c.r.Context().Err() != nil {
			// The client left; that says nothing about the limiter.
			c.status, c.reason = 499, "client_cancelled"
			return false, false
		}
		if c.s.limDown.CompareAndSwap(false, true) {
			c.s.log.Error("edge: limiter unavailable", "fail_open", c.s.cfg.FailOpen, "err", err)
		}
		if !c.s.cfg.FailOpen {
			c.fail(apiError{http.StatusServiceUnavailable, "server_error", "limiter_unavailable",
				"The rate limiter is unavailable, so the request was not admitted; please retry shortly."})
			return false, false
		}
		c.s.m.failOpen.Add(c.ctx, 1)
		return false, true
	}
	if c.s.limDown.CompareAndSwap(true, false) {
		c.s.log.Info("edge: limiter available again")
	}
	c.res = results[0]
	if !c.res.GetAllowed() {
		e, retry := denial(c.res, item.GetEstimatedTokens())
		c.failRetry(e, retry, e.code == "insufficient_quota" || retry == 0)
		return false, false
	}
	return true, true
}

type usageJSON struct {
	PromptTokens     int64 `json:"prompt_tokens"`
	CompletionTokens int64 `json:"completion_tokens"`
}

// outcome is what a forwarded request used.
type outcome struct {
	prompt, completion int64
	status             usagev1.RequestStatus
	release            bool // nothing was produced: free the reservation
	// promptEstimate is what a request cut off by its client is charged.
	promptEstimate int64
}

func (c *call) forward(rt *route, req *request, ep *endpoint, body []byte, est estimate, reserved bool) {
	c.rt, c.reserved = rt, reserved
	c.account(c.proxy(rt, req, ep, body, est))
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
			c.s.settle.add(c.ctx, settleOp{release: &limiterv1.Release{ReservationId: c.id, Key: key.GetId()}})
		} else {
			c.s.settle.add(c.ctx, settleOp{settle: &limiterv1.Settlement{
				ReservationId:    c.id,
				Key:              key.GetId(),
				Model:            rt.id,
				ActualTokens:     out.prompt + out.completion,
				ActualCostMicros: cost(rt, out.prompt, out.completion),
			}})
		}
	}
	now := c.s.clock.Now()
	c.s.usage.add(&usagev1.UsageRecord{
		RequestId:           c.id,
		Key:                 key.GetId(),
		Workspace:           key.GetWorkspace(),
		Owner:               key.GetOwner(),
		Model:               rt.id,
		PromptTokens:        out.prompt,
		CompletionTokens:    out.completion,
		Status:              out.status,
		Latency:             durationpb.New(now.Sub(c.start)),
		Time:                timestamppb.New(now),
		BudgetResetPeriod:   int32(key.GetBudget().GetResetPeriod()),
		TokenCapResetPeriod: int32(key.GetTokenCap().GetResetPeriod()),
	})
}

// proxy sends the request upstream and answers the client.
func (c *call) proxy(rt *route, req *request, ep *endpoint, body []byte, est estimate) outcome {
	failed := outcome{status: usagev1.RequestStatus_REQUEST_STATUS_UPSTREAM_ERROR, release: true, promptEstimate: est.prompt}
	if rt.up.credErr != nil {
		c.s.log.Error("edge: provider credential missing", "provider", rt.provider, "err", rt.up.credErr)
		c.fail(upstreamError(http.StatusBadGateway, "The provider of model '"+rt.id+"' is not configured with a credential."))
		return failed
	}
	ctx, cancel := context.WithTimeout(c.ctx, c.s.cfg.RequestTimeout)
	defer cancel()
	ureq, err := http.NewRequestWithContext(ctx, http.MethodPost, rt.up.base+ep.suffix, bytes.NewReader(body))
	if err != nil {
		c.fail(upstreamError(http.StatusBadGateway, "The provider of model '"+rt.id+"' has an invalid base URL."))
		return failed
	}
	// A fresh header: nothing of the client's (its key, hop-by-hop headers)
	// goes upstream.
	ureq.Header = http.Header{"Content-Type": {"application/json"}}
	if req.Stream && !ep.embed {
		ureq.Header["Accept"] = []string{"text/event-stream"}
	} else {
		ureq.Header["Accept"] = []string{"application/json"}
	}
	if rt.up.apiKey != "" {
		ureq.Header["Authorization"] = []string{"Bearer " + rt.up.apiKey}
	}
	resp, err := rt.up.client.Do(ureq)
	if err != nil {
		return c.upstreamFailed(ctx, rt, err, failed)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return c.upstreamStatus(resp, rt, failed)
	}
	if req.Stream && !ep.embed && strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		return c.stream(resp, req, est)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxUpstreamBody))
	if err != nil {
		return c.upstreamFailed(ctx, rt, err, failed)
	}
	out := outcome{status: usagev1.RequestStatus_REQUEST_STATUS_OK}
	var env struct {
		Usage *usageJSON `json:"usage"`
	}
	if json.Unmarshal(data, &env) == nil && env.Usage != nil {
		out.prompt, out.completion = env.Usage.PromptTokens, env.Usage.CompletionTokens
	} else {
		out.prompt, out.completion = est.prompt, min(int64(len(data))/4, est.completion)
	}
	h := c.w.Header()
	setRateHeaders(h, c.res)
	h["Content-Type"] = []string{cmp.Or(resp.Header.Get("Content-Type"), "application/json")}
	h["Content-Length"] = []string{strconv.Itoa(len(data))}
	c.status, c.reason = resp.StatusCode, "ok"
	c.account(out)
	c.w.WriteHeader(resp.StatusCode)
	_, _ = c.w.Write(data)
	return out
}

// upstreamFailed answers a transport failure: the client left, the
// deadline passed (504) or the provider could not be reached (502).
// maxSSELine bounds one streamed event line from a provider.
const maxSSELine = 1 << 20

var errSSELineTooLong = errors.New("provider sent a streamed line over 1 MiB")

func (c *call) upstreamFailed(ctx context.Context, rt *route, err error, failed outcome) outcome {
	switch {
	case c.r.Context().Err() != nil:
		// The provider was asked and may bill the prompt: the request
		// counts, it is not released (which would let a client that
		// always hangs up escape its request limits).
		c.status, c.reason = 499, "client_cancelled"
		failed.status = usagev1.RequestStatus_REQUEST_STATUS_CLIENT_CANCELLED
		failed.release = false
		failed.prompt = failed.promptEstimate
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		c.fail(upstreamError(http.StatusGatewayTimeout,
			"The provider of model '"+rt.id+"' did not answer within "+c.s.cfg.RequestTimeout.String()+"."))
	default:
		c.s.log.Warn("edge: provider unreachable", "request_id", c.id, "provider", rt.provider, "err", err)
		c.fail(upstreamError(http.StatusBadGateway, "The provider of model '"+rt.id+"' could not be reached."))
	}
	return failed
}

// upstreamStatus answers a provider's error status. Its 4xx answers (bad
// parameters, its own rate limits) pass through; 5xx and credential
// failures become 502, since they are not the client's to fix.
func (c *call) upstreamStatus(resp *http.Response, rt *route, failed outcome) outcome {
	if resp.StatusCode >= 500 || resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden || resp.StatusCode < 400 {
		c.s.log.Warn("edge: provider error", "request_id", c.id, "provider", rt.provider, "status", resp.StatusCode)
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
		c.fail(upstreamError(http.StatusBadGateway,
			"The provider of model '"+rt.id+"' answered with status "+strconv.Itoa(resp.StatusCode)+"."))
		return failed
	}
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	h := c.w.Header()
	setRateHeaders(h, c.res)
	h["Content-Type"] = []string{cmp.Or(resp.Header.Get("Content-Type"), "application/json")}
	c.status, c.reason = resp.StatusCode, "upstream_client_error"
	c.w.WriteHeader(resp.StatusCode)
	_, _ = c.w.Write(data)
	return failed
}

var (
	dataPrefix = []byte("data:")
	doneMarker = []byte("[DONE]")
	usageField = []byte(`"usage"`)
)

// stream passes an SSE answer through event by event, flushing each. It
// takes usage from the final usage chunk (dropped when the client did not
// ask for it) and, when the answer ends early, estimates the completion
// from the chunks sent, capped by the reservation.
func (c *call) stream(resp *http.Response, req *request, est estimate) outcome {
	h := c.w.Header()
	setRateHeaders(h, c.res)
	h["Content-Type"] = []string{resp.Header.Get("Content-Type")}
	h["Cache-Control"] = []string{"no-cache"}
	h["X-Accel-Buffering"] = []string{"no"}
	c.status, c.reason = http.StatusOK, "ok"
	c.w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(c.w)
	// A client that stops reading must not hold the stream forever. A
	// deadline is wall-clock time, not the injected clock's.
	_ = rc.SetWriteDeadline(time.Now().Add(c.s.cfg.RequestTimeout))
	clientUsage := req.wantsUsage()

	var (
		usage     *usageJSON
		chunks    int64
		skip      bool
		clientErr error
		long      []byte
	)
	br := bufio.NewReaderSize(resp.Body, 16<<10)
	var readErr error
	for clientErr == nil {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			long = append(long[:0], line...)
			for errors.Is(err, bufio.ErrBufferFull) && len(long) <= maxSSELine {
				line, err = br.ReadSlice('\n')
				long = append(long, line...)
			}
			if len(long) > maxSSELine {
				// A provider that never ends its line would grow this
				// without bound: end the stream as an upstream failure.
				readErr = errSSELineTooLong
				break
			}
			line = long
		}
		if len(line) > 0 {
			if isDone(line) {
				// The answer is complete: account for it before the
				// client reads its end.
				c.account(streamOutcome(usage, chunks, est))
			}
			clientErr = c.streamLine(rc, line, clientUsage, &skip, &chunks, &usage)
		}
		if err != nil {
			readErr = err
			break
		}
	}
	out := outcome{status: usagev1.RequestStatus_REQUEST_STATUS_OK}
	switch {
	case clientErr != nil || c.r.Context().Err() != nil:
		out.status = usagev1.RequestStatus_REQUEST_STATUS_CLIENT_CANCELLED
		c.status, c.reason = 499, "client_cancelled"
	case readErr != io.EOF:
		c.s.log.Warn("edge: provider stream broke off", "request_id", c.id, "err", readErr)
		out.status = usagev1.RequestStatus_REQUEST_STATUS_UPSTREAM_ERROR
		c.reason = "upstream_error"
	}
	u := streamOutcome(usage, chunks, est)
	out.prompt, out.completion = u.prompt, u.completion
	return out
}

// streamOutcome is what a stream used: the provider's usage if it sent
// it, else the prompt estimate and one token per chunk delivered, capped
// by the completion estimate.
func streamOutcome(usage *usageJSON, chunks int64, est estimate) outcome {
	out := outcome{status: usagev1.RequestStatus_REQUEST_STATUS_OK}
	if usage != nil {
		out.prompt, out.completion = usage.PromptTokens, usage.CompletionTokens
	} else {
		out.prompt, out.completion = est.prompt, min(chunks, est.completion)
	}
	return out
}

// isDone reports whether line is the "data: [DONE]" that ends a stream.
func isDone(line []byte) bool {
	data, ok := bytes.CutPrefix(bytes.TrimRight(line, "\r\n"), dataPrefix)
	return ok && bytes.Equal(bytes.TrimLeft(data, " "), doneMarker)
}

// streamLine handles one line of an SSE answer; it returns the client's
// write error.
func (c *call) streamLine(rc *http.ResponseController, line []byte, clientUsage bool, skip *bool, chunks *int64, usage **usageJSON) error {
	content := bytes.TrimRight(line, "\r\n")
	if len(content) == 0 { // the end of an event
		if *skip {
			*skip = false
			return nil
		}
		if _, err := c.w.Write(line); err != nil {
			return err
		}
		return rc.Flush()
	}
	if *skip {
		return nil
	}
	if data, ok := bytes.CutPrefix(content, dataPrefix); ok {
		data = bytes.TrimLeft(data, " ")
		usageOnly := false
		if bytes.Contains(data, usageField) {
			var env struct {
				Choices []json.RawMessage `json:"choices"`
				Usage   *usageJSON        `json:"usage"`
			}
			if json.Unmarshal(data, &env) == nil && env.Usage != nil {
				*usage = env.Usage
				usageOnly = len(env.Choices) == 0
			}
		}
		if usageOnly && !clientUsage {
			*skip = true
			return nil
		}
		if _, err := c.w.Write(line); err != nil {
			return err
		}
		// A chunk is a token the client received once written, and only
		// when it carries text: the role chunk and the finish chunk do not.
		if !usageOnly && carriesText(data) {
			*chunks++
		}
		return nil
	}
	_, err := c.w.Write(line)
	return err
}

// textFields are the JSON names under which a streamed chunk carries
// generated text (message text, completion text, tool call arguments, a
// refusal).
var textFields = [][]byte{[]byte(`"content"`), []byte(`"text"`), []byte(`"arguments"`), []byte(`"refusal"`)}

// carriesText reports whether a chunk has a non-empty string under one of
// textFields. A quoted name cannot occur inside a JSON string (its quotes
// would be escaped), so a byte scan finds only keys.
func carriesText(data []byte) bool {
	for _, name := range textFields {
		for rest := data; ; {
			i := bytes.Index(rest, name)
			if i < 0 {
				break
			}
			rest = rest[i+len(name):]
			v := bytes.TrimLeft(rest, " \t")
			if len(v) == 0 || v[0] != ':' {
				continue
			}
			if v = bytes.TrimLeft(v[1:], " \t"); len(v) >= 2 && v[0] == '"' && v[1] != '"' {
				return true
			}
		}
	}
	return false
}

// modelJSON is one entry of /v1/models, in OpenAI's shape.
type modelJSON struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	OwnedBy string `json:"owned_by"`
}

func (rt *route) json() modelJSON {
	return modelJSON{ID: rt.id, Object: "model", Created: rt.created, OwnedBy: rt.provider}
}

// serveModels answers GET /v1/models (the models the key may use) and
// GET /v1/models/{id} (one of them; any other id is not found, whether it
// does not exist or the key may not use it).
func (s *Server) serveModels(w http.ResponseWriter, r *http.Request, id string) {
	c := s.begin(w, r, "GET /v1/models")
	defer c.end()
	if r.Method != http.MethodGet {
		c.fail(apiError{http.StatusMethodNotAllowed, "invalid_request_error", "method_not_allowed", "Use GET for " + r.URL.Path + "."})
		return
	}
	if !c.authenticate() {
		return
	}
	cat := s.models.get()
	if cat == nil {
		c.fail(apiError{http.StatusServiceUnavailable, "server_error", "registry_unavailable",
			"The model registry has not loaded yet; please retry shortly."})
		return
	}
	allowed := c.key.GetAllowedModels()
	if id != "" {
		rt := cat.byID[id]
		if rt == nil || len(allowed) > 0 && !slices.Contains(allowed, id) {
			c.fail(modelNotFound(id))
			return
		}
		c.writeJSON(rt.json())
		return
	}
	list := struct {
		Object string      `json:"object"`
		Data   []modelJSON `json:"data"`
	}{Object: "list", Data: []modelJSON{}}
	for _, rt := range cat.list {
		if len(allowed) == 0 || slices.Contains(allowed, rt.id) {
			list.Data = append(list.Data, rt.json())
		}
	}
	c.writeJSON(list)
}

// writeJSON answers 200 with v.
func (c *call) writeJSON(v any) {
	b, _ := json.Marshal(v)
	c.w.Header()["Content-Type"] = []string{"application/json"}
	c.status, c.reason = http.StatusOK, "ok"
	c.w.WriteHeader(http.StatusOK)
	_, _ = c.w.Write(append(b, '\n'))
}
