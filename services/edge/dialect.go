package edge

import (
	"net/http"
	"time"

	limiterv1 "github.com/keygate/keygate/gen/keygate/limiter/v1"
)

// dialect is one wire format the edge serves: what it knows of a format's
// bodies, events and errors. Authentication, limits, settlement and
// accounting are the same for every dialect and exist once, above it
// (inference.go); a new format is a new file implementing this.
type dialect interface {
	// parse validates a request body and reads what the limits need.
	parse(body []byte) (*parsed, *apiError)
	// rewrite is the body sent upstream: the client's own, with the
	// provider's model name and whatever makes the provider report usage.
	rewrite(body []byte, p *parsed, upstreamModel string) ([]byte, error)
	// usage reads the usage of a unary answer; false when it has none.
	usage(body []byte) (tokens, bool)
	// event reads the data of one streamed event, adding what it says of
	// usage to u.
	event(data []byte, u *tokens) eventInfo
	// answerShape writes errors and limit headers as the format's clients
	// expect them.
	answerShape
}

// answerShape is how a family of dialects (OpenAI's, Anthropic's) answers.
type answerShape interface {
	// errorBody is e in the format's error shape.
	errorBody(e apiError) []byte
	// rateHeaders advertises the limits of a Check result, for the
	// dimensions the key limits only.
	rateHeaders(h http.Header, res *limiterv1.CheckResult, now time.Time)
}

// parsed is what the edge reads of a request; everything else passes
// through untouched.
type parsed struct {
	model  string
	stream bool
	// wantsUsage: the client asked for the stream's usage event, which the
	// edge otherwise asks for itself and drops.
	wantsUsage bool
	// promptBytes is the size of the prompt, estimated at 4 bytes a token.
	promptBytes int
	// maxOutput is the client's cap on output tokens, 0 when it set none;
	// n answers are generated (at least 1).
	maxOutput int64
	n         int64
	// noOutput: the answer uses input tokens only (embeddings, counting).
	noOutput bool
}

// tokens is what an answer used, as the provider reported it (or as the
// edge estimated it).
type tokens struct {
	input, output int64
	// cacheWrite and cacheRead are prompt tokens written to and read from
	// the provider's prompt cache, beside input (Anthropic's accounting).
	cacheWrite, cacheRead int64
}

func (t tokens) total() int64 { return t.input + t.output + t.cacheWrite + t.cacheRead }

// eventInfo is what one streamed event says.
type eventInfo struct {
	// usage: it carried the answer's final usage.
	usage bool
	// usageOnly: it carries nothing but usage (OpenAI's last chunk), and
	// is dropped unless the client asked for it.
	usageOnly bool
	// text: it carries generated text, counted as one token delivered.
	text bool
	// final: the answer is complete (it is accounted before this event
	// reaches the client).
	final bool
}

// endpoint is one inference route and the dialect it speaks.
type endpoint struct {
	name string // span name
	path string // after the provider's base URL
	kind providerKind
	d    dialect
	// free: the request uses no tokens (counting them); it is
	// authenticated and forwarded, not limited or accounted.
	free bool
}

// providerKind is the dialect family a provider speaks.
type providerKind uint8

const (
	kindOpenAI providerKind = 1 << iota
	kindAnthropic
)

var (
	chatEndpoint       = &endpoint{"POST /v1/chat/completions", "/chat/completions", kindOpenAI, chatDialect{}, false}
	completionEndpoint = &endpoint{"POST /v1/completions", "/completions", kindOpenAI, chatDialect{legacy: true}, false}
	embeddingEndpoint  = &endpoint{"POST /v1/embeddings", "/embeddings", kindOpenAI, embeddingDialect{}, false}
	responsesEndpoint  = &endpoint{"POST /v1/responses", "/responses", kindOpenAI, responsesDialect{}, false}
	messagesEndpoint   = &endpoint{"POST /v1/messages", "/messages", kindAnthropic, messagesDialect{}, false}
	countEndpoint      = &endpoint{"POST /v1/messages/count_tokens", "/messages/count_tokens", kindAnthropic, messagesDialect{count: true}, true}
)

// endpoints are the inference routes by path.
var endpoints = map[string]*endpoint{
	"/v1/chat/completions":      chatEndpoint,
	"/v1/completions":           completionEndpoint,
	"/v1/embeddings":            embeddingEndpoint,
	"/v1/responses":             responsesEndpoint,
	"/v1/messages":              messagesEndpoint,
	"/v1/messages/count_tokens": countEndpoint,
}

// endpointFor names where to send requests for a provider of kinds.
func endpointFor(kinds providerKind) string {
	if kinds&kindOpenAI != 0 {
		return "POST /v1/chat/completions (or /v1/responses)"
	}
	return "POST /v1/messages"
}

// maxEstimate bounds a completion estimate: far above any model's output,
// and small enough that the sum with the prompt estimate and its cost at any
// price stay within int64.
const maxEstimate = 1 << 40

// estimate is what Check reserves: the prompt at 4 bytes a token, and the
// client's output cap (or the default) for each of its n answers.
func (s *Server) estimate(p *parsed) tokens {
	e := tokens{input: int64(p.promptBytes)/4 + 1}
	if p.noOutput {
		return e
	}
	e.output = s.cfg.DefaultMaxTokens
	if p.maxOutput > 0 {
		e.output = p.maxOutput
	}
	// The cap is the client's to choose: saturate rather than let a huge
	// value (times n) overflow into a negative reservation.
	e.output = min(e.output, maxEstimate)
	if p.n > 1 {
		e.output = min(e.output*p.n, maxEstimate)
	}
	return e
}
