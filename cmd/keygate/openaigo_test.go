package main

import (
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/responses"
	"github.com/stretchr/testify/require"
)

// TestOpenAIGoClient: the official openai-go client against keygate up on
// its default paths (base URL and key only): chat, stream, embeddings,
// responses create and stream, models.Get and typed errors; the key's
// ledger usage equals what the client was told.
func TestOpenAIGoClient(t *testing.T) {
	ck := newClientKeys(t)
	base := option.WithBaseURL("http://" + ck.app.EdgeAddr + "/v1/")
	client := openai.NewClient(base, option.WithAPIKey(ck.key), option.WithMaxRetries(0))
	toldPath := filepath.Join(t.TempDir(), "told.jsonl")
	tell := func(t *testing.T, prompt, completion int64) {
		t.Helper()
		f, err := os.OpenFile(toldPath, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
		require.NoError(t, err)
		_, err = f.WriteString(`{"prompt":` + strconv.FormatInt(prompt, 10) + `,"completion":` + strconv.FormatInt(completion, 10) + "}\n")
		require.NoError(t, err)
		require.NoError(t, f.Close())
	}
	messages := []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Say hello")}

	t.Run("chat", func(t *testing.T) {
		r, err := client.Chat.Completions.New(t.Context(), openai.ChatCompletionNewParams{Model: "mock-small", Messages: messages, MaxTokens: openai.Int(32)})
		require.NoError(t, err)
		require.NotEmpty(t, r.Choices[0].Message.Content)
		tell(t, r.Usage.PromptTokens, r.Usage.CompletionTokens)
	})
	t.Run("chat stream", func(t *testing.T) {
		stream := client.Chat.Completions.NewStreaming(t.Context(), openai.ChatCompletionNewParams{Model: "mock-small", Messages: messages,
			StreamOptions: openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}})
		var acc openai.ChatCompletionAccumulator
		for stream.Next() {
			acc.AddChunk(stream.Current())
		}
		require.NoError(t, stream.Err())
		require.NotEmpty(t, acc.Choices[0].Message.Content)
		tell(t, acc.Usage.PromptTokens, acc.Usage.CompletionTokens)
	})
	t.Run("embeddings", func(t *testing.T) {
		r, err := client.Embeddings.New(t.Context(), openai.EmbeddingNewParams{Model: "mock-small",
			Input: openai.EmbeddingNewParamsInputUnion{OfString: openai.String("The quick brown fox")}})
		require.NoError(t, err)
		require.Len(t, r.Data[0].Embedding, 8)
		require.NotZero(t, r.Data[0].Embedding[0])
		tell(t, r.Usage.PromptTokens, 0)
	})
	t.Run("responses", func(t *testing.T) {
		r, err := client.Responses.New(t.Context(), responses.ResponseNewParams{Model: "mock-small", MaxOutputTokens: openai.Int(16),
			Input: responses.ResponseNewParamsInputUnion{OfString: openai.String("Say hello")}})
		require.NoError(t, err)
		require.NotEmpty(t, r.OutputText())
		tell(t, r.Usage.InputTokens, r.Usage.OutputTokens)
	})
	t.Run("responses stream", func(t *testing.T) {
		stream := client.Responses.NewStreaming(t.Context(), responses.ResponseNewParams{Model: "mock-small",
			Input: responses.ResponseNewParamsInputUnion{OfString: openai.String("Say hello")}})
		var text string
		var done responses.Response
		for stream.Next() {
			ev := stream.Current()
			switch ev.Type {
			case "response.output_text.delta":
				text += ev.Delta
			case "response.completed":
				done = ev.AsResponseCompleted().Response
			}
		}
		require.NoError(t, stream.Err())
		require.Equal(t, done.OutputText(), text)
		tell(t, done.Usage.InputTokens, done.Usage.OutputTokens)
	})
	t.Run("models.Get", func(t *testing.T) {
		m, err := client.Models.Get(t.Context(), "mock-large")
		require.NoError(t, err)
		require.Equal(t, "mock-large", m.ID)
		_, err = client.Models.Get(t.Context(), "no-such-model")
		var apiErr *openai.Error
		require.True(t, errors.As(err, &apiErr), "%v", err)
		require.Equal(t, http.StatusNotFound, apiErr.StatusCode)
		require.Equal(t, "model_not_found", apiErr.Code)
	})
	t.Run("typed errors", func(t *testing.T) {
		wrong := openai.NewClient(base, option.WithAPIKey(ck.key[:len(ck.key)-1]+"x"), option.WithMaxRetries(0))
		if ck.key[len(ck.key)-1] == 'x' {
			wrong = openai.NewClient(base, option.WithAPIKey(ck.key[:len(ck.key)-1]+"y"), option.WithMaxRetries(0))
		}
		_, err := wrong.Chat.Completions.New(t.Context(), openai.ChatCompletionNewParams{Model: "mock-small", Messages: messages})
		var apiErr *openai.Error
		require.True(t, errors.As(err, &apiErr), "%v", err)
		require.Equal(t, http.StatusUnauthorized, apiErr.StatusCode)
		require.Equal(t, "invalid_api_key", apiErr.Code)

		limited := openai.NewClient(base, option.WithAPIKey(ck.limited), option.WithMaxRetries(0))
		for range 2 {
			_, err = limited.Chat.Completions.New(t.Context(), openai.ChatCompletionNewParams{Model: "mock-small", Messages: messages})
		}
		require.True(t, errors.As(err, &apiErr), "%v", err)
		require.Equal(t, http.StatusTooManyRequests, apiErr.StatusCode)
		require.Equal(t, "rate_limit_exceeded", apiErr.Code)
	})
	ck.requireLedgerMatches(t, toldPath)
}
