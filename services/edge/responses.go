package edge

import (
	"bytes"
	"encoding/json"
)

// responsesDialect is OpenAI's Responses API (POST /v1/responses): input
// and instructions in, output items and usage out; a stream of typed events
// from response.created to response.completed (or incomplete or failed),
// whose last event carries the usage (unasked).
type responsesDialect struct {
	openaiShape
	renameOnly
}

var _ dialect = responsesDialect{}

var responsesFields = []string{"model", "stream", "input", "instructions", "max_output_tokens", "previous_response_id"}

func (responsesDialect) parse(body []byte) (*parsed, *apiError) {
	var req struct {
		Model              string          `json:"model"`
		Stream             bool            `json:"stream"`
		Input              json.RawMessage `json:"input"`
		Instructions       json.RawMessage `json:"instructions"`
		MaxOutputTokens    *int64          `json:"max_output_tokens"`
		PreviousResponseID string          `json:"previous_response_id"`
	}
	if e := decodeBody(body, &req, responsesFields); e != nil {
		return nil, e
	}
	switch {
	case req.Model == "":
		return nil, invalid("You must provide a model parameter.")
	case absent(req.Input) && req.PreviousResponseID == "":
		return nil, invalid("You must provide an 'input' parameter.")
	case req.MaxOutputTokens != nil && *req.MaxOutputTokens < 0:
		return nil, invalid("'max_output_tokens' must not be negative.")
	}
	p := &parsed{model: req.Model, stream: req.Stream, promptBytes: len(req.Input) + len(req.Instructions), n: 1}
	if req.MaxOutputTokens != nil {
		p.maxOutput = *req.MaxOutputTokens
	}
	return p, nil
}

// responsesUsage is the Responses API's usage object; cached input tokens
// are part of input_tokens.
type responsesUsage struct {
	InputTokens  int64 `json:"input_tokens"`
	OutputTokens int64 `json:"output_tokens"`
}

func (responsesDialect) usage(body []byte) (tokens, bool) {
	u := bodyUsage[responsesUsage](body)
	if u == nil {
		return tokens{}, false
	}
	return tokens{input: u.InputTokens, output: u.OutputTokens}, true
}

var (
	deltaSuffix = []byte(".delta")
	// responsesText is the field of a delta event that carries text.
	responsesText = [][]byte{[]byte(`"delta"`)}
)

// event reads one event: a delta with text is a token delivered; the
// terminal events (response.completed, .incomplete, .failed) end the
// answer with the response, and its usage.
func (responsesDialect) event(data []byte, u *tokens) eventInfo {
	typ := eventType(data)
	switch string(typ) {
	case "response.completed", "response.incomplete", "response.failed":
		var env struct {
			Response struct {
				Usage *responsesUsage `json:"usage"`
			} `json:"response"`
		}
		info := eventInfo{final: true}
		if json.Unmarshal(data, &env) == nil && env.Response.Usage != nil {
			*u = tokens{input: env.Response.Usage.InputTokens, output: env.Response.Usage.OutputTokens}
			info.usage = true
		}
		return info
	}
	return eventInfo{text: bytes.HasSuffix(typ, deltaSuffix) && carriesText(data, responsesText)}
}
