package edge

import (
	"encoding/json"
)

// messagesDialect is Anthropic's Messages API (POST /v1/messages): a
// required max_tokens, usage with cache creation and cache read tokens
// beside input_tokens, and a stream of typed events (message_start,
// content_block_start/delta/stop, message_delta with the usage,
// message_stop). count is its POST /v1/messages/count_tokens, which uses
// no tokens. Anthropic reports usage unasked.
type messagesDialect struct {
	anthropicShape
	renameOnly
	count bool
}

var _ dialect = messagesDialect{}

var messagesFields = []string{"model", "stream", "max_tokens", "messages", "system"}

func (d messagesDialect) parse(body []byte) (*parsed, *apiError) {
	var req struct {
		Model     string          `json:"model"`
		Stream    bool            `json:"stream"`
		MaxTokens *int64          `json:"max_tokens"`
		Messages  json.RawMessage `json:"messages"`
		System    json.RawMessage `json:"system"`
	}
	if e := decodeBody(body, &req, messagesFields); e != nil {
		return nil, e
	}
	switch {
	case req.Model == "":
		return nil, invalid("model: Field required")
	case !nonEmptyArray(req.Messages):
		return nil, invalid("messages: must be a non-empty array")
	case d.count:
		return &parsed{model: req.Model, promptBytes: len(req.Messages) + len(req.System), n: 1, noOutput: true}, nil
	case req.MaxTokens == nil:
		return nil, invalid("max_tokens: Field required")
	case *req.MaxTokens < 1:
		return nil, invalid("max_tokens: must be at least 1")
	}
	return &parsed{model: req.Model, stream: req.Stream, promptBytes: len(req.Messages) + len(req.System),
		maxOutput: *req.MaxTokens, n: 1}, nil
}

// anthropicUsage is Anthropic's usage object: input_tokens excludes the
// tokens written to and read from the prompt cache.
type anthropicUsage struct {
	InputTokens              int64 `json:"input_tokens"`
	CacheCreationInputTokens int64 `json:"cache_creation_input_tokens"`
	CacheReadInputTokens     int64 `json:"cache_read_input_tokens"`
	OutputTokens             int64 `json:"output_tokens"`
}

// merge adds what u reports to t: message_start reports the input,
// message_delta the output (and, from some API versions, the input
// again).
func (u *anthropicUsage) merge(t *tokens) {
	if u.InputTokens > 0 || u.CacheCreationInputTokens > 0 || u.CacheReadInputTokens > 0 {
		t.input, t.cacheWrite, t.cacheRead = u.InputTokens, u.CacheCreationInputTokens, u.CacheReadInputTokens
	}
	t.output = u.OutputTokens
}

func (d messagesDialect) usage(body []byte) (tokens, bool) {
	var t tokens
	if d.count {
		// Counting is free: it is answered, not charged.
		return t, true
	}
	u := bodyUsage[anthropicUsage](body)
	if u == nil {
		return t, false
	}
	u.merge(&t)
	return t, true
}

// anthropicText are the fields of a content_block_delta that carry
// generated text (text, tool input, thinking).
var anthropicText = [][]byte{[]byte(`"text"`), []byte(`"partial_json"`), []byte(`"thinking"`)}

// event reads one event: message_start reports the input tokens,
// message_delta the usage, message_stop ends the answer, and a
// content_block_delta with text is a token delivered.
func (messagesDialect) event(data []byte, u *tokens) eventInfo {
	switch string(eventType(data)) {
	case "message_start":
		var env struct {
			Message struct {
				Usage *anthropicUsage `json:"usage"`
			} `json:"message"`
		}
		if json.Unmarshal(data, &env) == nil && env.Message.Usage != nil {
			out := u.output
			env.Message.Usage.merge(u)
			u.output = out // a placeholder until message_delta
		}
	case "message_delta":
		var env struct {
			Usage *anthropicUsage `json:"usage"`
		}
		if json.Unmarshal(data, &env) == nil && env.Usage != nil {
			env.Usage.merge(u)
			return eventInfo{usage: true}
		}
	case "message_stop":
		return eventInfo{final: true}
	case "content_block_delta":
		return eventInfo{text: carriesText(data, anthropicText)}
	}
	return eventInfo{}
}
