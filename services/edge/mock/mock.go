// Package mock is a deterministic OpenAI-compatible model provider. The edge
// uses it in-process (Transport) for providers whose base URL is "mock", so
// the whole request path runs with no model provider; benchmarks serve it on
// a loopback listener as an ordinary upstream.
//
// Answers depend only on the request: the completion is the first Tokens
// words of a fixed text (fewer when max_tokens is smaller), usage counts
// the prompt as one token per 4 bytes of its JSON and the completion as one
// token per word, and streams send one chunk per word.
package mock

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"hash/fnv"
	"math"
	"net/http"
	"strings"
	"time"
)

// Options shape the answers. The zero value answers at once with 16 tokens.
type Options struct {
	// Latency is waited before the answer (before the first chunk when
	// streaming).
	Latency time.Duration
	// ChunkDelay is waited between streamed chunks.
	ChunkDelay time.Duration
	// Tokens is the completion length when max_tokens allows; default 16.
	Tokens int
}

// Server is the mock provider, an http.Handler serving /chat/completions,
// /completions, /embeddings, /responses and /models under any prefix (so base URLs
// "http://host" and "http://host/v1" both work).
type Server struct {
	opts Options
}

var _ http.Handler = (*Server)(nil)

// New returns a mock provider.
func New(opts Options) *Server {
	if opts.Tokens <= 0 {
		opts.Tokens = 16
	}
	return &Server{opts: opts}
}

// words is the answer text, cycled when Tokens exceeds it.
var words = strings.Fields("This is a deterministic answer from the keygate mock provider: " +
	"it costs nothing, needs no network and counts its tokens exactly as it reports them.")

type request struct {
	Model               string          `json:"model"`
	Stream              bool            `json:"stream"`
	MaxTokens           int             `json:"max_tokens"`
	MaxCompletionTokens int             `json:"max_completion_tokens"`
	Messages            json.RawMessage `json:"messages"`
	Prompt              json.RawMessage `json:"prompt"`
	Input               json.RawMessage `json:"input"`
	MaxOutputTokens     int             `json:"max_output_tokens"`
	System              json.RawMessage `json:"system"`
	EncodingFormat      string          `json:"encoding_format"`
	StreamOptions       *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
}

// Usage is the OpenAI usage object.
type Usage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

// ServeHTTP answers one request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	path := r.URL.Path
	if r.Method == http.MethodGet && strings.HasSuffix(path, "/models") {
		writeJSON(w, http.StatusOK, map[string]any{"object": "list", "data": []any{}})
		return
	}
	var kind string
	switch {
	case strings.HasSuffix(path, "/chat/completions"):
		kind = "chat"
	case strings.HasSuffix(path, "/completions"):
		kind = "completion"
	case strings.HasSuffix(path, "/embeddings"):
		kind = "embedding"
	case strings.HasSuffix(path, "/responses"):
		kind = "responses"
	case strings.HasSuffix(path, "/messages/count_tokens"):
		kind = "count_tokens"
	case strings.HasSuffix(path, "/messages"):
		kind = "messages"
	default:
		writeError(w, http.StatusNotFound, "unknown route "+path)
		return
	}
	if r.Method != http.MethodPost {
		writeError(w, http.StatusMethodNotAllowed, "use POST")
		return
	}
	var req request
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, "invalid JSON body")
		return
	}
	if req.Model == "" {
		writeError(w, http.StatusBadRequest, "model is required")
		return
	}
	if !wait(r.Context(), s.opts.Latency) {
		return
	}
	switch kind {
	case "embedding":
		s.embed(w, &req)
		return
	case "responses":
		s.responses(r.Context(), w, &req)
		return
	case "messages":
		s.messages(r.Context(), w, &req)
		return
	case "count_tokens":
		u := promptUsage(&req)
		writeJSON(w, http.StatusOK, map[string]int{"input_tokens": u.InputTokens + u.CacheCreationInputTokens})
		return
	}
	limit := req.MaxTokens
	if req.MaxCompletionTokens > 0 {
		limit = req.MaxCompletionTokens
	}
	n, limited := s.length(limit)
	finish := "stop"
	if limited {
		finish = "length"
	}
	prompt := req.Messages
	if kind == "completion" {
		prompt = req.Prompt
	}
	usage := Usage{PromptTokens: PromptTokens(prompt), CompletionTokens: n}
	usage.TotalTokens = usage.PromptTokens + usage.CompletionTokens
	if req.Stream {
		s.stream(r.Context(), w, kind, &req, n, finish, usage)
		return
	}
	text := answer(n)
	var body any
	if kind == "chat" {
		body = chatCompletion{
			ID: "chatcmpl-mock", Object: "chat.completion", Model: req.Model,
			Choices: []chatChoice{{Message: &message{Role: "assistant", Content: text}, FinishReason: &finish}},
			Usage:   &usage,
		}
	} else {
		body = textCompletion{
			ID: "cmpl-mock", Object: "text_completion", Model: req.Model,
			Choices: []textChoice{{Text: text, FinishReason: &finish}},
			Usage:   &usage,
		}
	}
	writeJSON(w, http.StatusOK, body)
}

