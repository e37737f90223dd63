package edge_test

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"math"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	"github.com/keygate/keygate/services/edge/mock"
)

// TestEmbeddingEncodingFormat: encoding_format reaches the provider as the
// client sent it, so that OpenAI's clients (base64 by default) get the
// vector the provider computed.
func TestEmbeddingEncodingFormat(t *testing.T) {
	t.Parallel()
	h := startEdge(t, options{})
	vector := func(t *testing.T, format string) []float32 {
		a := h.post(t, "/v1/embeddings", goodKey, `{"model":"mock-small","input":"hello","encoding_format":"`+format+`"}`)
		require.Equal(t, http.StatusOK, a.status, "%s", a.body)
		var resp struct {
			Data []struct {
				Embedding json.RawMessage `json:"embedding"`
			} `json:"data"`
		}
		require.NoError(t, json.Unmarshal(a.body, &resp))
		require.Len(t, resp.Data, 1)
		var vec []float32
		if format != "base64" {
			require.NoError(t, json.Unmarshal(resp.Data[0].Embedding, &vec))
			return vec
		}
		var s string
		require.NoError(t, json.Unmarshal(resp.Data[0].Embedding, &s))
		raw, err := base64.StdEncoding.DecodeString(s)
		require.NoError(t, err)
		for i := 0; i+4 <= len(raw); i += 4 {
			vec = append(vec, math.Float32frombits(binary.LittleEndian.Uint32(raw[i:])))
		}
		return vec
	}
	for _, format := range []string{"float", "base64"} {
		t.Run(format, func(t *testing.T) {
			require.Equal(t, mock.Vector("hello"), vector(t, format))
		})
	}
	t.Run("renamed model keeps the option", func(t *testing.T) {
		bodies := make(chan map[string]any, 1)
		h := startEdge(t, upstream(t, func(w http.ResponseWriter, r *http.Request) {
			var m map[string]any
			_ = json.NewDecoder(r.Body).Decode(&m)
			bodies <- m
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(`{"object":"list","data":[],"usage":{"prompt_tokens":2,"total_tokens":2}}`))
		}))
		a := h.post(t, "/v1/embeddings", goodKey, `{"model":"up-model","input":"hello","encoding_format":"base64","dimensions":4}`)
		require.Equal(t, http.StatusOK, a.status, "%s", a.body)
		m := <-bodies
		require.Equal(t, "real-model", m["model"])
		require.Equal(t, "base64", m["encoding_format"])
		require.InDelta(t, 4, m["dimensions"], 0)
	})
}

// TestModelRetrieve: GET /v1/models/{id} answers a model the key may use,
// and OpenAI's 404 for one that does not exist or the key may not use.
func TestModelRetrieve(t *testing.T) {
	t.Parallel()
	h := startEdge(t, options{})
	h.verifier.set("kg_narrow", &keystorev1.Key{Id: "k5", AllowedModels: []string{"mock-large"}})
	get := func(key, id string) answer {
		return h.do(t, http.MethodGet, "/v1/models/"+id, map[string]string{"Authorization": "Bearer " + key}, "")
	}
	cases := []struct {
		name, key, id string
		status        int
	}{
		{"a model", goodKey, "mock-small", http.StatusOK},
		{"an allowed model", "kg_narrow", "mock-large", http.StatusOK},
		{"a model the key may not use", "kg_narrow", "mock-small", http.StatusNotFound},
		{"no such model", goodKey, "gpt-9", http.StatusNotFound},
		{"an invalid key", "kg_x", "mock-small", http.StatusUnauthorized},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a := get(c.key, c.id)
			require.Equal(t, c.status, a.status, "%s", a.body)
			require.Equal(t, "application/json", a.header.Get("Content-Type"))
			switch c.status {
			case http.StatusOK:
				var raw map[string]any
				require.NoError(t, json.Unmarshal(a.body, &raw))
				require.Equal(t, c.id, raw["id"])
				require.Equal(t, "model", raw["object"])
				require.Equal(t, "mock", raw["owned_by"])
			case http.StatusNotFound:
				require.Equal(t, "model_not_found", a.errorCode())
				require.Contains(t, string(a.body), `"type":"invalid_request_error"`)
			}
		})
	}
	require.Zero(t, h.limiter.checks(), "listing models checks no limit")
}
