package edge

import (
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	limiterv1 "github.com/keygate/keygate/gen/keygate/limiter/v1"
)

// anthropicShape answers as Anthropic's API does: errors as
// {"type":"error","error":{"type","message"}} and anthropic-ratelimit-*
// headers whose resets are times (RFC 3339).
type anthropicShape struct{}

var _ answerShape = anthropicShape{}

// anthropicErrorType is Anthropic's error type for a status.
func anthropicErrorType(status int) string {
	switch status {
	case http.StatusUnauthorized:
		return "authentication_error"
	case http.StatusPaymentRequired:
		return "billing_error"
	case http.StatusForbidden:
		return "permission_error"
	case http.StatusNotFound:
		return "not_found_error"
	case http.StatusRequestEntityTooLarge:
		return "request_too_large"
	case http.StatusTooManyRequests:
		return "rate_limit_error"
	case http.StatusServiceUnavailable, 529:
		return "overloaded_error"
	}
	if status >= 500 {
		return "api_error"
	}
	return "invalid_request_error"
}

func (anthropicShape) errorBody(e apiError) []byte {
	type detail struct {
		Type    string `json:"type"`
		Message string `json:"message"`
	}
	out, _ := json.Marshal(struct {
		Type  string `json:"type"`
		Error detail `json:"error"`
	}{"error", detail{anthropicErrorType(e.status), e.msg}})
	return append(out, '\n')
}

// rateHeaders writes anthropic-ratelimit-requests-* and -tokens-* for the
// dimensions the key limits.
func (anthropicShape) rateHeaders(h http.Header, res *limiterv1.CheckResult, now time.Time) {
	if q := res.GetRequests(); q.GetLimit() > 0 {
		h["Anthropic-Ratelimit-Requests-Limit"] = []string{strconv.FormatInt(q.GetLimit(), 10)}
		h["Anthropic-Ratelimit-Requests-Remaining"] = []string{strconv.FormatInt(max(q.GetRemaining(), 0), 10)}
		h["Anthropic-Ratelimit-Requests-Reset"] = []string{resetTime(now, q)}
	}
	if q := res.GetTokens(); q.GetLimit() > 0 {
		h["Anthropic-Ratelimit-Tokens-Limit"] = []string{strconv.FormatInt(q.GetLimit(), 10)}
		h["Anthropic-Ratelimit-Tokens-Remaining"] = []string{strconv.FormatInt(max(q.GetRemaining(), 0), 10)}
		h["Anthropic-Ratelimit-Tokens-Reset"] = []string{resetTime(now, q)}
	}
}

// resetTime is when a window is full again, as Anthropic writes it.
func resetTime(now time.Time, q *limiterv1.Quota) string {
	return now.Add(q.GetResetAfter().AsDuration()).UTC().Format(time.RFC3339)
}