// length is the answer's length in tokens (words) under the client's cap
// (0 = none), and whether the cap cut it.
func (s *Server) length(limit int) (int, bool) {
	if limit > 0 && limit < s.opts.Tokens {
		return limit, true
	}
	return s.opts.Tokens, false
}

// PromptTokens is the mock's prompt count: one token per 4 bytes of the
// prompt's JSON, at least 1.
func PromptTokens(raw json.RawMessage) int { return len(raw)/4 + 1 }

// eachWord calls f with each of the answer's first n words (a space before
// all but the first), ChunkDelay apart, until f or the request ends; it
// reports whether all were sent.
func (s *Server) eachWord(ctx context.Context, n int, f func(string) bool) bool {
	for i := range n {
		if i > 0 && !wait(ctx, s.opts.ChunkDelay) {
			return false
		}
		word := words[i%len(words)]
		if i > 0 {
			word = " " + word
		}
		if !f(word) {
			return false
		}
	}
	return true
}

func answer(n int) string {
	var b strings.Builder
	for i := range n {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(words[i%len(words)])
	}
	return b.String()
}

type message struct {
	Role    string `json:"role,omitempty"`
	Content string `json:"content"`
}

type chatChoice struct {
	Index        int      `json:"index"`
	Message      *message `json:"message,omitempty"`
	Delta        *message `json:"delta,omitempty"`
	FinishReason *string  `json:"finish_reason"`
}

type chatCompletion struct {
	ID      string       `json:"id"`
	Object  string       `json:"object"`
	Created int64        `json:"created"`
	Model   string       `json:"model"`
	Choices []chatChoice `json:"choices"`
	Usage   *Usage       `json:"usage,omitempty"`
}

type textChoice struct {
	Index        int     `json:"index"`
	Text         string  `json:"text"`
	FinishReason *string `json:"finish_reason"`
}

type textCompletion struct {
	ID      string       `json:"id"`
	Object  string       `json:"object"`
	Created int64        `json:"created"`
	Model   string       `json:"model"`
	Choices []textChoice `json:"choices"`
	Usage   *Usage       `json:"usage,omitempty"`
}

func (s *Server) stream(ctx context.Context, w http.ResponseWriter, kind string, req *request, n int, finish string, usage Usage) {
	sw := startSSE(w)
	send := func(v any) bool { return sw.send("", v) }
	chunk := func(delta *message, text string, fin *string) any {
		if kind == "chat" {
			return chatCompletion{ID: "chatcmpl-mock", Object: "chat.completion.chunk", Model: req.Model,
				Choices: []chatChoice{{Delta: delta, FinishReason: fin}}}
		}
		return textCompletion{ID: "cmpl-mock", Object: "text_completion", Model: req.Model,
			Choices: []textChoice{{Text: text, FinishReason: fin}}}
	}
	if kind == "chat" && !send(chunk(&message{Role: "assistant"}, "", nil)) {
		return
	}
	if !s.eachWord(ctx, n, func(word string) bool { return send(chunk(&message{Content: word}, word, nil)) }) {
		return
	}
	if !send(chunk(&message{}, "", &finish)) {
		return
	}
	if req.StreamOptions != nil && req.StreamOptions.IncludeUsage {
		var final any
		if kind == "chat" {
			final = chatCompletion{ID: "chatcmpl-mock", Object: "chat.completion.chunk", Model: req.Model, Choices: []chatChoice{}, Usage: &usage}
		} else {
			final = textCompletion{ID: "cmpl-mock", Object: "text_completion", Model: req.Model, Choices: []textChoice{}, Usage: &usage}
		}
		if !send(final) {
			return
		}
	}
	sw.done()
}

