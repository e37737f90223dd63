package edge

import (
	"encoding/json"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/require"

	"github.com/keygate/keygate/pkg/money"
)

// FuzzParseBody feeds inference bodies to every endpoint's dialect. An
// accepted body names a model, the model is the one a provider reading the
// body will see, its estimate is a non-negative token count with a
// non-negative cost, and the body sent upstream is a JSON object naming the
// upstream model (and, for a chat stream, asking for usage). Seeds live in
// testdata/fuzz/FuzzParseBody.
func FuzzParseBody(f *testing.F) {
	s := &Server{cfg: Config{DefaultMaxTokens: 1024}}
	prices, err := money.ParsePrices("60", "60", "75", "6")
	require.NoError(f, err)
	f.Fuzz(func(t *testing.T, body []byte) {
		for _, ep := range endpoints {
			p, perr := ep.d.parse(body)
			if perr != nil {
				require.Nil(t, p)
				require.Equal(t, 400, perr.status)
				require.NotEmpty(t, perr.msg)
				continue
			}
			require.NotEmpty(t, p.model, ep.name)

			// A provider reads keys case-sensitively; the edge must authorise
			// and price the model the provider will serve.
			var top map[string]json.RawMessage
			require.NoError(t, json.Unmarshal(body, &top), ep.name)
			var upModel string
			require.NoError(t, json.Unmarshal(top["model"], &upModel), "%s: the provider reads no model", ep.name)
			require.Equal(t, p.model, upModel, "%s: the edge and the provider read different models", ep.name)

			est := s.estimate(p)
			require.GreaterOrEqual(t, est.input, int64(0), ep.name)
			require.GreaterOrEqual(t, est.output, int64(0), ep.name)
			require.GreaterOrEqual(t, est.total(), int64(0), "%s: estimate overflows", ep.name)
			rt := &route{id: p.model, upstreamModel: "upstream-model", prices: prices}
			require.GreaterOrEqual(t, cost(rt, est), int64(0), "%s: cost overflows", ep.name)

			out, err := ep.d.rewrite(body, p, rt.upstreamModel)
			require.NoError(t, err, ep.name)
			var sent struct {
				Model         string `json:"model"`
				StreamOptions struct {
					IncludeUsage bool `json:"include_usage"`
				} `json:"stream_options"`
			}
			require.NoError(t, json.Unmarshal(out, &sent), ep.name)
			require.Equal(t, "upstream-model", sent.Model, ep.name)
			if _, chat := ep.d.(chatDialect); chat && p.stream {
				require.True(t, sent.StreamOptions.IncludeUsage, "%s: a stream must ask for usage", ep.name)
			}
		}
	})
}

// FuzzMembers checks the top-level walk against encoding/json: on every
// valid UTF-8 JSON object it finds the members json.Unmarshal finds, the
// last of a repeated key winning, with the same raw values.
func FuzzMembers(f *testing.F) {
	for _, s := range []string{`{}`, ` {"a":1} `, `{"model":"x","Model":"y"}`, `{"a":{"b":[1,"]}"]},"c":"\"}"}`,
		`{"m\u006fdel":true,"n":null,"x":-1.5e3}`, `{"a":1,"a":2}`, `[1]`, `{"a":}`, `{"a":1`, `{"a" 1}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		got := map[string]string{}
		ok := members(body, func(k string, v []byte) bool { got[k] = string(v); return true })
		var want map[string]json.RawMessage
		if json.Unmarshal(body, &want) != nil || want == nil || !utf8.Valid(body) {
			return // members may walk what is not JSON; callers validate
		}
		require.True(t, ok, "a valid object is walked")
		require.Len(t, got, len(want))
		for k, v := range want {
			require.Equal(t, string(v), got[k], "member %q", k)
		}
	})
}
