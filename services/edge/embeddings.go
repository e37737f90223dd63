package edge

import "encoding/json"

// embeddingDialect is OpenAI's embeddings (POST /v1/embeddings). Options
// the edge does not read, encoding_format among them, reach the provider
// as sent.
type embeddingDialect struct {
	openaiShape
	renameOnly
}

var _ dialect = embeddingDialect{}

func (embeddingDialect) parse(body []byte) (*parsed, *apiError) {
	var req struct {
		Model string          `json:"model"`
		Input json.RawMessage `json:"input"`
	}
	if e := decodeBody(body, &req, []string{"model", "input"}); e != nil {
		return nil, e
	}
	switch {
	case req.Model == "":
		return nil, invalid("You must provide a model parameter.")
	case absent(req.Input):
		return nil, invalid("You must provide an 'input' parameter.")
	}
	return &parsed{model: req.Model, promptBytes: len(req.Input), n: 1, noOutput: true}, nil
}

func (embeddingDialect) usage(body []byte) (tokens, bool) { return openaiBodyUsage(body) }

// event: embeddings do not stream.
func (embeddingDialect) event([]byte, *tokens) eventInfo { return eventInfo{} }
