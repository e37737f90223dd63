package edge

import (
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	limiterv1 "github.com/keygate/keygate/gen/keygate/limiter/v1"
)

// openaiShape answers as OpenAI's API does: errors as
// {"error":{"message","type","param","code"}} and x-ratelimit-* headers.
type openaiShape struct{}

var _ answerShape = openaiShape{}

type openaiError struct {
	Error struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Param   *string `json:"param"`
		Code    string  `json:"code"`
	} `json:"error"`
}

func (openaiShape) errorBody(e apiError) []byte {
	var b openaiError
	b.Error.Message, b.Error.Type, b.Error.Code = e.msg, e.typ, e.code
	out, _ := json.Marshal(b)
	return append(out, '\n')
}

// rateHeaders writes x-ratelimit-*-requests and -tokens for the dimensions
// the key limits: a dimension without a window is not advertised, since
// clients read "limit 0" as exhausted. The map is written directly: the
// names are already canonical.
func (openaiShape) rateHeaders(h http.Header, res *limiterv1.CheckResult, _ time.Time) {
	if q := res.GetRequests(); q.GetLimit() > 0 {
		h["X-Ratelimit-Limit-Requests"] = []string{strconv.FormatInt(q.GetLimit(), 10)}
		h["X-Ratelimit-Remaining-Requests"] = []string{strconv.FormatInt(max(q.GetRemaining(), 0), 10)}
		h["X-Ratelimit-Reset-Requests"] = []string{formatReset(q.GetResetAfter())}
	}
	if q := res.GetTokens(); q.GetLimit() > 0 {
		h["X-Ratelimit-Limit-Tokens"] = []string{strconv.FormatInt(q.GetLimit(), 10)}
		h["X-Ratelimit-Remaining-Tokens"] = []string{strconv.FormatInt(max(q.GetRemaining(), 0), 10)}
		h["X-Ratelimit-Reset-Tokens"] = []string{formatReset(q.GetResetAfter())}
	}
}

// openaiUsage is the usage object of chat completions, completions and
// embeddings.
type openaiUsage struct {
	PromptTokens     int64 `json:"prompt_tokens"`
	CompletionTokens int64 `json:"completion_tokens"`
}

func (u *openaiUsage) tokens() tokens {
	return tokens{input: u.PromptTokens, output: u.CompletionTokens}
}

// openaiBodyUsage reads the usage of a unary OpenAI answer.
func openaiBodyUsage(body []byte) (tokens, bool) {
	u := bodyUsage[openaiUsage](body)
	if u == nil {
		return tokens{}, false
	}
	return u.tokens(), true
}