func (s *Server) embed(w http.ResponseWriter, req *request) {
	var inputs []string
	var one string
	if err := json.Unmarshal(req.Input, &one); err == nil {
		inputs = []string{one}
	} else if err := json.Unmarshal(req.Input, &inputs); err != nil || len(inputs) == 0 {
		writeError(w, http.StatusBadRequest, "input must be a string or an array of strings")
		return
	}
	if req.EncodingFormat != "" && req.EncodingFormat != "float" && req.EncodingFormat != "base64" {
		writeError(w, http.StatusBadRequest, "encoding_format must be float or base64")
		return
	}
	type embedding struct {
		Object    string `json:"object"`
		Index     int    `json:"index"`
		Embedding any    `json:"embedding"`
	}
	data := make([]embedding, len(inputs))
	for i, in := range inputs {
		data[i] = embedding{Object: "embedding", Index: i, Embedding: Vector(in)}
		if req.EncodingFormat == "base64" {
			data[i].Embedding = encodeBase64(Vector(in))
		}
	}
	p := PromptTokens(req.Input)
	writeJSON(w, http.StatusOK, map[string]any{
		"object": "list", "model": req.Model, "data": data,
		"usage": map[string]int{"prompt_tokens": p, "total_tokens": p},
	})
}

// Vector is the mock's embedding of one input: 8 float32 values in
// [-1, 1), derived from the input's hash.
func Vector(input string) []float32 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(input))
	seed := h.Sum64()
	vec := make([]float32, 8)
	for j := range vec {
		seed = seed*6364136223846793005 + 1442695040888963407
		vec[j] = float32(int64(seed>>11)%2000-1000) / 1000
	}
	return vec
}

// encodeBase64 is OpenAI's base64 embedding: the little-endian float32
// values, base64 encoded.
func encodeBase64(vec []float32) string {
	b := make([]byte, 0, 4*len(vec))
	for _, v := range vec {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(v))
	}
	return base64.StdEncoding.EncodeToString(b)
}

func absentJSON(raw json.RawMessage) bool {
	t := bytes.TrimSpace(raw)
	return len(t) == 0 || string(t) == "null"
}

func wait(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// sseWriter writes server-sent events, flushing each.
type sseWriter struct {
	w  http.ResponseWriter
	rc *http.ResponseController
}

func startSSE(w http.ResponseWriter) *sseWriter {
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	return &sseWriter{w: w, rc: http.NewResponseController(w)}
}

// send writes one event named event ("" = unnamed) with v as its data; it
// reports whether the client is still there.
func (s *sseWriter) send(event string, v any) bool {
	b, _ := json.Marshal(v)
	var buf []byte
	if event != "" {
		buf = append(append(append(buf, "event: "...), event...), '\n')
	}
	buf = append(append(append(buf, "data: "...), b...), '\n', '\n')
	if _, err := s.w.Write(buf); err != nil {
		return false
	}
	return s.rc.Flush() == nil
}

// done ends an OpenAI chat or completion stream.
func (s *sseWriter) done() {
	if _, err := s.w.Write([]byte("data: [DONE]\n\n")); err == nil {
		_ = s.rc.Flush()
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"error":{"message":"mock: encoding failed","type":"server_error","code":null}}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(bytes.TrimSpace(b))
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]any{"error": map[string]any{
		"message": msg, "type": "invalid_request_error", "param": nil, "code": nil,
	}})
}
