package mock

import (
	"bytes"
	"context"
	"net/http"
)

// AnthropicUsage is the usage object of Anthropic's Messages API.
type AnthropicUsage struct {
	InputTokens              int `json:"input_tokens"`
	CacheCreationInputTokens int `json:"cache_creation_input_tokens"`
	CacheReadInputTokens     int `json:"cache_read_input_tokens"`
	OutputTokens             int `json:"output_tokens"`
}

type contentBlock struct {
	Type string `json:"type"`
	Text string `json:"text"`
}

type anthropicMessage struct {
	ID           string          `json:"id"`
	Type         string          `json:"type"`
	Role         string          `json:"role"`
	Model        string          `json:"model"`
	Content      []contentBlock  `json:"content"`
	StopReason   *string         `json:"stop_reason"`
	StopSequence *string         `json:"stop_sequence"`
	Usage        *AnthropicUsage `json:"usage"`
}

// messages answers Anthropic's POST /messages: a message of n words, or
// the event sequence message_start, content_block_start, a
// content_block_delta per word, content_block_stop, message_delta with the
// usage, message_stop.
func (s *Server) messages(ctx context.Context, w http.ResponseWriter, req *request) {
	if req.MaxTokens < 1 {
		writeAnthropicError(w, http.StatusBadRequest, "max_tokens: Field required")
		return
	}
	n, limited := s.length(req.MaxTokens)
	stop := "end_turn"
	if limited {
		stop = "max_tokens"
	}
	usage := promptUsage(req)
	usage.OutputTokens = n
	msg := anthropicMessage{ID: "msg_mock", Type: "message", Role: "assistant", Model: req.Model,
		Content: []contentBlock{{Type: "text", Text: answer(n)}}, StopReason: &stop, Usage: &usage}
	if !req.Stream {
		writeJSON(w, http.StatusOK, msg)
		return
	}
	sw := startSSE(w)
	started := msg
	startUsage := usage
	startUsage.OutputTokens = 1 // Anthropic's placeholder until message_delta
	started.Content, started.StopReason, started.Usage = []contentBlock{}, nil, &startUsage
	block := map[string]any{"type": "content_block_start", "index": 0, "content_block": contentBlock{Type: "text"}}
	ok := sw.send("message_start", map[string]any{"type": "message_start", "message": started}) &&
		sw.send("content_block_start", block) &&
		sw.send("ping", map[string]any{"type": "ping"}) &&
		s.eachWord(ctx, n, func(word string) bool {
			return sw.send("content_block_delta", map[string]any{"type": "content_block_delta", "index": 0,
				"delta": map[string]string{"type": "text_delta", "text": word}})
		})
	if !ok {
		return
	}
	_ = sw.send("content_block_stop", map[string]any{"type": "content_block_stop", "index": 0}) &&
		sw.send("message_delta", map[string]any{"type": "message_delta",
			"delta": map[string]any{"stop_reason": stop, "stop_sequence": nil}, "usage": map[string]int{"output_tokens": n}}) &&
		sw.send("message_stop", map[string]any{"type": "message_stop"})
}

// promptUsage counts a Messages request's prompt: the messages, and the
// system prompt as input or, when it asks for caching (cache_control), as
// written to the cache.
func promptUsage(req *request) AnthropicUsage {
	u := AnthropicUsage{InputTokens: PromptTokens(req.Messages)}
	switch {
	case absentJSON(req.System):
	case bytes.Contains(req.System, []byte(`"cache_control"`)):
		u.CacheCreationInputTokens = PromptTokens(req.System)
	default:
		u.InputTokens += PromptTokens(req.System)
	}
	return u
}

// writeAnthropicError answers in Anthropic's error shape.
func writeAnthropicError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]any{"type": "error", "error": map[string]string{"type": "invalid_request_error", "message": msg}})
}
