package auth_test

import (
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/metadata"

	"github.com/keygate/keygate/pkg/auth"
)

func TestParseBearer(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"Bearer abc":   "abc",
		"bearer abc":   "abc",
		"BEARER  abc ": "abc",
		"abc":          "abc",
		"":             "",
		"Bearer":       "Bearer",
	} {
		require.Equal(t, want, auth.ParseBearer(in), in)
	}
}

func TestIncomingAndForward(t *testing.T) {
	t.Parallel()
	ctx := metadata.NewIncomingContext(t.Context(), metadata.Pairs("authorization", "Bearer tok"))
	require.Equal(t, "tok", auth.BearerFromIncoming(ctx))
	require.Empty(t, auth.BearerFromIncoming(t.Context()))

	out := auth.ForwardIncoming(ctx)
	md, ok := metadata.FromOutgoingContext(out)
	require.True(t, ok)
	require.Equal(t, []string{"Bearer tok"}, md.Get("authorization"))

	// Nothing to forward: the outgoing context stays without a credential.
	_, ok = metadata.FromOutgoingContext(auth.ForwardIncoming(t.Context()))
	require.False(t, ok)

	md, _ = metadata.FromOutgoingContext(auth.WithBearer(t.Context(), "svc"))
	require.Equal(t, []string{"Bearer svc"}, md.Get("authorization"))

	m, err := auth.Token{Value: "x"}.GetRequestMetadata(t.Context())
	require.NoError(t, err)
	require.Equal(t, "Bearer x", m["authorization"])
}

func TestTokens(t *testing.T) {
	t.Parallel()
	tok := auth.NewTokens("current-token", "", "previous-token")
	require.True(t, tok.Match("current-token"))
	require.True(t, tok.Match("previous-token"))
	require.False(t, tok.Match(""))
	require.False(t, tok.Match("current"))
	require.False(t, tok.Match("current-token-and-more"))
	require.False(t, auth.NewTokens("").Match(""), "an empty token never matches")
}
