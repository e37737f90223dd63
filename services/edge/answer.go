package edge

import (
	"net/http"
	"strconv"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	limiterv1 "github.com/keygate/keygate/gen/keygate/limiter/v1"
	typev1 "github.com/keygate/keygate/gen/keygate/type/v1"
	"github.com/keygate/keygate/pkg/money"
)

// apiError is a refusal: its status, OpenAI's error type and code (each
// dialect writes it in its own shape), and a message for people. code
// doubles as the metric reason.
type apiError struct {
	status int
	typ    string
	code   string
	msg    string
}

func badRequest(msg string) apiError {
	return apiError{http.StatusBadRequest, "invalid_request_error", "invalid_request_error", msg}
}

// modelNotFound is OpenAI's answer for a model that does not exist.
func modelNotFound(id string) apiError {
	return apiError{http.StatusNotFound, "invalid_request_error", "model_not_found",
		"The model '" + id + "' does not exist or you do not have access to it. GET /v1/models lists the models this key may use."}
}

func upstreamError(status int, msg string) apiError {
	return apiError{status, "server_error", "upstream_error", msg}
}

// formatReset renders a duration as OpenAI does ("17ms", "1s", "6m0s").
func formatReset(d *durationpb.Duration) string {
	if d == nil {
		return "0s"
	}
	v := d.AsDuration()
	switch {
	case v <= 0:
		return "0s"
	case v < time.Minute:
		v = v.Round(time.Millisecond)
	default:
		v = v.Round(time.Second)
	}
	return v.String()
}

// retrySeconds is a Retry-After value: whole seconds, rounded up, at least 1.
func retrySeconds(d time.Duration) string {
	s := int64((d + time.Second - 1) / time.Second)
	return strconv.FormatInt(max(s, 1), 10)
}

// limitNames says which limit refused, in the words of the 429 message.
func limitName(k limiterv1.LimitKind) string {
	switch k {
	case limiterv1.LimitKind_LIMIT_KIND_RPM:
		return "requests per minute (rpm)"
	case limiterv1.LimitKind_LIMIT_KIND_RPD:
		return "requests per day (rpd)"
	case limiterv1.LimitKind_LIMIT_KIND_TPM:
		return "tokens per minute (tpm)"
	case limiterv1.LimitKind_LIMIT_KIND_TPD:
		return "tokens per day (tpd)"
	case limiterv1.LimitKind_LIMIT_KIND_TOKEN_CAP:
		return "token cap"
	case limiterv1.LimitKind_LIMIT_KIND_BUDGET:
		return "cost budget"
	}
	return "limit"
}

// levelScope says whose limit refused, in the words of the 429 message.
func levelScope(l typev1.LimitLevel) string {
	switch l {
	case typev1.LimitLevel_LIMIT_LEVEL_MEMBER:
		return "for all the keys of this key's owner"
	case typev1.LimitLevel_LIMIT_LEVEL_WORKSPACE:
		return "for all the keys of this workspace"
	}
	return "for this key"
}

// sameLevel: the limiter may leave a key level unspecified.
func sameLevel(a, b typev1.LimitLevel) bool {
	norm := func(l typev1.LimitLevel) typev1.LimitLevel {
		if l == typev1.LimitLevel_LIMIT_LEVEL_UNSPECIFIED {
			return typev1.LimitLevel_LIMIT_LEVEL_KEY
		}
		return l
	}
	return norm(a) == norm(b)
}

// insufficientCredits is the 402 of a request the workspace's prepaid
// credits cannot cover: retrying cannot help until someone adds credits.
func insufficientCredits() apiError {
	return apiError{http.StatusPaymentRequired, "insufficient_credits", "insufficient_credits",
		"The workspace's prepaid credits cannot cover this request. Ask the workspace's owner to add credits."}
}

// denial turns a refused Check into its 429 (402 for credits) and the
// Retry-After delay (0: no header, and the request is not worth retrying
// as it is). est is the request's token estimate: one larger than a token
// window can never be admitted, however long the client waits.
func denial(res *limiterv1.CheckResult, est int64) (apiError, time.Duration) {
	kind := res.GetDeniedBy()
	if kind == limiterv1.LimitKind_LIMIT_KIND_CREDITS {
		return insufficientCredits(), 0
	}
	scope := levelScope(res.GetDeniedLevel())
	if res.GetDeniedModel() != "" {
		scope += " on model " + res.GetDeniedModel()
	}
	var q *limiterv1.Quota
	for _, c := range res.GetQuotas() {
		if c.GetKind() == kind && c.GetModel() == res.GetDeniedModel() && sameLevel(c.GetLevel(), res.GetDeniedLevel()) {
			q = c
			break
		}
	}
	retry := res.GetRetryAfter().AsDuration()
	if res.GetRetryAfter() == nil {
		retry = q.GetResetAfter().AsDuration()
	}
	limit := ""
	switch {
	case q == nil:
	case kind == limiterv1.LimitKind_LIMIT_KIND_BUDGET:
		// A budget's limit is in micro-dollars; users set and read dollars.
		limit = " (limit $" + money.FromMicros(q.GetLimit()).String() + ")"
	default:
		limit = " (limit " + strconv.FormatInt(q.GetLimit(), 10) + ")"
	}
	if kind == limiterv1.LimitKind_LIMIT_KIND_TOKEN_CAP || kind == limiterv1.LimitKind_LIMIT_KIND_BUDGET {
		msg := "You exceeded the " + limitName(kind) + limit + " " + scope +
			" for the current period. Ask the key's owner to raise it, or wait for the period to reset."
		return apiError{http.StatusTooManyRequests, "insufficient_quota", "insufficient_quota", msg}, retry
	}
	typ := "requests"
	if kind == limiterv1.LimitKind_LIMIT_KIND_TPM || kind == limiterv1.LimitKind_LIMIT_KIND_TPD {
		typ = "tokens"
	}
	if typ == "tokens" && q != nil && q.GetLimit() > 0 && est > q.GetLimit() {
		msg := "Request too large: it may use about " + strconv.FormatInt(est, 10) + " tokens (prompt and max_tokens), more than the " +
			limitName(kind) + limit + " " + scope + " allows. Lower max_tokens or shorten the prompt."
		return apiError{http.StatusTooManyRequests, typ, "rate_limit_exceeded", msg}, 0
	}
	if retry <= 0 {
		retry = time.Second
	}
	msg := "Rate limit reached: " + limitName(kind) + limit + " " + scope +
		". Please try again in " + retrySeconds(retry) + "s."
	return apiError{http.StatusTooManyRequests, typ, "rate_limit_exceeded", msg}, retry
}
