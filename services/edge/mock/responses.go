package mock

import (
	"context"
	"net/http"
)

// ResponsesUsage is the usage object of OpenAI's Responses API.
type ResponsesUsage struct {
	InputTokens         int            `json:"input_tokens"`
	InputTokensDetails  map[string]int `json:"input_tokens_details"`
	OutputTokens        int            `json:"output_tokens"`
	OutputTokensDetails map[string]int `json:"output_tokens_details"`
	TotalTokens         int            `json:"total_tokens"`
}

type outputText struct {
	Type        string `json:"type"`
	Text        string `json:"text"`
	Annotations []any  `json:"annotations"`
}

type outputItem struct {
	Type    string       `json:"type"`
	ID      string       `json:"id"`
	Status  string       `json:"status"`
	Role    string       `json:"role"`
	Content []outputText `json:"content"`
}

type response struct {
	ID                string          `json:"id"`
	Object            string          `json:"object"`
	CreatedAt         int64           `json:"created_at"`
	Status            string          `json:"status"`
	Model             string          `json:"model"`
	Output            []outputItem    `json:"output"`
	Usage             *ResponsesUsage `json:"usage"`
	IncompleteDetails map[string]any  `json:"incomplete_details"`
	Error             any             `json:"error"`
}

// responses answers POST /responses: one message of n words, or the
// Responses stream (response.created … response.output_text.delta …
// response.completed, or response.incomplete when max_output_tokens cut
// the answer).
func (s *Server) responses(ctx context.Context, w http.ResponseWriter, req *request) {
	if absentJSON(req.Input) {
		writeError(w, http.StatusBadRequest, "input is required")
		return
	}
	n, limited := s.length(req.MaxOutputTokens)
	p := PromptTokens(req.Input)
	final := response{ID: "resp_mock", Object: "response", Status: "completed", Model: req.Model,
		Output: []outputItem{{Type: "message", ID: "msg_mock", Status: "completed", Role: "assistant",
			Content: []outputText{{Type: "output_text", Text: answer(n), Annotations: []any{}}}}},
		Usage: &ResponsesUsage{InputTokens: p, InputTokensDetails: map[string]int{"cached_tokens": 0},
			OutputTokens: n, OutputTokensDetails: map[string]int{"reasoning_tokens": 0}, TotalTokens: p + n},
	}
	end := "response.completed"
	if limited {
		final.Status, final.IncompleteDetails, end = "incomplete", map[string]any{"reason": "max_output_tokens"}, "response.incomplete"
	}
	if !req.Stream {
		writeJSON(w, http.StatusOK, final)
		return
	}
	sw := startSSE(w)
	seq := 0
	send := func(typ string, fields map[string]any) bool {
		fields["type"], fields["sequence_number"] = typ, seq
		seq++
		return sw.send(typ, fields)
	}
	started := final
	started.Status, started.Output, started.Usage, started.IncompleteDetails = "in_progress", []outputItem{}, nil, nil
	item := outputItem{Type: "message", ID: "msg_mock", Status: "in_progress", Role: "assistant", Content: []outputText{}}
	empty := outputText{Type: "output_text", Text: "", Annotations: []any{}}
	at := map[string]any{"item_id": "msg_mock", "output_index": 0, "content_index": 0}
	with := func(k string, v any) map[string]any {
		m := map[string]any{k: v}
		for ak, av := range at {
			m[ak] = av
		}
		return m
	}
	ok := send("response.created", map[string]any{"response": started}) &&
		send("response.in_progress", map[string]any{"response": started}) &&
		send("response.output_item.added", map[string]any{"output_index": 0, "item": item}) &&
		send("response.content_part.added", with("part", empty)) &&
		s.eachWord(ctx, n, func(word string) bool {
			m := with("delta", word)
			m["logprobs"] = []any{}
			return send("response.output_text.delta", m)
		})
	if !ok {
		return
	}
	done := with("text", answer(n))
	done["logprobs"] = []any{}
	_ = send("response.output_text.done", done) &&
		send("response.content_part.done", with("part", final.Output[0].Content[0])) &&
		send("response.output_item.done", map[string]any{"output_index": 0, "item": final.Output[0]}) &&
		send(end, map[string]any{"response": final})
}
