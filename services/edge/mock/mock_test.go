package mock_test

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/keygate/keygate/services/edge/mock"
)

func TestMock(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(mock.New(mock.Options{Tokens: 4}))
	t.Cleanup(srv.Close)
	clients := map[string]*http.Client{
		"loopback":   srv.Client(),
		"in-process": {Transport: mock.Transport(mock.New(mock.Options{Tokens: 4}))},
	}
	base := map[string]string{"loopback": srv.URL + "/v1", "in-process": "http://mock/v1"}
	cases := []struct {
		name, path, body, want string
	}{
		{"chat", "/chat/completions", `{"model":"m","messages":[{"role":"user","content":"hi"}]}`,
			`{"id":"chatcmpl-mock","object":"chat.completion","created":0,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"This is a deterministic"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":4,"total_tokens":13}}`},
		{"capped by max_tokens", "/chat/completions", `{"model":"m","max_tokens":2,"messages":[{"role":"user","content":"hi"}]}`,
			`{"id":"chatcmpl-mock","object":"chat.completion","created":0,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"This is"},"finish_reason":"length"}],"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}`},
		{"stream with usage", "/chat/completions", `{"model":"m","stream":true,"stream_options":{"include_usage":true},"max_tokens":1,"messages":[]}`,
			`data: {"id":"chatcmpl-mock","object":"chat.completion.chunk","created":0,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}` + "\n\n" +
				`data: {"id":"chatcmpl-mock","object":"chat.completion.chunk","created":0,"model":"m","choices":[{"index":0,"delta":{"content":"This"},"finish_reason":null}]}` + "\n\n" +
				`data: {"id":"chatcmpl-mock","object":"chat.completion.chunk","created":0,"model":"m","choices":[{"index":0,"delta":{"content":""},"finish_reason":"length"}]}` + "\n\n" +
				`data: {"id":"chatcmpl-mock","object":"chat.completion.chunk","created":0,"model":"m","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}` + "\n\n" +
				"data: [DONE]\n\n"},
		{"bad json", "/chat/completions", `{`, ""},
	}
	for cname, client := range clients {
		for _, c := range cases {
			t.Run(cname+"/"+c.name, func(t *testing.T) {
				t.Parallel()
				req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, base[cname]+c.path, strings.NewReader(c.body))
				require.NoError(t, err)
				resp, err := client.Do(req)
				require.NoError(t, err)
				defer resp.Body.Close()
				b, err := io.ReadAll(resp.Body)
				require.NoError(t, err)
				if c.want == "" {
					require.Equal(t, http.StatusBadRequest, resp.StatusCode)
					return
				}
				require.Equal(t, http.StatusOK, resp.StatusCode)
				require.Equal(t, c.want, string(b))
			})
		}
	}
}

func TestMockEmbeddings(t *testing.T) {
	t.Parallel()
	h := mock.New(mock.Options{})
	embed := func() []byte {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(http.MethodPost, "/v1/embeddings", strings.NewReader(`{"model":"e","input":["a","b"]}`)))
		require.Equal(t, http.StatusOK, w.Code)
		return w.Body.Bytes()
	}
	first := embed()
	require.Equal(t, first, embed(), "deterministic")
	var resp struct {
		Data []struct {
			Embedding []float64 `json:"embedding"`
		} `json:"data"`
	}
	require.NoError(t, json.Unmarshal(first, &resp))
	require.Len(t, resp.Data, 2)
	require.NotEqual(t, resp.Data[0].Embedding, resp.Data[1].Embedding)
}

// TestMockEmbeddingEncodings: base64 (the default of OpenAI's own clients)
// is the little-endian float32 vector that float sends as numbers.
func TestMockEmbeddingEncodings(t *testing.T) {
	t.Parallel()
	h := mock.New(mock.Options{})
	embed := func(t *testing.T, format string) (int, []json.RawMessage) {
		w := httptest.NewRecorder()
		body := `{"model":"e","input":"hello","encoding_format":"` + format + `"}`
		h.ServeHTTP(w, httptest.NewRequest(http.MethodPost, "/v1/embeddings", strings.NewReader(body)))
		var resp struct {
			Data []struct {
				Embedding json.RawMessage `json:"embedding"`
			} `json:"data"`
		}
		_ = json.Unmarshal(w.Body.Bytes(), &resp)
		var out []json.RawMessage
		for _, d := range resp.Data {
			out = append(out, d.Embedding)
		}
		return w.Code, out
	}
	want := mock.Vector("hello")
	t.Run("float", func(t *testing.T) {
		code, got := embed(t, "float")
		require.Equal(t, http.StatusOK, code)
		var vec []float32
		require.NoError(t, json.Unmarshal(got[0], &vec))
		require.Equal(t, want, vec)
	})
	t.Run("base64", func(t *testing.T) {
		code, got := embed(t, "base64")
		require.Equal(t, http.StatusOK, code)
		var s string
		require.NoError(t, json.Unmarshal(got[0], &s))
		raw, err := base64.StdEncoding.DecodeString(s)
		require.NoError(t, err)
		require.Len(t, raw, 4*len(want))
		for i, v := range want {
			require.Equal(t, v, math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:])), "value %d", i)
		}
	})
	t.Run("unknown", func(t *testing.T) {
		code, _ := embed(t, "int8")
		require.Equal(t, http.StatusBadRequest, code)
	})
}
