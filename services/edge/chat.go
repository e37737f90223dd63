package edge

import (
	"bytes"
	"encoding/json"
)

// chatDialect is OpenAI's chat completions (POST /v1/chat/completions) or,
// legacy, its text completions (POST /v1/completions): the same request
// options and stream, with messages or a prompt.
type chatDialect struct {
	openaiShape
	legacy bool
}

var _ dialect = chatDialect{}

type chatRequest struct {
	Model               string          `json:"model"`
	Stream              bool            `json:"stream"`
	StreamOptions       json.RawMessage `json:"stream_options"`
	MaxTokens           *int64          `json:"max_tokens"`
	MaxCompletionTokens *int64          `json:"max_completion_tokens"`
	N                   *int64          `json:"n"`
	Messages            json.RawMessage `json:"messages"`
	Prompt              json.RawMessage `json:"prompt"`
}

// chatFields are the JSON names of chatRequest's fields.
var chatFields = []string{"model", "stream", "stream_options", "max_tokens", "max_completion_tokens", "n", "messages", "prompt"}

func (d chatDialect) parse(body []byte) (*parsed, *apiError) {
	var req chatRequest
	if e := decodeBody(body, &req, chatFields); e != nil {
		return nil, e
	}
	prompt := req.Messages
	switch {
	case req.Model == "":
		return nil, invalid("You must provide a model parameter.")
	case !d.legacy && !nonEmptyArray(req.Messages):
		return nil, invalid("'messages' must be a non-empty array.")
	case d.legacy && absent(req.Prompt):
		return nil, invalid("You must provide a 'prompt' parameter.")
	case req.MaxTokens != nil && *req.MaxTokens < 0, req.MaxCompletionTokens != nil && *req.MaxCompletionTokens < 0:
		return nil, invalid("'max_tokens' must not be negative.")
	case req.N != nil && (*req.N < 1 || *req.N > 128):
		return nil, invalid("'n' must be between 1 and 128.")
	case !absent(req.StreamOptions) && bytes.TrimSpace(req.StreamOptions)[0] != '{':
		return nil, invalid("'stream_options' must be an object.")
	}
	if d.legacy {
		prompt = req.Prompt
	}
	p := &parsed{model: req.Model, stream: req.Stream, promptBytes: len(prompt), n: 1}
	p.wantsUsage = req.Stream && wantsUsage(req.StreamOptions)
	if req.MaxCompletionTokens != nil && *req.MaxCompletionTokens > 0 {
		p.maxOutput = *req.MaxCompletionTokens
	} else if req.MaxTokens != nil {
		p.maxOutput = *req.MaxTokens
	}
	if req.N != nil {
		p.n = *req.N
	}
	return p, nil
}

// wantsUsage says whether stream_options asks for the final usage chunk.
func wantsUsage(opts json.RawMessage) bool {
	var so struct {
		IncludeUsage bool `json:"include_usage"`
	}
	return !absent(opts) && json.Unmarshal(opts, &so) == nil && so.IncludeUsage
}

// rewrite renames the model and, for a stream, asks for the usage chunk
// (stream_options.include_usage), keeping the client's other options.
func (chatDialect) rewrite(body []byte, p *parsed, upstreamModel string) ([]byte, error) {
	if upstreamModel == p.model && (!p.stream || p.wantsUsage) {
		return body, nil
	}
	fields := map[string]json.RawMessage{"model": jsonString(upstreamModel)}
	if p.stream {
		var req struct {
			StreamOptions json.RawMessage `json:"stream_options"`
		}
		if err := json.Unmarshal(body, &req); err != nil {
			return nil, err
		}
		so := map[string]json.RawMessage{}
		if !absent(req.StreamOptions) {
			if err := json.Unmarshal(req.StreamOptions, &so); err != nil {
				return nil, err
			}
		}
		so["include_usage"] = json.RawMessage("true")
		fields["stream_options"], _ = json.Marshal(so)
	}
	return setFields(body, fields)
}

func (chatDialect) usage(body []byte) (tokens, bool) { return openaiBodyUsage(body) }

var (
	doneMarker = []byte("[DONE]")
	usageField = []byte(`"usage"`)
	// chatText are the fields of a chunk that carry generated text:
	// message text, completion text, tool call arguments, a refusal.
	chatText = [][]byte{[]byte(`"content"`), []byte(`"text"`), []byte(`"arguments"`), []byte(`"refusal"`)}
)

// event reads one chunk: "[DONE]" ends the stream; the usage chunk has no
// choices; the role chunk and the finish chunk carry no text.
func (chatDialect) event(data []byte, u *tokens) eventInfo {
	if bytes.Equal(data, doneMarker) {
		return eventInfo{final: true}
	}
	var info eventInfo
	if bytes.Contains(data, usageField) {
		var env struct {
			Choices []json.RawMessage `json:"choices"`
			Usage   *openaiUsage      `json:"usage"`
		}
		if json.Unmarshal(data, &env) == nil && env.Usage != nil {
			*u = env.Usage.tokens()
			info.usage = true
			info.usageOnly = len(env.Choices) == 0
		}
	}
	info.text = !info.usageOnly && carriesText(data, chatText)
	return info
}
